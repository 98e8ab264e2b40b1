"""Prometheus metrics of the webhook bridge, created on a registry passed in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["OUTCOMES", "WebhookMetrics", "webhook_metrics"]

OUTCOMES = ("acknowledged", "accepted", "refused", "deadline")
"""``acknowledged``: the answer carried the ack; ``accepted``: 202, callback later;
``refused``: a final failure (acknowledged FAILED); ``deadline``: not delivered before
the instruction's due-by (acknowledged FAILED)."""

_ROUND_TRIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class WebhookMetrics:
    deliveries: Counter
    retries: Counter
    round_trip: Histogram
    in_flight: Gauge
    deadline_failures: Counter


def webhook_metrics(registry: CollectorRegistry) -> WebhookMetrics:
    """The bridge's metrics, labelled by ``partner`` (one registry can hold several)."""
    return WebhookMetrics(
        deliveries=Counter(
            "consent_stream_webhook_deliveries_total",
            "Instructions finished by the webhook bridge, by outcome.",
            ["partner", "outcome"],
            registry=registry,
        ),
        retries=Counter(
            "consent_stream_webhook_retries_total",
            "Webhook attempts that will be tried again, by cause.",
            ["partner", "cause"],
            registry=registry,
        ),
        round_trip=Histogram(
            "consent_stream_webhook_round_trip_seconds",
            "Time from sending a webhook request to its complete answer, per attempt.",
            ["partner"],
            buckets=_ROUND_TRIP_BUCKETS,
            registry=registry,
        ),
        in_flight=Gauge(
            "consent_stream_webhook_requests_in_flight",
            "Webhook requests sent and not answered yet.",
            ["partner"],
            registry=registry,
        ),
        deadline_failures=Counter(
            "consent_stream_webhook_deadline_failures_total",
            "Instructions acknowledged FAILED because they were not delivered before due-by.",
            ["partner"],
            registry=registry,
        ),
    )
