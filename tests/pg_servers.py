"""A real PostgreSQL server for the test suite: ``initdb`` + ``pg_ctl`` in a temporary directory.

It listens on a free loopback port (and a Unix socket in its own directory), trusts local
connections, and logs every statement to a file so that tests can count round trips. As root,
``initdb`` refuses to run: the server then runs as the unprivileged ``postgres`` user (created by
the Debian package) through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from tests.redis_servers import free_port


def pg_bindir() -> str | None:
    """Where initdb and pg_ctl live (Debian keeps them off PATH, under pg_config's bindir)."""
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    try:
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        out = ""
    if out and os.path.exists(os.path.join(out, "initdb")):
        return out
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(candidates[-1]) if candidates else None


def _pkglibdir(bindir: str) -> str:
    try:
        out = subprocess.run(
            [os.path.join(bindir, "pg_config"), "--pkglibdir"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        out = ""
    return out or os.path.join(os.path.dirname(bindir), "lib")


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise RuntimeError("running as root without runuser: cannot run initdb unprivileged")
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresProcess:
    port: int
    directory: str
    bindir: str
    prefix: tuple[str, ...]

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "statements.log")

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, os.path.join(self.bindir, "pg_ctl"), "-D", self.data, *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    @property
    def data(self) -> str:
        return os.path.join(self.directory, "data")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):  # already gone
            self._ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres(extra_settings: Sequence[str] = ()) -> PostgresProcess:
    bindir = pg_bindir()
    if bindir is None:
        raise FileNotFoundError("the PostgreSQL server (initdb, pg_ctl) is not installed")
    prefix = tuple(_as_server_user())
    directory = tempfile.mkdtemp(prefix="idem-pg-")
    os.chmod(directory, 0o755)
    if prefix:
        shutil.chown(directory, "postgres")
    port = free_port()
    server = PostgresProcess(port, directory, bindir, prefix)
    try:
        _init_and_start(server, extra_settings)
    except BaseException:  # failed or interrupted (Ctrl-C, a timeout): nothing left behind
        server.stop()
        raise
    return server


def _init_and_start(server: PostgresProcess, extra_settings: Sequence[str]) -> None:
    bindir, prefix, directory, port = server.bindir, server.prefix, server.directory, server.port
    subprocess.run(
        [
            *prefix,
            os.path.join(bindir, "initdb"),
            "-D",
            server.data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    settings = [
        f"-k {directory}",
        f"-p {port}",
        "-c listen_addresses=127.0.0.1",
        "-c fsync=off",
        "-c max_connections=200",
        "-c logging_collector=on",
        f"-c log_directory={directory}",
        "-c log_filename=statements.log",
        "-c log_statement=none",
        *extra_settings,
    ]
    if os.path.exists(os.path.join(_pkglibdir(bindir), "pg_stat_statements.so")):
        # Counts statements per query: the round-trip tests read it.
        settings.append("-c shared_preload_libraries=pg_stat_statements")
    server._ctl(
        "start",
        "-w",
        "-t",
        "60",
        "-l",
        os.path.join(directory, "server.log"),
        "-o",
        " ".join(settings),
    )
