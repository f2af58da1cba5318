"""Process, Redis and HTTP helpers shared by run.py and stream_memory.py.

Everything started here runs in its own process group and is registered, so that a
normal exit, an exception, Ctrl-C or SIGTERM all tear the whole tree down; nothing
is left listening after a benchmark.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
APPS_DIR = BENCH_DIR / "apps"
LUA_DIR = BENCH_DIR / "lua"
RESULTS_DIR = BENCH_DIR / "results"

HOST = "127.0.0.1"  # all benchmark traffic stays on loopback

_children: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    """A currently free loopback TCP port, obtained by binding port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def spawn(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session (its own process group) and register it for teardown."""
    out: IO[bytes] | int = subprocess.DEVNULL
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("wb")
    try:
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if not isinstance(out, int):
            out.close()
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """Stop ``proc``'s whole process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # The leader may be gone while workers (gunicorn) linger: kill the group regardless.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    """Stop every process started through :func:`spawn`, newest first."""
    for proc in reversed(list(_children)):
        stop(proc)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ignore SIGINT, SIGTERM and SIGHUP while the caller stops its servers: a second
    signal (an impatient Ctrl-C, a supervisor's repeated TERM) must not cut a clean-up
    short and leave a server or its folder behind."""
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def install_teardown() -> None:
    """Tear children down at interpreter exit and turn SIGTERM/SIGHUP into a clean exit."""
    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def log_tail(path: Path, lines: int = 6) -> str:
    """Last ``lines`` lines of a log file, for failure reports."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def http_request(
    port: int,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request to the loopback server on ``port``; returns (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(
    proc: subprocess.Popen[bytes], port: int, timeout: float = 10.0, path: str = "/healthz"
) -> str | None:
    """Poll ``GET path`` until it answers 200; returns None when ready, else why not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        try:
            status, _ = http_request(port, "GET", path, timeout=1.0)
            if status == 200:
                return None
            last = f"GET {path} -> {status}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    return f"not ready after {timeout:.0f} s ({last})"


def app_env(redis_url: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an app server: REDIS_URL, and the apps folder plus the repo root
    on PYTHONPATH so the apps import the package from this checkout without installing it."""
    env = dict(os.environ)
    paths = [str(APPS_DIR), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("WEB_CONCURRENCY", None)  # uvicorn would read it as a worker count
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(extra or {})
    return env


def uvicorn_cmd(python: str, module: str, port: int) -> list[str]:
    """uvicorn as in production: one worker, uvloop + httptools, no access log."""
    return [
        python, "-m", "uvicorn", f"{module}:app",
        "--app-dir", str(APPS_DIR),
        "--host", HOST, "--port", str(port),
        "--workers", "1",
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def gunicorn_cmd(python: str, module: str, port: int) -> list[str]:
    """gunicorn with one gthread worker of 8 threads (no access log by default)."""
    return [
        python, "-m", "gunicorn", f"{module}:app",
        "--chdir", str(APPS_DIR),
        "--bind", f"{HOST}:{port}",
        "--workers", "1", "--threads", "8", "--worker-class", "gthread",
        "--log-level", "warning",
    ]  # fmt: skip


# --- Redis -------------------------------------------------------------------------


def _read_reply(reader: IO[bytes]) -> Any:
    """Decode one RESP2 reply: enough of the protocol for PING, INFO and SHUTDOWN."""
    line = reader.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"redis error: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)
        return data[:-2].decode()
    if kind == b"*":
        return [_read_reply(reader) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected redis reply {line!r}")


def redis_call(port: int, *args: str, timeout: float = 5.0) -> Any:
    """Send one command to the Redis on ``port`` over a short-lived connection.

    A tiny RESP client keeps the harness free of a redis-py dependency (and of its
    version: one peer needs redis-py < 8).
    """
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as reader:
            return _read_reply(reader)


@dataclass
class RedisServer:
    """A throw-away redis-server on a free loopback port, without persistence."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @classmethod
    def start(cls, log: Path | None = None, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (Debian: apt-get install -y redis-server)")
        port = free_port()
        cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        proc = spawn(cmd, log=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {proc.returncode}")
            with contextlib.suppress(OSError, RuntimeError):
                if redis_call(port, "PING", timeout=1.0) == "PONG":
                    return cls(port, proc)
            time.sleep(0.05)
        stop(proc)
        raise RuntimeError(f"redis-server not answering PING after {timeout:.0f} s")

    def version(self) -> str:
        info = redis_call(self.port, "INFO", "server")
        for line in str(info).splitlines():
            if line.startswith("redis_version:"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    def command_calls(self) -> dict[str, int]:
        """Calls per command from INFO commandstats (cumulative since start)."""
        calls: dict[str, int] = {}
        for line in str(redis_call(self.port, "INFO", "commandstats")).splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, _, fields = line.partition(":")
            for field in fields.split(","):
                if field.startswith("calls="):
                    calls[name.removeprefix("cmdstat_")] = int(field.split("=", 1)[1])
        return calls

    def stop(self) -> None:
        stop(self.proc)


class ClientCommandCounter:
    """Counts the commands clients send to Redis, through a MONITOR connection.

    ``INFO commandstats`` also counts the commands that Lua scripts run inside the server
    (a fenced completion shows as EVALSHA + GET + SET), so it overstates round trips. MONITOR
    tags those ``[0 lua]``; every other line is one command a client sent. MONITOR slows
    Redis down, so it runs during a separate, short counting run, never a timed one.
    The ``ECHO`` that closes each pipelined batch of the lean asyncio connection (its check
    that replies are in step) leaves in the batch's own write, so it costs no round trip:
    it is counted apart, in ``echoes``.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.echoes = 0
        self._sock = socket.create_connection((HOST, port), timeout=5)
        self._sock.sendall(b"MONITOR\r\n")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                if line.startswith(b"+") and b'] "' in line and b" lua]" not in line:
                    if b'] "ECHO"' in line or b'] "echo"' in line:
                        self.echoes += 1
                    else:
                        self.count += 1

    def close(self) -> int:
        time.sleep(0.2)  # let the last lines arrive
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        return self.count


def commands_between(before: Mapping[str, int], after: Mapping[str, int]) -> int:
    """Commands executed between two snapshots, leaving out the harness's own INFO calls."""
    return sum(count - before.get(name, 0) for name, count in after.items() if name != "info")


_TICK = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> tuple[float, float]:
    """CPU time the whole machine has spent busy since boot, and the part of it the
    hypervisor took for others (steal: our CPUs wanted to run and were not let), from
    /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK, steal / _TICK


def processes() -> Iterator[tuple[int, int, int]]:
    """``(ppid, pgrp, CPU ticks used)`` of every live process, from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        # fields: state ppid pgrp ... utime(11) stime(12)
        yield int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12])


def _group_seconds(pgids: Collection[int]) -> float:
    """CPU time used by the live processes of the given process groups."""
    return sum(ticks for _, pgrp, ticks in processes() if pgrp in pgids) / _TICK


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float  # monotonic seconds
    busy: float  # CPU seconds the whole machine has been busy
    ours: float  # CPU seconds used by us (see cpu_snapshot)
    steal: float  # CPU seconds of ``busy`` the hypervisor gave to other machines


def cpu_snapshot(pgids: Collection[int]) -> CpuSnapshot:
    """Where CPU time went so far: the whole machine, and us (this process, its reaped
    children such as wrk, and the given process groups: servers, Redis)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    busy, steal = _busy_seconds()
    return CpuSnapshot(time.monotonic(), busy, ours + _group_seconds(pgids), steal)


def other_cpu_share(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """Share of the machine's CPU taken by other processes between two snapshots: the
    noise that makes a benchmark run on a shared machine untrustworthy."""
    other = (after.busy - before.busy) - (after.ours - before.ours)
    span = (after.wall - before.wall) * (os.cpu_count() or 1)
    return min(1.0, max(0.0, other / span)) if span > 0 else 0.0


def steal_share(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """The part of ``other_cpu_share`` that is the hypervisor's steal time: noise that no
    process on this machine causes and none can stop."""
    span = (after.wall - before.wall) * (os.cpu_count() or 1)
    return min(1.0, max(0.0, (after.steal - before.steal) / span)) if span > 0 else 0.0


def python_version() -> str:
    return sys.version.split()[0]


def host_info() -> dict[str, Any]:
    """The machine and commit a result was measured on, for every result file."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    git = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    # Uncommitted changes outside the results a run writes: the figures are not the commit's.
    changed = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no", "--",
         ".", ":(exclude)benchmarks/results"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1) if mem_kib else None,
        "kernel": platform.release(),
        "python": python_version(),
        "git_commit": git.stdout.strip() or None,
        "git_dirty": bool(changed.stdout.strip()) if changed.returncode == 0 else None,
    }
