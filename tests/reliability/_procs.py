"""Server processes for the reliability tests: started in their own session, always killed.

Every process runs in a new session (its own process group), so a SIGKILL to the group id we
got from ``Popen`` ends the master and its workers together; nothing is killed by name.
uvicorn runs with its default event loop (uvloop when installed, as in production);
``REL_UVICORN_LOOP=asyncio`` forces another one when a failure needs narrowing down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.redis_servers import free_port
from tests.reliability.http_client import request

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


@dataclass
class ServerProcess:
    """One HTTP server (uvicorn or gunicorn master plus workers) on a loopback port."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    command: list[str] = field(default_factory=list)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGKILL the whole process group we started (master and workers), then reap."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def spawn_server(
    name: str,
    command: Sequence[str],
    port: int,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    ready_path: str = "/healthz",
    timeout: float = 30.0,
) -> ServerProcess:
    """Start ``command`` in its own session and wait until ``ready_path`` answers 200."""
    log_path = log_dir / f"{name}-{port}.log"
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(name, port, process, log_path, list(command))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if request(port, "GET", ready_path, timeout=1.0).status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{name} did not answer {ready_path} within {timeout}s:\n{server.log()}")


def uvicorn_command(app: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
        *(["--loop", os.environ["REL_UVICORN_LOOP"]] if os.environ.get("REL_UVICORN_LOOP") else []),
    ]


def gunicorn_command(app: str, port: int, workers: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        str(workers),
        "-b",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
        "--graceful-timeout",
        "1",
        *extra,
        app,
    ]


__all__ = [
    "HOST",
    "REPO_ROOT",
    "ServerProcess",
    "free_port",
    "gunicorn_command",
    "spawn_server",
    "uvicorn_command",
]
