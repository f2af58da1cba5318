"""Fork while another thread of the parent is inside a write (a statement run through the
layer that holds the write lock for HOLD seconds). Prints what the child's claims answer.

Usage: midstatement.py DB HOLD
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time

from idempotent_middleware import SQLitePersistenceLayer

path, hold = sys.argv[1], float(sys.argv[2])
store = SQLitePersistenceLayer(path, busy_timeout=1.0)
store._put_record(store.new_inprogress_record("scope#warm", "fp", 300, 600))
inside = threading.Event()
done = threading.Event()


def long_write(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")  # a write in progress: holds the write lock
    inside.set()
    time.sleep(hold)
    conn.execute("COMMIT")


def worker() -> None:
    store._run(long_write)
    done.set()
    time.sleep(hold + 5)  # the thread (and its connection) live on, idle


threading.Thread(target=worker, daemon=True).start()
inside.wait()
pid = os.fork()
if pid == 0:
    time.sleep(hold + 0.5)  # the parent's write is long over
    for i in range(2):
        try:
            store._put_record(store.new_inprogress_record(f"scope#child{i}", "fp", 300, 600))
            print(f"child claim {i}: ok", flush=True)
        except Exception as exc:
            print(f"child claim {i}: {type(exc).__name__}: {exc}", flush=True)
    os._exit(0)
done.wait()
store._put_record(store.new_inprogress_record("scope#parent", "fp", 300, 600))
print("parent claim: ok", flush=True)
os.waitpid(pid, 0)
