"""One scenario table, every row run through both adapters on the in-memory store, on a
real redis-server, on an SQLite file and on a real PostgreSQL. Each row is a list of calls with
what each must answer and how many times the handler has run by then."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
    RouteOptions,
    SQLitePersistenceLayer,
)

from .drivers import DRIVERS, Driver, Reply, Request

JSON = "application/json"
PROBLEM = "application/problem+json"


@dataclass
class Call:
    """One request and what it must get. ``key=None`` sends no key header."""

    expect: int
    key: str | None = "k1"
    body: bytes = b'{"a": 1, "b": 2}'
    method: str = "POST"
    path: str = "/orders"
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = JSON
    replayed: bool = False
    same_as: int | None = None  # index of an earlier call whose body this one repeats
    problem: str | None = None  # problem type slug for error answers
    runs: int | None = None  # handler executions once this call has returned
    background: bool = False  # start this call, wait ``gap`` s, go on with the next
    gap: float = 0.15
    check: Callable[[Reply, list[Reply]], None] | None = None


@dataclass
class Scenario:
    name: str
    calls: list[Call]
    config: dict[str, Any] = field(default_factory=dict)
    store: str = "default"


def _has_cookies(reply: Reply, _: list[Reply]) -> None:
    # Leading whitespace is not part of a field value (RFC 9110 section 5.5); Django's WSGI
    # handler writes cookies with one.
    cookies = [value.strip() for value in reply.values("set-cookie")]
    assert cookies == ["session=abc; Path=/", "theme=dark; Path=/"]


def _fields(reply: Reply, name: str) -> list[str]:
    """A field's values, lines joined with ", " split again (RFC 9110 section 5.3: the same
    field; Django keeps one line per name)."""
    return [part.strip() for value in reply.values(name) for part in value.split(",")]


def _no_cookies_same_order(reply: Reply, replies: list[Reply]) -> None:
    assert reply.values("set-cookie") == []
    assert _fields(reply, "x-multi") == ["one", "two"]
    original = [(k.lower(), v) for k, v in replies[0].headers if k.lower() != "set-cookie"]
    replayed = [(k.lower(), v) for k, v in reply.headers if k.lower() != "idempotent-replayed"]
    assert [h for h in replayed if h[0] in {"x-multi", "content-type"}] == [
        h for h in original if h[0] in {"x-multi", "content-type"}
    ]
    assert reply.header("content-length") == str(len(reply.body))


def _retry_after(reply: Reply, _: list[Reply]) -> None:
    assert int(reply.header("retry-after") or "0") >= 1


def _full_big(reply: Reply, _: list[Reply]) -> None:
    assert reply.body == b"b" * 1000


def _not_replayable(reply: Reply, _: list[Reply]) -> None:
    assert json.loads(reply.body)["original_status"] == 200


LONG = "x" * 256
SCENARIOS = [
    Scenario(
        "first_run_then_replay",
        [
            Call(201, runs=1, check=_has_cookies),
            Call(201, replayed=True, same_as=0, runs=1, check=_no_cookies_same_order),
            Call(201, replayed=True, same_as=0, runs=1),
        ],
    ),
    Scenario(
        "set_cookie_replayed_when_configured",
        [
            Call(201, runs=1),
            Call(201, replayed=True, same_as=0, runs=1, check=_has_cookies),
        ],
        config={"replay_exclude_headers": frozenset()},
    ),
    Scenario(
        "canonical_json_key_order_does_not_matter",
        [
            Call(201, body=b'{"a": 1, "b": 2}', runs=1),
            Call(201, body=b'{"b":2,"a":1}', replayed=True, same_as=0, runs=1),
        ],
    ),
    Scenario(
        "same_key_other_body_is_422",
        [
            Call(201, runs=1),
            Call(422, body=b'{"a": 2}', problem="idempotency-key-reused", runs=1),
            Call(201, replayed=True, same_as=0, runs=1),
        ],
    ),
    Scenario(
        "same_key_other_path_is_its_own_request",
        [
            Call(201, runs=1),
            Call(201, path="/internal/orders", runs=2),
        ],
    ),
    Scenario(
        "no_key_passes_through",
        [
            Call(201, key=None, runs=1),
            Call(201, key=None, runs=2),
        ],
    ),
    Scenario(
        "key_required_missing_is_400",
        [
            Call(400, key=None, problem="idempotency-key-missing", runs=0),
        ],
        config={"raise_on_no_idempotency_key": True},
    ),
    Scenario(
        "malformed_keys_are_400",
        [
            Call(400, key="", problem="idempotency-key-invalid", runs=0),
            Call(400, key=LONG, problem="idempotency-key-invalid", runs=0),
            Call(400, key="caf\u00e9", problem="idempotency-key-invalid", runs=0),
            Call(400, key="a,b", problem="idempotency-key-invalid", runs=0),
            Call(
                400,
                key=None,
                headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
                problem="idempotency-key-invalid",
                runs=0,
            ),
            Call(201, key="x" * 255, runs=1),
        ],
    ),
    Scenario(
        "structured_field_quoted_key_is_the_same_key",
        [
            Call(201, key='"k1"', runs=1),
            Call(201, key="k1", replayed=True, same_as=0, runs=1),
        ],
    ),
    Scenario(
        "unconfigured_methods_pass_through",
        [
            Call(201, method="GET", body=b"", runs=1),
            Call(201, method="GET", body=b"", runs=2),
            Call(201, method="PUT", runs=3),
            Call(201, method="PUT", runs=4),
            Call(201, method="PATCH", runs=5),
            Call(201, method="PATCH", replayed=True, same_as=4, runs=5),
        ],
    ),
    Scenario(
        "excluded_path_passes_through",
        [
            Call(201, path="/internal/orders", runs=1),
            Call(201, path="/internal/orders", runs=2),
        ],
        config={"exclude_paths": ["/internal/*"]},
    ),
    Scenario(
        "per_route_override_requires_key_and_adds_method",
        [
            Call(400, key=None, problem="idempotency-key-missing", runs=0),
            Call(201, method="PUT", runs=1),
            Call(201, method="PUT", replayed=True, same_as=1, runs=1),
        ],
        config={
            "routes": {
                "/orders": RouteOptions(raise_on_no_idempotency_key=True, methods=["POST", "PUT"])
            }
        },
    ),
    Scenario(
        "5xx_429_408_425_are_released_and_rerun",
        [
            Call(500, path="/status/500", runs=1),
            Call(500, path="/status/500", runs=2),
            Call(429, path="/status/429", key="k2", runs=3),
            Call(429, path="/status/429", key="k2", runs=4),
            Call(408, path="/status/408", key="k3", runs=5),
            Call(408, path="/status/408", key="k3", runs=6),
            Call(425, path="/status/425", key="k4", runs=7),
            Call(425, path="/status/425", key="k4", runs=8),
        ],
    ),
    Scenario(
        "4xx_is_stored_and_replayed",
        [
            Call(400, path="/status/400", runs=1),
            Call(400, path="/status/400", replayed=True, same_as=0, runs=1),
            Call(403, path="/status/403", key="k2", runs=2),
            Call(403, path="/status/403", key="k2", replayed=True, same_as=2, runs=2),
        ],
    ),
    Scenario(
        "custom_status_policy",
        [
            Call(404, path="/status/404", runs=1),
            Call(404, path="/status/404", runs=2),
            Call(503, path="/status/503", key="k2", runs=3),
            Call(503, path="/status/503", key="k2", replayed=True, same_as=2, runs=3),
        ],
        config={"store_status": {503}},
    ),
    Scenario(
        "handler_raises_releases_the_key",
        [
            Call(500, path="/boom", runs=1),
            Call(500, path="/boom", runs=2),
        ],
    ),
    Scenario(
        "in_flight_duplicate_is_409_then_replay",
        [
            Call(202, path="/slow", background=True, runs=1),
            Call(409, path="/slow", problem="idempotency-key-in-progress", check=_retry_after),
            Call(202, path="/slow", replayed=True, same_as=0, runs=1),
        ],
    ),
    Scenario(
        "in_flight_duplicate_waits_when_configured",
        [
            Call(202, path="/slow", background=True),
            Call(202, path="/slow", replayed=True, same_as=0, runs=1),
        ],
        config={"on_in_progress": "wait", "wait_timeout_seconds": 5},
    ),
    Scenario(
        "wait_gives_up_with_409_after_timeout",
        [
            Call(202, path="/slow?s=1.0", background=True),
            Call(409, path="/slow?s=1.0", problem="idempotency-key-in-progress", runs=1),
        ],
        config={"on_in_progress": "wait", "wait_timeout_seconds": 0.3},
    ),
    Scenario(
        # The retry comes after the first lease ran out (only a renewal keeps the key) and
        # well before the handler ends. A lease of 0.8 s, not 0.4: the SQLite claim gives up
        # after half a lease waiting for the write lock, and 0.2 s was too little on a loaded
        # machine (the first call was refused 503 and the retry ran instead; CI, 3.10).
        "lease_renewed_while_handler_runs",
        [
            Call(202, path="/slow?s=2.4", background=True, gap=1.4),
            Call(409, path="/slow?s=2.4", problem="idempotency-key-in-progress", runs=1),
        ],
        config={"lease_seconds": 0.8},
    ),
    Scenario(
        "keyed_request_body_over_cap_is_413",
        [
            Call(413, body=b'{"a": "' + b"y" * 100 + b'"}', problem="request-too-large", runs=0),
            Call(201, key=None, body=b'{"a": "' + b"y" * 100 + b'"}', runs=1),
        ],
        config={"max_request_body_bytes": 64},
    ),
    Scenario(
        "response_over_cap_reaches_client_then_409_not_replayable",
        [
            Call(200, path="/big", runs=1, check=_full_big),
            Call(
                409,
                path="/big",
                problem="idempotency-response-not-replayable",
                runs=1,
                check=_not_replayable,
            ),
        ],
        config={"max_response_body_bytes": 100},
    ),
    Scenario(
        "empty_204_replays_as_empty_204",
        [
            Call(204, path="/empty", runs=1),
            Call(204, path="/empty", replayed=True, same_as=0, runs=1),
        ],
    ),
    Scenario(
        "non_json_body_fingerprinted_as_bytes",
        [
            Call(201, body=b"\x00\xffraw", content_type="application/octet-stream", runs=1),
            Call(
                201,
                body=b"\x00\xffraw",
                content_type="application/octet-stream",
                replayed=True,
                same_as=0,
                runs=1,
            ),
            Call(
                422,
                body=b"\x00\xffraw!",
                content_type="application/octet-stream",
                problem="idempotency-key-reused",
                runs=1,
            ),
        ],
    ),
    Scenario(
        "tenants_never_share_replays",
        [
            Call(201, headers=[("X-Tenant", "a")], runs=1),
            Call(201, headers=[("X-Tenant", "b")], runs=2),
            Call(201, headers=[("X-Tenant", "a")], replayed=True, same_as=0, runs=2),
            Call(201, headers=[("X-Tenant", "b")], replayed=True, same_as=1, runs=2),
        ],
        config={"scope": lambda request: (request.header(b"x-tenant") or b"").decode()},
    ),
    Scenario(
        "jmespath_key_from_body",
        [
            Call(201, key=None, body=b'{"order_id": "o-1", "n": 1}', runs=1),
            Call(
                201, key=None, body=b'{"n": 1, "order_id": "o-1"}', replayed=True, same_as=0, runs=1
            ),
            Call(201, key=None, body=b'{"order_id": "o-2", "n": 1}', runs=2),
            Call(201, key=None, body=b'{"n": 1}', runs=3),
        ],
        config={"event_key_jmespath": "body.order_id"},
    ),
    Scenario(
        "jmespath_key_from_header_and_body",
        [
            Call(201, key=None, headers=[("X-Tenant", "t")], body=b'{"ref": 1}', runs=1),
            Call(201, key=None, headers=[("X-Tenant", "u")], body=b'{"ref": 1}', runs=2),
            Call(
                201,
                key=None,
                headers=[("X-Tenant", "t")],
                body=b'{"ref": 1}',
                replayed=True,
                same_as=0,
                runs=2,
            ),
        ],
        config={"event_key_jmespath": '[headers."x-tenant", body.ref]'},
    ),
    Scenario(
        "payload_validation_jmespath_selects_fields",
        [
            Call(201, body=b'{"amount": 5, "note": "x"}', runs=1),
            Call(201, body=b'{"amount": 5, "note": "y"}', replayed=True, same_as=0, runs=1),
            Call(422, body=b'{"amount": 6, "note": "x"}', problem="idempotency-key-reused", runs=1),
        ],
        config={"payload_validation_jmespath": "body.amount"},
    ),
    Scenario(
        "custom_header_and_replay_header_names",
        [
            Call(201, key=None, headers=[("X-Request-Key", "r1")], runs=1),
            Call(
                201,
                key=None,
                headers=[("X-Request-Key", "r1")],
                runs=1,
                check=lambda reply, _: assert_header(reply, "x-was-replayed", "true"),
            ),
            Call(201, runs=2),  # the default header name is not ours any more
        ],
        config={"header_name": "X-Request-Key", "replay_header_name": "X-Was-Replayed"},
    ),
    Scenario(
        "store_unreachable_is_503_and_handler_not_run",
        [
            Call(503, problem="idempotency-store-unavailable", runs=0, check=_retry_after),
            Call(201, key=None, runs=1),  # unkeyed traffic never touches the store
        ],
        store="unreachable",
    ),
    Scenario(
        "store_unreachable_fail_open_runs_unprotected",
        [
            Call(201, runs=1),
            Call(201, runs=2),
        ],
        store="unreachable",
        config={"fail_open": True},
    ),
]


def assert_header(reply: Reply, name: str, value: str) -> None:
    assert reply.header(name) == value


def _store(kind: str, scenario: Scenario, request: pytest.FixtureRequest) -> BasePersistenceLayer:
    if scenario.store == "unreachable":
        return RedisPersistenceLayer(url="redis://127.0.0.1:9/0", socket_connect_timeout=0.5)
    if kind == "memory":
        return InMemoryPersistenceLayer()
    if kind == "sqlite":
        return SQLitePersistenceLayer(request.getfixturevalue("tmp_path") / "scenario.sqlite3")
    if kind == "postgres":
        from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer

        return PostgresPersistenceLayer(dsn=request.getfixturevalue("postgres_dsn"))
    return RedisPersistenceLayer(url=request.getfixturevalue("redis_url"))


@pytest.fixture(params=["memory", "redis", "sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=list(DRIVERS))
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_driver(
    adapter: str, store_kind: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[Scenario], Driver]]:
    made: list[Driver] = []
    stores: list[BasePersistenceLayer] = []

    def make(scenario: Scenario) -> Driver:
        store = _store(store_kind, scenario, request)
        stores.append(store)
        driver = DRIVERS[adapter](store, IdempotencyConfig(**scenario.config))
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()
    for store in stores:
        if store_kind == "postgres":
            store.close()  # type: ignore[attr-defined]


def _request(call: Call) -> Request:
    headers = list(call.headers)
    if call.key is not None:
        headers.append(("Idempotency-Key", call.key))
    if call.content_type is not None:
        headers.append(("Content-Type", call.content_type))
    return Request(call.method, call.path, headers, call.body)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario, make_driver: Callable[[Scenario], Driver]) -> None:
    _run(scenario, make_driver(scenario))


# --- Issue 8: rows named after their item, through every adapter and store ------------------
def test_item3_lower_case_method_is_the_same_request(
    make_driver: Callable[[Scenario], Driver],
) -> None:
    # The framework routes ``post`` as POST (apps.py), so the middleware must see it as POST.
    scenario = Scenario(
        "item3_lower_case_method",
        [
            Call(201, method="post", runs=1),
            Call(201, method="POST", replayed=True, same_as=0, runs=1),
            Call(201, method="post", replayed=True, same_as=0, runs=1),
            Call(422, method="post", body=b"{}", problem="idempotency-key-reused", runs=1),
            Call(201, method="patch", key="k2", runs=2),
            Call(201, method="PATCH", key="k2", replayed=True, same_as=4, runs=2),
        ],
    )
    _run(scenario, make_driver(scenario))


def test_item21_unknown_route_and_method_responses_are_not_stored(
    make_driver: Callable[[Scenario], Driver],
) -> None:
    # A key sent to a route that does not exist must not fill the store: not stored, the
    # claim released, and every retry answered afresh (never replayed).
    scenario = Scenario(
        "item21_not_stored",
        [
            Call(404, path="/no-such-route", runs=0),
            Call(404, path="/no-such-route", runs=0),
            Call(405, method="PATCH", path="/boom", key="k2", runs=0),
            Call(405, method="PATCH", path="/boom", key="k2", runs=0),
            Call(404, path="/status/404", key="k3", runs=1),
            Call(404, path="/status/404", key="k3", runs=2),
            Call(501, path="/status/501", key="k4", runs=3),
            Call(501, path="/status/501", key="k4", runs=4),
        ],
    )
    _run(scenario, make_driver(scenario))


def _run(scenario: Scenario, driver: Driver) -> None:
    replies: list[Reply] = []
    running: dict[int, tuple[threading.Thread, list[Reply]]] = {}

    def join(index: int) -> None:
        thread, box = running.pop(index)
        thread.join(15)
        assert box, f"{scenario.name} call {index} did not finish"
        replies[index] = box[0]
        _verify(scenario, index, scenario.calls[index], box[0], replies, None)

    for index, call in enumerate(scenario.calls):
        if call.same_as in running:  # replaying a background call: let it finish first
            join(call.same_as)
        if call.background:
            box: list[Reply] = []
            request = _request(call)
            thread = threading.Thread(target=lambda r=request, b=box: b.append(driver.send(r)))
            thread.start()
            running[index] = (thread, box)
            replies.append(Reply(0, [], b""))
            time.sleep(call.gap)
            continue
        reply = driver.send(_request(call))
        replies.append(reply)
        _verify(scenario, index, call, reply, replies, driver.counter.value)
    for index in list(running):
        join(index)


def _verify(
    scenario: Scenario,
    index: int,
    call: Call,
    reply: Reply,
    replies: list[Reply],
    runs: int | None,
) -> None:
    where = f"{scenario.name} call {index}"
    assert reply.status == call.expect, f"{where}: {reply.status} {reply.body[:200]!r}"
    assert (reply.header("idempotent-replayed") == "true") == call.replayed, where
    if call.runs is not None and runs is not None:
        assert runs == call.runs, f"{where}: handler ran {runs} times, expected {call.runs}"
    if call.same_as is not None:
        assert reply.body == replies[call.same_as].body, where
        assert reply.status == replies[call.same_as].status, where
    if call.problem is not None:
        assert reply.header("content-type") == PROBLEM, where
        assert reply.header("cache-control") == "no-store", where
        problem = json.loads(reply.body)
        assert problem["type"].endswith("/" + call.problem), where
        assert problem["status"] == call.expect, where
    if call.check is not None:
        call.check(reply, replies)
