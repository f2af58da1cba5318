"""Bounded metric labels and bucket bounds shared by the exporters (Prometheus, OpenTelemetry).

Labels are bounded on purpose: decision, method, route template, store kind. Never the key,
the user or the raw path, which clients choose (each distinct value is a new time series in
the metrics backend's memory). A route the integration could not name is ``"unmatched"``; a
method outside the standard set is ``"OTHER"`` (clients may send any token, RFC 9110 section
9.1). One module so that both exporters label the same event the same way.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BUCKETS", "STANDARD_METHODS", "UNMATCHED", "method_label", "route_label"]

#: Seconds: store round trips are ms, handlers and waits up to tens of seconds.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def method_label(method: str | None) -> str:
    """The method, or ``"OTHER"`` outside the standard set (``""`` for functions)."""
    if method is None:
        return ""
    return method if method in STANDARD_METHODS else "OTHER"


def route_label(route: str | None) -> str:
    """The route template, or ``"unmatched"``: never the raw path."""
    return UNMATCHED if route is None else route
