"""Scenario 7: hostile input, generated (hypothesis), in process, on the in-memory store.

Every property runs through the ASGI adapter (raw ASGI calls) and, where the adapter matters,
the WSGI adapter (werkzeug's test machinery, wrapped in ``LintMiddleware``). The middleware
must answer as the rules say (2xx for the app, 400/413/422 for the client's mistakes) and must
never raise or answer 5xx by itself. Together the properties run more than 10,000 cases.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

import jmespath
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from tests.reliability._inprocess import (
    AsgiCaller,
    CountingAsgiApp,
    CountingWsgiApp,
    Result,
    wsgi_call,
)
from tests.reliability.conftest import Figures

pytestmark = pytest.mark.timeout(240)

RELAXED = (HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example)
JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/problem+json",
    "application/vnd.api+json",
]
OTHER_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; b=x",
    "application/octet-stream",
    "application/jsonx",
    "json",
    "",
]
MAX_KEY = 255


@pytest.fixture(scope="module")
def asgi() -> Iterator[AsgiCaller]:
    caller = AsgiCaller()
    yield caller
    caller.close()


def _asgi_app(**config: Any) -> tuple[IdempotencyMiddleware, CountingAsgiApp]:
    inner = CountingAsgiApp()
    middleware = IdempotencyMiddleware(
        inner, persistence_store=InMemoryPersistenceLayer(), config=IdempotencyConfig(**config)
    )
    return middleware, inner


def _wsgi_app(**config: Any) -> tuple[WSGIIdempotencyMiddleware, CountingWsgiApp]:
    inner = CountingWsgiApp()
    middleware = WSGIIdempotencyMiddleware(
        inner, persistence_store=InMemoryPersistenceLayer(), config=IdempotencyConfig(**config)
    )
    return middleware, inner


def _never_broken(result: Result) -> None:
    """The middleware neither raised nor produced a 5xx of its own (the apps never do)."""
    assert result.error is None, f"the middleware raised {result.error!r}"
    assert 200 <= result.status < 500, (result.status, result.body[:300])


# --- The key header: an oracle written from the rules (RFC 8941 sf-string, Stripe's 255) ------
def expected_key(raw: bytes) -> bytes | None:
    """The key a single header line carries, or None when it is malformed (strict RFC 8941)."""
    value = raw.strip(b" \t")
    if value[:1] == b'"':
        out = bytearray()
        i = 1
        while True:
            if i >= len(value):
                return None  # no closing quote
            c = value[i]
            if c == 0x5C:  # backslash: only \" and \\ (RFC 8941 section 4.2.5)
                if i + 1 >= len(value) or value[i + 1] not in (0x22, 0x5C):
                    return None
                out.append(value[i + 1])
                i += 2
            elif c == 0x22:
                if i != len(value) - 1:
                    return None  # something after the closing quote
                break
            else:
                out.append(c)
                i += 1
        key = bytes(out)
    elif b"," in value or b'"' in value:
        return None
    else:
        key = value
    if not 1 <= len(key) <= MAX_KEY or any(c < 0x20 or c > 0x7E for c in key):
        return None
    return key


def sf_string(key: bytes) -> bytes:
    return b'"' + key.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


printable = st.binary(max_size=40).map(lambda b: bytes(0x20 + c % 95 for c in b))
key_values = st.one_of(
    printable,
    printable.map(lambda b: b"  " + b + b"\t"),
    printable.map(sf_string),
    st.binary(max_size=60),
    st.sampled_from([b"", b'""', b'"', b"a,b", b'"a,b"', b'"a" b', b"\xff", b'"\\"', b"a\x00"]),
    st.integers(MAX_KEY - 2, MAX_KEY + 2).map(lambda n: b"k" * n),
    st.integers(256, 70_000).map(lambda n: b"h" * n),  # huge
)
other_headers = st.lists(
    st.tuples(
        st.sampled_from([b"x-a", b"content-type", b"x-tenant", b"cookie", b"x-huge", b"host"]),
        st.one_of(st.binary(max_size=50), st.integers(0, 100_000).map(lambda n: b"v" * n)),
    ),
    max_size=4,
)


def _key_case(
    lines: list[bytes], others: list[tuple[bytes, bytes]], combined: bytes | None
) -> bytes | None:
    """The expected key for these key header lines as the adapter sees them."""
    if not lines:
        return None
    if combined is None:  # ASGI: every line is its own header
        if len(lines) > 1:
            return None
        combined = lines[0]
    return expected_key(combined)


def _check_key_answer(result: Result, lines: list[bytes], key: bytes | None) -> str:
    _never_broken(result)
    if not lines:
        assert result.status == 201 and not result.replayed  # no key: passes through
        return "no-key"
    if key is None:
        assert result.status == 400, (lines, result.status, result.body)
        assert result.problem_type() == "idempotency-key-invalid"
        return "invalid"
    assert result.status == 201 and not result.replayed, (lines, result.status, result.body)
    return "valid"


def test_key_header_values_asgi(asgi: AsgiCaller, figures: Figures) -> None:
    outcomes: dict[str, int] = {}

    @settings(max_examples=2200, deadline=None, suppress_health_check=RELAXED)
    @given(
        lines=st.lists(key_values, max_size=3),
        others=other_headers,
        second=key_values,
    )
    def check(lines: list[bytes], others: list[tuple[bytes, bytes]], second: bytes) -> None:
        app, inner = _asgi_app()
        headers = [(b"idempotency-key", line) for line in lines] + others
        first = asgi(app, "POST", "/orders", headers, b"{}")
        key = _key_case(lines, others, None)
        outcome = _check_key_answer(first, lines, key)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if key is None:
            return
        # The same key in its canonical sf-string form is the same key: a replay.
        again = asgi(app, "POST", "/orders", [(b"idempotency-key", sf_string(key))], b"{}")
        _never_broken(again)
        assert again.replayed and again.body == first.body
        # Another valid key never collides with it.
        other = expected_key(second)
        if other is not None:
            third = asgi(app, "POST", "/orders", [(b"idempotency-key", second)], b"{}")
            _never_broken(third)
            assert third.replayed == (other == key), (key, other)
        assert inner.runs == 1 + (other is not None and other != key)

    check()
    figures(
        "hostile-input",
        property="key header values (ASGI)",
        cases=sum(outcomes.values()),
        outcomes=outcomes,
    )


def test_key_header_values_wsgi(figures: Figures) -> None:
    outcomes: dict[str, int] = {}
    text = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))

    @settings(max_examples=1500, deadline=None, suppress_health_check=RELAXED)
    @given(lines=st.lists(st.one_of(key_values, text), max_size=3))
    def check(lines: list[bytes]) -> None:
        lines = [line.replace(b"\r", b"").replace(b"\n", b"") for line in lines]
        app, inner = _wsgi_app()
        headers = [("Idempotency-Key", line.decode("latin-1")) for line in lines]
        result = wsgi_call(app, "POST", "/orders", headers, b"{}")
        # WSGI servers join repeated lines with ", " (PEP 3333): the middleware sees one value.
        combined = b", ".join(lines) if lines else None
        key = _key_case(lines, [], combined)
        outcome = _check_key_answer(result, lines, key)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if key is not None:
            again = wsgi_call(
                app, "POST", "/orders", [("Idempotency-Key", sf_string(key).decode())], b"{}"
            )
            _never_broken(again)
            assert again.replayed and again.body == result.body and inner.runs == 1

    check()
    figures(
        "hostile-input",
        property="key header values (WSGI)",
        cases=sum(outcomes.values()),
        outcomes=outcomes,
    )


# --- Bodies and content types -----------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "broken-json", "deep", "huge-text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=1500))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "broken-json":
        valid = json.dumps(draw(json_values)).encode()
        cut = draw(st.integers(0, len(valid)))
        return valid[:cut] + draw(st.sampled_from([b"", b"}", b",", b"\x00", b"\xff", b"]]"]))
    if kind == "deep":
        depth = draw(st.integers(1, 5000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + b"1" + closer * depth
    return b"x" * draw(st.integers(1000, 60_000))


def _json_canonical(content_type: str, body: bytes) -> bytes | None:
    main = content_type.split(";", 1)[0].strip().lower()
    if not (main == "application/json" or main.endswith("+json")):
        return None
    try:
        return json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (ValueError, RecursionError):
        return None


content_types = st.one_of(st.sampled_from(JSON_TYPES + OTHER_TYPES), st.text(max_size=30))


def _body_property(send: Any, outcomes: dict[str, int]) -> Any:
    counter = itertools.count()

    @given(ct=content_types, body=bodies(), ct2=content_types, body2=bodies(), same=st.booleans())
    def check(ct: str, body: bytes, ct2: str, body2: bytes, same: bool) -> None:
        key = f"body-{next(counter)}"
        if same:
            ct2, body2 = ct, body
        first = send(key, ct, body)
        _never_broken(first)
        assert first.status == 201 and not first.replayed
        again = send(key, ct, body)
        _never_broken(again)
        assert again.replayed and again.body == first.body and again.status == 201
        third = send(key, ct2, body2)
        _never_broken(third)
        assert third.status in (201, 422), third.status
        c1, c2 = _json_canonical(ct, body), _json_canonical(ct2, body2)
        if (c1 is None) != (c2 is None):
            outcome = "mixed"  # one parsed as JSON, one not: either answer is defensible
        elif (c1 == c2) if c1 is not None else (body == body2):
            assert third.replayed, "the same logical request must replay"
            outcome = "replay"
        else:
            assert third.status == 422 and third.problem_type() == "idempotency-key-reused"
            outcome = "reused"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    return check


def test_bodies_and_content_types_asgi(asgi: AsgiCaller, figures: Figures) -> None:
    app, _ = _asgi_app(max_request_body_bytes=128 * 1024)
    outcomes: dict[str, int] = {}

    def send(key: str, ct: str, body: bytes) -> Result:
        headers = [(b"idempotency-key", key.encode()), (b"content-type", ct.encode("utf-8"))]
        return asgi(app, "POST", "/orders", headers, body, chunk_size=4096)

    prop = settings(max_examples=1500, deadline=None, suppress_health_check=RELAXED)(
        _body_property(send, outcomes)
    )
    prop()
    figures(
        "hostile-input",
        property="bodies and content types (ASGI)",
        cases=sum(outcomes.values()),
        outcomes=outcomes,
    )


def test_bodies_and_content_types_wsgi(figures: Figures) -> None:
    app, _ = _wsgi_app(max_request_body_bytes=128 * 1024)
    outcomes: dict[str, int] = {}

    def send(key: str, ct: str, body: bytes) -> Result:
        headers = [("Idempotency-Key", key), ("Content-Type", ct.encode("utf-8").decode("latin-1"))]
        return wsgi_call(app, "POST", "/orders", headers, body)

    prop = settings(max_examples=1000, deadline=None, suppress_health_check=RELAXED)(
        _body_property(send, outcomes)
    )
    prop()
    figures(
        "hostile-input",
        property="bodies and content types (WSGI)",
        cases=sum(outcomes.values()),
        outcomes=outcomes,
    )


# --- Memory is bounded by the caps ------------------------------------------------------------
CAP = 1024


def test_request_body_cap_asgi(asgi: AsgiCaller, figures: Figures) -> None:
    app, _ = _asgi_app(max_request_body_bytes=CAP)
    counter = itertools.count()
    cases = 0

    @settings(max_examples=1000, deadline=None, suppress_health_check=RELAXED)
    @given(
        size=st.integers(0, 3 * CAP),
        chunk=st.integers(1, 2 * CAP),
        declared=st.sampled_from(["exact", "absent", "understated"]),
    )
    def check(size: int, chunk: int, declared: str) -> None:
        nonlocal cases
        cases += 1
        headers = [(b"idempotency-key", f"cap-{next(counter)}".encode())]
        if declared == "exact":
            headers.append((b"content-length", str(size).encode()))
        elif declared == "understated":
            headers.append((b"content-length", b"1"))
        result = asgi(app, "POST", "/upload", headers, b"u" * size, chunk_size=chunk)
        _never_broken(result)
        if size <= CAP:
            assert result.status == 201, (size, result.status)
        else:
            assert result.status == 413 and result.problem_type() == "request-too-large"
            # Bounded: never more than the cap plus the chunk that crossed it.
            assert result.body_bytes_pulled <= CAP + chunk
            if declared == "exact":
                assert result.body_bytes_pulled == 0  # refused on Content-Length alone

    check()
    figures("hostile-input", property="request body cap (ASGI)", cases=cases, cap_bytes=CAP)


def test_request_body_cap_wsgi(figures: Figures) -> None:
    app, _ = _wsgi_app(max_request_body_bytes=CAP)
    counter = itertools.count()
    cases = 0

    @settings(max_examples=800, deadline=None, suppress_health_check=RELAXED)
    @given(size=st.integers(0, 3 * CAP), with_length=st.booleans())
    def check(size: int, with_length: bool) -> None:
        nonlocal cases
        cases += 1
        headers = [("Idempotency-Key", f"cap-{next(counter)}")]
        result = wsgi_call(app, "POST", "/upload", headers, b"u" * size, content_length=with_length)
        _never_broken(result)
        if size <= CAP:
            assert result.status == 201, (size, result.status, result.body)
            assert json.loads(result.body)["size"] == size  # the app got the whole body
        else:
            assert result.status == 413 and result.problem_type() == "request-too-large"
            assert result.body_bytes_pulled <= (CAP + 1 if not with_length else 0)

    check()
    figures("hostile-input", property="request body cap (WSGI)", cases=cases, cap_bytes=CAP)


# --- Random JMESPath expressions on random documents ----------------------------------------
NAMES = [
    "body",
    "headers",
    "query",
    "method",
    "path",
    "a",
    "b",
    "id",
    "items",
    "order_id",
    '"idempotency-key"',
    '"x-tenant"',
    "@",
]
FUNCTIONS = [
    "length",
    "keys",
    "values",
    "to_string",
    "to_number",
    "to_array",
    "type",
    "sort",
    "max",
    "min",
    "sum",
    "abs",
    "reverse",
    "not_null",
    "avg",
    "ceil",
    "floor",
]
LITERALS = ["`1`", '`"x"`', "`null`", "`[]`", "`{}`", "'raw'", "`true`"]

expressions = st.recursive(
    st.sampled_from(NAMES + LITERALS),
    lambda e: st.one_of(
        st.tuples(e, st.sampled_from(NAMES[:-1])).map(lambda t: f"{t[0]}.{t[1]}"),
        st.tuples(e, st.integers(-3, 3)).map(lambda t: f"{t[0]}[{t[1]}]"),
        e.map(lambda x: f"{x}[*]"),
        e.map(lambda x: f"{x}[]"),
        e.map(lambda x: f"{x}[::-1]"),
        st.tuples(e, e).map(lambda t: f"{t[0]} || {t[1]}"),
        st.tuples(e, e).map(lambda t: f"{t[0]} && {t[1]}"),
        st.tuples(e, e).map(lambda t: f"{t[0]} | {t[1]}"),
        st.tuples(e, e).map(lambda t: f"{t[0]} == {t[1]}"),
        st.lists(e, min_size=1, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(e, min_size=1, max_size=3).map(
            lambda xs: "{" + ", ".join(f"k{i}: {x}" for i, x in enumerate(xs)) + "}"
        ),
        st.tuples(st.sampled_from(FUNCTIONS), e).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(e, e).map(lambda t: f"{t[0]}[?{t[1]}]"),
        e.map(lambda x: f"!{x}"),
        e.map(lambda x: f"({x})"),
    ),
    max_leaves=6,
)


def _document(query: str, headers: list[tuple[str, str]], body: bytes, ct: str) -> dict[str, Any]:
    from urllib.parse import parse_qsl

    return {
        "method": "POST",
        "path": "/orders",
        "query": dict(parse_qsl(query, keep_blank_values=True)),
        "headers": {k.lower(): v for k, v in headers},
        "body": json.loads(_json_canonical(ct, body) or b"null"),
    }


def test_random_jmespath_on_random_documents(asgi: AsgiCaller, figures: Figures) -> None:
    outcomes: dict[str, int] = {}

    @settings(max_examples=1500, deadline=None, suppress_health_check=RELAXED)
    @given(
        expression=expressions,
        doc=json_values,
        ct=st.sampled_from([*JSON_TYPES[:2], "text/plain"]),
        query=st.sampled_from(["", "a=1", "a=1&a=2&b=", "id=%00%ff", "x"]),
        tenant=st.sampled_from(["", "t1", "é"]),
    )
    def check(expression: str, doc: Any, ct: str, query: str, tenant: str) -> None:
        try:
            compiled = jmespath.compile(expression)
        except jmespath.exceptions.JMESPathError:
            assume(False)  # a bad expression is a configuration error, refused up front
            return
        app, inner = _asgi_app(event_key_jmespath=expression)
        body = json.dumps(doc).encode()
        header_pairs = [("content-type", ct), ("x-tenant", tenant)]
        headers = [(k.encode(), v.encode()) for k, v in header_pairs]
        first = asgi(app, "POST", "/orders", headers, body, query=query.encode())
        second = asgi(app, "POST", "/orders", headers, body, query=query.encode())
        _never_broken(first)
        _never_broken(second)
        assert first.status == 201 and not first.replayed
        try:
            material = compiled.search(_document(query, header_pairs, body, ct))
        except jmespath.exceptions.JMESPathError:
            material = None
        if BasePersistenceLayer.is_missing_idempotency_key(material):
            assert not second.replayed and inner.runs == 2  # no key: not de-duplicated
            outcome = "no-key"
        else:
            assert second.replayed and second.body == first.body and inner.runs == 1
            outcome = "keyed"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    check()
    figures(
        "hostile-input",
        property="random JMESPath on random documents",
        cases=sum(outcomes.values()),
        outcomes=outcomes,
    )


# --- Scopes never collide; one logical request is one key ---------------------------------------
def _tenant(request: Any) -> str | None:
    value = request.header(b"x-tenant")
    return None if value is None else value.decode("latin-1")


identities = st.tuples(
    st.sampled_from([None, "", "a", "b", "a\x00b", "A"]) | st.text(max_size=5),
    st.sampled_from(["POST", "PATCH"]),
    st.sampled_from(["/", "/orders", "/orders/", "/Orders", "/orders#x", "/a b", "/é"])
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=8).map(
        lambda s: "/" + s
    ),
    st.sampled_from(["k", "K", "k ", "1", "a,b"]).filter(lambda k: "," not in k)
    | printable.filter(lambda b: expected_key(b) is not None).map(lambda b: b.decode()),
)


def _identity_headers(tenant: str | None, key: str) -> list[tuple[str, str]]:
    headers = [("Idempotency-Key", sf_string(key.encode()).decode())]
    if tenant is not None:
        headers.append(("X-Tenant", tenant))
    return headers


def _on_the_wire(identity: tuple[Any, ...]) -> tuple[Any, ...]:
    tenant, method, path, key = identity
    sent = None if tenant is None else tenant.encode("latin-1", "replace")
    return (sent, method, path, key)


def test_scopes_never_collide(asgi: AsgiCaller, figures: Figures) -> None:
    cases = {"asgi": 0, "wsgi": 0}
    examples = 0

    @settings(max_examples=900, deadline=None, suppress_health_check=RELAXED)
    @given(first=identities, second=identities, mutate=st.integers(0, 4))
    def check(first: tuple[Any, ...], second: tuple[Any, ...], mutate: int) -> None:
        nonlocal examples
        examples += 1
        if mutate < 4:  # often: the same identity with one field changed (or none)
            second = tuple(second[i] if i == mutate else first[i] for i in range(4))
        # Keys travel as sf-strings, so "k " and "k" differ; a tenant travels as
        # latin-1 with "?" for what latin-1 cannot hold, so compare what was sent.
        same = _on_the_wire(first) == _on_the_wire(second)
        for adapter in ("asgi", "wsgi"):
            if adapter == "wsgi" and any("\x00" in (t or "") for t in (first[0], second[0])):
                continue  # NUL cannot travel in a WSGI header
            results = []
            if adapter == "asgi":
                app, _ = _asgi_app(scope=_tenant)
                for tenant, method, path, key in (first, second):
                    headers = [
                        (k.lower().encode(), v.encode("latin-1", "replace"))
                        for k, v in _identity_headers(tenant, key)
                    ]
                    results.append(asgi(app, method, path, headers, b"{}"))
            else:
                wapp, _ = _wsgi_app(scope=_tenant)
                for tenant, method, path, key in (first, second):
                    headers = [
                        (k, v.encode("latin-1", "replace").decode("latin-1"))
                        for k, v in _identity_headers(tenant, key)
                    ]
                    results.append(wsgi_call(wapp, method, path, headers, b"{}", lint=False))
            for result in results:
                _never_broken(result)
            assert results[0].status == 201 and not results[0].replayed
            assert results[1].status == 201
            assert results[1].replayed == same, (first, second)
            cases[adapter] += 1

    check()
    figures(
        "hostile-input",
        property="scopes never collide (tenant, method, path, key)",
        cases=examples,
        requests_per_adapter=cases,
    )


def _serialise_shuffled(value: Any, rng: random.Random) -> str:
    """JSON with every object's keys in a random order and random whitespace."""
    space = rng.choice(["", " ", "\n  "])
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        inner = f",{space}".join(
            f"{json.dumps(k)}:{space}{_serialise_shuffled(v, rng)}" for k, v in items
        )
        return "{" + space + inner + space + "}"
    if isinstance(value, list):
        return "[" + f",{space}".join(_serialise_shuffled(v, rng) for v in value) + "]"
    return json.dumps(value, ensure_ascii=rng.random() < 0.5)


