"""The pure HTTP core: key parsing, the stored-response format, problems, routing."""

from __future__ import annotations

import gc
import hashlib
import json
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer, RouteOptions
from idempotent_middleware._steps import drive
from idempotent_middleware.config import default_store_status
from idempotent_middleware.exceptions import IdempotencyCorruptRecordError
from idempotent_middleware.http.engine import Execute, HttpIdempotency, PassThrough, Respond
from idempotent_middleware.http.keys import parse_key
from idempotent_middleware.http.request import HttpRequest
from idempotent_middleware.http.response import StoredResponse


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"abc-123", "abc-123"),
        (b'"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (b'"with \\"quote\\""', 'with "quote"'),
        (b"  padded\t", "padded"),
        (b"x" * 255, "x" * 255),
        (b"", None),
        (b'""', None),
        (b"x" * 256, None),
        (b"a,b", None),
        (b"caf\xc3\xa9", None),
        (b"tab\tinside", None),
        (b'"unterminated', None),
        (b'"a"b"', None),
    ],
)
def testparse_key(raw: bytes, expected: str | None) -> None:
    assert parse_key(raw) == (None if expected is None else expected.encode())


@given(
    status=st.integers(100, 599),
    headers=st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=8),
    body=st.binary(max_size=2000),
    complete=st.booleans(),
)
def test_stored_response_round_trip(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, complete: bool
) -> None:
    response = StoredResponse(status, headers, body, complete)
    assert StoredResponse.decode(response.encode()) == response


@given(st.binary(max_size=64))
def test_stored_response_decode_never_crashes(raw: bytes) -> None:
    try:
        decoded = StoredResponse.decode(raw)
    except IdempotencyCorruptRecordError:
        return
    assert 0 <= decoded.status <= 0xFFFF


def test_problems_are_rfc9457_with_distinct_types() -> None:
    engine = HttpIdempotency(IdempotencyConfig(), InMemoryPersistenceLayer())
    problems = engine.problems
    responses = [
        problems.missing,
        problems.invalid,
        problems.reused,
        problems.too_large,
        problems.incomplete,
        problems.unavailable,
        problems.corrupt,
        problems.in_progress(3),
        problems.not_replayable(201),
    ]
    types = set()
    for response in responses:
        headers = dict(response.headers)
        assert headers[b"content-type"] == b"application/problem+json"
        assert headers[b"cache-control"] == b"no-store"
        body = json.loads(response.body)
        assert body["status"] == response.status
        types.add(body["type"])
    assert len(types) == len(responses)
    assert dict(problems.in_progress(2.2).headers)[b"retry-after"] == b"3"


def test_routing_rules() -> None:
    config = IdempotencyConfig(
        exclude_paths=["/internal/*"],
        routes={
            "/payments*": RouteOptions(raise_on_no_idempotency_key=True, expires_after_seconds=60),
            "/uploads": RouteOptions(methods=["PUT"]),
        },
    )
    engine = HttpIdempotency(config, InMemoryPersistenceLayer())
    assert engine.rule("GET", "/orders") is None
    assert engine.rule("POST", "/internal/x") is None
    payments = engine.rule("POST", "/payments/1")
    assert payments is not None
    assert payments.key_required
    assert payments.expires_after_seconds == 60
    assert engine.rule("PUT", "/uploads") is not None
    assert engine.rule("POST", "/uploads") is None
    orders = engine.rule("PATCH", "/orders")
    assert orders is not None
    assert not orders.key_required


# --- Issue 8 ----------------------------------------------------------------------------------
def _request(method: str, path: str, key: bytes = b"k1", body: bytes = b"{}") -> HttpRequest:
    headers = [(b"content-type", b"application/json"), (b"idempotency-key", key)]
    return HttpRequest(method, path, b"", headers, None, body)


