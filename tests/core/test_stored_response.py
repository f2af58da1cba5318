"""The stored response format: format 1 records (written before reason phrases and the
"interrupted" flag existed) still decode; format 2 records are refused by a format-1 reader."""

from __future__ import annotations

import struct

import pytest

from idempotent_middleware.exceptions import IdempotencyCorruptRecordError
from idempotent_middleware.http.response import StoredResponse


def _format1(status: int, flag: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A record exactly as the format-1 encoder wrote it."""
    parts = [struct.pack(">HBHI", status, flag, len(headers), len(body))]
    for name, value in headers:
        parts += [struct.pack(">HI", len(name), len(value)), name, value]
    return b"".join([*parts, body])


def _format1_decoder_accepts(raw: bytes) -> bool:
    """The format-1 decoder's length check: the bytes after the headers are the body."""
    _status, _flag, count, body_length = struct.unpack_from(">HBHI", raw)
    offset = 9
    for _ in range(count):
        name_len, value_len = struct.unpack_from(">HI", raw, offset)
        offset += 6 + name_len + value_len
    return len(raw) - offset == body_length


@pytest.mark.parametrize("flag", [0, 1])
def test_item11_format1_records_still_decode(flag: int) -> None:
    raw = _format1(201, flag, [(b"x-a", b"1")], b"body" if flag else b"")
    decoded = StoredResponse.decode(raw)
    assert decoded.status == 201
    assert decoded.complete is bool(flag)
    assert decoded.interrupted is False
    assert decoded.reason is None
    # What needs nothing new is still written in format 1 (rolling deploys keep replaying).
    assert decoded.encode() == raw


@pytest.mark.parametrize(
    "response",
    [
        StoredResponse(0, [], b"", complete=False, interrupted=True),
        StoredResponse(200, [], b"", complete=False, interrupted=True),
        StoredResponse(201, [(b"x", b"y")], b"ok", reason="Order Accepted"),
        StoredResponse(299, [], b"", reason=""),
    ],
)
def test_item11_format2_round_trips_and_is_not_mistaken_by_a_format1_reader(
    response: StoredResponse,
) -> None:
    raw = response.encode()
    assert StoredResponse.decode(raw) == response
    assert not _format1_decoder_accepts(raw)  # old readers answer 503, never a wrong replay


def test_item11_interrupted_differs_from_too_large() -> None:
    too_large = StoredResponse.decode(StoredResponse(200, [], b"", complete=False).encode())
    assert not too_large.interrupted


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack(">HBHI", 200, 0x05, 0, 0),  # flag 5: neither format
        struct.pack(">HBHI", 200, 0x81, 0, 0),  # format 2 without its trailer
        struct.pack(">HBHI", 200, 0x81, 0, 0) + struct.pack(">H", 9) + b"short",
    ],
)
def test_unknown_flags_and_truncated_trailers_are_corrupt(raw: bytes) -> None:
    with pytest.raises(IdempotencyCorruptRecordError):
        StoredResponse.decode(raw)


@pytest.mark.parametrize(
    "response",
    [
        StoredResponse(201, [(b"content-type", b"application/json"), (b"x", b"")], b'{"a":1}'),
        StoredResponse(200, [(b"k", b"v")], b"", reason="Fine"),
        StoredResponse(500, [(b"k", b"v"), (b"k2", b"v2")], b"body", complete=False),
    ],
)
def test_every_cut_or_padded_record_is_corrupt(response: StoredResponse) -> None:
    """A record cut anywhere (a header, the body, the trailer) or with a byte more is never
    replayed as some other response."""
    raw = response.encode()
    assert StoredResponse.decode(raw) == response
    for cut in range(len(raw)):
        with pytest.raises(IdempotencyCorruptRecordError):
            StoredResponse.decode(raw[:cut])
    with pytest.raises(IdempotencyCorruptRecordError):
        StoredResponse.decode(raw + b"\x00")
