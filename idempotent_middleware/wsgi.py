"""WSGI adapter: translates environ/start_response to the shared HTTP core and back.

PEP 3333 rules kept here: ``wsgi.input`` is replaced by the buffered body with a matching
``CONTENT_LENGTH``; ``start_response`` is wrapped (``exc_info`` handed on so the server can
re-raise, a capturing ``write()`` returned); a generator app may call ``start_response`` only
after its first item; the app iterable's ``close()`` is always called (as Werkzeug's
``ClosingIterator`` does). The sync Redis client is used directly: no event loop, no thread hop.
"""

from __future__ import annotations

import io
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any

from ._disabled import idempotency_disabled
from ._lease import sync_renewer
from ._steps import drive
from .config import IdempotencyConfig
from .http.capture import ResponseCapture
from .http.engine import INCOMPLETE, PASS, Execute, HttpIdempotency, Incomplete, Respond
from .http.request import HANDLED, HttpRequest
from .http.response import StoredResponse
from .persistence.base import BasePersistenceLayer

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIEnviron = dict[str, Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

#: How long close() may spend copying the rest of a body the client did not read.
_DRAIN_SECONDS = 5.0

_SPECIAL_HEADERS = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}


class IdempotencyMiddleware:
    """Run each keyed request once; replay the stored response to every retry."""

    def __init__(
        self,
        app: WSGIApp,
        persistence_store: BasePersistenceLayer | None = None,
        config: IdempotencyConfig | None = None,
    ) -> None:
        self.app = app
        self.engine = HttpIdempotency.for_middleware(persistence_store, config)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        if idempotency_disabled() or HANDLED in environ:
            return self.app(environ, start_response)
        engine = self.engine
        method = environ["REQUEST_METHOD"]
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        rule = engine.rule(method, path)
        if rule is None:
            return self.app(environ, start_response)
        request = HttpRequest(
            method,
            path,
            environ.get("QUERY_STRING", "").encode("latin-1"),
            _headers(environ),
            environ,
        )
        early = engine.precheck(request, rule)
        if early is PASS:
            return self.app(environ, start_response)
        environ[HANDLED] = True  # a nested layer of this middleware passes it through
        if isinstance(early, Respond):
            return _respond(start_response, early.response)
        if engine.content_length_too_large(request):
            return _respond(start_response, engine.too_large(request))
        body = _read_body(environ, engine.config.max_request_body_bytes)
        if body is INCOMPLETE:
            return _respond(start_response, engine.incomplete(request))
        if body is LENGTH_REQUIRED:
            return _respond(start_response, engine.length_required(request))
        if body is None:
            return _respond(start_response, engine.too_large(request))
        assert isinstance(body, bytes)
        request.body = body
        action = drive(engine.store, engine.begin(request, rule))
        if isinstance(action, Respond):
            return _respond(start_response, action.response)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        if not isinstance(action, Execute):
            return self.app(environ, start_response)
        return self._execute(action, environ, start_response)

    def _execute(
        self, action: Execute, environ: WSGIEnviron, start_response: StartResponse
    ) -> Iterable[bytes]:
        engine = self.engine
        capture = ResponseCapture(engine.config.max_response_body_bytes, engine.excluded)
        recorded = False

        def record(error: BaseException | None, finished: bool) -> None:
            """Record the outcome once: stored, not replayable, unknown, or released."""
            nonlocal recorded
            if recorded:
                return
            recorded = True
            outcome = capture.outcome(error, finished=finished)
            # As in the ASGI adapter: stop before a release, after a completion is written,
            # and leave a completion the store refused to the lease to retry.
            if engine.releases(outcome):
                renewal.stop()
                drive(engine.store, engine.finish(action, outcome))
                return
            renewal.closing = True
            pending = drive(engine.store, engine.finish(action, outcome))
            if pending is None:
                renewal.stop()
            else:
                renewal.finish_later(pending)

        def capturing_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            write = start_response(status, headers, exc_info)  # re-raises if already sent
            capture.start(
                int(status[:3]),
                [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
                status[4:],
            )

            def capturing_write(data: bytes) -> object:
                capture.add(data)
                if capture.has_declared_length:
                    record(None, finished=True)  # before the bytes completing Content-Length
                return write(data)

            return capturing_write

        try:
            renewal = sync_renewer.start(
                engine.store,
                action.claim,
                engine.config.lease_seconds,
                engine.config.max_lease_hold_seconds,
            )
        except BaseException:  # the app has not started: give the key back, never leak it
            drive(engine.store, engine.finish(action, None))
            raise
        try:
            iterable = self.app(environ, capturing_start_response)
        except BaseException as exc:
            # An Exception before start_response releases; anything else (after it, a
            # failed write(), KeyboardInterrupt, SystemExit) records the key as executed.
            record(exc, finished=False)
            raise
        result = _CapturingIterable(iterable, capture, record)
        # PEP 3333 makes the server call close(); an outer middleware that drops the iterable
        # without it must not keep the key renewed (answering 409) for the life of the process.
        weakref.finalize(result, renewal.abandoned, "response iterable dropped without close()")
        return result


class _CapturingIterable:
    """Streams the app's body through, copying it; records the outcome exactly once.

    The outcome is recorded before the last chunk when Content-Length tells which one it is,
    else as soon as the body is exhausted. If the app fails, it is recorded at once (see
    ``ResponseCapture.outcome``). If the server closes early (client gone), the rest of the
    body is drained into the copy first: the handler has run, so its response must be
    recorded rather than released.
    """

    def __init__(
        self,
        iterable: Iterable[bytes],
        capture: ResponseCapture,
        record: Callable[[BaseException | None, bool], None],
    ) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._capture = capture
        self._record = record
        self._failed = False

    def __iter__(self) -> Iterator[bytes]:
        iterator = self._iterator = iter(self._iterable)
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                break
            except BaseException as exc:
                self._fail(exc)
                raise
            self._capture.add(chunk)
            if self._capture.has_declared_length:
                # The last chunk by Content-Length: record before the server writes it,
                # so a client that has the whole response always gets it replayed.
                self._record(None, True)
            # A server that stops consuming (client gone) closes us here with GeneratorExit:
            # not the app's failure, and close() then drains and records.
            yield chunk
        self._record(None, True)  # the body is complete: record now, before close()

    def _fail(self, exc: BaseException) -> None:
        self._failed = True
        self._record(exc, False)

    def close(self) -> None:
        try:
            if not self._failed:
                self._drain()
        except BaseException as exc:
            # The app failed while we drained (KeyboardInterrupt included): never store the
            # part we copied as the whole response.
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            try:
                close = getattr(self._iterable, "close", None)
                if close is not None:
                    close()
            finally:
                self._record(None, True)

    def _drain(self) -> None:
        """Copy what the client did not read, bounded by the size cap and by time."""
        iterator = self._iterator if self._iterator is not None else iter(self._iterable)
        deadline = time.monotonic() + _DRAIN_SECONDS
        for chunk in iterator:
            self._capture.add(chunk)
            if self._capture.overflow:
                break
            if time.monotonic() > deadline:  # an endless stream: executed, not replayable
                self._capture.give_up()
                break


def _headers(environ: WSGIEnviron) -> list[tuple[bytes, bytes]]:
    headers = []
    for name, value in environ.items():
        if name.startswith("HTTP_"):
            key = name[5:].replace("_", "-").lower().encode("latin-1")
        elif name in _SPECIAL_HEADERS:
            key = _SPECIAL_HEADERS[name]
        else:
            continue
        headers.append((key, value.encode("latin-1")))
    return headers


class _LengthRequired:
    """A body the server does not delimit (chunked, no length, input not terminated)."""


LENGTH_REQUIRED = _LengthRequired()


def _read_body(environ: WSGIEnviron, cap: int) -> bytes | Incomplete | _LengthRequired | None:
    """The request body, None past ``cap`` bytes (413), INCOMPLETE when it is short or the
    read failed (a cut upload), LENGTH_REQUIRED when the server cannot deliver it."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    try:
        if length >= 0:
            body: bytes = stream.read(length) if length else b""
            # Fewer bytes than announced: the client left mid-body; never decide on a part.
            return body if len(body) == length else INCOMPLETE
        # No length: read to the end only where the server promises it ends (PEP 3333
        # errata); uWSGI, for one, hands over chunked bodies undecoded and unterminated.
        if environ.get("wsgi.input_terminated"):
            body = stream.read(cap + 1)
            return None if len(body) > cap else body
    except Exception:
        # uWSGI raises OSError, Werkzeug ClientDisconnected or BadRequest ("Invalid chunk
        # header") for a cut body: a 400, not a 500, and nothing claimed.
        return INCOMPLETE
    if environ.get("HTTP_TRANSFER_ENCODING", "").strip():
        # A body exists but we cannot read it: claiming on an empty fingerprint would let
        # two different bodies share the key (RFC 9112 section 6.3: no length, no
        # Transfer-Encoding is an empty body; with Transfer-Encoding it is not).
        return LENGTH_REQUIRED
    return b""


def _respond(start_response: StartResponse, response: StoredResponse) -> list[bytes]:
    reason = response.reason  # as the app sent it; None: the standard phrase
    if reason is None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
    start_response(
        f"{response.status} {reason}",
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers],
    )
    return [response.body]
