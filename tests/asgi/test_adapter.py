"""ASGI adapter rules (ASGI HTTP spec; Starlette's GZipMiddleware as the model)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from idempotent_middleware import IdempotencyMiddleware, InMemoryPersistenceLayer
from idempotent_middleware._steps import finishing_writes
from idempotent_middleware.persistence.base import STATUS_COMPLETED

Message = dict[str, Any]


def http_scope(key: bytes | None = b"k1", method: str = "POST") -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"idempotency-key", key))
    return {"type": "http", "method": method, "path": "/x", "query_string": b"", "headers": headers}


async def call(app: Any, scope: dict[str, Any], messages: list[Message]) -> list[Message]:
    inbox = list(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def body(payload: bytes = b"{}", more: bool = False) -> Message:
    return {"type": "http.request", "body": payload, "more_body": more}


def test_non_http_scopes_pass_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        await send({"type": f"{scope['type']}.marker"})

    middleware = IdempotencyMiddleware(app)

    async def main() -> None:
        for kind in ("websocket", "lifespan"):
            sent = await call(middleware, {"type": kind}, [])
            assert sent == [{"type": f"{kind}.marker"}]

    asyncio.run(main())
    assert seen == ["websocket", "lifespan"]


def test_after_the_buffered_body_the_real_receive_is_used() -> None:
    """Never invent http.disconnect: the app's second receive() reaches the server."""
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = IdempotencyMiddleware(app)
    server_messages = [body(b'{"a":', more=True), body(b"1}"), {"type": "server.marker"}]
    asyncio.run(call(middleware, http_scope(), server_messages))
    assert received[0] == body(b'{"a":1}')
    assert received[1] == {"type": "server.marker"}


def test_streams_chunk_by_chunk_and_records_before_the_last_chunk() -> None:
    store = InMemoryPersistenceLayer()
    observed: list[tuple[bytes, str | None]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        for part in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    middleware = IdempotencyMiddleware(app, persistence_store=store)

    async def main() -> None:
        async def send(message: Message) -> None:
            if message["type"] == "http.response.body":
                records = list(store._records.values())
                observed.append((message["body"], records[0].status if records else None))

        inbox = [body()]

        async def receive() -> Message:
            return inbox.pop()

        await middleware(http_scope(), receive, send)

    asyncio.run(main())
    assert [chunk for chunk, _ in observed] == [b"a", b"b", b"c", b""]
    assert [status for _, status in observed[:3]] == ["INPROGRESS"] * 3
    assert observed[3][1] == STATUS_COMPLETED


def test_pathsend_passes_through_and_is_not_replayed() -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "/etc/hostname"})

    middleware = IdempotencyMiddleware(app)

    async def main() -> tuple[list[Message], list[Message]]:
        first = await call(middleware, http_scope(), [body()])
        second = await call(middleware, http_scope(), [body()])
        return first, second

    first, second = asyncio.run(main())
    assert first[1] == {"type": "http.response.pathsend", "path": "/etc/hostname"}
    assert second[0]["status"] == 409
    assert b"not-replayable" in second[1]["body"]
    assert runs == [1]


def test_unkeyed_and_unconfigured_requests_are_not_buffered() -> None:
    """Pass-through requests see the server's own receive, message by message."""
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = IdempotencyMiddleware(app)
    asyncio.run(call(middleware, http_scope(key=None), [body(b"part", more=True)]))
    asyncio.run(call(middleware, http_scope(method="GET"), [body(b"get", more=True)]))
    assert received == [body(b"part", more=True), body(b"get", more=True)]


