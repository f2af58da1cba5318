"""The CLI against stores written by the middleware: options the app uses, files it opens,
records it cannot decode, and a forced invalidation."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from idempotent_middleware import IdempotencyConfig, WSGIIdempotencyMiddleware
from idempotent_middleware.cli import FORCED_NOTE, main
from idempotent_middleware.persistence.sqlite import SQLitePersistenceLayer

pytestmark = pytest.mark.timeout(60)


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"ok"]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def key_of(capsys: pytest.CaptureFixture[str], client_key: str, path: str) -> str:
    code, doc, _ = cli(capsys, "key", "--client-key", client_key, "--path", path)
    assert code == 0
    return str(doc["key"])


def test_inspect_a_redis_store_with_its_own_key_prefix(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``key_prefix`` is a documented layer option (two apps on one Redis); the CLI always
    opens the layer with the default prefix and has no option for it, so every record of
    such an app reads as absent ("no record", exit 1) and cannot be invalidated."""
    from idempotent_middleware.persistence.redis import RedisPersistenceLayer

    store = RedisPersistenceLayer(redis_url, key_prefix="shop:")
    client = Client(WSGIIdempotencyMiddleware(app, store))
    assert (
        client.post("/orders", headers={"Idempotency-Key": "p1"}, buffered=True).status_code == 201
    )
    key = key_of(capsys, "p1", "/orders")
    code, doc, err = cli(capsys, "--store", redis_url, "inspect", key, "--key-prefix", "shop:")
    assert code == 0, err
    assert doc["status"] == "COMPLETED"


def test_inspect_a_sqlite_store_with_its_own_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same for ``table=`` of the SQL layers: no CLI option reaches it."""
    path = tmp_path / "records.db"
    store = SQLitePersistenceLayer(path, table="shop_records")
    client = Client(WSGIIdempotencyMiddleware(app, store))
    assert (
        client.post("/orders", headers={"Idempotency-Key": "t1"}, buffered=True).status_code == 201
    )
    key = key_of(capsys, "t1", "/orders")
    code, doc, err = cli(
        capsys, "--store", f"sqlite:///{path}", "inspect", key, "--table", "shop_records"
    )
    assert code == 0, err
    assert doc["status"] == "COMPLETED"


def test_a_mistyped_sqlite_path_is_an_error_not_a_new_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``inspect`` on a path that holds no database answers "no record" (exit 1, as if the
    key were simply absent) and leaves a new empty database file behind: an operator with a
    typo believes the record is gone, and a read-only command wrote to disk."""
    missing = tmp_path / "typo.db"
    code, _, err = cli(capsys, "--store", f"sqlite:///{missing}", "inspect", "POST /x#00")
    assert not missing.exists(), "a read-only command created a database file"
    assert code == 2, err


def test_list_survives_one_undecodable_record(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``list`` GETs and decodes every key SCAN found: one undecodable value under the
    prefix (the very record an operator is hunting at 3 a.m.) makes the whole listing fail
    with a "store:" error (exit 2, the code of an unreachable store) and shows nothing."""
    import redis

    from idempotent_middleware.persistence.redis import RedisPersistenceLayer

    store = RedisPersistenceLayer(redis_url)
    client = Client(WSGIIdempotencyMiddleware(app, store))
    assert (
        client.post("/corrupt-list", headers={"Idempotency-Key": "c1"}, buffered=True).status_code
        == 201
    )
    raw = redis.Redis.from_url(redis_url)
    raw.set("idempotency:POST /corrupt-list#bad", b"not a record")
    raw.close()
    code, doc, err = cli(capsys, "--store", redis_url, "list", "--prefix", "POST /corrupt-list")
    assert code == 0, err
    assert key_of(capsys, "c1", "/corrupt-list") in [r["key"] for r in doc]
    assert {"POST /corrupt-list#bad": "CORRUPT"}.items() <= {
        r["key"]: r["status"] for r in doc
    }.items()
    assert main(["--store", redis_url, "list", "--prefix", "POST /corrupt-list#bad"]) == 0
    assert capsys.readouterr().out.startswith("POST /corrupt-list#bad  CORRUPT  ttl -  ")


def test_forced_invalidation_of_a_running_claim_says_its_holder_takes_it_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``invalidate --force`` of a claim whose handler still runs: by design (promise 1: a
    live handler keeps its key) its lease renewal takes the absent key back, and the handler
    stores its response under it. The CLI says so instead of implying the key is free."""
    path = tmp_path / "records.db"
    store = SQLitePersistenceLayer(path)
    entered, release = threading.Event(), threading.Event()

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        entered.set()
        release.wait(30)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = WSGIIdempotencyMiddleware(slow, store, IdempotencyConfig(lease_seconds=0.6))
    thread = threading.Thread(
        target=lambda: Client(middleware).post(
            "/slow", headers={"Idempotency-Key": "s1"}, buffered=True
        )
    )
    thread.start()
    try:
        assert entered.wait(10)
        key = key_of(capsys, "s1", "/slow")
        code, doc, err = cli(capsys, "--store", f"sqlite:///{path}", "invalidate", key, "--force")
        assert code == 0, err
        assert doc == {"invalidated": key, "was": "INPROGRESS", "note": FORCED_NOTE}
        assert "take the key back" in FORCED_NOTE
        threading.Event().wait(1.0)  # more than a renewal period
        code, doc, _ = cli(capsys, "--store", f"sqlite:///{path}", "inspect", key)
        assert (code, doc["status"]) == (0, "INPROGRESS"), "the live holder lost its key"
    finally:
        release.set()
        thread.join(30)
    code, doc, _ = cli(capsys, "--store", f"sqlite:///{path}", "inspect", key)
    assert (code, doc["status"]) == (0, "COMPLETED")


def test_forced_invalidation_frees_a_claim_whose_holder_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The case --force is for: nobody renews the claim, so after it the key is free and the
    next retry executes (the note is still shown: the CLI cannot tell a holder is gone)."""
    from idempotent_middleware._core import Claimed, plan_claim
    from idempotent_middleware._steps import drive

    path = tmp_path / "records.db"
    store = SQLitePersistenceLayer(path)
    key = key_of(capsys, "g1", "/gone")
    plan = plan_claim(store, key, "", lease_seconds=300.0, expires_after_seconds=600.0)
    assert isinstance(drive(store, plan), Claimed)  # a holder that then died
    code, doc, err = cli(capsys, "--store", f"sqlite:///{path}", "invalidate", key, "--force")
    assert (code, doc.get("was")) == (0, "INPROGRESS"), err
    client = Client(WSGIIdempotencyMiddleware(app, store))
    assert client.post("/gone", headers={"Idempotency-Key": "g1"}, buffered=True).status_code == 201


def test_a_mistyped_sqlite_table_is_an_error_not_a_new_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --table the database lacks is exit 2, and the CLI creates no such table."""
    import sqlite3

    path = tmp_path / "records.db"
    SQLitePersistenceLayer(path).ping()  # the app's table exists
    code, _, err = cli(capsys, "--store", f"sqlite:///{path}", "list", "--table", "typo")
    assert code == 2 and "typo" in err, err
    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "typo" not in tables
