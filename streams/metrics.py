"""Prometheus metrics of the stream processor, built by a factory on a given registry.

Every hop has a latency histogram in seconds: publish -> store, publish -> partner topic
(publish time from the ``cs_published_at`` header), instruction -> acknowledgement; and
publish -> worker (the events agent takes the record), the part of the first two spent in
the broker and the consumer before any processing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BATCH_BUCKETS_RECORDS", "HOP_BUCKETS_SECONDS", "StreamMetrics", "stream_metrics"]

HOP_BUCKETS_SECONDS: Final = (
    # fine below 250 ms, where the latency target (50 ms) and the worker's hops sit, so
    # a p99 read from the buckets is within a few ms there
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
ACK_BUCKETS_SECONDS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
    86400.0,
    604800.0,
)

LOOP_LAG_BUCKETS_SECONDS: Final = (  # up to the session timeout and past it
    0.001,
    0.0025,
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
    60.0,
)
BATCH_BUCKETS_RECORDS: Final = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
SWEEP_BUCKETS_SECONDS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


@dataclass(frozen=True)
class StreamMetrics:
    events: Counter
    deadletters: Counter
    instructions: Counter
    acknowledgements: Counter
    acknowledgements_ignored: Counter
    acknowledgements_parked: Counter
    retention_follow_ups: Counter
    store_retries: Counter
    batch_failures: Counter
    requests_open: Gauge
    requests_overdue: Gauge
    instructions_pending: Gauge
    instructions_overdue: Gauge
    publish_to_worker: Histogram
    publish_to_store: Histogram
    publish_to_partner_topic: Histogram
    instruction_to_ack: Histogram
    requests_finished: Counter
    source_records: Counter
    ledger_tickets: Gauge
    ledger_sweep: Histogram
    batch_records: Histogram
    loop_lag: Histogram
    http_requests: Counter
    http_request_duration: Histogram


def stream_metrics(registry: CollectorRegistry) -> StreamMetrics:
    """Create the stream processor's metrics on ``registry`` (a fresh one in tests)."""
    return StreamMetrics(
        events=Counter(
            "consent_events_total",
            "Inbound events processed, by type and outcome "
            "(applied, duplicate, stale, after_closure).",
            ["type", "outcome"],
            registry=registry,
        ),
        deadletters=Counter(
            "consent_deadletters_total",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        ),
        instructions=Counter(
            "consent_instructions_total",
            "Partner instructions sent, by partner and action.",
            ["partner", "action"],
            registry=registry,
        ),
        acknowledgements=Counter(
            "consent_acknowledgements_total",
            "Partner acknowledgements applied, by partner and status.",
            ["partner", "status"],
            registry=registry,
        ),
        acknowledgements_ignored=Counter(
            "consent_acknowledgements_ignored_total",
            "Acknowledgements that changed nothing, by "
            "reason (unknown_instruction, wrong_partner, repeated, undecodable).",
            ["reason"],
            registry=registry,
        ),
        acknowledgements_parked=Counter(
            "consent_acknowledgements_parked_total",
            "Acknowledgements received before a ticket tracked their instruction, by the "
            "partner whose topic they came on; applied once it does, or dropped after the "
            "grace period and counted as ignored (unknown_instruction).",
            ["partner"],
            registry=registry,
        ),
        retention_follow_ups=Counter(
            "consent_retention_follow_ups_total",
            "ERASE instructions issued when a legal retention ended, by partner.",
            ["partner"],
            registry=registry,
        ),
        store_retries=Counter(
            "consent_store_write_retries_total",
            "Consent store writes retried, by reason: store_unavailable (Redis did not "
            "answer), store_replicas_missing (fewer replicas than required had the writes).",
            ["reason"],
            registry=registry,
        ),
        batch_failures=Counter(
            "consent_batch_failures_total",
            "Batches whose effects failed, by stage (events, acknowledgements, ledger) and "
            "error reason: the agent restarts and handles their records again.",
            ["stage", "reason"],
            registry=registry,
        ),
        requests_open=Gauge(
            "consent_requests_open",
            "Deletion requests without a final status (this worker's partitions).",
            registry=registry,
        ),
        requests_overdue=Gauge(
            "consent_requests_overdue",
            "Deletion requests past their 15-day deadline without a final status.",
            registry=registry,
        ),
        instructions_pending=Gauge(
            "consent_instructions_pending",
            "Partner instructions not yet acknowledged, by partner.",
            ["partner"],
            registry=registry,
        ),
        instructions_overdue=Gauge(
            "consent_instructions_overdue",
            "Partner instructions past their deadline without an acknowledgement, by partner.",
            ["partner"],
            registry=registry,
        ),
        publish_to_worker=Histogram(
            "consent_publish_to_worker_seconds",
            "Latency from publish to the events agent taking the record (the broker and "
            "the consumer, before any processing).",
            registry=registry,
            buckets=HOP_BUCKETS_SECONDS,
        ),
        publish_to_store=Histogram(
            "consent_publish_to_store_seconds",
            "Latency from publish to the consent store write.",
            registry=registry,
            buckets=HOP_BUCKETS_SECONDS,
        ),
        publish_to_partner_topic=Histogram(
            "consent_publish_to_partner_topic_seconds",
            "Latency from publish to the "
            "instruction acknowledged by the broker on the partner's topic.",
            ["partner"],
            registry=registry,
            buckets=HOP_BUCKETS_SECONDS,
        ),
        instruction_to_ack=Histogram(
            "consent_instruction_to_ack_seconds",
            "Latency from instruction issued to its acknowledgement recorded.",
            ["partner"],
            registry=registry,
            buckets=ACK_BUCKETS_SECONDS,
        ),
        requests_finished=Counter(
            "consent_requests_finished_total",
            "Deletion requests that reached a final status, by status.",
            ["status"],
            registry=registry,
        ),
        source_records=Counter(
            "consent_source_records_total",
            "Source records the stream did not deliver in order, by stage "
            "(events, acknowledgements, ledger) and outcome (redelivered: handled "
            "before, skipped; refetched: missing, or taken by a batch that failed, read "
            "from Kafka directly).",
            ["stage", "outcome"],
            registry=registry,
        ),
        ledger_tickets=Gauge(
            "consent_ledger_tickets",
            "Ledger tickets this worker holds with work ahead (open instructions, "
            "retention holds, settled tickets until their grace period ends, "
            "acknowledgements parked ahead of their tickets).",
            registry=registry,
        ),
        ledger_sweep=Histogram(
            "consent_ledger_sweep_seconds",
            "Time the periodic ledger sweep holds the event loop per run: finding the due "
            "tickets in the index and sending their sweep entries (not the broker's "
            "acknowledgement); grows with what is due, not with the tickets held.",
            registry=registry,
            buckets=SWEEP_BUCKETS_SECONDS,
        ),
        batch_records=Histogram(
            "consent_batch_records",
            "Records an agent took at once, by stage (events, acknowledgements, ledger): a "
            "few at low rates, hundreds on a backlog; every batch costs a round trip per "
            "wave of its effects.",
            ["stage"],
            registry=registry,
            buckets=BATCH_BUCKETS_RECORDS,
        ),
        loop_lag=Histogram(
            "consent_event_loop_lag_seconds",
            "How much later than asked a task sleeping 0.25 s at a time woke up on the "
            "worker's event loop (agents, fetching, heartbeats share it; the HTTP API has "
            "its own): held longer than the group session timeout, the worker loses its "
            "partitions.",
            registry=registry,
            buckets=LOOP_LAG_BUCKETS_SECONDS,
        ),
        http_requests=Counter(
            "consent_http_requests_total",
            "Requests the worker's HTTP API answered, by route (its template: never a "
            "subject id) and HTTP status code.",
            ["route", "code"],
            registry=registry,
        ),
        http_request_duration=Histogram(
            "consent_http_request_duration_seconds",
            "Time the worker's HTTP API took to answer a request, by route (from the "
            "handler's start: the token check and the Redis round trip included).",
            ["route"],
            registry=registry,
            buckets=LOOP_LAG_BUCKETS_SECONDS,  # 1 ms .. 60 s
        ),
    )