async def _answer(send: Any, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": payload})


def _problem_type(messages: list[Message]) -> str:
    return str(json.loads(messages[1]["body"])["type"])


@pytest.mark.parametrize("failure", [OSError, asyncio.CancelledError])
def test_item4_content_length_reached_before_the_empty_final_message_is_replayed(
    failure: type[BaseException],
) -> None:
    """Starlette's StreamingResponse (and a file whose size is a multiple of the chunk) sends
    every byte with more_body=True, then an empty last message: the client has the whole
    body before that message, so the record must be written at the Content-Length."""
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )
        await send({"type": "http.response.body", "body": b"hel", "more_body": True})
        await send({"type": "http.response.body", "body": b"lo", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    store = InMemoryPersistenceLayer()
    middleware = IdempotencyMiddleware(app, persistence_store=store)

    async def main() -> list[Message]:
        delivered: list[bytes] = []

        async def dying_send(message: Message) -> None:
            delivered.append(message.get("body", b""))
            if b"".join(delivered) == b"hello":
                raise failure()  # the client has every byte, then the worker is cancelled

        inbox = [body()]

        async def receive() -> Message:
            return inbox.pop()

        with contextlib.suppress(BaseException):
            await middleware(http_scope(), receive, dying_send)
        return await call(middleware, http_scope(), [body()])

    retry = asyncio.run(main())
    assert retry[0]["status"] == 200, retry
    assert retry[1]["body"] == b"hello"
    assert (b"idempotent-replayed", b"true") in retry[0]["headers"]
    assert runs == [1]


def _interrupted_then_retry(app: Any, first: Callable[[Any], Awaitable[None]]) -> list[Message]:
    middleware = IdempotencyMiddleware(app)

    async def main() -> list[Message]:
        await first(middleware)
        return await call(middleware, http_scope(), [body()])

    return asyncio.run(main())


def test_item11_cancelled_handler_is_recorded_as_interrupted_not_released() -> None:
    """Daphne cancels the app 10 s after its client left: the handler ran, never again."""
    runs: list[int] = []
    started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        if len(runs) > 1:
            await _answer(send, b"second run")
            return
        started.set()
        await asyncio.sleep(3600)

    async def first(middleware: Any) -> None:
        task = asyncio.ensure_future(call(middleware, http_scope(), [body()]))
        await started.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    retry = _interrupted_then_retry(app, first)
    assert retry[0]["status"] == 409
    assert _problem_type(retry).endswith("/idempotency-request-interrupted")
    assert (b"cache-control", b"no-store") in retry[0]["headers"]
    assert runs == [1]


def test_item11_returning_without_a_response_is_recorded_as_interrupted() -> None:
    """Django under ASGI returns without sending anything when the client disconnects."""
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        if len(runs) > 1:
            await _answer(send, b"second run")
            return
        assert (await receive())["type"] == "http.disconnect"

    async def first(middleware: Any) -> None:
        await call(middleware, http_scope(), [body(), {"type": "http.disconnect"}])

    retry = _interrupted_then_retry(app, first)
    assert retry[0]["status"] == 409, retry
    assert _problem_type(retry).endswith("/idempotency-request-interrupted")
    assert runs == [1]


class _Signal(BaseException):
    """What a signal handler may raise: not an Exception."""


@pytest.mark.parametrize("raised", [_Signal, "disconnect-then-error"])
def test_item11_base_exception_or_error_after_disconnect_is_not_released(raised: Any) -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        if len(runs) > 1:
            await _answer(send, b"second run")
            return
        if raised is _Signal:
            raise _Signal()
        await receive()  # the disconnect
        raise RuntimeError("client went away")  # e.g. Starlette's ClientDisconnect

    async def first(middleware: Any) -> None:
        with contextlib.suppress(BaseException):
            await call(middleware, http_scope(), [body(), {"type": "http.disconnect"}])

    retry = _interrupted_then_retry(app, first)
    assert retry[0]["status"] == 409, retry
    assert _problem_type(retry).endswith("/idempotency-request-interrupted")
    assert runs == [1]


def test_item11_application_error_before_the_response_still_releases() -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        if len(runs) == 1:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def first(middleware: Any) -> None:
        with pytest.raises(RuntimeError):
            await call(middleware, http_scope(), [body()])

    retry = _interrupted_then_retry(app, first)
    assert retry[0]["status"] == 201
    assert runs == [1, 1]


def test_item11_cancelled_while_recording_the_record_is_still_written() -> None:
    """A cancellation landing during the store write must not abandon it half-way."""
    writing = asyncio.Event()

    class SlowStore(InMemoryPersistenceLayer):
        async def _update_record_async(self, data_record: Any) -> None:
            writing.set()
            await asyncio.sleep(0.2)
            await super()._update_record_async(data_record)

    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    middleware = IdempotencyMiddleware(app, persistence_store=SlowStore())

    async def main() -> list[Message]:
        task = asyncio.ensure_future(call(middleware, http_scope(), [body()]))
        await writing.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pending = finishing_writes
        while pending:  # the write goes on by itself
            await asyncio.gather(*pending)
        await asyncio.sleep(0.3)  # the slow write's own duration
        return await call(middleware, http_scope(), [body()])

    retry = asyncio.run(main())
    assert retry[0]["status"] == 201, retry
    assert retry[1]["body"] == b"done"
    assert runs == [1]


def test_item24_receive_raising_mid_body_answers_400_and_claims_nothing() -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)

    store = InMemoryPersistenceLayer()
    middleware = IdempotencyMiddleware(app, persistence_store=store)
    inbox: list[Message] = [body(b'{"a":', more=True)]

    async def receive() -> Message:
        if inbox:
            return inbox.pop()
        raise OSError("connection reset while reading the body")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(http_scope(), receive, send))
    assert sent[0]["status"] == 400
    assert _problem_type(sent).endswith("/request-body-incomplete")
    assert runs == []
    assert not store._records


