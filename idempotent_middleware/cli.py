"""``idempotent-middleware``: the operator's command line (stdlib ``argparse`` only).

Look at a key's record, invalidate it, list, count, purge and check a store. Exit codes:
0 ok, 1 not found or refused, 2 usage or connection error. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from ._error_base import IdempotencyError, IdempotencyPersistenceLayerError
from .config import IdempotencyConfig
from .exceptions import IdempotencyAlreadyInProgressError
from .persistence.base import STATUS_INPROGRESS, BasePersistenceLayer, KeyScheme

_BODY_SHOWN = 4096

#: What ``invalidate --force`` of an in-progress record tells the operator.
FORCED_NOTE = (
    "a live holder will take the key back at its next renewal (its handler keeps running and "
    "stores its response); --force frees keys whose holder is gone"
)


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def open_store(
    url: str,
    *,
    key_prefix: str | None = None,
    table: str | None = None,
    schema: str | None = None,
) -> BasePersistenceLayer:
    """The persistence layer a store URL names, with the app's own ``key_prefix`` (Redis),
    ``table`` (SQL) or ``schema`` (PostgreSQL) when it set one (else the layer defaults)."""
    scheme = urlsplit(url).scheme.lower()
    redis = scheme in ("redis", "rediss", "unix")
    sqlite = scheme == "sqlite"
    for given, option, fits in (
        (key_prefix, "--key-prefix", redis),
        (table, "--table", not redis),
        (schema, "--schema", scheme in ("postgresql", "postgres")),
    ):
        if given is not None and not fits:
            raise _Exit(2, f"{option} does not apply to a {scheme or 'schemeless'}:// store")
    if redis:
        from .persistence.redis import RedisPersistenceLayer

        if key_prefix is None:
            return RedisPersistenceLayer(url)
        return RedisPersistenceLayer(url, key_prefix=key_prefix)
    sql: dict[str, Any] = {} if table is None else {"table": table}
    if scheme in ("postgresql", "postgres"):
        from .persistence.postgres import PostgresPersistenceLayer

        return PostgresPersistenceLayer(url, schema=schema, **sql)
    if sqlite and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        from .persistence.sqlite import SQLitePersistenceLayer

        return SQLitePersistenceLayer(url[len("sqlite:///") :], **sql)
    raise _Exit(
        2,
        f"unsupported store URL {redact(url)!r}: use redis://, rediss://, unix://, "
        "postgresql://, postgres://, sqlite:///relative/path or sqlite:////absolute/path",
    )


def redact(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***`` (errors reach logs)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return parts._replace(netloc=f"{name}:***@{host}").geturl()


def _secrets(url: str | None) -> list[str]:
    """The password of ``url`` as written and decoded, to blank out of any error line."""
    try:
        password = urlsplit(url).password if url else None
    except ValueError:
        return []
    return [] if not password else sorted({password, unquote(password)}, key=len, reverse=True)


def storage_key_for(
    client_key: str,
    method: str,
    path: str,
    tenant: str | None,
    header_name: str,
    hash_function: str = "sha256",
) -> str:
    """The storage key the middleware uses for this request (as ``HttpEngine.begin``).

    ``path`` is the path as the client sent it (``/orders/caf%C3%A9`` or ``/orders/café``,
    percent-escapes and non-ASCII text taken as their UTF-8 bytes); the middlewares key the
    decoded bytes as latin-1 text, as WSGI's PATH_INFO is (PEP 3333)."""
    from .http.keys import parse_key, storage_key
    from .http.request import normalise_method

    try:
        config = IdempotencyConfig(header_name=header_name, hash_function=hash_function)
    except ValueError as exc:
        raise _Exit(2, str(exc)) from exc
    scheme = KeyScheme.build(config, "", f'headers."{header_name.lower()}"')
    # The bytes a client would send (argv's undecodable bytes come back as they were), checked
    # as the middleware checks them: a key it answers 400 to names no record.
    try:
        sent = client_key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        sent = b"\xff"  # a lone surrogate: no client can send it
    key = parse_key(sent)
    if key is None:
        raise _Exit(
            2,
            f"the middleware answers 400 to the key {client_key!r}: it must be 1 to 255 "
            "printable ASCII characters (optionally an RFC 8941 quoted string)",
        )
    material = key if tenant is None else tenant.encode("utf-8", "surrogatepass") + b"\x00" + key
    as_served = unquote_to_bytes(path.encode("utf-8", "surrogateescape")).decode("latin-1")
    digest = scheme.generate_hash(material)
    return storage_key(scheme, normalise_method(method), as_served, digest)


