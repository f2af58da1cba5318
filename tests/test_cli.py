"""The operator CLI against real stores holding records the WSGI middleware wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from idempotent_middleware import WSGIIdempotencyMiddleware
from idempotent_middleware.cli import main, open_store


@pytest.fixture(params=["redis", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.db'}"
    parts = dict(item.split("=", 1) for item in request.getfixturevalue("postgres_dsn").split())
    return f"postgresql://{parts['user']}@{parts['host']}:{parts['port']}/{parts['dbname']}"


class App:
    """Counts executions; ``/slow`` blocks until ``release`` is set."""

    def __init__(self) -> None:
        self.runs = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.runs += 1
        if environ["PATH_INFO"] == "/slow":
            self.entered.set()
            self.release.wait(30)
        start_response("201 Created", [("Content-Type", "application/json")])
        return [b'{"run": %d}' % self.runs]


@pytest.fixture
def served(store_url: str) -> Iterator[tuple[str, App, Client]]:
    store = open_store(store_url)
    app = App()
    client = Client(WSGIIdempotencyMiddleware(app, store))
    yield store_url, app, client
    app.release.set()
    getattr(store, "close", lambda: None)()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def key_of(capsys: pytest.CaptureFixture[str], client_key: str, path: str) -> str:
    code, doc, _ = cli(
        capsys, "key", "--client-key", client_key, "--method", "post", "--path", path
    )
    assert code == 0
    return str(doc["key"])


def test_inspect_invalidate_and_retry(
    served: tuple[str, App, Client], capsys: pytest.CaptureFixture[str]
) -> None:
    url, app, client = served
    assert (
        client.post("/orders", headers={"Idempotency-Key": "k1"}, buffered=True).status_code == 201
    )
    key = key_of(capsys, "k1", "/orders")
    code, doc, _ = cli(capsys, "--store", url, "inspect", key, "--body")
    assert code == 0
    assert doc["status"] == "COMPLETED"
    assert doc["response"]["status"] == 201
    assert doc["response"]["body"] == '{"run": 1}'
    assert doc["ttl_left_s"] > 0
    code, doc, _ = cli(capsys, "--store", url, "list", "--prefix", "POST /ord")
    assert [r["key"] for r in doc] == [key]
    assert cli(capsys, "--store", url, "invalidate", key)[0] == 0
    assert cli(capsys, "--store", url, "inspect", key)[0] == 1
    assert (
        client.post("/orders", headers={"Idempotency-Key": "k1"}, buffered=True).status_code == 201
    )
    assert app.runs == 2  # executed again after the invalidation


def test_in_progress_is_refused_unless_forced(
    served: tuple[str, App, Client], capsys: pytest.CaptureFixture[str]
) -> None:
    url, app, client = served
    worker = threading.Thread(
        target=client.post,
        args=("/slow",),
        kwargs={"headers": {"Idempotency-Key": "s"}, "buffered": True},
    )
    worker.start()
    assert app.entered.wait(30)
    key = key_of(capsys, "s", "/slow")
    code, doc, _ = cli(capsys, "--store", url, "inspect", key)
    assert code == 0 and doc["status"] == "INPROGRESS" and doc["lease_left_s"] > 0
    code, _, err = cli(capsys, "--store", url, "invalidate", key)
    assert code == 1 and "in progress" in err and len(err.strip().splitlines()) == 1
    assert cli(capsys, "--store", url, "invalidate", key, "--force")[0] == 0
    app.release.set()
    worker.join(30)


def test_sql_stats_and_redis_refusal(
    served: tuple[str, App, Client], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, client = served
    client.post("/orders", headers={"Idempotency-Key": "k2"}, buffered=True)
    code, doc, err = cli(capsys, "--store", url, "stats")
    if url.startswith("redis"):
        assert code == 1 and "unsupported" in err
        assert cli(capsys, "--store", url, "purge-expired")[0] == 1
    else:
        assert code == 0 and doc == {"COMPLETED": 1}
        assert cli(capsys, "--store", url, "purge-expired")[1] == {"purged": 0}
    assert cli(capsys, "--store", url, "ping")[0] == 0


@pytest.mark.parametrize("url", ["ftp://x", "redis://127.0.0.1:1/0", "sqlite:///"])
def test_bad_or_unreachable_store_is_one_line_exit_2(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "--store", url, "ping")
    assert code == 2 and out is None
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_python_dash_m(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/x.db")  # the app's first use creates the file
    store.ping()
    getattr(store, "close", lambda: None)()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "idempotent_middleware",
            "--store",
            f"sqlite:///{tmp_path}/x.db",
            "stats",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {}


def test_ping_sync_and_async(store_url: str) -> None:
    import asyncio

    store = open_store(store_url)

    async def probe() -> None:
        await store.ping_async()
        if hasattr(store, "aclose"):
            await store.aclose()

    store.ping()
    asyncio.run(probe())
    getattr(store, "close", lambda: None)()


def test_ping_of_a_stopped_store_raises_the_store_error() -> None:
    from idempotent_middleware.exceptions import IdempotencyPersistenceLayerError

    with pytest.raises(IdempotencyPersistenceLayerError):
        open_store("redis://127.0.0.1:1/0").ping()
    with pytest.raises(IdempotencyPersistenceLayerError):
        open_store("postgresql://postgres@127.0.0.1:1/postgres").ping()


@pytest.mark.parametrize(
    ("target", "passes", "message"),
    [
        ("idempotent_middleware.persistence.memory:InMemoryPersistenceLayer", True, "passed"),
        ("tests.test_testing:Unfenced", False, "fencing broken"),
    ],
)
def test_conformance_command_runs_the_suite_on_a_factory(
    target: str, passes: bool, message: str
) -> None:
    """``conformance MODULE:FACTORY`` passes on our layer and names what a broken one broke."""
    done = subprocess.run(
        [sys.executable, "-m", "idempotent_middleware", "conformance", target],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert (done.returncode == 0) is passes, done.stdout + done.stderr
    assert message in done.stdout, done.stdout


def test_conformance_command_with_an_unknown_factory_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "idempotent_middleware", "conformance", "no_such_module:f"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