@pytest.mark.parametrize("status", [500, 503, 404])
def test_review_unstored_status_cut_mid_body_is_never_run_again(status: int) -> None:
    """A status the policy does not store, cut mid-body by a cancellation (Daphne cancels the
    app once its client left): executed, not replayable; never a second run (contract C3)."""
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise asyncio.CancelledError

    async def main() -> list[Message]:
        middleware = IdempotencyMiddleware(app, InMemoryPersistenceLayer())
        with pytest.raises(asyncio.CancelledError):
            await call(middleware, http_scope(), [body()])
        return await call(middleware, http_scope(), [body()])

    retry = asyncio.run(main())
    assert len(runs) == 1
    assert retry[0]["status"] == 409
    assert b"not-replayable" in retry[1]["body"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (b'{"amount": 12345678901234567890.5}', b'{"amount": 12345678901234567890.6}'),
        (b'{"amount": 1e400}', b'{"amount": 2e999}'),
        (b'{"amount": 0.1000000000000000055511151231257827}', b'{"amount": 0.1}'),
    ],
)
def test_review_numbers_that_round_alike_are_different_payloads(
    first: bytes, second: bytes
) -> None:
    """Parsed as floats these pairs are equal; an API that parses Decimals sees two amounts.
    The second request under the key must get 422, not the first one's replay."""
    runs: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"charged"})

    async def main() -> list[Message]:
        middleware = IdempotencyMiddleware(app, InMemoryPersistenceLayer())
        await call(middleware, http_scope(), [body(first)])
        return await call(middleware, http_scope(), [body(second)])

    retry = asyncio.run(main())
    assert retry[0]["status"] == 422
    assert runs == [first]


def test_review_key_order_and_spacing_still_replay() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"charged"})

    async def main() -> list[Message]:
        middleware = IdempotencyMiddleware(app, InMemoryPersistenceLayer())
        await call(middleware, http_scope(), [body(b'{"a": 1.50, "b": [1, 2.0]}')])
        return await call(middleware, http_scope(), [body(b'{ "b":[1,2.0],"a":1.50 }')])

    assert asyncio.run(main())[0]["status"] == 201


def test_review_tenant_with_lone_surrogates_is_not_a_500() -> None:
    """A scope hook that decodes a non-UTF-8 header with surrogateescape: still a key."""
    from idempotent_middleware import IdempotencyConfig

    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def tenant(request: Any) -> str:
        return bytes(request.header(b"x-tenant")).decode("utf-8", "surrogateescape")

    config = IdempotencyConfig(scope=tenant)
    scope = http_scope()
    scope["headers"].append((b"x-tenant", b"\xff"))

    async def main() -> list[Message]:
        middleware = IdempotencyMiddleware(app, InMemoryPersistenceLayer(), config)
        await call(middleware, scope, [body()])
        return await call(middleware, scope, [body()])

    assert asyncio.run(main())[0]["status"] == 201
    assert runs == [1]
