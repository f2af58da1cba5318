"""OpenTelemetry exporter: span attributes and metrics from real requests, checked with the SDK.

Each request runs inside a server span started by a thin wrapper around the middleware (what
an HTTP instrumentation does), on a tracer provider of the test's own: the global providers
are never set. Metrics go to an in-memory reader on a meter provider passed in.
"""

from __future__ import annotations

import ast
import importlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.metrics import NoOpCounter, NoOpHistogram, NoOpMeter, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import Attributes

import idempotent_middleware
from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    RouteOptions,
)
from idempotent_middleware.events import Decision, IdempotencyEvent, emit, subscribe
from idempotent_middleware.exceptions import IdempotencyPersistenceLayerError
from idempotent_middleware.otel import OpenTelemetryInstrumentation

from .scenarios.drivers import AsgiDriver, Driver, Reply, Request, WsgiDriver

pytestmark = pytest.mark.timeout(120)

#: The header naming the request in the tests; the server span takes it as its name.
CALL = "X-Test-Call"
JSON = ("Content-Type", "application/json")
ROUTES = IdempotencyConfig(routes={"/status/*": RouteOptions(), "/slow": RouteOptions()})


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    tracer: trace.Tracer
    reader: InMemoryMetricReader
    instrumentation: OpenTelemetryInstrumentation

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans.get_finished_spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans.get_finished_spans()]
        return found[0]

    def metric(self, name: str) -> Metric:
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return metric
        raise AssertionError(f"no metric {name}")

    def counts(self, name: str) -> dict[tuple[tuple[str, Any], ...], float]:
        """Data point value by its sorted attributes."""
        points: dict[tuple[tuple[str, Any], ...], float] = {}
        for point in self.metric(name).data.data_points:
            assert isinstance(point, NumberDataPoint)
            points[_key(point.attributes)] = point.value
        return points

    def histogram(self, name: str) -> dict[tuple[tuple[str, Any], ...], HistogramDataPoint]:
        points: dict[tuple[tuple[str, Any], ...], HistogramDataPoint] = {}
        for point in self.metric(name).data.data_points:
            assert isinstance(point, HistogramDataPoint)
            points[_key(point.attributes)] = point
        return points


def _key(attributes: Attributes) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((attributes or {}).items()))


def _labels(**labels: str) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(labels.items()))


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentation = OpenTelemetryInstrumentation(meter_provider=meter_provider).install()
    try:
        yield Telemetry(spans, tracer_provider.get_tracer("tests"), reader, instrumentation)
    finally:
        instrumentation.uninstall()
        meter_provider.shutdown()
        tracer_provider.shutdown()


@pytest.fixture
def events() -> Iterator[list[IdempotencyEvent]]:
    seen: list[IdempotencyEvent] = []
    unsubscribe = subscribe(seen.append)
    yield seen
    unsubscribe()


def _call_name(headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]]) -> str:
    for name, value in headers:
        text = name.decode("latin-1") if isinstance(name, bytes) else name
        if text.lower() == CALL.lower():
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return "unnamed"


class TracedAsgiDriver(AsgiDriver):
    """The ASGI driver with a server span around the middleware, as ASGI instrumentation does."""

    tracer: trace.Tracer

    def build(self, store: BasePersistenceLayer, config: IdempotencyConfig) -> Any:
        app = super().build(store, config)

        async def traced(scope: dict[str, Any], receive: Any, send: Any) -> None:
            name = _call_name(scope["headers"])
            with self.tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER):
                await app(scope, receive, send)

        return traced


class TracedWsgiDriver(WsgiDriver):
    """The WSGI driver with the whole exchange (body read and closed) inside a server span."""

    tracer: trace.Tracer

    def send(self, request: Request) -> Reply:
        name = _call_name(request.headers)
        with self.tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER):
            return super().send(request)


def _driver(
    kind: type[TracedAsgiDriver] | type[TracedWsgiDriver],
    telemetry: Telemetry,
    config: IdempotencyConfig = ROUTES,
    store: BasePersistenceLayer | None = None,
) -> Driver:
    kind.tracer = telemetry.tracer
    return kind(InMemoryPersistenceLayer() if store is None else store, config)


