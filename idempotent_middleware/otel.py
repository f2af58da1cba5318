"""OpenTelemetry from the decision events (extra ``otel``: the OpenTelemetry API only).

Per decision, in the request's own context (events are emitted there):

- **Span attributes** on the current span when it records: the server span that the
  application's HTTP instrumentation started. We start no span of our own, so there is no
  tracer to configure. A lost lease also adds a span event, ``idempotency.lease_lost``: it
  stays visible after later decisions overwrite the attributes.
- **Metrics** through the metrics API: the counters and histograms of the Prometheus exporter
  under OpenTelemetry names (dots, durations in seconds, unit ``s``). Their attributes are
  bounded the same way (``_labels``): never the key, the user or the raw path.

The answered status goes in ``idempotency.status``, not ``http.response.status_code``: the HTTP
instrumentation owns that one and sets it from what went on the wire, while an event's status
may be the stored one, and an outer layer may still rewrite the response.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

try:
    from opentelemetry import metrics, trace
except ImportError as exc:  # tested by hiding opentelemetry in sys.modules
    raise ImportError(
        "idempotent_middleware.otel needs the OpenTelemetry API: "
        "pip install 'idempotent-middleware[otel]'"
    ) from exc

from ._labels import DEFAULT_BUCKETS, method_label, route_label
from .events import Decision, IdempotencyEvent, subscribe

__all__ = ["OpenTelemetryInstrumentation"]

#: The instrumentation scope our meter reports (the distribution's import name).
SCOPE = "idempotent_middleware"


class OpenTelemetryInstrumentation:
    """Annotates the current span and records decision metrics through the OpenTelemetry API.

    ``meter_provider`` defaults to the global one (a proxy until the application sets it).
    ``install()`` subscribes to the events (idempotent); ``uninstall()`` stops recording. The
    instruments stay with the meter after ``uninstall()``, so a later ``install()`` resumes.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        prefix: str = "idempotency",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        self.meter = provider.get_meter(SCOPE)
        self.prefix = prefix
        self.decisions = self.meter.create_counter(
            f"{prefix}.decisions", "{decision}", "Idempotency decisions taken, by decision."
        )
        self.lease_lost = self.meter.create_counter(
            f"{prefix}.lease_lost",
            "{lease}",
            "Claims lost while their handler ran: possible double side effects.",
        )
        bounds = list(buckets)
        self.store_duration = self.meter.create_histogram(
            f"{prefix}.store.duration",
            "s",
            "Time spent in the idempotency store per decision.",
            explicit_bucket_boundaries_advisory=bounds,
        )
        self.handler_duration = self.meter.create_histogram(
            f"{prefix}.handler.duration",
            "s",
            "Time the protected handler ran.",
            explicit_bucket_boundaries_advisory=bounds,
        )
        self.wait_duration = self.meter.create_histogram(
            f"{prefix}.wait.duration",
            "s",
            "Time spent waiting for another request's claim.",
            explicit_bucket_boundaries_advisory=bounds,
        )
        self._unsubscribe: Callable[[], None] | None = None

    def install(self) -> OpenTelemetryInstrumentation:
        """Start recording events; calling it twice records once."""
        if self._unsubscribe is None:
            self._unsubscribe = subscribe(self.observe)
        return self

    def uninstall(self) -> None:
        """Stop recording (what was exported stays exported)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def observe(self, event: IdempotencyEvent) -> None:
        """Record one event (the subscriber ``install()`` registers)."""
        span = trace.get_current_span()
        if span.is_recording():
            _annotate(span, event)
        decision = event.decision.value
        route = route_label(event.route)
        self.decisions.add(
            1,
            {
                "decision": decision,
                "method": method_label(event.method),
                "route": route,
                "store": event.store,
            },
        )
        if event.decision is Decision.LEASE_LOST:
            self.lease_lost.add(1, {"route": route, "store": event.store})
        phase = {"decision": decision, "route": route, "store": event.store}
        if event.store_seconds is not None:
            self.store_duration.record(event.store_seconds, phase)
        if event.handler_seconds is not None:
            self.handler_duration.record(event.handler_seconds, phase)
        if event.wait_seconds is not None:
            self.wait_duration.record(event.wait_seconds, phase)


def _annotate(span: trace.Span, event: IdempotencyEvent) -> None:
    """The event on the request's span; a later decision of the same request overwrites."""
    attributes: dict[str, str | bool | int | float] = {
        "idempotency.decision": event.decision.value,
        "idempotency.replayed": event.decision is Decision.REPLAY,
        "idempotency.store": event.store,
    }
    if event.route is not None:
        attributes["idempotency.route"] = event.route
    if event.key is not None:
        attributes["idempotency.key"] = event.key  # the hashed storage key
    if event.status is not None:
        attributes["idempotency.status"] = event.status
    if event.error is not None:
        attributes["idempotency.error"] = event.error
    span.set_attributes(attributes)
    if event.decision is Decision.LEASE_LOST:
        span.set_attribute("idempotency.lease_lost", True)
        details = {k: v for k, v in attributes.items() if k != "idempotency.decision"}
        if event.handler_seconds is not None:
            details["idempotency.handler.duration"] = event.handler_seconds
        span.add_event("idempotency.lease_lost", details)
