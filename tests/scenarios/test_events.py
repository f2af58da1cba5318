"""Decision events through every adapter and integration the scenario table drives.

For a set of rows of the table (``test_table.SCENARIOS``), the sequence of decisions and their
fields: the source, the upper-case method, the route (the integration's template, else the
configured pattern, never the raw path), the status, the store kind and the hashed key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer, RouteOptions
from idempotent_middleware.events import Decision, IdempotencyEvent, subscribe
from idempotent_middleware.exceptions import (
    IdempotencyPersistenceLayerError,
    IdempotencyScopeRefusedError,
)

from .drivers import DRIVERS, Driver, Request
from .test_table import SCENARIOS, Scenario, _run, _store

pytestmark = pytest.mark.timeout(120)


def _fastapi(store: Any, config: IdempotencyConfig) -> Driver:
    from tests.integrations.test_fastapi_scenarios import FastAPIDriver

    return FastAPIDriver(store, config)


def _litestar(store: Any, config: IdempotencyConfig) -> Driver:
    from tests.integrations.test_litestar_scenarios import LitestarDriver

    return LitestarDriver(store, config)


ALL_DRIVERS: dict[str, Callable[[Any, IdempotencyConfig], Driver]] = {
    **DRIVERS,
    "fastapi": _fastapi,
    "litestar": _litestar,
}
SOURCE = {
    "asgi": "asgi",
    "wsgi": "wsgi",
    "flask": "flask",
    "django-wsgi": "django",
    "django-asgi": "django",
    "fastapi": "fastapi",
    "litestar": "litestar",
}
#: The route each integration knows for ``/orders`` and ``/status/<code>``; the raw
#: adapters know none (no pattern configured in these rows).
ORDERS = {
    "flask": "/orders",
    "django-wsgi": "orders",
    "django-asgi": "orders",
    "fastapi": "/orders",
    "litestar": "/orders",
}
STATUS = {
    "flask": "/status/<int:code>",
    "django-wsgi": "status/<int:code>",
    "django-asgi": "status/<int:code>",
    "fastapi": "/status/{code}",
    "litestar": "/status/{code}",
}

E, S, R = "execute", "stored", "replay"
#: Row -> the decisions, in order ("a|b": either, where frameworks differ on what a raising
#: handler looks like from outside: Flask and Starlette render it as a 500 response).
EXPECTED: dict[str, list[str]] = {
    "first_run_then_replay": [E, S, R, R],
    "same_key_other_body_is_422": [E, S, "payload_mismatch", R],
    "no_key_passes_through": ["no_key", "no_key"],
    "key_required_missing_is_400": ["key_invalid"],
    "malformed_keys_are_400": ["key_invalid"] * 5 + [E, S],
    "5xx_429_408_425_are_released_and_rerun": [E, "not_stored"] * 8,
    "4xx_is_stored_and_replayed": [E, S, R, E, S, R],
    "custom_status_policy": [E, "not_stored", E, "not_stored", E, S, R],
    "handler_raises_releases_the_key": [E, "released|not_stored"] * 2,
    "in_flight_duplicate_is_409_then_replay": [E, "in_progress", S, R],
    "keyed_request_body_over_cap_is_413": ["too_large", "no_key"],
    "response_over_cap_reaches_client_then_409_not_replayable": [E, S, R],
    "tenants_never_share_replays": [E, S, E, S, R, R],
    "store_unreachable_is_503_and_handler_not_run": ["store_error", "no_key"],
    "store_unreachable_fail_open_runs_unprotected": ["fail_open", "fail_open"],
}
ROWS = [s for s in SCENARIOS if s.name in EXPECTED]


@pytest.fixture
def events() -> Iterator[list[IdempotencyEvent]]:
    seen: list[IdempotencyEvent] = []
    unsubscribe = subscribe(seen.append)
    yield seen
    unsubscribe()


@pytest.fixture(params=list(ALL_DRIVERS))
def driver_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _status_of(scenario: Scenario, index: int) -> int:
    return scenario.calls[index].expect


@pytest.mark.parametrize("scenario", ROWS, ids=[s.name for s in ROWS])
def test_decisions_and_fields(
    scenario: Scenario,
    driver_name: str,
    events: list[IdempotencyEvent],
    request: pytest.FixtureRequest,
) -> None:
    store = _store("memory", scenario, request)
    driver = ALL_DRIVERS[driver_name](store, IdempotencyConfig(**scenario.config))
    try:
        _run(scenario, driver)
    finally:
        driver.close()
    expected = EXPECTED[scenario.name]
    got = [e.decision.value for e in events]
    assert len(got) == len(expected), got
    for decision, allowed in zip(got, expected, strict=True):
        assert decision in allowed.split("|"), (got, expected)
    kind = "redis" if scenario.store == "unreachable" else "memory"
    for event in events:
        assert event.source == SOURCE[driver_name]
        assert event.method == "POST"
        assert event.store == kind
        if event.decision in (Decision.NO_KEY, Decision.KEY_INVALID, Decision.TOO_LARGE):
            assert event.key is None
        else:
            assert event.key is not None and event.key.startswith("POST /")
            assert "k1" not in event.key.rpartition("#")[2]  # hashed, never the client's key
    # Statuses: an answer's status is what the client got, a stored one what was stored.
    answers = [e for e in events if e.decision is not Decision.EXECUTE]
    if scenario.name == "first_run_then_replay":
        assert [e.status for e in answers] == [201, 201, 201]
        assert all(e.handler_seconds is not None for e in answers[:1])
        assert all(e.store_seconds is not None for e in events)
    if scenario.name == "5xx_429_408_425_are_released_and_rerun":
        assert [e.status for e in answers] == [500, 500, 429, 429, 408, 408, 425, 425]
        # The path holds an id: the route is the template, or None, never the raw path.
        for event in events:
            assert event.route == STATUS.get(driver_name)
    elif scenario.name == "in_flight_duplicate_is_409_then_replay":
        assert [e.status for e in answers] == [409, 202, 202]
    elif scenario.name in ("key_required_missing_is_400", "malformed_keys_are_400"):
        assert all(e.status == 400 for e in events if e.decision is Decision.KEY_INVALID)
    elif scenario.name == "keyed_request_body_over_cap_is_413":
        assert events[0].status == 413
    elif scenario.name == "store_unreachable_is_503_and_handler_not_run":
        assert events[0].status == 503
        assert events[0].error == "IdempotencyPersistenceLayerError"
    elif scenario.name == "store_unreachable_fail_open_runs_unprotected":
        assert all(e.error == "IdempotencyPersistenceLayerError" for e in events)
    elif scenario.name == "response_over_cap_reaches_client_then_409_not_replayable":
        assert [e.status for e in answers] == [200, 409]
    if scenario.name in ("first_run_then_replay", "no_key_passes_through"):
        assert all(e.route == ORDERS.get(driver_name) for e in events)


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_raw_adapters_label_with_the_configured_pattern(
    adapter: str, events: list[IdempotencyEvent]
) -> None:
    config = IdempotencyConfig(routes={"/status/*": RouteOptions()})
    driver = DRIVERS[adapter](InMemoryPersistenceLayer(), config)
    headers = [("Idempotency-Key", "k1"), ("Content-Type", "application/json")]
    try:
        assert driver.send(Request("POST", "/status/201", headers, b"{}")).status == 201
        assert driver.send(Request("POST", "/status/201", headers, b"{}")).status == 201
    finally:
        driver.close()
    assert [e.decision for e in events] == [Decision.EXECUTE, Decision.STORED, Decision.REPLAY]
    assert {e.route for e in events} == {"/status/*"}


def test_a_raising_subscriber_never_breaks_a_request(driver_name: str) -> None:
    def broken(event: IdempotencyEvent) -> None:
        raise RuntimeError("subscriber bug")

    seen: list[IdempotencyEvent] = []
    unsubscribe = [subscribe(broken), subscribe(seen.append)]
    driver = ALL_DRIVERS[driver_name](InMemoryPersistenceLayer(), IdempotencyConfig())
    headers = [("Idempotency-Key", "k1"), ("Content-Type", "application/json")]
    try:
        first = driver.send(Request("POST", "/orders", headers, b"{}"))
        again = driver.send(Request("POST", "/orders", headers, b"{}"))
    finally:
        driver.close()
        for undo in unsubscribe:
            undo()
    assert first.status == 201 and again.status == 201
    assert again.body == first.body and again.header("idempotent-replayed") == "true"
    assert driver.counter.value == 1
    # The subscribers after the broken one still got every event.
    assert [e.decision for e in seen] == [Decision.EXECUTE, Decision.STORED, Decision.REPLAY]


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_lease_lost_when_the_claim_lapses(
    adapter: str, events: list[IdempotencyEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renewals fail (the store refuses them), so the 0.2 s claim runs out while the handler
    # sleeps 0.8 s: a retry then claims the key and runs the handler a second time.
    store = InMemoryPersistenceLayer()

    def refuse(*args: Any) -> None:
        raise IdempotencyPersistenceLayerError("renewal refused")

    async def refuse_async(*args: Any) -> None:
        raise IdempotencyPersistenceLayerError("renewal refused")

    monkeypatch.setattr(store, "_renew_lease", refuse)
    monkeypatch.setattr(store, "_renew_lease_async", refuse_async)
    driver = DRIVERS[adapter](store, IdempotencyConfig(lease_seconds=0.2))
    headers = [("Idempotency-Key", "k1"), ("Content-Type", "application/json")]
    call = Request("POST", "/slow?s=0.8", headers, b"{}")
    replies: list[Any] = []
    try:
        first = threading.Thread(target=lambda: replies.append(driver.send(call)))
        first.start()
        time.sleep(0.5)
        second = driver.send(call)
        first.join(10)
    finally:
        driver.close()
    assert second.status == 202 and replies[0].status == 202
    assert driver.counter.value == 2  # what the event warns about: a double run
    lost = [e for e in events if e.decision is Decision.LEASE_LOST]
    assert lost, [e.decision for e in events]
    first_key = events[0].key
    assert events[0].decision is Decision.EXECUTE
    assert lost[0].key == first_key
    assert lost[0].source == adapter and lost[0].method == "POST" and lost[0].store == "memory"
    assert lost[0].error == "IdempotencyPersistenceLayerError"
    assert lost[0].handler_seconds is not None
    # At most one loss reported per execution (the lease and the completion both find out).
    assert len(lost) <= 2


@pytest.mark.parametrize("adapter", list(DRIVERS))
def test_scope_refusals(adapter: str, events: list[IdempotencyEvent]) -> None:
    def scope(request: Any) -> str:
        who = request.header(b"x-who")
        if who is None:
            raise IdempotencyScopeRefusedError("no user")
        if who == b"broken":
            raise RuntimeError("auth backend down")
        return str(who)

    driver = DRIVERS[adapter](InMemoryPersistenceLayer(), IdempotencyConfig(scope=scope))
    headers = [("Idempotency-Key", "k1"), ("Content-Type", "application/json")]
    try:
        assert driver.send(Request("POST", "/orders", headers, b"{}")).status == 401
        broken = [*headers, ("X-Who", "broken")]
        assert driver.send(Request("POST", "/orders", broken, b"{}")).status == 503
    finally:
        driver.close()
    assert [e.decision for e in events] == [Decision.UNAUTHENTICATED, Decision.SCOPE_ERROR]
    assert [e.status for e in events] == [401, 503]
    assert events[1].error == "RuntimeError"
    assert driver.counter.value == 0


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_waiting_duplicate_reports_its_wait(adapter: str, events: list[IdempotencyEvent]) -> None:
    config = IdempotencyConfig(on_in_progress="wait", wait_timeout_seconds=5)
    driver = DRIVERS[adapter](InMemoryPersistenceLayer(), config)
    headers = [("Idempotency-Key", "k1"), ("Content-Type", "application/json")]
    call = Request("POST", "/slow?s=0.4", headers, b"{}")
    replies: list[Any] = []
    try:
        first = threading.Thread(target=lambda: replies.append(driver.send(call)))
        first.start()
        time.sleep(0.1)
        second = driver.send(call)  # waits for the first, then replays it
        first.join(10)
    finally:
        driver.close()
    assert second.status == 202 and second.header("idempotent-replayed") == "true"
    assert [e.decision for e in events] == [Decision.EXECUTE, Decision.STORED, Decision.REPLAY]
    assert events[0].wait_seconds is None  # the first claim never waited
    waited = events[2].wait_seconds
    assert waited is not None and waited > 0
