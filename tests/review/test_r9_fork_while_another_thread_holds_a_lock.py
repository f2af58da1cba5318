"""R9: ``fork`` while another thread is inside the in-memory store's lock (or ``_claim``'s
``_live_lock``, or the blocking Redis connection's ``_open_lock``) hands the child a lock that
nobody will release: the child's first claim blocks forever. The renewer resets its own locks
after a fork (``_SyncRenewer._after_fork_in_child``); these are not reset.

Here a thread serves calls on the store while the main thread forks (``multiprocessing``'s
default start method on Linux, ``os.fork`` in a job runner); each child makes one call and must
finish within a second.
"""

from __future__ import annotations

import faulthandler
import os
import threading
import time

import pytest

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer, idempotent_function

FORKS = 120


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_r9_child_forked_during_traffic_never_deadlocks() -> None:
    store = InMemoryPersistenceLayer()

    @idempotent_function(
        data_keyword_argument="x",
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=5),
    )
    def f(x: int) -> int:
        return x

    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            f(x=n % 50)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    time.sleep(0.1)
    hung = 0
    try:
        for i in range(FORKS):
            pid = os.fork()
            if pid == 0:  # the child: one call, bounded by a watchdog that exits with 3
                try:
                    faulthandler.dump_traceback_later(1.0, exit=True)
                    f(x=-1 - i)
                finally:
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                hung += 1
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join(5)
    assert hung == 0, f"{hung} of {FORKS} forked children deadlocked on an inherited lock"
