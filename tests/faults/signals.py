"""Interrupt blocking I/O from a signal handler, as ``signal.alarm`` timeouts and Celery do.

``interrupt_after(seconds, exc)`` arms a one-shot ``ITIMER_REAL`` whose SIGALRM handler raises
``exc`` in the main thread, wherever it is blocked (``recv``, ``sendall``, ``connect``). The
previous handler and timer are restored on exit, whether the exception fired or not.
The ``signal_interrupt`` fixture hands that context manager to a test (POSIX, main thread).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import pytest


class Interrupted(Exception):
    """What the default handler raises: deliberately not an OSError."""


@contextlib.contextmanager
def interrupt_after(
    seconds: float, exc: type[BaseException] | BaseException = Interrupted
) -> Iterator[list[bool]]:
    """Raise ``exc`` from SIGALRM after ``seconds``; yields ``[fired]`` for the test to check."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("signal handlers run in the main thread only")
    fired = [False]

    def handler(signum: int, frame: FrameType | None) -> None:
        fired[0] = True
        raise exc

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def signal_interrupt() -> Callable[..., contextlib.AbstractContextManager[list[bool]]]:
    if not hasattr(signal, "setitimer"):
        pytest.skip("needs signal.setitimer (POSIX)")
    return interrupt_after