def flask_tenant(namespace: str, tenant: str | None) -> str:
    """The tenant the Flask extension hashes (``flask.namespaced``): its namespace,
    length-prefixed, then the scope's tenant (``user:<id>`` with Flask-Login) if any."""
    prefix = f"app:{len(namespace)}:{namespace}"
    return prefix if tenant is None else f"{prefix}:{tenant}"


def _require_sqlite_table(path: str, table: str) -> None:
    """Refuse a path that holds no database with that table (a typo): opened as the layer
    opens files, it would create an empty database that answers "no record" for every key.
    Opened read-write only (``mode=rw``), never created; the layer then opens it."""
    import sqlite3
    from pathlib import Path

    uri = f"{Path(os.path.abspath(path)).as_uri()}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _Exit(2, f"store: cannot open the SQLite database {path!r}: {exc}") from exc
    if found is None:
        raise _Exit(2, f"store: {path!r} has no table {table!r} (see --table)")


def _left(at: float | None) -> float | None:
    return None if at is None else round(at - time.time(), 3)


def _summary(record: dict[str, Any], body: bool) -> dict[str, Any]:
    from .http.response import StoredResponse

    out = {k: v for k, v in record.items() if k != "response"}
    out["lease_left_s"] = _left(record["lease_expires_at"])
    out["ttl_left_s"] = _left(record["expires_at"])
    raw = record["response"]
    if raw is not None:
        try:
            stored = StoredResponse.decode(raw)
        except Exception:
            out["response"] = {"raw_bytes": len(raw)}
        else:
            shown: dict[str, Any] = {
                "status": stored.status,
                "headers": [
                    [bytes(n).decode("latin-1"), bytes(v).decode("latin-1")]
                    for n, v in stored.headers
                ],
                "body_bytes": len(stored.body),
                "complete": stored.complete,
            }
            if body:
                shown["body"] = stored.body[:_BODY_SHOWN].decode("utf-8", "replace")
                shown["body_truncated"] = len(stored.body) > _BODY_SHOWN
            out["response"] = shown
    return out


def _text(value: Any, indent: str = "") -> str:
    if isinstance(value, dict):
        return "\n".join(
            f"{indent}{k}:\n{_text(v, indent + '  ')}"
            if isinstance(v, dict)
            else f"{indent}{k}: {v}"
            for k, v in value.items()
        )
    return f"{indent}{value}"


def _run(args: argparse.Namespace) -> tuple[int, Any]:
    if args.command == "key":
        if args.flask_app:
            args.tenant = flask_tenant(args.flask_app, args.tenant)
        return 0, {
            "key": storage_key_for(
                args.client_key,
                args.method,
                args.path,
                args.tenant,
                args.header_name,
                args.hash_function,
            )
        }
    if args.command == "conformance":
        module_name, _, attr = args.target.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr or "factory")
            from .testing import run_conformance  # type: ignore[import-not-found, unused-ignore]
        except Exception as exc:
            raise _Exit(2, f"cannot load {args.target}: {type(exc).__name__}: {exc}") from exc
        # With --json, stdout carries the one JSON document; pytest's report goes to stderr.
        report = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
        with report:
            code = int(run_conformance(factory, verbose=args.verbose))
        return code, {"conformance": args.target, "exit": code}
    if not args.store:
        raise _Exit(2, "--store URL is required for this command")
    store = open_store(args.store, key_prefix=args.key_prefix, table=args.table, schema=args.schema)
    from .persistence.sqlite import SQLitePersistenceLayer

    try:
        if isinstance(store, SQLitePersistenceLayer):
            _require_sqlite_table(store.path, store.table)
        return _on_store(store, args)
    finally:
        with contextlib.suppress(Exception):
            getattr(store, "close", lambda: None)()


