"""Shared pieces of the model-based tests: a wall clock under test control, a store wrapper
that injects faults, and a capture of the background steps the core schedules.

The package reads the wall clock as ``time.time()`` in ``persistence.base`` (record and lease
timestamps, expiry), ``_core`` (Retry-After) and ``persistence.redis`` (PX values); fakeredis
reads it in ``fakeredis._socket._base`` (its key expiry). Replacing the ``time`` name in those
modules, and only there, moves every lease decision onto the fake clock while hypothesis,
sockets and the monotonic clock stay real.
"""

from __future__ import annotations

import contextlib
import logging
import time
from types import ModuleType
from typing import Any

import pytest

from idempotent_middleware import _core, _steps
from idempotent_middleware.exceptions import IdempotencyPersistenceLayerError
from idempotent_middleware.persistence import base as _base
from idempotent_middleware.persistence import record as _record
from idempotent_middleware.persistence import redis as _redis_layer
from idempotent_middleware.persistence.base import BasePersistenceLayer, DataRecord

#: Far from any real "now", and not a round number of milliseconds.
FAKE_EPOCH = 1_900_000_000.0003


class FakeClock:
    """Stands in for the ``time`` module: ``time()`` is ours, everything else is real."""

    def __init__(self) -> None:
        self.now = FAKE_EPOCH

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> Any:  # monotonic, sleep, perf_counter, ...
        return getattr(time, name)


def _clock_readers() -> list[ModuleType]:
    modules: list[ModuleType] = [_base, _record, _core, _redis_layer]
    try:
        from fakeredis._socket import _base as fakeredis_socket
    except ImportError:  # pragma: no cover - fakeredis is in the test extra
        return modules
    return [*modules, fakeredis_socket]


def install_fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """One fake wall clock read by the package (and fakeredis) until the test ends."""
    clock = FakeClock()
    for module in _clock_readers():
        assert module.time is time, f"{module.__name__} no longer reads the time module"
        monkeypatch.setattr(module, "time", clock)
    return clock


class BackgroundSteps:
    """Collects the steps the core runs "later, off the request's path" (``BACKGROUND``)
    so that a model can run them at a moment of its choosing instead of a real thread's."""

    def __init__(self) -> None:
        self.pending: list[tuple[BasePersistenceLayer, _steps.Step]] = []

    def schedule(self, layer: BasePersistenceLayer, step: _steps.Step) -> None:
        self.pending.append((layer, step))

    def run_first(self) -> _steps.Step:
        """Perform the oldest pending step the way the background worker does."""
        layer, step = self.pending.pop(0)
        with contextlib.suppress(Exception):
            getattr(layer, step.op.sync)(step.arg)
        return step


def capture_background(monkeypatch: pytest.MonkeyPatch) -> BackgroundSteps:
    steps = BackgroundSteps()
    monkeypatch.setattr(_steps, "_in_background", steps.schedule)
    return steps


class FaultyLayer(BasePersistenceLayer):
    """Delegates to a real layer; ``arm(method, when)`` makes the next call of that method
    fail with the store's error, either before it reaches the store (``"before"``: nothing
    happened) or after (``"after"``: it was applied, whatever its answer, and the reply lost).
    """

    def __init__(self, inner: BasePersistenceLayer) -> None:
        super().__init__()
        self.inner = inner
        self._armed: tuple[str, str] | None = None

    def arm(self, method: str, when: str | None) -> None:
        self._armed = None if when is None else (method, when)

    def _call(self, method: str, record: DataRecord) -> None:
        armed, self._armed = self._armed, None
        if armed == (method, "before"):
            raise IdempotencyPersistenceLayerError(f"injected: {method} never reached the store")
        if armed == (method, "after"):
            with contextlib.suppress(Exception):
                getattr(self.inner, method)(record)
            raise IdempotencyPersistenceLayerError(f"injected: the reply to {method} was lost")
        getattr(self.inner, method)(record)

    def _get_record(self, idempotency_key: str) -> DataRecord:
        return self.inner._get_record(idempotency_key)

    def _put_record(self, data_record: DataRecord) -> None:
        self._call("_put_record", data_record)

    def _update_record(self, data_record: DataRecord) -> None:
        self._call("_update_record", data_record)

    def _delete_record(self, data_record: DataRecord) -> None:
        self._call("_delete_record", data_record)

    def _renew_lease(self, data_record: DataRecord) -> None:
        self._call("_renew_lease", data_record)


class LogLines(logging.Handler):
    """The package's warnings, kept in order (the "lease lost" reports)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def attach(self) -> None:
        logging.getLogger("idempotent_middleware").addHandler(self)

    def detach(self) -> None:
        logging.getLogger("idempotent_middleware").removeHandler(self)
