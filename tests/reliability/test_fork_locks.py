"""R9: a process forked while another thread holds one of the package's locks.

``fork`` copies a held lock held, and the thread that held it does not exist in the child:
the child's first use would block for ever. Every such lock is renewed in the child
(``_forksafe``); the in-memory store's is also taken before the fork, so that its table and
index reach the child in step even when a thread was part way through a write.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from idempotent_middleware import InMemoryPersistenceLayer, _forksafe
from idempotent_middleware.persistence._resp import BlockingConnection
from idempotent_middleware.persistence.base import LRUDict
from idempotent_middleware.persistence.memory import record_size
from idempotent_middleware.persistence.postgres import _SyncConnections

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _fork(child: Callable[[], bool]) -> int:
    """Run ``child`` in a forked process; its exit status (0 when it returned True)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, fork()"
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 2
        try:
            code = 0 if child() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_r9_every_lock_held_by_another_thread_is_free_in_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_forksafe, "FORK_WAIT", 0.2)  # the quiesced locks below stay held
    store = InMemoryPersistenceLayer()
    cache = LRUDict(8)
    connection = BlockingConnection(
        "redis://127.0.0.1:1/0", socket_timeout=1.0, socket_connect_timeout=1.0
    )
    pool = _SyncConnections(None, 3, 1.0, "", {})

    def locks() -> list[Any]:
        return [
            store._lock,
            store._cache_lock,
            cache._lock,
            connection._open_lock,
            pool.lock,
        ]

    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        held = locks()
        for lock in held:
            lock.acquire()
        for _ in range(pool.max_size):
            pool.slots.acquire()
        holding.set()
        done.wait(30)
        for lock in held:
            lock.release()
        for _ in range(pool.max_size):
            pool.slots.release()

    def child() -> bool:
        free = all(lock.acquire(blocking=False) for lock in locks())
        slots = all(pool.slots.acquire(blocking=False) for _ in range(pool.max_size))
        return free and slots

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        assert holding.wait(30)
        assert _fork(child) == 0
    finally:
        done.set()
        thread.join(30)


def test_r9_a_write_in_progress_at_fork_reaches_the_child_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread inside the store's lock, between two steps of one write (the record is in the
    table, its size not yet counted): the fork waits for it, so the child's byte count is the
    sum of its records' sizes."""
    monkeypatch.setattr(_forksafe, "FORK_WAIT", 60.0)
    store = InMemoryPersistenceLayer()
    record = store.new_inprogress_record("fork#half", "fp", 30, 60)
    table = store._records
    inside = threading.Event()
    forking = threading.Event()

    def write_in_two_steps() -> None:
        with store._lock:
            table._records[record.idempotency_key] = record
            inside.set()
            forking.wait(30)
            table.bytes += record_size(record)

    writer = threading.Thread(target=write_in_two_steps, daemon=True)
    writer.start()
    assert inside.wait(30)

    def child() -> bool:
        return table.bytes == sum(record_size(r) for r in table.values())

    # The writer finishes only after the fork has begun: a child forked while it is still
    # inside the lock would see the record without its size.
    timer = threading.Timer(0.05, forking.set)
    timer.start()
    try:
        assert _fork(child) == 0
    finally:
        forking.set()
        writer.join(30)
        timer.join(30)
