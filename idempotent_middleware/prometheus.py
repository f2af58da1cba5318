"""Prometheus metrics from the decision events (extra ``prometheus``: ``prometheus_client``).

Labels are bounded on purpose (see ``_labels``, shared with the OpenTelemetry exporter):
decision, method, route template, store kind. Never the key, the user or the raw path, which
clients choose (each distinct value is a new time series in the server's memory). A route the
integration could not name is ``"unmatched"``; a method outside the standard set is ``"OTHER"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from ._labels import DEFAULT_BUCKETS, STANDARD_METHODS, method_label, route_label
from .events import Decision, IdempotencyEvent, subscribe

__all__ = [
    "DEFAULT_BUCKETS",
    "STANDARD_METHODS",
    "PrometheusMetrics",
    "method_label",
    "route_label",
]


class PrometheusMetrics:
    """Counts decisions and times store, handler and wait phases into a registry.

    ``install()`` subscribes to the events (idempotent); ``uninstall()`` stops counting. The
    metrics stay registered after ``uninstall()``, so a later ``install()`` resumes them.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        prefix: str = "idempotency",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.prefix = prefix
        self.decisions = Counter(
            f"{prefix}_decisions",
            "Idempotency decisions taken, by decision.",
            ["decision", "method", "route", "store"],
            registry=self.registry,
        )
        self.lease_lost = Counter(
            f"{prefix}_lease_lost",
            "Claims lost while their handler ran: possible double side effects.",
            ["route", "store"],
            registry=self.registry,
        )
        labels = ["decision", "route", "store"]
        self.store_seconds = Histogram(
            f"{prefix}_store_seconds",
            "Seconds spent in the idempotency store per decision.",
            labels,
            buckets=buckets,
            registry=self.registry,
        )
        self.handler_seconds = Histogram(
            f"{prefix}_handler_seconds",
            "Seconds the protected handler ran.",
            labels,
            buckets=buckets,
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            f"{prefix}_wait_seconds",
            "Seconds spent waiting for another request's claim.",
            labels,
            buckets=buckets,
            registry=self.registry,
        )
        self._unsubscribe: Callable[[], None] | None = None

    def install(self) -> PrometheusMetrics:
        """Start counting events; calling it twice counts once."""
        if self._unsubscribe is None:
            self._unsubscribe = subscribe(self.observe)
        return self

    def uninstall(self) -> None:
        """Stop counting (the series already exported stay in the registry)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def observe(self, event: IdempotencyEvent) -> None:
        """Record one event (the subscriber ``install()`` registers)."""
        decision = event.decision.value
        route = route_label(event.route)
        self.decisions.labels(decision, method_label(event.method), route, event.store).inc()
        if event.decision is Decision.LEASE_LOST:
            self.lease_lost.labels(route, event.store).inc()
        if event.store_seconds is not None:
            self.store_seconds.labels(decision, route, event.store).observe(event.store_seconds)
        if event.handler_seconds is not None:
            self.handler_seconds.labels(decision, route, event.store).observe(event.handler_seconds)
        if event.wait_seconds is not None:
            self.wait_seconds.labels(decision, route, event.store).observe(event.wait_seconds)
