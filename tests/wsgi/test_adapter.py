"""WSGI adapter rules (PEP 3333; Werkzeug's run_wsgi_app and ClosingIterator as models)."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client, create_environ, run_wsgi_app

from idempotent_middleware import InMemoryPersistenceLayer, WSGIIdempotencyMiddleware


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
