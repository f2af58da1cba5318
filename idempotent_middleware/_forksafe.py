"""Locks that a forked child gets fresh.

``fork`` copies every lock in the state it has at that instant but only the forking thread:
a lock another thread held then stays held for ever in the child, whose first use of it blocks
for good (``multiprocessing``'s ``fork`` start method, ``gunicorn --preload``, a job runner's
``os.fork``). An object registers the attributes that hold such locks; the child replaces them.

Registered with ``quiesce=True``, a lock is also taken by the forking thread just before the
fork (for at most ``FORK_WAIT`` seconds over all of them) and released after it in the parent:
no other thread is then inside the critical section at the fork, so the state the lock guards
(several dicts and a byte count kept in step) reaches the child whole, never half updated.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

#: The longest a fork waits, over all quiesced locks, for the threads inside them to leave.
FORK_WAIT = 1.0

Factory = Callable[[Any], Any]


def new_lock(_owner: Any) -> Any:
    """The default replacement: a fresh ``threading.Lock``."""
    return threading.Lock()


#: id(owner) -> (a weak reference to it, its (attribute, factory, quiesce) entries). Keyed by
#: id, not by the owner, so that an owner's own ``__eq__`` / ``__hash__`` play no part.
_owners: dict[int, tuple[weakref.ref[Any], list[tuple[str, Factory, bool]]]] = {}
#: The locks the parent holds across the fork (released after it, in the parent only).
_held: list[Any] = []


def renew_after_fork(
    owner: Any, *names: str, quiesce: bool = False, factory: Factory = new_lock
) -> None:
    """Have a forked child replace ``owner.<name>`` by ``factory(owner)`` for each name.

    The factory receives the owner (it must not close over it: the registry holds owners
    weakly, so a registered object is still freed as soon as nobody else uses it).
    """
    key = id(owner)
    found = _owners.get(key)
    if found is None or found[0]() is not owner:

        def forget(ref: weakref.ref[Any], key: int = key) -> None:
            entry = _owners.get(key)
            if entry is not None and entry[0] is ref:
                del _owners[key]

        found = (weakref.ref(owner, forget), [])
        _owners[key] = found
    entries = [entry for entry in found[1] if entry[0] not in names]  # once per attribute
    entries.extend((name, factory, quiesce) for name in names)
    found[1][:] = entries


def _live() -> list[tuple[Any, list[tuple[str, Factory, bool]]]]:
    # list() of a dict's values is one step under the GIL: a registration in another thread
    # cannot break it midway.
    pairs = []
    for ref, entries in list(_owners.values()):
        owner = ref()
        if owner is not None:
            pairs.append((owner, list(entries)))
    return pairs


def _before_fork() -> None:
    deadline = time.monotonic() + FORK_WAIT
    held: list[Any] = []
    for owner, entries in _live():
        for name, _, quiesce in entries:
            lock = getattr(owner, name)
            if quiesce and lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                held.append(lock)
    # Not acquired in time (or held by this very thread): the child still gets a fresh lock.
    _held[:] = held


def _after_fork_in_parent() -> None:
    held, _held[:] = list(_held), []
    for lock in reversed(held):
        lock.release()


def _after_fork_in_child() -> None:
    _held.clear()
    for owner, entries in _live():
        for name, factory, _ in entries:
            setattr(owner, name, factory(owner))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
