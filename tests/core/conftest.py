"""Fixtures of the model-based tests: the fake wall clock and the captured background steps."""

from __future__ import annotations

import pytest

from tests.core._model_support import (
    BackgroundSteps,
    FakeClock,
    capture_background,
    install_fake_clock,
)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The package's (and fakeredis's) ``time.time()`` under the test's control."""
    return install_fake_clock(monkeypatch)


@pytest.fixture
def background(monkeypatch: pytest.MonkeyPatch) -> BackgroundSteps:
    """``BACKGROUND`` steps queued for the test to run, not run by a real thread later."""
    return capture_background(monkeypatch)
