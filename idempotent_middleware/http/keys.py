"""The ``Idempotency-Key`` header's syntax, and the storage key built from it."""

from __future__ import annotations

import re

from ..persistence.base import KeyScheme

#: Stripe's documented maximum key length; the draft sets none.
MAX_KEY_LENGTH = 255

#: Paths up to this many UTF-8 bytes appear whole in the storage key. A longer path is folded
#: into the key's hash and only its first ``KEY_PATH_PREFIX_BYTES`` stay readable: the request
#: path is client-controlled, and a key sized by it let any client fill the store.
KEY_PATH_MAX_BYTES = 128
KEY_PATH_PREFIX_BYTES = 64

_PRINTABLE_KEY = re.compile(rb"[\x20-\x7e]{1,%d}" % MAX_KEY_LENGTH)


def parse_key(value: bytes) -> bytes | None:
    """The key, or None when malformed (IETF draft section 2: an sf-string; Stripe: <= 255)."""
    value = value.strip(b" \t")
    if value[:1] == b'"':
        unquoted = _parse_sf_string(value)
        if unquoted is None:
            return None
        value = unquoted
    elif b"," in value or b'"' in value:
        return None  # a list of keys, or a stray quote
    return value if _PRINTABLE_KEY.fullmatch(value) else None


def _parse_sf_string(value: bytes) -> bytes | None:
    """RFC 8941 section 4.2.5: a quoted string; only \\" and \\\\ escapes; nothing after it."""
    out = bytearray()
    index, end = 1, len(value)
    while index < end:
        char = value[index]
        if char == 0x5C:  # backslash
            if index + 1 >= end or value[index + 1] not in (0x22, 0x5C):
                return None
            out.append(value[index + 1])
            index += 2
        elif char == 0x22:  # closing quote: must be the last byte
            return bytes(out) if index == end - 1 else None
        else:
            out.append(char)
            index += 1
    return None  # no closing quote


def storage_key(scheme: KeyScheme, method: str, path: str, digest: str) -> str:
    """``"{METHOD} {path}#{digest}"`` for a path of at most ``KEY_PATH_MAX_BYTES`` UTF-8
    bytes and no NUL; else ``"{METHOD} {first KEY_PATH_PREFIX_BYTES bytes of the path}...#{H}"``,
    where H hashes the byte 0xFF followed by the UTF-8 of the short form. The README gives
    the same recipe to operators.

    ``digest`` already covers the tenant and the key material, so H covers method, whole
    path, tenant and key: two long paths sharing a prefix never share a key. No UTF-8 text
    and no printable key contains the byte 0xFF, so H's input can never equal the input of
    a short form's digest.

    NUL (an ASGI path is percent-decoded: ``/orders/%00``) never reaches a store: PostgreSQL
    text refuses it, which would read as a store outage (503, or a run per retry with
    ``fail_open``). A path with one takes the hashed form, and the prefix drops its NULs.
    """
    try:
        raw = path.encode()
    except UnicodeEncodeError:  # lone surrogates: no store could encode that key name
        raw = path.encode("utf-8", "surrogatepass")
    else:
        if len(raw) <= KEY_PATH_MAX_BYTES and b"\x00" not in raw:
            return f"{method} {path}#{digest}"
    readable = method.encode("utf-8", "surrogatepass") + b" " + raw + b"#" + digest.encode()
    folded = scheme.generate_hash(b"\xff" + readable)
    # Cut at a character boundary; "ignore" also drops any lone surrogate from the prefix.
    prefix = raw[:KEY_PATH_PREFIX_BYTES].decode("utf-8", "ignore").replace("\x00", "")
    return f"{method} {prefix}...#{folded}"
