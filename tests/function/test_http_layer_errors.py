"""What the Powertools additions may raise inside the HTTP middlewares is answered with a
problem, never a 500: an unknown status from a user's layer (503), a key expression that
decompresses client data past its bound (400, with memory bounded)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import tracemalloc
from typing import Any

import pytest

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from idempotent_middleware.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyOwnershipError,
)
from idempotent_middleware.persistence.base import DataRecord


class DictLayer(BasePersistenceLayer):
    """What a user porting a Powertools layer writes: fields in a dict, status as a string."""

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, dict[str, Any]] = {}

    def _get_record(self, idempotency_key: str) -> DataRecord:
        item = self.items.get(idempotency_key)
        if item is None:
            raise IdempotencyItemNotFoundError(idempotency_key)
        return DataRecord(idempotency_key=idempotency_key, **item)

    def _put_record(self, data_record: DataRecord) -> None:
        if data_record.idempotency_key in self.items:
            raise IdempotencyItemAlreadyExistsError()  # the seed's bare form: the core reads
        self._update_record(data_record)

    def _update_record(self, data_record: DataRecord) -> None:
        self.items[data_record.idempotency_key] = {
            "status": data_record.status,
            "expiry_timestamp": data_record.expiry_timestamp,
            "in_progress_expiry_timestamp": data_record.in_progress_expiry_timestamp,
            "response_data": data_record.response_data,
            "payload_hash": data_record.payload_hash,
            "owner": data_record.owner,
        }

    def _delete_record(self, data_record: DataRecord) -> None:
        self.items.pop(data_record.idempotency_key, None)

    def _renew_lease(self, data_record: DataRecord) -> None:
        if self.items.get(data_record.idempotency_key, {}).get("owner") != data_record.owner:
            raise IdempotencyOwnershipError(data_record.idempotency_key)
        self._update_record(data_record)


async def _asgi_call(app: Any, body: bytes) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/orders",
        "query_string": b"",
        "headers": [
            (b"idempotency-key", b"k1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


def _wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    environ["wsgi.input"].read()
    start_response("201 Created", [("Content-Type", "application/json")])
    return [b'{"ok":true}']


def _wsgi_call(app: Any, body: bytes) -> str:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/orders",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_IDEMPOTENCY_KEY": "k1",
        "wsgi.input": io.BytesIO(body),
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda _: None

    out = app(environ, start_response)
    b"".join(out)
    if hasattr(out, "close"):
        out.close()
    return statuses[0]


def test_asgi_unknown_status_from_a_layer_is_a_503_problem() -> None:
    layer = DictLayer()
    app = IdempotencyMiddleware(_asgi_app, persistence_store=layer)
    assert asyncio.run(_asgi_call(app, b"{}"))[0]["status"] == 201
    (key,) = layer.items
    layer.items[key]["status"] = "EXPIRED"  # a foreign writer / Powertools' third state
    sent = asyncio.run(_asgi_call(app, b"{}"))
    assert sent[0]["status"] == 503
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]


def test_wsgi_unknown_status_from_a_layer_is_a_503_problem() -> None:
    layer = DictLayer()
    app = WSGIIdempotencyMiddleware(_wsgi_app, persistence_store=layer)
    assert _wsgi_call(app, b"{}").startswith("201")
    (key,) = layer.items
    layer.items[key]["status"] = "EXPIRED"
    assert _wsgi_call(app, b"{}").startswith("503")


def _gzip_bomb() -> bytes:
    blob = base64.b64encode(gzip.compress(b"\0" * (64 * 1024 * 1024), 9))
    return b'{"blob":"' + blob + b'"}'


def test_asgi_gzip_key_expression_is_bounded_and_a_400() -> None:
    body = _gzip_bomb()
    assert len(body) < 100_000
    config = IdempotencyConfig(
        event_key_jmespath="powertools_base64_gzip(body.blob)", max_request_body_bytes=128 * 1024
    )
    app = IdempotencyMiddleware(
        _asgi_app, persistence_store=InMemoryPersistenceLayer(), config=config
    )
    tracemalloc.start()
    try:
        sent = asyncio.run(_asgi_call(app, body))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sent[0]["status"] == 400
    assert peak < 16 * len(body)


def test_wsgi_gzip_key_expression_is_a_400() -> None:
    config = IdempotencyConfig(event_key_jmespath="powertools_base64_gzip(body.blob)")
    app = WSGIIdempotencyMiddleware(
        _wsgi_app, persistence_store=InMemoryPersistenceLayer(), config=config
    )
    assert _wsgi_call(app, _gzip_bomb()).startswith("400")


def test_a_function_key_past_the_gzip_bound_is_typed() -> None:
    from idempotent_middleware import IdempotencyKeyTooLargeError, idempotent_function

    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="event",
        persistence_store=InMemoryPersistenceLayer(),
        config=IdempotencyConfig(event_key_jmespath="powertools_base64_gzip(blob)"),
    )
    def handle(event: dict[str, Any]) -> int:
        runs.append(1)
        return 1

    blob = base64.b64encode(gzip.compress(b"\0" * (2 * 1024 * 1024))).decode()
    with pytest.raises(IdempotencyKeyTooLargeError):
        handle(event={"blob": blob})
    small = base64.b64encode(gzip.compress(b"a") + gzip.compress(b"b")).decode()
    assert handle(event={"blob": small}) == 1  # concatenated members, as gzip.decompress
    assert runs == [1]
