"""Real servers for the end-to-end tests: uvicorn and gunicorn in their own process groups.

Every server listens on a free loopback port, is ready only once its log shows every worker
started and ``GET /healthz`` answers 200 (bounded wait), and is killed with its whole process
group at teardown. The examples run on the suite's real redis-server (``REDIS_URL``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest
import redis

from tests.redis_servers import RedisProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
#: Per-request client timeout: well under the tests' 60 s, so a hung server fails fast.
CLIENT_TIMEOUT_SECONDS = 10.0
LOG_TAIL_CHARS = 6000

#: Example name -> (server kind, import target).
EXAMPLES: dict[str, tuple[str, str]] = {
    "fastapi": ("uvicorn", "examples.fastapi_app:app"),
    "starlette": ("uvicorn", "examples.starlette_app:app"),
    "litestar": ("uvicorn", "examples.litestar_app:app"),
    "flask": ("gunicorn", "examples.flask_app:app"),
    "django": ("gunicorn", "examples.django_app.wsgi:application"),
}


@functools.cache
def _gunicorn_has_control_socket() -> bool:
    """Gunicorn >= 24 opens a control socket at a fixed path unless told not to."""
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return "--no-control-socket" in done.stdout


def uvicorn_command(target: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "2",
    ]


def gunicorn_command(target: str, port: int, workers: int) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        "8",
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "2",
        "--timeout",
        "30",
    ]
    if _gunicorn_has_control_socket():
        command.append("--no-control-socket")
    return [*command, target]


def hypercorn_command(target: str, port: int, workers: int, worker_class: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--graceful-timeout",
        "2",
        target,
    ]


def granian_command(target: str, port: int, workers: int, interface: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        interface,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-ws",
        target,
    ]


def daphne_command(target: str, port: int, workers: int) -> list[str]:
    """One process (Daphne has no workers): the matrix starts two of them for two workers."""
    if workers != 1:
        raise ValueError("daphne serves from one process; start one server per worker")
    return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), target]


def waitress_command(target: str, port: int, workers: int) -> list[str]:
    """One process of 8 threads (Waitress has no workers): two servers make two workers."""
    if workers != 1:
        raise ValueError("waitress serves from one process; start one server per worker")
    return [
        sys.executable,
        "-m",
        "waitress",
        f"--listen=127.0.0.1:{port}",
        "--threads=8",
        target,
    ]


def uwsgi_binary() -> str | None:
    """The ``uwsgi`` executable installed next to this interpreter (pip builds it there)."""
    beside = Path(sysconfig.get_path("scripts")) / "uwsgi"
    return str(beside) if beside.exists() else shutil.which("uwsgi")


def uwsgi_command(target: str, port: int, workers: int) -> list[str]:
    """uWSGI as deployed: a master that imports the app, then forks its workers."""
    module, _, callable_name = target.partition(":")
    return [
        uwsgi_binary() or "uwsgi",
        "--http-socket",
        f"127.0.0.1:{port}",
        "--master",
        "--processes",
        str(workers),
        "--threads",
        "4",
        "--module",
        module,
        "--callable",
        callable_name,
        "--need-app",
        "--die-on-term",
        "--disable-logging",
        "--chdir",
        str(REPO_ROOT),
    ]


#: The log line each worker prints once it is serving ("" when the server prints none we can
#: count: readiness is then ``GET /healthz`` alone).
READY_MARKERS = {
    "uvicorn": "Application startup complete.",
    "gunicorn": "Booting worker with pid",
    "hypercorn": "",
    "hypercorn-trio": "",
    "granian-asgi": "",
    "granian-wsgi": "",
    "daphne": "",
    "waitress": "",
    "uwsgi": "",
}
COMMANDS: dict[str, Callable[[str, int, int], list[str]]] = {
    "uvicorn": uvicorn_command,
    "gunicorn": gunicorn_command,
    "hypercorn": functools.partial(hypercorn_command, worker_class="asyncio"),
    "hypercorn-trio": functools.partial(hypercorn_command, worker_class="trio"),
    "granian-asgi": functools.partial(granian_command, interface="asgi"),
    "granian-wsgi": functools.partial(granian_command, interface="wsgi"),
    "daphne": daphne_command,
    "waitress": waitress_command,
    "uwsgi": uwsgi_command,
}


_PR_SET_PDEATHSIG = 1


def _die_with_the_test_process() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: SIGTERM the server master if pytest dies without its teardown (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


#: Every server started and not yet stopped: stopped at exit if a teardown never ran.
_LIVE: set[Server] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


@dataclass(eq=False)
class Server:
    """One running server (master plus workers, one process group)."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    workers: int
    started_in: float = 0.0
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log()[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        """SIGTERM the whole group, SIGKILL whatever is left after a bounded wait."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        # Stragglers: workers whose master is gone, or a master that did not stop.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        if self.log_file is not None:
            self.log_file.close()
        _LIVE.discard(self)


def start_server(
    name: str,
    kind: str,
    target: str,
    *,
    workers: int,
    log_dir: Path,
    redis_url: str | None,
    extra_args: Sequence[str] = (),
    attempts: int = 3,
) -> Server:
    """Start ``target`` under ``kind`` (uvicorn or gunicorn) and wait until it is ready."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("REDIS_URL", None)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    last_error = ""
    for attempt in range(attempts):
        port = free_port()
        log_path = log_dir / f"{name}-{port}-{attempt}.log"
        log_file = log_path.open("wb")
        began = time.monotonic()
        process = subprocess.Popen(
            [*COMMANDS[kind](target, port, workers), *extra_args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one
            preexec_fn=_die_with_the_test_process,
        )
        server = Server(name, port, process, log_path, workers, log_file=log_file)
        _LIVE.add(server)
        try:
            _wait_ready(server, READY_MARKERS[kind])
        except Exception as exc:
            server.stop()
            last_error = f"{exc}\n--- log ---\n{server.log_tail()}"
            if "address already in use" in last_error.lower():
                continue  # lost the free-port race: try another port
            break
        server.started_in = time.monotonic() - began
        return server
    raise RuntimeError(f"{name} did not become ready: {last_error}")


@dataclass(eq=False)
class ServerGroup:
    """Servers that share one store and stand for one deployment (e.g. two Daphne processes)."""

    name: str
    servers: list[Server]

    @property
    def base_urls(self) -> list[str]:
        return [server.base_url for server in self.servers]

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _wait_ready(server: Server, marker: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"exited with status {server.process.returncode}")
            if not marker or server.log().count(marker) >= server.workers:
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
    raise TimeoutError(f"not ready within {READY_TIMEOUT_SECONDS}s")


class ServerPool:
    """Example servers started on first use and shared by the whole session."""

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.servers: dict[str, Server] = {}

    def get(self, name: str) -> Server:
        server = self.servers.get(name)
        if server is not None and server.process.poll() is None:
            return server
        kind, target = EXAMPLES[name]
        server = start_server(
            name, kind, target, workers=2, log_dir=self.log_dir, redis_url=self.redis_url
        )
        self.servers[name] = server
        return server

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()


@pytest.fixture(scope="session")
def example_servers(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerPool]:
    """The examples under real servers with two workers each, all on the suite's Redis."""
    pool = ServerPool(redis_server.url, tmp_path_factory.mktemp("server-logs"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the (just flushed) suite Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def executions(client: redis.Redis) -> int:
    """Handler runs counted by ``examples/_store.py: count_execution`` (all workers)."""
    return int(client.get("examples:executions") or 0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``e2e`` (real servers): ``-m "not e2e"`` leaves them."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the servers a failing test used to its report."""
    report: pytest.TestReport = yield
    if report.failed:
        servers: list[Server] = []
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Server):
                servers.append(value)
            elif isinstance(value, ServerPool):
                servers.extend(value.servers.values())
            elif isinstance(value, ServerGroup):
                servers.extend(value.servers)
        for server in servers:
            report.sections.append((f"server log: {server.name}", server.log_tail()))
    return report
