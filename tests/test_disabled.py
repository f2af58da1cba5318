"""The test-time switch is read on every call, however the environment was changed."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from idempotent_middleware._disabled import idempotency_disabled


@pytest.fixture(autouse=True)
def unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDEMPOTENCY_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED", raising=False)


@pytest.mark.parametrize("name", ["IDEMPOTENCY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED"])
def test_set_and_unset_at_runtime_through_os_environ(name: str) -> None:
    assert not idempotency_disabled()
    os.environ[name] = "true"
    try:
        assert idempotency_disabled()
        os.environ[name] = "0"
        assert not idempotency_disabled()
        os.environ[name] = ""
        assert not idempotency_disabled()
        os.environ[name] = " On "
        assert idempotency_disabled()
    finally:
        del os.environ[name]
    assert not idempotency_disabled()


def test_monkeypatch_and_patch_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEMPOTENCY_DISABLED", "1")
    assert idempotency_disabled()
    monkeypatch.delenv("IDEMPOTENCY_DISABLED")
    assert not idempotency_disabled()
    with mock.patch.dict(os.environ, {"POWERTOOLS_IDEMPOTENCY_DISABLED": "yes"}):
        assert idempotency_disabled()
    assert not idempotency_disabled()
    with mock.patch.dict(os.environ, {"IDEMPOTENCY_DISABLED": "1"}, clear=True):
        assert idempotency_disabled()
    assert not idempotency_disabled()


def test_either_variable_counts_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEMPOTENCY_DISABLED", "0")
    monkeypatch.setenv("POWERTOOLS_IDEMPOTENCY_DISABLED", "1")
    assert idempotency_disabled()


def test_os_environ_replaced_by_another_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test may swap ``os.environ`` itself: the mapping in place is the one read."""
    monkeypatch.setattr(os, "environ", {"IDEMPOTENCY_DISABLED": "1"})
    assert idempotency_disabled()
    monkeypatch.setattr(os, "environ", {})
    assert not idempotency_disabled()
