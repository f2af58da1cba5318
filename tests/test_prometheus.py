"""Prometheus exporter: label guards and counting on synthetic events, then a real scrape."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from idempotent_middleware.events import Decision, IdempotencyEvent, emit
from idempotent_middleware.prometheus import PrometheusMetrics


@pytest.fixture
def metrics() -> Iterator[PrometheusMetrics]:
    installed = PrometheusMetrics(registry=CollectorRegistry()).install()
    yield installed
    installed.uninstall()


def _event(decision: Decision, **fields: object) -> IdempotencyEvent:
    values: dict[str, object] = {
        "source": "asgi",
        "method": "POST",
        "route": "/orders/{id}",
        "status": 201,
        "store": "memory",
        "key": "POST /orders/1#abc",
    }
    values.update(fields)
    return IdempotencyEvent(decision, **values)  # type: ignore[arg-type]


def _decisions(metrics: PrometheusMetrics, **labels: str) -> float | None:
    return metrics.registry.get_sample_value("idempotency_decisions_total", labels)


def test_counts_decisions_and_times_phases(metrics: PrometheusMetrics) -> None:
    emit(_event(Decision.EXECUTE, store_seconds=0.002))
    emit(_event(Decision.STORED, handler_seconds=0.3, store_seconds=0.001))
    emit(_event(Decision.REPLAY, store_seconds=0.001))
    emit(_event(Decision.REPLAY, store_seconds=0.001, wait_seconds=1.5))
    labels = {"method": "POST", "route": "/orders/{id}", "store": "memory"}
    assert _decisions(metrics, decision="execute", **labels) == 1
    assert _decisions(metrics, decision="replay", **labels) == 2
    sample = metrics.registry.get_sample_value
    hist = {"route": "/orders/{id}", "store": "memory"}
    assert sample("idempotency_store_seconds_count", {"decision": "replay", **hist}) == 2
    assert sample("idempotency_handler_seconds_sum", {"decision": "stored", **hist}) == 0.3
    assert sample("idempotency_wait_seconds_count", {"decision": "replay", **hist}) == 1
    assert sample("idempotency_wait_seconds_count", {"decision": "execute", **hist}) is None


def test_lease_lost_has_its_own_counter(metrics: PrometheusMetrics) -> None:
    emit(_event(Decision.LEASE_LOST, handler_seconds=12.0))
    labels = {"route": "/orders/{id}", "store": "memory"}
    assert metrics.registry.get_sample_value("idempotency_lease_lost_total", labels) == 1


def test_cardinality_guards(metrics: PrometheusMetrics) -> None:
    emit(_event(Decision.NO_KEY, method="BREW", route=None))
    emit(_event(Decision.EXECUTE, method="PROPFIND", route=None))
    assert (
        _decisions(metrics, decision="no_key", method="OTHER", route="unmatched", store="memory")
        == 1
    )
    families = {f.name: f for f in metrics.registry.collect()}
    for sample in families["idempotency_decisions"].samples:
        assert "key" not in sample.labels
        assert sample.labels["method"] in {"OTHER", "POST"}
        assert "BREW" not in sample.labels.values()


def test_function_events_have_an_empty_method(metrics: PrometheusMetrics) -> None:
    emit(_event(Decision.EXECUTE, source="function", method=None, route=None))
    assert _decisions(metrics, decision="execute", method="", route="unmatched", store="memory")


def test_uninstall_stops_counting_and_install_is_idempotent(metrics: PrometheusMetrics) -> None:
    metrics.install()  # second install: still one subscriber
    emit(_event(Decision.EXECUTE))
    labels = {"decision": "execute", "method": "POST", "route": "/orders/{id}", "store": "memory"}
    assert _decisions(metrics, **labels) == 1
    metrics.uninstall()
    emit(_event(Decision.EXECUTE))
    assert _decisions(metrics, **labels) == 1
    metrics.install()
    emit(_event(Decision.EXECUTE))
    assert _decisions(metrics, **labels) == 2


def test_custom_prefix_and_buckets() -> None:
    custom = PrometheusMetrics(CollectorRegistry(), prefix="payments_idem", buckets=(0.5, 1.0))
    custom.install()
    try:
        emit(_event(Decision.EXECUTE, store_seconds=0.7))
    finally:
        custom.uninstall()
    sample = custom.registry.get_sample_value
    labels = {"decision": "execute", "route": "/orders/{id}", "store": "memory"}
    assert sample("payments_idem_store_seconds_bucket", {**labels, "le": "0.5"}) == 0
    assert sample("payments_idem_store_seconds_bucket", {**labels, "le": "1.0"}) == 1


@pytest.mark.e2e
def test_real_uvicorn_scrape(tmp_path: object) -> None:
    from pathlib import Path

    from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, start_server

    assert isinstance(tmp_path, Path)
    server = start_server(
        "metrics", "uvicorn", "tests.e2e.metrics_app:app", workers=1, log_dir=tmp_path,
        redis_url=None,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT_SECONDS) as client:
            headers = {"Idempotency-Key": "k-1", "content-type": "application/json"}
            first = client.post("/orders/1", content=b'{"qty": 1}', headers=headers)
            replay = client.post("/orders/1", content=b'{"qty": 1}', headers=headers)
            mismatch = client.post("/orders/1", content=b'{"qty": 2}', headers=headers)
            assert (first.status_code, replay.status_code) == (201, 201)
            assert replay.content == first.content
            assert mismatch.status_code == 422
            scrape = client.get("/metrics")
        assert scrape.status_code == 200
        text = scrape.text
    finally:
        server.stop()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "idempotency_decisions_total":
                assert sample.labels["route"] == "/orders/*"  # the pattern, not the path
                assert sample.labels["method"] == "POST"
                assert sample.labels["store"] == "memory"
                counts[sample.labels["decision"]] = sample.value
            if sample.name == "idempotency_store_seconds_count" and (
                sample.labels["decision"] == "replay"
            ):
                assert sample.value == 1
    assert counts == {"execute": 1, "stored": 1, "replay": 1, "payload_mismatch": 1}
    print("\n".join(line for line in text.splitlines() if "decisions_total{" in line))
