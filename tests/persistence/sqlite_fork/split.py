"""F3: the parent used the store, then forks; a parent thread's connection then closes
(thread-per-request server, or ``store.close()``) while the child works.

SQLite's unix VFS keeps one lock record per file per PROCESS (shared by its connections).
The child inherits the parent's record (through the parked connections) saying "this process
holds SHARED", so the child's new connections take no real POSIX lock. The parent's last
close then believes it is the last user of the file: it checkpoints and DELETES the -wal and
-shm files under the child. The child goes on committing into a deleted WAL: a fresh process
does not see the child's claims (double execution) and they are lost when the child exits.

Usage: split.py DIR (close|thread|control)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from idempotent_middleware import SQLitePersistenceLayer

directory, how = sys.argv[1], sys.argv[2]
path = os.path.join(directory, "db.sqlite3")
store = SQLitePersistenceLayer(path)
store._put_record(store.new_inprogress_record("scope#warm", "fp", 300, 600))  # parent uses it

in_request = threading.Event()
finish_request = threading.Event()


def request_thread() -> None:  # a thread-per-request server's thread: its own connection
    store._put_record(store.new_inprogress_record("scope#req", "fp", 300, 600))
    in_request.set()
    finish_request.wait(10)  # the thread ends: its connection is closed (README)


if how == "control":  # no connection open at fork time: nothing inherited
    store.close()
if how == "thread":
    store.close()  # the parent's main thread holds none: only the request thread's
    t = threading.Thread(target=request_thread)
    t.start()
    in_request.wait(10)

r, w = os.pipe()
r2, w2 = os.pipe()
pid = os.fork()
if pid == 0:  # the child: a worker process
    os.close(r)
    os.close(w2)
    store._put_record(store.new_inprogress_record("scope#early", "fp", 300, 600))  # serving
    os.write(w, b"1")
    os.read(r2, 1)  # the parent's connection has closed meanwhile
    store._put_record(store.new_inprogress_record("scope#K", "fp", 300, 600))  # K runs here
    os.write(w, b"2")
    os.read(r2, 1)
    os._exit(0)
os.close(w)
os.close(r2)
assert os.read(r, 1) == b"1"
before = sorted(os.listdir(directory))
if how == "thread":
    finish_request.set()
    t.join()
elif how == "close":
    store.close()
else:  # control: a parent connection opened after the fork closes
    store._put_record(store.new_inprogress_record("scope#p", "fp", 300, 600))
    store.close()
after = sorted(os.listdir(directory))
os.write(w2, b"x")
assert os.read(r, 1) == b"2"
# A fresh process (a new worker, a restarted one) claims K: the child holds it, 300 s lease.
fresh = subprocess.run(
    [
        sys.executable,
        "-c",
        f"""
from idempotent_middleware import IdempotencyItemAlreadyExistsError, SQLitePersistenceLayer
s = SQLitePersistenceLayer({path!r})
try:
    s._put_record(s.new_inprogress_record("scope#K", "fp", 300, 600))
    print("WON")
except IdempotencyItemAlreadyExistsError:
    print("LOST")
""",
    ],
    capture_output=True,
    text=True,
    timeout=30,
)
os.write(w2, b"x")
os.waitpid(pid, 0)
print(f"files before the parent's close: {before}")
print(f"files after the parent's close:  {after}")
print(f"fresh process claiming scope#K (held by the child): {fresh.stdout.strip()}")
print(fresh.stderr[-300:], end="")
