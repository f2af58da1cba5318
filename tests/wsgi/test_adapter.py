"""WSGI adapter rules (PEP 3333; Werkzeug's run_wsgi_app and ClosingIterator as models)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.exceptions import BadRequest, ClientDisconnected
from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client, create_environ, run_wsgi_app

from idempotent_middleware import InMemoryPersistenceLayer, WSGIIdempotencyMiddleware
from idempotent_middleware.persistence.base import STATUS_COMPLETED


def keyed(key: str = "k1", body: bytes = b'{"a": 1}') -> dict[str, Any]:
    return create_environ(
        "/x",
        method="POST",
        data=body,
        content_type="application/json",
        headers={"Idempotency-Key": key},
    )


class ClosingBody:
    def __init__(self, chunks: list[bytes], closed: list[bool]) -> None:
        self.chunks = chunks
        self.closed = closed

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed.append(True)


def test_body_is_rebuffered_with_a_matching_content_length() -> None:
    seen: list[tuple[bytes, str]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = environ["CONTENT_LENGTH"]
        seen.append((environ["wsgi.input"].read(int(length)), length))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = LintMiddleware(WSGIIdempotencyMiddleware(LintMiddleware(app)))
    Client(middleware).post(
        "/x",
        data=b'{"a": 1}',
        content_type="application/json",
        headers={"Idempotency-Key": "k1"},
    ).close()
    assert seen == [(b'{"a": 1}', "8")]


def test_generator_app_with_late_start_response_and_write() -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        runs.append(1)
        write = start_response("201 Created", [("X-A", "1"), ("X-A", "2")])
        write(b"written-")
        yield b"yielded"

    middleware = WSGIIdempotencyMiddleware(app)
    first_iter, status, _headers = run_wsgi_app(middleware, keyed())
    first = b"".join(first_iter)
    second_iter, status2, headers2 = run_wsgi_app(middleware, keyed())
    second = b"".join(second_iter)
    assert first == second == b"written-yielded"
    assert status == status2 == "201 Created"
    assert headers2.getlist("X-A") == ["1", "2"]
    assert headers2["Idempotent-Replayed"] == "true"
    assert headers2["Content-Length"] == str(len(second))
    assert runs == [1]


def test_close_is_always_called_and_early_close_still_records() -> None:
    closed: list[bool] = []
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> ClosingBody:
        runs.append(1)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingBody([b"one", b"two"], closed)

    middleware = WSGIIdempotencyMiddleware(app)
    iterable = middleware(keyed(), lambda status, headers, exc_info=None: None)
    iterator = iter(iterable)
    assert next(iterator) == b"one"
    iterable.close()  # type: ignore[attr-defined]  # the client went away mid-body
    assert closed == [True]
    replay, _status, _ = run_wsgi_app(middleware, keyed())
    assert b"".join(replay) == b"onetwo"
    assert runs == [1]


def test_exc_info_is_handed_to_the_server() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"error page"]

    calls: list[Any] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        calls.append(exc_info)
        return lambda data: None

    middleware = WSGIIdempotencyMiddleware(app, persistence_store=InMemoryPersistenceLayer())
    body = b"".join(middleware(keyed(), start_response))
    assert body == b"error page"
    assert calls[0] is not None
    assert calls[0][0] is ValueError


def test_app_raising_releases_the_key() -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        raise RuntimeError("boom")

    middleware = WSGIIdempotencyMiddleware(app)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            middleware(keyed(), lambda *a: None)
    assert runs == [1, 1]


def test_chunked_request_without_length_is_read_when_terminated() -> None:
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return [b""]

    environ = keyed()
    environ.pop("CONTENT_LENGTH")
    environ["wsgi.input"] = io.BytesIO(b'{"a": 1}')
    environ["wsgi.input_terminated"] = True
    list(WSGIIdempotencyMiddleware(app)(environ, lambda *a: None))
    assert seen == [b'{"a": 1}']


def _problem_type(body: bytes) -> str:
    return str(json.loads(body)["type"])


def _second_run_answers(runs: list[int], start_response: Any) -> list[bytes] | None:
    """A second execution answers 200 so the test fails on its assertion, not by hanging."""
    if len(runs) > 1:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"second run"]
    return None


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
def test_item11_base_exception_from_the_app_is_recorded_not_released(
    raised: type[BaseException],
) -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        second = _second_run_answers(runs, start_response)
        if second is not None:
            return second
        raise raised()

    middleware = WSGIIdempotencyMiddleware(app)
    with pytest.raises(raised):
        middleware(keyed(), lambda *a: None)
    replay, status, headers = run_wsgi_app(middleware, keyed())
    body = b"".join(replay)
    assert status.startswith("409"), body
    assert _problem_type(body).endswith("/idempotency-request-interrupted")
    assert headers["Cache-Control"] == "no-store"
    assert runs == [1]


def test_item11_signal_in_the_iterable_is_recorded_not_released() -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        runs.append(1)
        second = _second_run_answers(runs, start_response)
        if second is not None:
            yield from second
            return
        raise KeyboardInterrupt  # before start_response, from inside the generator
        yield b""  # pragma: no cover

    middleware = WSGIIdempotencyMiddleware(app)
    with pytest.raises(KeyboardInterrupt):
        run_wsgi_app(middleware, keyed())
    replay, status, _ = run_wsgi_app(middleware, keyed())
    body = b"".join(replay)
    assert status.startswith("409"), body
    assert _problem_type(body).endswith("/idempotency-request-interrupted")
    assert runs == [1]


def test_item11_returning_without_start_response_is_recorded_not_released() -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        return _second_run_answers(runs, start_response) or []

    middleware = WSGIIdempotencyMiddleware(app)
    list(middleware(keyed(), lambda *a: None))
    replay, status, _ = run_wsgi_app(middleware, keyed())
    assert status.startswith("409"), b"".join(replay)
    assert runs == [1]


def test_item11_write_raising_after_start_response_is_not_released() -> None:
    """The legacy write() callable fails because the client left: the handler ran."""
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        second = _second_run_answers(runs, start_response)
        if second is not None:
            return second
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"part one")
        return [b"part two"]

    def broken_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        def write(data: bytes) -> None:
            raise OSError("client gone")

        return write

    middleware = WSGIIdempotencyMiddleware(app)
    with pytest.raises(OSError):
        middleware(keyed(), broken_start_response)
    replay, status, _ = run_wsgi_app(middleware, keyed())
    body = b"".join(replay)
    assert status.startswith("409"), body
    assert runs == [1]


def test_item11_generator_closed_early_never_stores_a_truncated_body() -> None:
    """The server closes early (client gone): a generator body is closed, never drained (its
    next chunk may never come, R11), so what would come next (here an interrupt) never runs,
    and the part copied so far is never replayed as the whole response."""
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        runs.append(1)
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one"
        raise KeyboardInterrupt

    middleware = WSGIIdempotencyMiddleware(app)
    iterable = middleware(keyed(), lambda status, headers, exc_info=None: None)
    assert next(iter(iterable)) == b"one"
    iterable.close()  # type: ignore[attr-defined]
    replay, status, _ = run_wsgi_app(middleware, keyed())
    body = b"".join(replay)
    assert body != b"one"
    assert status.startswith("409"), body
    assert _problem_type(body).endswith("/idempotency-response-not-replayable")
    assert runs == [1]


def test_item11_write_completing_content_length_records_before_the_bytes_go_out() -> None:
    store = InMemoryPersistenceLayer()
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("201 Created", [("Content-Length", "4")])
        write(b"done")
        return []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        def write(data: bytes) -> None:
            seen.extend(record.status for record in store._records.values())

        return write

    middleware = WSGIIdempotencyMiddleware(app, persistence_store=store)
    list(middleware(keyed(), start_response))
    assert seen == [STATUS_COMPLETED]


def test_item11_exception_before_start_response_still_releases() -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("validation failed")
        start_response("201 Created", [])
        yield b"ok"

    middleware = WSGIIdempotencyMiddleware(app)
    with pytest.raises(ValueError):
        run_wsgi_app(middleware, keyed())
    replay, status, _ = run_wsgi_app(middleware, keyed())
    assert status == "201 Created"
    assert b"".join(replay) == b"ok"
    assert runs == [1, 1]


def _chunked_environ(body: bytes) -> dict[str, Any]:
    """What uWSGI hands over for a chunked upload: no length, input not terminated."""
    environ = keyed(body=body)
    environ.pop("CONTENT_LENGTH")
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input"] = io.BytesIO(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    environ.pop("wsgi.input_terminated", None)
    return environ


def test_item23_undelimited_chunked_body_gets_411_and_is_not_claimed() -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [])
        return [b"ok"]

    store = InMemoryPersistenceLayer()
    middleware = WSGIIdempotencyMiddleware(app, persistence_store=store)
    statuses = []
    for payload in (b'{"amount": 1}', b'{"amount": 1000}'):
        reply, status, headers = run_wsgi_app(middleware, _chunked_environ(payload))
        statuses.append(status)
        body = b"".join(reply)
        assert _problem_type(body).endswith("/request-length-required")
        assert headers["Cache-Control"] == "no-store"
    assert [s[:3] for s in statuses] == ["411", "411"]
    assert runs == []
    assert not store._records


def test_item23_no_length_and_no_transfer_encoding_is_an_empty_body() -> None:
    """RFC 9112 section 6.3: neither header means no body; that request is served."""
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["wsgi.input"].read())
        start_response("201 Created", [])
        return [b"ok"]

    environ = keyed(body=b"")
    environ.pop("CONTENT_LENGTH", None)
    environ.pop("wsgi.input_terminated", None)
    _, status, _ = run_wsgi_app(WSGIIdempotencyMiddleware(app), environ)
    assert status == "201 Created"
    assert seen == [b""]


class _CutInput:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def read(self, size: int = -1) -> bytes:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [OSError("uwsgi: unable to receive"), ClientDisconnected(), BadRequest("Invalid chunk header")],
)
def test_item24_body_read_raising_answers_400_and_claims_nothing(error: Exception) -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [])
        return [b"ok"]

    store = InMemoryPersistenceLayer()
    middleware = WSGIIdempotencyMiddleware(app, persistence_store=store)
    environ = keyed()
    environ["wsgi.input"] = _CutInput(error)
    reply, status, headers = run_wsgi_app(middleware, environ)
    assert status.startswith("400"), status
    assert headers["Cache-Control"] == "no-store"
    assert _problem_type(b"".join(reply)).endswith("/request-body-incomplete")
    assert runs == []
    assert not store._records


@pytest.mark.parametrize("status_line", ["201 Order Accepted", "299 Custom", "200 OK"])
def test_item25_replay_keeps_the_reason_phrase_as_sent(status_line: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status_line, [("Content-Type", "text/plain")])
        return [b"accepted"]

    middleware = LintMiddleware(WSGIIdempotencyMiddleware(LintMiddleware(app)))
    first, status, _ = run_wsgi_app(middleware, keyed())
    assert b"".join(first) == b"accepted"
    first.close()  # type: ignore[attr-defined]
    replay, replay_status, headers = run_wsgi_app(middleware, keyed())
    assert b"".join(replay) == b"accepted"
    replay.close()  # type: ignore[attr-defined]
    assert headers["Idempotent-Replayed"] == "true"
    assert replay_status == status == status_line


def test_item25_response_stored_by_asgi_replays_through_wsgi_with_the_standard_phrase() -> None:
    import asyncio

    from idempotent_middleware import IdempotencyMiddleware

    store = InMemoryPersistenceLayer()

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"idempotency-key", b"k1")],
    }
    messages = [{"type": "http.request", "body": b'{"a": 1}', "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop()

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(IdempotencyMiddleware(asgi_app, persistence_store=store)(scope, receive, send))

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise AssertionError("must replay")

    replay, status, _ = run_wsgi_app(
        WSGIIdempotencyMiddleware(wsgi_app, persistence_store=store), keyed()
    )
    assert status == "201 Created"
    assert b"".join(replay) == b"made"


class _Interrupted(BaseException):
    """Stands for KeyboardInterrupt or a signal handler's exception (pytest treats a real
    KeyboardInterrupt as the user stopping the run)."""


@pytest.mark.parametrize("status", ["503 Service Unavailable", "404 Not Found", "429 Too Many"])
def test_review_unstored_status_cut_mid_body_is_never_run_again(status: str) -> None:
    """A status the policy does not store (5xx, 404, 429 ...) whose body was cut by an
    interruption: the handler ran and sent part of its answer, so the key is recorded as
    executed (not replayable), never released for a second run (contract C3)."""
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        runs.append(1)
        start_response(status, [("Content-Type", "text/plain")])
        yield b"partial side effect done"
        raise _Interrupted

    middleware = WSGIIdempotencyMiddleware(app, persistence_store=InMemoryPersistenceLayer())
    with pytest.raises(_Interrupted):
        run_wsgi_app(middleware, keyed(), buffered=True)
    app_iter, retry_status, _ = run_wsgi_app(middleware, keyed(), buffered=True)
    assert len(runs) == 1
    assert retry_status.startswith("409")
    assert b"not-replayable" in b"".join(app_iter)
