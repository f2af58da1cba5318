"""WSGI adapter: translates environ/start_response to the shared HTTP core and back.

PEP 3333 rules kept here: ``wsgi.input`` is replaced by the buffered body with a matching
``CONTENT_LENGTH``; ``start_response`` is wrapped (``exc_info`` handed on so the server can
re-raise, a capturing ``write()`` returned); a generator app may call ``start_response`` only
after its first item; the app iterable's ``close()`` is always called (as Werkzeug's
``ClosingIterator`` does). The sync Redis client is used directly: no event loop, no thread hop.
"""

from __future__ import annotations

import io
import logging
import weakref
from collections.abc import Callable, Iterable
from http import HTTPStatus
from types import TracebackType
from typing import Any

import idempotent_middleware.events as _events

from ._disabled import idempotency_disabled
from ._steps import drive
from .config import IdempotencyConfig
from .http.engine import INCOMPLETE, PASS, Execute, HttpIdempotency, Incomplete, Respond
from .http.execution import CapturingIterable, Execution
from .http.request import HANDLED, Headers, HttpRequest
from .http.response import StoredResponse
from .http.routes import PassFilter
from .persistence.base import BasePersistenceLayer

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIEnviron = dict[str, Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

_SPECIAL_HEADERS = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}

logger = logging.getLogger("idempotent_middleware")  # the engine's: its debug lines
DEBUG = logging.DEBUG
#: The logger's own memo of ``isEnabledFor`` (cleared in place whenever a level changes):
#: ``False`` under DEBUG is exactly "debug is off"; ``True`` or no entry takes the full path,
#: which asks ``isEnabledFor`` itself. Without it (another logging), the full path every time.
_ENABLED: dict[int, bool] = getattr(logger, "_cache", {})


class IdempotencyMiddleware:
    """Run each keyed request once; replay the stored response to every retry."""

    def __init__(
        self,
        app: WSGIApp,
        persistence_store: BasePersistenceLayer | None = None,
        config: IdempotencyConfig | None = None,
    ) -> None:
        self.app = app
        self.engine = engine = HttpIdempotency.for_middleware(persistence_store, config)
        engine.source = "wsgi"
        self._pass = PassFilter(engine.routes, engine.header_name if engine.header_mode else None)
        #: The environ name of the key header (CGI spelling, as servers and ``environ_headers``
        #: write it), None when the key is not a plain header.
        self._key_variable = _variable(self._pass.header)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        if HANDLED in environ:
            return self.app(environ, start_response)
        # Most requests are passed through: decide that from the environ as it is, before any
        # object is built (the same answers as ``engine.rule`` and ``engine.precheck``).
        shortcut = self._pass
        method = environ["REQUEST_METHOD"]
        spellings = shortcut.spellings
        if method not in spellings and method.upper() not in spellings:
            return self.app(environ, start_response)
        variable = self._key_variable  # set when its absence alone means PASS
        if (
            variable is not None
            and variable not in environ
            and not (_events._listeners or _ENABLED.get(DEBUG, True))
        ):
            return self.app(environ, start_response)  # no key, none required: PASS
        engine = self.engine
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        rule = shortcut.rule or engine.rule(method, path)
        if rule is None:
            return self.app(environ, start_response)
        request = EnvironRequest(method, path, environ, environ)
        early = engine.precheck(request, rule)
        # The test-time switch is read only once we would act (see the ASGI adapter).
        if early is PASS or idempotency_disabled():
            return self.app(environ, start_response)
        environ[HANDLED] = True  # a nested layer of this middleware passes it through
        if isinstance(early, Respond):
            return _respond(start_response, early.response)
        if engine.content_length_too_large(request):
            return _respond(start_response, engine.too_large(request))
        body = read_body(environ, engine.config.max_request_body_bytes)
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
        request.set_content_length(body)
        if not isinstance(action, Execute):
            return self.app(environ, start_response)
        return self._execute(action, environ, start_response)

    def _execute(
        self, action: Execute, environ: WSGIEnviron, start_response: StartResponse
    ) -> Iterable[bytes]:
        execution = Execution(self.engine, action)
        capture = execution.capture
        record = execution.record

        def capturing_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            # The copy is taken before the server sees the response and never raises: once
            # the app answered, it has run, and no error of ours may release its key (R7).
            code, copied = _copy_start(status, headers)
            try:
                write = start_response(status, headers, exc_info)  # re-raises if already sent
            except BaseException:
                if not capture.status:  # refused at the first call: executed all the same
                    capture.start(code, [])
                    capture.give_up()
                raise
            capture.start(code, copied or [], status[4:])
            if copied is None:  # headers the store cannot hold: passed on, not replayable
                capture.give_up()

            def capturing_write(data: bytes) -> object:
                capture.add(data)
                if capture.has_declared_length:
                    record(None, True)  # before the bytes completing Content-Length
                return write(data)

            return capturing_write

        try:
            iterable = self.app(environ, capturing_start_response)
        except BaseException as exc:
            # An Exception before start_response releases; anything else (after it, a
            # failed write(), KeyboardInterrupt, SystemExit) records the key as executed.
            record(exc, False)
            raise
        result = CapturingIterable(iterable, capture, record)
        # PEP 3333 makes the server call close(); an outer middleware that drops the iterable
        # without it must not keep the key renewed (answering 409) for the life of the process.
        weakref.finalize(result, execution.abandoned, "response iterable dropped without close()")
        return result


def _variable(header: bytes | None) -> str | None:
    """The environ name under which ``environ_headers`` finds ``header`` (None: no single
    name, or no header): ``HTTP_`` and the upper-cased name with ``_`` for ``-``."""
    if (
        header is None
        or not header.isascii()  # where case mapping is one to one
        or b"_" in header
        or header in _SPECIAL_HEADERS.values()
    ):
        return None
    return "HTTP_" + header.decode("latin-1").upper().replace("-", "_")


