"""The example's store (in-memory, or Redis when REDIS_URL is set), shared by the settings
(``IDEMPOTENCY["STORE"]``) and the views (which count their runs in it)."""

from __future__ import annotations

from examples._store import make_store

store = make_store()