def _post(
    driver: Driver, name: str, path: str, body: bytes = b"{}", key: str | None = "k1"
) -> Reply:
    headers = [JSON, (CALL, name)]
    if key is not None:
        headers.append(("Idempotency-Key", key))
    return driver.send(Request("POST", path, headers, body))


def test_asgi_requests_annotate_their_server_span(
    telemetry: Telemetry, events: list[IdempotencyEvent]
) -> None:
    driver = _driver(TracedAsgiDriver, telemetry)
    try:
        assert _post(driver, "first", "/status/201").status == 201
        assert _post(driver, "replay", "/status/201").status == 201
        assert _post(driver, "mismatch", "/status/201", b'{"a": 2}').status == 422
        slow: list[Reply] = []
        running = threading.Thread(target=lambda: slow.append(_post(driver, "slow", "/slow")))
        running.start()
        time.sleep(0.2)  # the slow call holds its claim for 0.5 s
        assert _post(driver, "in-progress", "/slow").status == 409
        running.join(15)
    finally:
        driver.close()
    assert slow[0].status == 202
    assert events[0].decision is Decision.EXECUTE
    first = telemetry.span("first").attributes or {}
    # Two decisions on the first request (execute, then stored): the span keeps the last.
    assert dict(first) == {
        "idempotency.decision": "stored",
        "idempotency.replayed": False,
        "idempotency.store": "memory",
        "idempotency.route": "/status/*",
        "idempotency.key": events[0].key,
        "idempotency.status": 201,
    }
    key = first["idempotency.key"]
    assert isinstance(key, str) and key.startswith("POST /status/201#")
    assert "k1" not in key.rpartition("#")[2]  # the hashed storage key, never the client's
    replay = telemetry.span("replay").attributes or {}
    assert replay["idempotency.decision"] == "replay"
    assert replay["idempotency.replayed"] is True
    assert replay["idempotency.status"] == 201
    assert replay["idempotency.key"] == key
    mismatch = telemetry.span("mismatch").attributes or {}
    assert mismatch["idempotency.decision"] == "payload_mismatch"
    assert mismatch["idempotency.status"] == 422 and mismatch["idempotency.replayed"] is False
    conflict = telemetry.span("in-progress").attributes or {}
    assert conflict["idempotency.decision"] == "in_progress"
    assert conflict["idempotency.status"] == 409
    assert conflict["idempotency.route"] == "/slow"
    for span in telemetry.spans.get_finished_spans():
        assert (span.attributes or {}).get("idempotency.route") in ("/status/*", "/slow")
        assert "http.response.status_code" not in (span.attributes or {})
        assert not span.events  # no lease was lost

    counts = telemetry.counts("idempotency.decisions")
    status = {"method": "POST", "route": "/status/*", "store": "memory"}
    slow_route = {"method": "POST", "route": "/slow", "store": "memory"}
    assert counts == {
        _labels(decision="execute", **status): 1,
        _labels(decision="stored", **status): 1,
        _labels(decision="replay", **status): 1,
        _labels(decision="payload_mismatch", **status): 1,
        _labels(decision="execute", **slow_route): 1,
        _labels(decision="in_progress", **slow_route): 1,
        _labels(decision="stored", **slow_route): 1,
    }
    assert telemetry.metric("idempotency.decisions").unit == "{decision}"
    for name in ("store", "handler"):
        assert telemetry.metric(f"idempotency.{name}.duration").unit == "s"
    store = telemetry.histogram("idempotency.store.duration")
    # Every decision of this table made a store round trip.
    assert {labels: point.count for labels, point in store.items()} == {
        _labels(decision=d, route="/status/*", store="memory"): 1
        for d in ("execute", "stored", "replay", "payload_mismatch")
    } | {
        _labels(decision=d, route="/slow", store="memory"): 1
        for d in ("execute", "in_progress", "stored")
    }
    handler = telemetry.histogram("idempotency.handler.duration")
    assert set(handler) == {
        _labels(decision="stored", route="/status/*", store="memory"),
        _labels(decision="stored", route="/slow", store="memory"),
    }
    slow_run = handler[_labels(decision="stored", route="/slow", store="memory")]
    assert slow_run.count == 1 and slow_run.sum >= 0.5  # the handler slept 0.5 s
    # The bucket bounds are seconds (the SDK's default ones are meant for milliseconds).
    assert slow_run.explicit_bounds[0] == 0.001 and 60.0 in slow_run.explicit_bounds