def test_key_order_does_not_change_the_fingerprint(asgi: AsgiCaller, figures: Figures) -> None:
    cases = 0
    counter = itertools.count()
    app, inner = _asgi_app()
    wapp, winner = _wsgi_app()

    @settings(max_examples=700, deadline=None, suppress_health_check=RELAXED)
    @given(
        doc=st.dictionaries(st.text(max_size=6), json_values, min_size=2, max_size=6),
        seed=st.integers(0, 2**32),
        ct=st.sampled_from(JSON_TYPES),
    )
    def check(doc: dict[str, Any], seed: int, ct: str) -> None:
        nonlocal cases
        cases += 1
        rng = random.Random(seed)
        one, two = _serialise_shuffled(doc, rng).encode(), _serialise_shuffled(doc, rng).encode()
        key = f"order-{next(counter)}"
        headers = [(b"idempotency-key", key.encode()), (b"content-type", ct.encode())]
        first = asgi(app, "POST", "/orders", headers, one)
        second = asgi(app, "POST", "/orders", headers, two)
        _never_broken(first)
        _never_broken(second)
        assert second.replayed and second.body == first.body, (one, two)
        wheaders = [("Idempotency-Key", key), ("Content-Type", ct)]
        wfirst = wsgi_call(wapp, "POST", "/orders", wheaders, one)
        wsecond = wsgi_call(wapp, "POST", "/orders", wheaders, two)
        assert wsecond.replayed and wsecond.body == wfirst.body

    check()
    assert inner.runs == cases and winner.runs == cases
    figures("hostile-input", property="canonical JSON: key order and whitespace", cases=cases)


# --- Found by the properties above: kept as explicit cases ---------------------------------------
@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_deeply_nested_key_material_never_raises(adapter: str, asgi: AsgiCaller) -> None:
    failures = []
    for depth in range(600, 1001):
        body = b"[" * depth + b"]" * depth
        headers = [("Content-Type", "application/json")]
        if adapter == "asgi":
            app, _ = _asgi_app(event_key_jmespath="body")
            result = asgi(app, "POST", "/orders", [(b"content-type", b"application/json")], body)
        else:
            wapp, _ = _wsgi_app(event_key_jmespath="body")
            result = wsgi_call(wapp, "POST", "/orders", headers, body, lint=False)
        if result.error is not None or result.status >= 500:
            failures.append((depth, repr(result.error)[:80]))
    assert not failures, failures[:3]


@pytest.mark.parametrize("raw", [b'"a\\"', b'"a\\b"', b'"\\\\""'])
def test_malformed_quoted_keys_are_rejected(raw: bytes, asgi: AsgiCaller) -> None:
    assert expected_key(raw) is None
    app, _ = _asgi_app()
    result = asgi(app, "POST", "/orders", [(b"idempotency-key", raw)], b"{}")
    _never_broken(result)
    assert result.status == 400, (raw, result.status)