def _copy_start(status: str, headers: list[tuple[str, str]]) -> tuple[int, Headers | None]:
    """The status code and a Latin-1 copy of the headers, None for headers that are not
    native strings in Latin-1 (PEP 3333): the server decides about those, we only never
    replay them. A status without a code is kept as 500 (stored, never replayed as is)."""
    try:
        code = int(status[:3])
    except ValueError:
        return 500, None
    try:
        return code, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    except (UnicodeEncodeError, AttributeError, TypeError, ValueError):
        return code, None


class EnvironRequest(HttpRequest):
    """A request whose headers stay in the environ: the engine asks for two or three by name
    (the key, Content-Type, Content-Length), each one environ lookup; the whole list
    (``environ_headers``) is built only when something asks for all of them (a scope hook,
    JMESPath, an event). Each lookup answers what ``environ_headers`` would give."""

    __slots__ = ("_environ",)

    def __init__(self, method: str, path: str, environ: WSGIEnviron, raw: Any) -> None:
        super().__init__(method, path, environ.get("QUERY_STRING", "").encode("latin-1"), None, raw)
        self._environ = environ

    def _load_headers(self) -> Headers:
        return environ_headers(self._environ)

    def set_content_length(self, body: bytes) -> None:
        """``CONTENT_LENGTH`` as the body we hand on has it (form parsers read it). The
        request keeps the client's headers: a scope hook, JMESPath or an event reading them
        afterwards sees what was sent, not this rewrite (a chunked upload has no
        Content-Length), so key and fingerprint stay what the request gave before."""
        environ = self._environ
        length = str(len(body))
        if environ.get("CONTENT_LENGTH") != length:
            if self._headers is None:
                self._headers = environ_headers(environ)  # as the client sent them
            environ["CONTENT_LENGTH"] = length

    def _variable(self, name: bytes) -> str | None:
        """The one environ name holding header ``name``, None when it is not a single name
        (then the list decides)."""
        try:
            variable = _HEADER_VARIABLES[name]
        except KeyError:
            variable = _header_variable(name)
        if variable in _SPECIAL_HEADERS and "HTTP_" + variable in self._environ:
            return None  # CONTENT_TYPE and HTTP_CONTENT_TYPE: two spellings, the last wins
        return variable

    def header(self, name: bytes) -> bytes | None:
        if self._headers is None:
            variable = self._variable(name)
            if variable is not None:
                value = self._environ.get(variable)
                return None if value is None else value.encode("latin-1")
        return super().header(name)

    def header_values(self, name: bytes) -> list[bytes]:
        if self._headers is None:
            variable = self._variable(name)
            if variable is not None:
                value = self._environ.get(variable)
                return [] if value is None else [value.encode("latin-1")]
        return super().header_values(name)


#: Header names asked for by name (the configured key header, the engine's own) and their
#: environ name; bounded, as a scope hook may ask for names a client chose.
_HEADER_VARIABLES: dict[bytes, str | None] = {}


def _header_variable(name: bytes) -> str | None:
    if name != name.lower():
        variable = None  # ``environ_headers`` names are lower case: such a name is never found
    else:
        special = {v: k for k, v in _SPECIAL_HEADERS.items()}.get(name)
        variable = special if special is not None else _variable(name)
    if len(name) <= _MAX_NAME_LENGTH and len(_HEADER_VARIABLES) < 64:
        _HEADER_VARIABLES[name] = variable
    return variable


def environ_headers(environ: WSGIEnviron) -> list[tuple[bytes, bytes]]:
    """The request headers in an environ (``HTTP_*``, ``CONTENT_TYPE``, ``CONTENT_LENGTH``),
    in its order, as lower-case names and latin-1 bytes."""
    headers = []
    names = _HEADER_NAMES
    for name, value in environ.items():
        try:
            key = names[name]
        except KeyError:
            key = _header_name(name)
        if key is not None:
            headers.append((key, value.encode("latin-1")))
    return headers


#: Environ names seen so far and the header each one is (None: not a header). Bounded: the
#: names a client sends are not ours to keep; past the bound, names are translated each time.
_HEADER_NAMES: dict[str, bytes | None] = {}
_MAX_NAMES = 1024
_MAX_NAME_LENGTH = 64


def _header_name(name: str) -> bytes | None:
    """The header an environ name stands for. Only the CGI spelling counts (RFC 3875
    4.1.18, PEP 3333: ``HTTP_``, upper case, ``_`` for ``-``), the one servers write and the
    pass-through shortcut looks for: a name in another spelling (``HTTP_Idempotency_Key``,
    from a hand-built environ) is no header, or one request could be keyed on one path and
    passed through unprotected on the other."""
    if name.startswith("HTTP_"):
        rest = name[5:]
        if "-" in rest or rest != rest.upper():
            key: bytes | None = None
        else:
            key = rest.replace("_", "-").lower().encode("latin-1")
    else:
        key = _SPECIAL_HEADERS.get(name)
    if len(name) <= _MAX_NAME_LENGTH and len(_HEADER_NAMES) < _MAX_NAMES:
        _HEADER_NAMES[name] = key
    return key


#: ``HTTPStatus(status).phrase`` without an enum call per response (~5,000 instructions).
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


class _LengthRequired:
    """A body the server does not delimit (chunked, no length, input not terminated)."""


LENGTH_REQUIRED = _LengthRequired()


def read_body(environ: WSGIEnviron, cap: int) -> bytes | Incomplete | _LengthRequired | None:
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
        reason = _PHRASES.get(response.status, "Unknown")
    start_response(
        f"{response.status} {reason}",
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers],
    )
    return [response.body]