def test_missing_key_is_400_on_the_span_and_counted(telemetry: Telemetry) -> None:
    config = IdempotencyConfig(raise_on_no_idempotency_key=True, routes=ROUTES.routes)
    driver = _driver(TracedAsgiDriver, telemetry, config)
    try:
        assert _post(driver, "no-key", "/status/201", key=None).status == 400
    finally:
        driver.close()
    attributes = dict(telemetry.span("no-key").attributes or {})
    assert attributes == {
        "idempotency.decision": "key_invalid",
        "idempotency.replayed": False,
        "idempotency.store": "memory",
        "idempotency.route": "/status/*",
        "idempotency.status": 400,
    }  # no key: no key attribute
    assert telemetry.counts("idempotency.decisions") == {
        _labels(decision="key_invalid", method="POST", route="/status/*", store="memory"): 1
    }


def test_wsgi_request_annotates_its_span(telemetry: Telemetry) -> None:
    driver = _driver(TracedWsgiDriver, telemetry)
    assert _post(driver, "first", "/status/201").status == 201
    assert _post(driver, "replay", "/status/201").status == 201
    assert (telemetry.span("first").attributes or {})["idempotency.decision"] == "stored"
    replay = telemetry.span("replay").attributes or {}
    assert replay["idempotency.replayed"] is True and replay["idempotency.route"] == "/status/*"
    counts = telemetry.counts("idempotency.decisions")
    labels = {"method": "POST", "route": "/status/*", "store": "memory"}
    assert counts == {_labels(decision=d, **labels): 1 for d in ("execute", "stored", "replay")}


