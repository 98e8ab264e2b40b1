"""Prometheus metrics of the HTTP gateway, created on a registry passed in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from streams.metrics import HOP_BUCKETS_SECONDS

__all__ = ["GatewayMetrics", "gateway_metrics"]


@dataclass(frozen=True, slots=True)
class GatewayMetrics:
    events: Counter
    rejected: Counter
    requests: Counter
    request_duration: Histogram
    acks: Counter


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
            buckets=HOP_BUCKETS_SECONDS,  # 5 ms .. 300 s, as the worker's hops
            registry=registry,
        ),
        acks=Counter(
            "consent_gateway_acks_total",
            "Partner callbacks (POST /v1/acks), by partner (unknown: none that may call "
            "back) and outcome (accepted, unauthorized, invalid, too_large, not_sent, "
            "not_delivered).",
            ["partner", "outcome"],
            registry=registry,
        ),
    )
