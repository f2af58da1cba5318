"""A response as stored and replayed, and its byte format (no JSON, no base64)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from http import HTTPStatus

from ..exceptions import IdempotencyCorruptRecordError
from .request import Headers


@dataclass(slots=True)
class StoredResponse:
    """A response as stored and replayed: status, headers in order, body bytes.

    ``complete`` is False for a response that was not kept whole (too large, cut short, sent
    by a route we cannot copy): the record then says "executed, status N" so that a retry
    never runs the handler a second time. ``interrupted`` marks an execution that started but
    gave no response at all (cancelled, client gone, returned without answering): executed,
    outcome unknown. ``reason`` is a WSGI reason phrase as sent, when not the standard one.
    """

    status: int
    headers: Headers
    body: bytes
    complete: bool = True
    reason: str | None = None
    interrupted: bool = False
    #: Not stored. False when the app stopped before its response ended (cut mid-body,
    #: interrupted): it ran, so the status policy may not release the key (contract C3).
    finished: bool = True

    #: status, flags, header count, body length (a cut or padded record is caught).
    _HEAD = struct.Struct(">HBHI")
    _PAIR = struct.Struct(">HI")
    _REASON = struct.Struct(">H")
    _NO_REASON = 0xFFFF
    #: Flags. Format 1 knows only 0 (not replayable) and 1 (complete). Format 2 sets
    #: ``_FORMAT2`` and appends a trailer (reason length and bytes) after the body, so that a
    #: format-1 reader (a rolling deploy) finds bytes past the body and reports the record
    #: corrupt (503) instead of replaying a record it does not understand.
    _COMPLETE = 0x01
    _INTERRUPTED = 0x02
    _FORMAT2 = 0x80

    def encode(self) -> bytes:
        flags = self._COMPLETE if self.complete else 0
        trailer = None
        if self.interrupted or self.reason is not None:
            flags |= self._FORMAT2 | (self._INTERRUPTED if self.interrupted else 0)
            if self.reason is None:
                trailer = self._REASON.pack(self._NO_REASON)
            else:
                reason = self.reason.encode("latin-1")
                trailer = self._REASON.pack(len(reason)) + reason
        parts = [self._HEAD.pack(self.status, flags, len(self.headers), len(self.body))]
        for name, value in self.headers:
            parts.append(self._PAIR.pack(len(name), len(value)))
            parts.append(name)
            parts.append(value)
        parts.append(self.body)
        if trailer is not None:
            parts.append(trailer)
        return b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> StoredResponse:
        try:
            status, flags, count, body_length = _HEAD_UNPACK(raw)
            offset = _HEAD_SIZE
            headers: Headers = []
            for _ in range(count):
                name_len, value_len = _PAIR_UNPACK(raw, offset)
                name_end = offset + _PAIR_SIZE + name_len
                offset = name_end + value_len
                # A short slice means the offset ran past the end: the length check below.
                headers.append((raw[name_end - name_len : name_end], raw[name_end:offset]))
            end = offset + body_length
            body = raw[offset:end]
            if flags == cls._COMPLETE and len(raw) == end:  # what nearly every replay reads
                return cls(status, headers, body)
            reason = None
            if flags & cls._FORMAT2:
                if flags & ~(cls._FORMAT2 | cls._COMPLETE | cls._INTERRUPTED):
                    raise ValueError(f"unknown flags {flags:#x}")
                (reason_length,) = cls._REASON.unpack_from(raw, end)
                end += cls._REASON.size
                if reason_length != cls._NO_REASON:
                    reason_bytes = raw[end : end + reason_length]
                    end += reason_length
                    if len(reason_bytes) != reason_length:
                        raise ValueError("truncated reason phrase")
                    reason = reason_bytes.decode("latin-1")
            elif flags not in (0, cls._COMPLETE):
                raise ValueError(f"unknown flags {flags:#x}")
            if len(body) != body_length or len(raw) != end:
                raise ValueError(f"{len(raw) - offset} bytes after the headers, {body_length} body")
        except (struct.error, ValueError) as exc:
            raise IdempotencyCorruptRecordError(f"undecodable stored response: {exc}") from exc
        return cls(
            status,
            headers,
            body,
            bool(flags & cls._COMPLETE),
            reason,
            bool(flags & cls._INTERRUPTED),
        )


_HEAD_UNPACK = StoredResponse._HEAD.unpack_from
_HEAD_SIZE = StoredResponse._HEAD.size
_PAIR_UNPACK = StoredResponse._PAIR.unpack_from
_PAIR_SIZE = StoredResponse._PAIR.size


def nonstandard_reason(status: int, reason: str | None) -> str | None:
    """The reason phrase worth storing: None when absent or the standard one (RFC 9110 15)."""
    if reason is None:
        return None
    try:
        standard = HTTPStatus(status).phrase
    except ValueError:
        standard = None
    if reason == standard or len(reason) >= StoredResponse._NO_REASON:
        return None
    try:
        reason.encode("latin-1")
    except UnicodeEncodeError:
        return None
    return reason
