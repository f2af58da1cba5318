"""R10: ``idempotent_function`` / ``idempotent`` hash key material with
``canonical_json(...).encode()`` (UTF-8, strict). JSON text may escape a lone surrogate
(``"\\ud800"`` is valid JSON), so an event whose body a client wrote reaches the key hash as a
``str`` that UTF-8 cannot encode: the call fails with a bare ``UnicodeEncodeError`` out of the
decorator, not a typed key error (the HTTP engine answers the same key 400, "key unusable").
A queue consumer sees an unknown crash per redelivery instead of a refused key.
"""

from __future__ import annotations

import pytest

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer, idempotent_function
from idempotent_middleware.exceptions import IdempotencyKeyError


def test_r10_lone_surrogate_in_key_material_is_a_typed_key_error() -> None:
    runs: list[int] = []

    @idempotent_function(
        data_keyword_argument="event",
        persistence_store=InMemoryPersistenceLayer(),
        config=IdempotencyConfig(event_key_jmespath="powertools_json(body).order_id"),
    )
    def handle(event: dict[str, str]) -> int:
        runs.append(1)
        return 1

    with pytest.raises(IdempotencyKeyError):
        handle(event={"body": '{"order_id": "\\ud800"}'})
    assert runs == []
