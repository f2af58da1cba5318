"""ASGI adapter: translates scope/receive/send to the shared HTTP core and back.

Shaped after Starlette's ``GZipMiddleware``: pure ASGI (no ``BaseHTTPMiddleware``), non-HTTP
scopes pass straight through, all per-request state lives inside ``__call__``. Rules from the
ASGI HTTP spec: the app sends ``http.response.start`` once and we forward it once; after the
buffered body, ``receive`` is the server's own (we never invent ``http.disconnect``); bodies
stream to the client chunk by chunk while a bounded copy is kept; extension messages such as
``http.response.pathsend`` pass through and make the response not replayable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from ._disabled import idempotency_disabled
from ._steps import drive_async
from .config import IdempotencyConfig
from .http.engine import INCOMPLETE, PASS, Execute, HttpIdempotency, Incomplete, Respond
from .http.execution import AsyncExecution
from .http.request import HANDLED, HttpRequest
from .http.response import StoredResponse
from .http.routes import Rule
from .persistence.base import BasePersistenceLayer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Set by an integration once the endpoint returned: an exception after that (a framework's
#: response validation, a dependency teardown) leaves the key executed, never released.
RETURNED = "idempotent_middleware.returned"


class IdempotencyMiddleware:
    """Run each keyed request once; replay the stored response to every retry."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        persistence_store: BasePersistenceLayer | None = None,
        config: IdempotencyConfig | None = None,
    ) -> None:
        self.app = app
        self.engine = HttpIdempotency.for_middleware(persistence_store, config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or HANDLED in scope:
            await self.app(scope, receive, send)
            return
        engine = self.engine
        rule = engine.rule(scope["method"], scope["path"])
        if rule is None:
            await self.app(scope, receive, send)
            return
        request = HttpRequest(
            scope["method"],
            full_path(scope),
            scope.get("query_string", b""),
            scope["headers"],
            scope,
        )
        early = engine.precheck(request, rule)
        # The test-time switch is read only once we would act: every request that reaches
        # here unchanged anyway (no rule, no key) skips its two environment lookups.
        if early is PASS or idempotency_disabled():
            await self.app(scope, receive, send)
            return
        if isinstance(early, Respond):
            await _respond(send, early.response)
            return
        scope[HANDLED] = True  # until we are done: a nested layer passes it through
        try:
            await self._handle(request, rule, scope, receive, send)
        finally:
            scope.pop(HANDLED, None)

    async def _handle(
        self, request: HttpRequest, rule: Rule, scope: Scope, receive: Receive, send: Send
    ) -> None:
        engine = self.engine
        if engine.content_length_too_large(request):
            await _respond(send, engine.too_large(request))
            return
        try:
            body = await _read_body(receive, engine.config.max_request_body_bytes)
        except Exception:
            # The server's receive() failed mid-body (a cut upload): as in WSGI, nothing is
            # claimed and the client is told, instead of a 500 with our frame in it.
            await _respond(send, engine.incomplete(request))
            return
        if body is INCOMPLETE:
            engine.client_gone(request)
            return  # the client is gone: no claim, no app, nobody to answer
        if body is None:
            await _respond(send, engine.too_large(request))
            return
        assert isinstance(body, bytes)
        request.body = body
        action = await drive_async(engine.store, engine.begin(request, rule))
        if isinstance(action, Respond):
            await _respond(send, action.response)
            return
        receive = _buffered_receive(body, receive)
        if not isinstance(action, Execute):
            await self.app(scope, receive, send)
            return
        await self._execute(action, scope, receive, send)

    async def _execute(self, action: Execute, scope: Scope, receive: Receive, send: Send) -> None:
        execution = await AsyncExecution.start(self.engine, action)
        capture = execution.capture
        client_gone = False

        async def watching_receive() -> Message:
            nonlocal client_gone
            message = await receive()
            if message["type"] == "http.disconnect":
                client_gone = True
            return message

        async def capturing_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                capture.add(message.get("body", b""))
                if not execution.recorded and (
                    capture.has_declared_length or not message.get("more_body", False)
                ):
                    # Record before the client can have the whole body: at the chunk that
                    # completes Content-Length (a stream may end with an empty message
                    # later), else at the last message. Once the client has the response,
                    # a retry replays it even if this process dies right now.
                    await execution.record(None, True)
            elif kind == "http.response.start":
                capture.start(message["status"], list(message.get("headers", ())))
                if message.get("trailers", False):
                    # Its trailers come after the last body message, where it is recorded,
                    # and a replay has none to send: executed, not replayable (R8).
                    capture.give_up()
            else:  # pathsend, zerocopysend, trailers: forwarded, not copied
                capture.give_up()
            await send(message)

        try:
            await self.app(scope, watching_receive, capturing_send)
        except BaseException as exc:
            # Raised, cancelled (Daphne cancels the app once its client left), or send()
            # raised: only an application exception before any response releases (C3).
            error = None if scope.get(RETURNED) else exc  # the endpoint ran: executed
            await execution.record(error, False, client_gone)
            raise
        # Returned without a response (Django does when the client disconnects) or without
        # the final body message: executed, never run again.
        await execution.record(None, False, client_gone)


def full_path(scope: Scope) -> str:
    """The path the client asked for, whatever a router cut off before us: the storage key
    and the fingerprint use it, so two apps mounted on one store never share a record.

    Litestar strips its mount prefix and ``root_path`` from ``scope["path"]`` before its
    middleware runs; ``raw_path`` (the request target as sent, percent-decoded as servers
    decode ``path``) is left whole. ``root_path`` is prefixed unless the path already holds
    it (ASGI lets ``path`` include it; a proxy that stripped the prefix sent a path without).
    The path's bytes are read as latin-1 text, as WSGI's PATH_INFO (PEP 3333): one request
    has one key under either middleware, and no two byte strings share one (UTF-8 decoding
    would map every invalid sequence to U+FFFD).
    """
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        # The ASGI spec: raw_path excludes the query string, so a "?" in it is part of the
        # path (a decoded %3F), never a query to cut off.
        target = raw.decode("latin-1")
        path = unquote(target, encoding="latin-1") if "%" in target else target
    else:
        path = scope["path"].encode("utf-8", "surrogatepass").decode("latin-1")
    root: str = scope.get("root_path", "").encode("utf-8", "surrogatepass").decode("latin-1")
    if root and not path.startswith(root):
        return root + path
    return path


async def _read_body(receive: Receive, cap: int) -> bytes | Incomplete | None:
    """The whole request body, None past ``cap`` bytes (413), or INCOMPLETE if the client
    left before sending all of it (nothing may be decided on a partial body)."""
    message = await receive()
    if message["type"] != "http.request":
        return INCOMPLETE
    body: bytes = message.get("body", b"")
    if len(body) > cap:
        return None
    if not message.get("more_body", False):
        return body  # one message, the common case: no copy
    # One growing buffer, not a list of the server's chunks: a body sent a few bytes per
    # message costs its bytes, not an object per chunk (R6).
    buffer = bytearray(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return INCOMPLETE
        chunk = message.get("body", b"")
        if len(buffer) + len(chunk) > cap:
            return None
        buffer += chunk
        if not message.get("more_body", False):
            return bytes(buffer)


def _buffered_receive(body: bytes, receive: Receive) -> Receive:
    """Give the app the buffered body once, then the server's own ``receive``."""
    pending = True

    async def buffered() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return buffered


async def _respond(send: Send, response: StoredResponse) -> None:
    await send(
        {"type": "http.response.start", "status": response.status, "headers": response.headers}
    )
    await send({"type": "http.response.body", "body": response.body, "more_body": False})