def _begin(engine: HttpIdempotency, request: HttpRequest) -> Respond | Execute | PassThrough:
    """The adapters' order: the rule, the header checks, then the claim."""
    rule = engine.rule(request.method, request.path)
    assert rule is not None, f"{request.method} {request.path[:40]} passed through"
    assert engine.precheck(request, rule) is None
    return drive(engine.store, engine.begin(request, rule))


def _claimed_key(engine: HttpIdempotency, request: HttpRequest) -> str:
    action = _begin(engine, request)
    assert isinstance(action, Execute), action
    return action.claim.idempotency_key


def test_item3_lower_case_method_is_handled() -> None:
    # Werkzeug and Django route ``post`` as POST: so must we, or the retry runs again.
    for config in (IdempotencyConfig(), IdempotencyConfig(routes={"/up*": RouteOptions()})):
        engine = HttpIdempotency(config, InMemoryPersistenceLayer())
        assert engine.rule("post", "/orders") is not None
        assert engine.rule("Patch", "/uploads") is not None
        assert engine.rule("get", "/orders") is None
    engine = HttpIdempotency(
        IdempotencyConfig(routes={"/uploads": RouteOptions(methods=["put"])}),
        InMemoryPersistenceLayer(),
    )
    assert engine.rule("pUt", "/uploads") is not None
    assert engine.rule("post", "/uploads") is None


def test_item3_lower_and_upper_case_method_are_one_request() -> None:
    engine = HttpIdempotency(IdempotencyConfig(), InMemoryPersistenceLayer())
    first = _begin(engine, _request("post", "/orders"))
    assert isinstance(first, Execute)
    assert first.claim.idempotency_key.startswith("POST /orders#")
    # Same key, same fingerprint: the duplicate of an in-flight request.
    second = _begin(engine, _request("POST", "/orders"))
    assert isinstance(second, Respond)
    assert second.response.status == 409
    assert _request("pOsT", "/orders").document()["method"] == "POST"


#: The longest storage key for the default methods and sha256, whatever the path.
KEY_BOUND = len("PATCH ") + 128 + len("#") + 64


def test_item12_storage_key_is_bounded_whatever_the_path() -> None:
    engine = HttpIdempotency(IdempotencyConfig(), InMemoryPersistenceLayer())
    key = _claimed_key(engine, _request("POST", "/" + "p" * 40 * 1024))
    assert len(key.encode()) <= KEY_BOUND
    # Multi-byte characters count in bytes, not characters.
    key = _claimed_key(engine, _request("POST", "/" + "\u00e9" * 4096))
    assert len(key.encode()) <= KEY_BOUND


@pytest.mark.parametrize("path", ["/orders/\x00", "/\x00" + "n" * 200, "/a\x00b", "/\x00"])
def test_storage_key_never_contains_nul(path: str) -> None:
    """ASGI paths are percent-decoded (``/orders/%00``); PostgreSQL text refuses NUL, so no
    store may be handed one. Such paths take the hashed form, still one key per path."""
    engine = HttpIdempotency(IdempotencyConfig(), InMemoryPersistenceLayer())
    key = _claimed_key(engine, _request("POST", path))
    assert "\x00" not in key
    other = _claimed_key(engine, _request("POST", path.replace("\x00", "")))
    assert key != other


def test_item12_long_paths_sharing_a_prefix_are_different_keys() -> None:
    engine = HttpIdempotency(IdempotencyConfig(), InMemoryPersistenceLayer())
    prefix = "/" + "a" * 1024
    one = _claimed_key(engine, _request("POST", prefix + "/one"))
    two = _claimed_key(engine, _request("POST", prefix + "/two"))
    assert one != two
    # The method is covered by the hash of a long path too.
    patch = _claimed_key(engine, _request("PATCH", prefix + "/one"))
    assert patch.split("#")[-1] != one.split("#")[-1]


