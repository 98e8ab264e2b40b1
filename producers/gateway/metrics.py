"""Prometheus metrics of the HTTP gateway, created on a registry passed in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["GatewayMetrics", "gateway_metrics"]

_DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(frozen=True, slots=True)
class GatewayMetrics:
    events: Counter
    rejected: Counter
    requests: Counter
    request_duration: Histogram


def gateway_metrics(registry: CollectorRegistry) -> GatewayMetrics:
    """The gateway's metrics on ``registry`` (a fresh one in tests)."""
    return GatewayMetrics(
        events=Counter(
            "consent_gateway_events_total",
            "Events posted to the gateway, by source and outcome "
            "(accepted, rejected, not_delivered, not_sent).",
            ["source", "outcome"],
            registry=registry,
        ),
        rejected=Counter(
            "consent_gateway_rejected_events_total",
            "Events rejected by the gateway (never sent), by reason.",
            ["reason"],
            registry=registry,
        ),
        requests=Counter(
            "consent_gateway_requests_total",
            "POST /v1/events requests answered, by HTTP status code.",
            ["code"],
            registry=registry,
        ),
        request_duration=Histogram(
            "consent_gateway_request_duration_seconds",
            "Time from a POST /v1/events request to its answer (delivery reports included).",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        ),
    )
