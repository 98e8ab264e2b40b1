"""Prometheus metrics of a partner consumer, created on a registry passed in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["PartnerMetrics", "partner_metrics"]

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class PartnerMetrics:
    instructions: Counter
    handler_failures: Counter
    handler_duration: Histogram
    duplicates: Counter
    undecodable: Counter
    ack_delivery_failures: Counter


def partner_metrics(registry: CollectorRegistry) -> PartnerMetrics:
    """The partner SDK's metrics, all labelled by ``partner`` (one registry can hold many)."""
    return PartnerMetrics(
        instructions=Counter(
            "consent_stream_partner_instructions_handled_total",
            "Instructions answered, by action and acknowledgement status.",
            ["partner", "action", "status"],
            registry=registry,
        ),
        handler_failures=Counter(
            "consent_stream_partner_handler_failures_total",
            "Handler attempts that raised (each retry counts).",
            ["partner"],
            registry=registry,
        ),
        handler_duration=Histogram(
            "consent_stream_partner_handler_duration_seconds",
            "Time spent in the partner handler per attempt.",
            ["partner"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        ),
        duplicates=Counter(
            "consent_stream_partner_duplicate_instructions_total",
            "Repeated instructions answered with the remembered ack, handler not called.",
            ["partner"],
            registry=registry,
        ),
        undecodable=Counter(
            "consent_stream_partner_undecodable_instructions_total",
            "Records on the instructions topic that could not be decoded, skipped.",
            ["partner", "reason"],
            registry=registry,
        ),
        ack_delivery_failures=Counter(
            "consent_stream_partner_ack_delivery_failures_total",
            "Acknowledgements the broker did not accept (they are sent again).",
            ["partner"],
            registry=registry,
        ),
    )