def test_item12_long_path_key_covers_the_tenant() -> None:
    config = IdempotencyConfig(scope=lambda request: (request.header(b"x-tenant") or b"").decode())
    engine = HttpIdempotency(config, InMemoryPersistenceLayer())
    path = "/" + "t" * 4096
    keys = set()
    for tenant in (b"a", b"b"):
        request = _request("POST", path)
        request.headers.append((b"x-tenant", tenant))
        keys.add(_claimed_key(engine, request))
    assert len(keys) == 2


def test_item12_key_format_is_the_documented_one() -> None:
    """The README's recipe, computed independently: operators look keys up with it."""
    engine = HttpIdempotency(IdempotencyConfig(), InMemoryPersistenceLayer())
    digest = hashlib.sha256(b"k1").hexdigest()
    assert _claimed_key(engine, _request("post", "/orders")) == f"POST /orders#{digest}"
    path = "/" + "x" * 127  # 128 bytes: still the readable form
    assert _claimed_key(engine, _request("POST", path)) == f"POST {path}#{digest}"
    long_path = "/" + "\u00e9" * 100  # 201 bytes
    readable = f"POST {long_path}#{digest}".encode()
    folded = hashlib.sha256(b"\xff" + readable).hexdigest()
    prefix = long_path.encode()[:64].decode("utf-8", "ignore")
    assert _claimed_key(engine, _request("POST", long_path)) == f"POST {prefix}...#{folded}"


def test_item14_route_matching_pins_no_request_strings() -> None:
    config = IdempotencyConfig(
        include_paths=["/api/*"], routes={"/api/uploads/*": RouteOptions(methods=["PUT"])}
    )
    engine = HttpIdempotency(config, InMemoryPersistenceLayer())
    filler = "z" * 10 * 1024
    engine.rule("POST", "/api/warm-up")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            assert engine.rule("GET", f"/api/{i}/{filler}") is None
            assert engine.rule("POST", f"/api/{i}/{filler}") is not None
            assert engine.rule("POST", f"/other/{i}/{filler}") is None
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 15,000 distinct 10 KiB paths went through; keeping even 1% of them would be 1.5 MiB.
    assert retained < 256 * 1024, f"{retained} bytes retained by route matching"


def test_item14_get_is_decided_by_method_alone() -> None:
    config = IdempotencyConfig(routes={"/api/*": RouteOptions(methods=["POST", "PUT"])})
    engine = HttpIdempotency(config, InMemoryPersistenceLayer())
    assert engine.rule("GET", "/api/x") is None
    assert engine.rule("PUT", "/api/x") is not None
    assert engine.rule("PUT", "/elsewhere") is None  # PUT only where a route adds it
    assert engine.rule("PATCH", "/elsewhere") is not None


@pytest.mark.parametrize(
    ("status", "stored"),
    [
        *[(status, True) for status in (200, 201, 204, 400, 403, 409, 422)],
        *[(status, False) for status in (404, 405, 501, 500, 503, 408, 425, 429)],
    ],
)
def test_item21_default_store_status(status: int, stored: bool) -> None:
    assert default_store_status(status) is stored


def _readme_recipe() -> Any:
    """The ``storage_key`` function printed in the README, executed as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("  def storage_key(")
    end = readme.index("```", start)
    source = textwrap.dedent(readme[readme.rindex("```python", 0, start) + 9 : end])
    namespace: dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    return namespace["storage_key"]


@pytest.mark.parametrize(
    "path",
    [
        "/orders",
        "/" + "x" * 127,
        "/" + "x" * 128,
        "/" + "\u00e9" * 100,
        "/" + "a" * 40960,
        "/orders/\x00",
    ],
)
@pytest.mark.parametrize("tenant", [None, "tenant-a"])
def test_item12_readme_key_recipe_matches(path: str, tenant: str | None) -> None:
    storage_key = _readme_recipe()
    config = IdempotencyConfig(scope=None if tenant is None else lambda _request: tenant)
    engine = HttpIdempotency(config, InMemoryPersistenceLayer())
    assert _claimed_key(engine, _request("patch", path)) == storage_key(
        "patch", path, b"k1", tenant
    )
