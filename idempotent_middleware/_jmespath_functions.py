"""Powertools' JMESPath functions, so that ``powertools_json(body).order_id`` keeps working.

``powertools_json`` parses a JSON string (API Gateway and SQS put the payload in a string),
``powertools_base64`` decodes base64 text, ``powertools_base64_gzip`` decodes base64 then
gunzips (CloudWatch Logs subscriptions). Installed when ``jmespath_options`` gives no
``custom_functions``; next to the user's when it does, the user's winning on a name clash.
"""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import jmespath
import jmespath.functions


class PowertoolsFunctions(jmespath.functions.Functions):
    """The three functions, under Powertools' names and signatures."""

    @jmespath.functions.signature({"types": ["string"]})
    def _func_powertools_json(self, value: str) -> Any:
        return json.loads(value)

    @jmespath.functions.signature({"types": ["string"]})
    def _func_powertools_base64(self, value: str) -> str:
        return base64.b64decode(value).decode()

    @jmespath.functions.signature({"types": ["string"]})
    def _func_powertools_base64_gzip(self, value: str) -> str:
        return gzip.decompress(base64.b64decode(value)).decode()


_BUILTIN = PowertoolsFunctions()


class _Layered:
    """The user's functions first, then ours: the interpreter calls only ``call_function``."""

    def __init__(self, user: Any) -> None:
        self._user = user
        self._user_names = frozenset(getattr(user, "FUNCTION_TABLE", {}))

    def call_function(self, name: str, args: list[Any]) -> Any:
        if name in self._user_names or name not in _BUILTIN.FUNCTION_TABLE:
            return self._user.call_function(name, args)
        return _BUILTIN.call_function(name, args)


def jmespath_options(given: Any) -> jmespath.Options:
    """The options a ``KeyScheme`` searches with, ours included (see the module docstring)."""
    settings = dict(given or {})
    user = settings.get("custom_functions")
    settings["custom_functions"] = _BUILTIN if user is None else _Layered(user)
    return jmespath.Options(**settings)
