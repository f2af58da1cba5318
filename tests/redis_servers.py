"""Real ``redis-server`` processes for the test suite, on free loopback ports.

Every server runs without persistence in a temporary directory and is killed at teardown.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str | None:
    return shutil.which("redis-server")


@dataclass
class RedisProcess:
    port: int
    process: subprocess.Popen[bytes]
    directory: str
    password: str | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        command = ["redis-cli", "-p", str(self.port)]
        if self.password:
            command += ["--no-auth-warning", "-a", self.password]
        done = subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()

    def stop(self, *, keep_directory: bool = False) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if not keep_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self) -> None:
        """Start a fresh (empty) server on the same port."""
        self.stop()
        fresh = start_redis(self.extra_args, port=self.port, password=self.password)
        self.process, self.directory = fresh.process, fresh.directory


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server did not listen on {port} within {timeout}s")


def start_redis(
    extra_args: Sequence[str] = (), *, port: int | None = None, password: str | None = None
) -> RedisProcess:
    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    port = port or free_port()
    directory = tempfile.mkdtemp(prefix="idem-redis-")
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        directory,
        "--logfile",
        os.path.join(directory, "redis.log"),
    ]
    if password:
        args += ["--requirepass", password]
    process = subprocess.Popen([*args, *extra_args], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
    except RuntimeError:
        process.kill()
        raise
    return RedisProcess(port, process, directory, password, tuple(extra_args))