@pytest.mark.parametrize("kind", [TracedAsgiDriver, TracedWsgiDriver], ids=["asgi", "wsgi"])
def test_a_lost_lease_is_a_span_event_and_counted(
    kind: type[TracedAsgiDriver] | type[TracedWsgiDriver],
    telemetry: Telemetry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Renewals are refused, so the 0.2 s claim lapses while the handler sleeps 0.8 s. The
    # loss is found by the renewer (a task, or for WSGI a thread of its own), whose event
    # must still reach the request's span.
    store = InMemoryPersistenceLayer()

    def refuse(*args: Any) -> None:
        raise IdempotencyPersistenceLayerError("renewal refused")

    async def refuse_async(*args: Any) -> None:
        raise IdempotencyPersistenceLayerError("renewal refused")

    monkeypatch.setattr(store, "_renew_lease", refuse)
    monkeypatch.setattr(store, "_renew_lease_async", refuse_async)
    config = IdempotencyConfig(lease_seconds=0.2, routes={"/slow": RouteOptions()})
    driver = _driver(kind, telemetry, config, store)
    try:
        assert _post(driver, "lost", "/slow?s=0.8").status == 202
    finally:
        driver.close()
    span = telemetry.span("lost")
    lost = [e for e in span.events if e.name == "idempotency.lease_lost"]
    assert len(lost) == 1
    event_attributes = lost[0].attributes or {}
    assert event_attributes["idempotency.key"] == (span.attributes or {})["idempotency.key"]
    assert event_attributes["idempotency.error"] == "IdempotencyPersistenceLayerError"
    assert (span.attributes or {})["idempotency.lease_lost"] is True
    assert telemetry.metric("idempotency.lease_lost").unit == "{lease}"
    lost_counts = telemetry.counts("idempotency.lease_lost")
    assert lost_counts == {_labels(route="/slow", store="memory"): 1}


def test_labels_are_bounded_as_for_prometheus(telemetry: Telemetry) -> None:
    for method in ("BREW", "PROPFIND"):
        emit(IdempotencyEvent(Decision.NO_KEY, "asgi", method, None, 200, "memory", None))
    emit(IdempotencyEvent(Decision.EXECUTE, "function", None, None, None, "memory", "k#h"))
    counts = telemetry.counts("idempotency.decisions")
    assert counts == {
        _labels(decision="no_key", method="OTHER", route="unmatched", store="memory"): 2,
        _labels(decision="execute", method="", route="unmatched", store="memory"): 1,
    }


def test_outside_a_span_only_metrics(telemetry: Telemetry) -> None:
    # No current span (a non-recording one): nothing to annotate, the metrics still count.
    assert not trace.get_current_span().is_recording()
    emit(IdempotencyEvent(Decision.REPLAY, "asgi", "POST", "/a", 201, "memory", "k#h"))
    assert sum(telemetry.counts("idempotency.decisions").values()) == 1
    assert telemetry.spans.get_finished_spans() == ()


def test_install_is_idempotent_and_uninstall_stops(telemetry: Telemetry) -> None:
    event = IdempotencyEvent(Decision.EXECUTE, "asgi", "POST", "/a", None, "memory", "k#h")
    labels = _labels(decision="execute", method="POST", route="/a", store="memory")
    assert telemetry.instrumentation.install() is telemetry.instrumentation
    emit(event)
    assert telemetry.counts("idempotency.decisions")[labels] == 1
    telemetry.instrumentation.uninstall()
    emit(event)
    assert telemetry.counts("idempotency.decisions")[labels] == 1
    telemetry.instrumentation.install()
    emit(event)
    assert telemetry.counts("idempotency.decisions")[labels] == 2


def test_custom_prefix_and_buckets() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    custom = OpenTelemetryInstrumentation(provider, prefix="payments.idem", buckets=(0.5, 1.0))
    custom.install()
    try:
        emit(
            IdempotencyEvent(
                Decision.EXECUTE, "asgi", "POST", "/a", None, "memory", "k#h", store_seconds=0.7
            )
        )
    finally:
        custom.uninstall()
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {m.name: m for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert set(metrics) == {"payments.idem.decisions", "payments.idem.store.duration"}
    (point,) = metrics["payments.idem.store.duration"].data.data_points
    assert isinstance(point, HistogramDataPoint)
    assert point.explicit_bounds == (0.5, 1.0) and point.bucket_counts == (0, 1, 0)
    provider.shutdown()


class _RaisingCounter(NoOpCounter):
    def add(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("meter backend bug")


class _RaisingHistogram(NoOpHistogram):
    def record(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("meter backend bug")


class _BrokenMeter(NoOpMeter):
    def create_counter(self, name: str, *args: Any, **kwargs: Any) -> _RaisingCounter:
        return _RaisingCounter(name)

    def create_histogram(self, name: str, *args: Any, **kwargs: Any) -> _RaisingHistogram:
        return _RaisingHistogram(name)


class _BrokenMeterProvider(NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> _BrokenMeter:
        return _BrokenMeter(name)


def test_a_broken_meter_never_breaks_a_request(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    broken = OpenTelemetryInstrumentation(_BrokenMeterProvider()).install()
    driver = _driver(TracedAsgiDriver, telemetry)
    try:
        with caplog.at_level(logging.ERROR, logger="idempotent_middleware.events"):
            first = _post(driver, "first", "/status/201")
            again = _post(driver, "replay", "/status/201")
    finally:
        driver.close()
        broken.uninstall()
    assert (first.status, again.status) == (201, 201)
    assert again.body == first.body and again.header("idempotent-replayed") == "true"
    assert driver.counter.value == 1
    raised = [r for r in caplog.records if "subscriber" in r.getMessage()]
    assert len(raised) == 3  # execute, stored, replay: each logged, none reached the client
    # The working instrumentation installed alongside still saw everything.
    assert sum(telemetry.counts("idempotency.decisions").values()) == 3


def test_a_clear_import_error_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "idempotent_middleware.otel")
    with pytest.raises(ImportError, match=r"pip install 'idempotent-middleware\[otel\]'"):
        importlib.import_module("idempotent_middleware.otel")


def test_only_the_otel_module_imports_opentelemetry() -> None:
    # redis-py itself loads opentelemetry when present, so "not in sys.modules" proves nothing:
    # check our own imports, then that the package works with opentelemetry absent.
    package = Path(idempotent_middleware.__file__).parent
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n == "opentelemetry" or n.startswith("opentelemetry.") for n in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"otel.py"}
    code = (
        "import sys; sys.modules['opentelemetry'] = None; "
        "import idempotent_middleware, idempotent_middleware.asgi, idempotent_middleware.wsgi"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
