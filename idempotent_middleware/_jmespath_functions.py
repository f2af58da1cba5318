"""Powertools' JMESPath functions, so that ``powertools_json(body).order_id`` keeps working.

``powertools_json`` parses a JSON string (API Gateway and SQS put the payload in a string),
``powertools_base64`` decodes base64 text, ``powertools_base64_gzip`` decodes base64 then
gunzips (CloudWatch Logs subscriptions). Installed when ``jmespath_options`` gives no
``custom_functions``; next to the user's when it does, the user's winning on a name clash.

The key expression runs on client data (an HTTP body, an event), and gzip expands about a
thousandfold: decompression stops at ``max_bytes`` (the config's ``max_request_body_bytes``),
and more is no usable key (``IdempotencyKeyTooLargeError``; HTTP answers 400), never an
allocation the client chose.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import jmespath
import jmespath.functions

from .exceptions import IdempotencyKeyTooLargeError

#: The bound when none is given (the default ``max_request_body_bytes``).
DEFAULT_MAX_BYTES = 1024 * 1024


def gunzip_bounded(data: bytes, max_bytes: int) -> bytes:
    """Gunzip ``data`` (one or more members) into at most ``max_bytes`` bytes, or raise
    ``IdempotencyKeyTooLargeError``; a corrupt stream raises ``zlib.error``."""
    out = bytearray()
    while data:
        inflater = zlib.decompressobj(wbits=31)  # 16 + 15: gzip header and trailer
        out += inflater.decompress(data, max_bytes + 1 - len(out))
        if len(out) > max_bytes or inflater.unconsumed_tail:
            raise IdempotencyKeyTooLargeError(
                f"powertools_base64_gzip: more than {max_bytes} bytes once decompressed"
            )
        if not inflater.eof:
            raise zlib.error("truncated gzip stream")
        data = inflater.unused_data
    return bytes(out)


class PowertoolsFunctions(jmespath.functions.Functions):
    """The three functions, under Powertools' names and signatures."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        self.max_bytes = max_bytes

    @jmespath.functions.signature({"types": ["string"]})
    def _func_powertools_json(self, value: str) -> Any:
        return json.loads(value)

    @jmespath.functions.signature({"types": ["string"]})
    def _func_powertools_base64(self, value: str) -> str:
        return base64.b64decode(value).decode()

    @jmespath.functions.signature({"types": ["string"]})
    def _func_powertools_base64_gzip(self, value: str) -> str:
        return gunzip_bounded(base64.b64decode(value), self.max_bytes).decode()


class _Layered:
    """The user's functions first, then ours: the interpreter calls only ``call_function``."""

    def __init__(self, user: Any, ours: PowertoolsFunctions) -> None:
        self._user = user
        self._ours = ours
        self._user_names = frozenset(getattr(user, "FUNCTION_TABLE", {}))

    def call_function(self, name: str, args: list[Any]) -> Any:
        if name in self._user_names or name not in self._ours.FUNCTION_TABLE:
            return self._user.call_function(name, args)
        return self._ours.call_function(name, args)


def jmespath_options(given: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> jmespath.Options:
    """The options a ``KeyScheme`` searches with, ours included (see the module docstring)."""
    settings = dict(given or {})
    user = settings.get("custom_functions")
    ours = PowertoolsFunctions(max_bytes)
    settings["custom_functions"] = ours if user is None else _Layered(user, ours)
    return jmespath.Options(**settings)
