"""A bounded copy of a response, taken while it streams to the client."""

from __future__ import annotations

from .request import Headers
from .response import StoredResponse, nonstandard_reason


class ResponseCapture:
    """Keeps a bounded copy of a response while it streams to the client."""

    __slots__ = (
        "cap",
        "chunks",
        "excluded",
        "expected",
        "headers",
        "overflow",
        "reason",
        "size",
        "status",
    )

    def __init__(self, cap: int, excluded: frozenset[bytes]) -> None:
        self.cap = cap
        self.excluded = excluded
        self.status = 0
        self.reason: str | None = None
        self.headers: Headers = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.expected: int | None = None
        self.overflow = False

    def start(self, status: int, headers: Headers, reason: str | None = None) -> None:
        """``reason``: the WSGI reason phrase as sent (ASGI has none)."""
        self.status = status
        self.reason = nonstandard_reason(status, reason)
        # Excluded headers (Set-Cookie by default) are never stored, so never replayed;
        # framing headers belong to the connection that carried the original.
        kept = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                self.expected = int(value) if value.isdigit() else None
            elif lower in self.excluded or lower == b"transfer-encoding":
                continue
            kept.append((name, value))
        self.headers = kept

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.overflow or not chunk:
            return
        if self.size > self.cap:
            self.overflow = True
            self.chunks = []
        else:
            self.chunks.append(chunk)

    @property
    def has_declared_length(self) -> bool:
        """True once the body holds every byte its Content-Length announced."""
        return self.expected is not None and self.size >= self.expected

    def give_up(self) -> None:
        """The body went out by a route we cannot copy (e.g. ASGI pathsend)."""
        self.overflow = True
        self.chunks = []

    def result(self) -> StoredResponse:
        if self.overflow:
            return StoredResponse(self.status, [], b"", complete=False)
        return StoredResponse(self.status, self.headers, b"".join(self.chunks), reason=self.reason)

    def outcome(
        self, error: BaseException | None, *, finished: bool, client_gone: bool = False
    ) -> StoredResponse | None:
        """What to record once the app stopped; None means "release the key".

        Started means it may have had side effects (contract C3): only an application
        exception (``Exception``) raised before any response started, while the client is
        still there, gives the key back. Cancellation, ``KeyboardInterrupt``, ``SystemExit``,
        a client that left, an app that returned without a response or stopped mid-body:
        recorded as executed, so that no retry runs it again.
        """
        if error is None and finished and self.status:
            return self.result()
        if isinstance(error, Exception) and not self.status and not client_gone:
            return None
        if self.status and (self.size or self.overflow):
            # Part of the body (or a body we could not copy) went out: executed, status N.
            self.give_up()
            stopped = self.result()
            stopped.finished = False
            return stopped
        # No response, or none of its body: executed, outcome unknown.
        return StoredResponse(
            self.status, [], b"", complete=False, interrupted=True, finished=False
        )
