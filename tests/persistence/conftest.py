"""Fault-injection fixtures for the persistence tests."""

from __future__ import annotations

from tests.faults.signals import signal_interrupt

__all__ = ["signal_interrupt"]