def _on_store(store: Any, args: argparse.Namespace) -> tuple[int, Any]:
    sql = hasattr(store, "purge_expired")
    if args.command == "ping":
        store.ping()
        return 0, {"ok": True}
    if args.command == "inspect":
        record = store.inspect_record(args.key)
        if record is None:
            raise _Exit(1, f"no record under {args.key!r}")
        return 0, _summary(record, args.body)
    if args.command == "invalidate":
        before = store.inspect_record(args.key) if args.force else None
        try:
            gone = store.invalidate_record(args.key, force=args.force)
        except IdempotencyAlreadyInProgressError as exc:
            raise _Exit(1, f"refused: {exc}") from exc
        if not gone:
            raise _Exit(1, f"no record under {args.key!r}")
        done: dict[str, Any] = {"invalidated": args.key}
        if before is not None and before["status"] == STATUS_INPROGRESS:
            # By design (promise 1): a handler still running must keep its key, so its lease
            # renewal takes an absent key back. --force is for claims nobody holds any more.
            done["was"] = STATUS_INPROGRESS
            done["note"] = FORCED_NOTE
        return 0, done
    if args.command == "list":
        records = store.list_records(args.prefix, args.limit)
        return 0, [
            {"key": r["key"], "status": r["status"], "ttl_left_s": _left(r["expires_at"])}
            | ({"error": r["error"]} if "error" in r else {})
            for r in records
        ]
    if args.command == "stats":
        if not sql:
            raise _Exit(1, "stats is unsupported on Redis (counting would scan every key)")
        return 0, store.record_counts()
    if args.command == "purge-expired":
        if not sql:
            raise _Exit(1, "purge-expired is not needed on Redis: key TTLs remove records")
        return 0, {"purged": store.purge_expired()}
    raise _Exit(2, f"unknown command {args.command!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idempotent-middleware", description=__doc__)
    parser.add_argument(
        "--store",
        help="redis://, rediss://, unix://, postgresql://, sqlite:///relative/path, "
        "sqlite:////absolute/path",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    # The layer options the app passed, before or after the command (as --json).
    for where, default in ((parser, None), (common, argparse.SUPPRESS)):
        where.add_argument(
            "--key-prefix", default=default, help="Redis: the app's key_prefix (idempotency:)"
        )
        where.add_argument(
            "--table", default=default, help="SQL: the app's table (idempotency_records)"
        )
        where.add_argument("--schema", default=default, help="PostgreSQL: the app's schema")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        # --json after the command too; SUPPRESS keeps a --json given before it.
        return sub.add_parser(name, help=text, parents=[common])

    key = command("key", "the storage key of a request")
    key.add_argument("--client-key", required=True)
    key.add_argument("--method", default="POST")
    key.add_argument("--path", required=True)
    key.add_argument("--tenant", help="what the app's scope hook returned, if it has one")
    key.add_argument(
        "--flask-app",
        metavar="NAMESPACE",
        help="the Flask app's import_name (or its IDEMPOTENCY_NAMESPACE if set)",
    )
    key.add_argument("--header-name", default="Idempotency-Key")
    key.add_argument("--hash-function", default="sha256", help="the app's hash_function")
    command("ping", "check the store answers")
    inspect = command("inspect", "show one record")
    inspect.add_argument("key")
    inspect.add_argument("--body", action="store_true", help=f"show the body (<= {_BODY_SHOWN} B)")
    invalidate = command("invalidate", "delete a completed record")
    invalidate.add_argument("key")
    invalidate.add_argument(
        "--force",
        action="store_true",
        help="even an in-progress one (a holder still running takes it back)",
    )
    listing = command("list", "list records")
    listing.add_argument("--prefix", default="")
    listing.add_argument("--limit", type=int, default=100)
    command("stats", "records by status (SQL stores)")
    command("purge-expired", "delete expired rows (SQL stores)")
    conformance = command("conformance", "run the store conformance suite")
    conformance.add_argument("target", metavar="MODULE:FACTORY")
    conformance.add_argument("--verbose", action="store_true")
    return parser


def _line(listed: dict[str, Any]) -> str:
    ttl = listed["ttl_left_s"]
    line = f"{listed['key']}  {listed['status']}  ttl {'-' if ttl is None else f'{ttl}s'}"
    return f"{line}  {listed['error']}" if "error" in listed else line


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "limit", 1) < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    secrets = _secrets(getattr(args, "store", None))

    def error(line: str) -> None:
        for secret in secrets:  # a driver's message may quote the URL or DSN it was given
            line = line.replace(secret, "***")
        line = " ".join(part.strip() for part in line.splitlines())  # libpq's are multi-line
        print(f"error: {line}", file=sys.stderr)

    try:
        code, result = _run(args)
    except _Exit as exc:
        error(str(exc))
        return exc.code
    except (IdempotencyPersistenceLayerError, OSError, ImportError, TypeError, ValueError) as exc:
        error(f"store: {type(exc).__name__}: {exc}")
        return 2
    except IdempotencyError as exc:
        error(f"{type(exc).__name__}: {exc}")
        return 1
    if args.json:
        print(json.dumps(result, default=str))
    elif isinstance(result, list):
        print("\n".join(_line(r) for r in result))
    else:
        print(_text(result))
    return code


__all__ = ["main", "open_store", "storage_key_for"]
