"""The Faust application: thin agents that decode, call the processors, and send.

Built by ``create_app`` from settings and injected dependencies; nothing connects at
import time. Agents on consent paths run with ``concurrency=1``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry

from schemas.cloudevents import header_map
from schemas.policy import Policy
from schemas.settings import Settings
from streams import transport
from streams.inbound import Inbound
from streams.ledger_processor import LedgerProcessor
from streams.metrics import StreamMetrics
from streams.processor import EventProcessor
from streams.sequencer import POSITION_KEY_PREFIX, SourceReader, SourceSequencer

__all__ = ["WorkerParts", "create_app"]

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 5.0


@dataclass(frozen=True)
class WorkerParts:
    """What the agents call; built by ``streams.worker.build_parts``."""

    events: EventProcessor
    ledger: LedgerProcessor
    registry: CollectorRegistry
    metrics: StreamMetrics
    source_reader: SourceReader
    store: Any
    views: Any
    redis: Any


def _raw_topic(
    app: faust.App, *names: str, internal: bool = False, partitions: int | None = None
) -> Any:
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        internal=internal,
        partitions=partitions,
    )


def _inbound(event: Any) -> Inbound:
    msg = event.message
    return Inbound(
        event.key,
        event.value or b"",
        header_map(msg.headers),
        msg.topic,
        msg.partition,
        msg.offset,
    )


def _sequencers(app: faust.App, parts: WorkerParts, tickets: Any) -> dict[str, SourceSequencer]:
    """One sequencer per agent (the ledger's positions kept in its table), forgetting
    revoked partitions at every rebalance."""

    def mark_handled(topic: str, partition: int, start: int, end: int) -> None:
        consumer = cast(transport.RedeliveringConsumer, app.consumer)
        consumer.mark_handled(TP(topic, partition), start, end)

    def sequencer(stage: str, positions: Any = None) -> SourceSequencer:
        return SourceSequencer(stage, parts.source_reader, parts.metrics, mark_handled, positions)

    sequencers = {
        # events: a redelivered event is recognised by its id (outcome "duplicate"), so
        # no position write per event on the hot path
        "events": sequencer("events"),
        "acknowledgements": sequencer("acknowledgements"),
        "ledger": sequencer("ledger", tickets),
    }

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else set()
        for sequencer in sequencers.values():
            sequencer.forget((tp.topic, tp.partition) for tp in revoked)

    return sequencers


def create_app(settings: Settings) -> faust.App:
    """The Faust app with its settings; agents are attached by ``attach_agents``."""
    transport.register()
    brokers = [f"{transport.SCHEME}://{hp.strip()}" for hp in settings.bootstrap_servers.split(",")]
    return faust.App(
        settings.app_id,
        broker=brokers,
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_port=settings.http_port,
        web_bind=settings.http_bind,
        web_host="127.0.0.1",
        datadir=settings.data_dir,
        autodiscover=False,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        worker_redirect_stdouts=False,
    )


def attach_agents(app: faust.App, settings: Settings, policy: Policy, parts: WorkerParts) -> None:
    names = settings.topics
    events = _raw_topic(app, names.events)
    acks = _raw_topic(app, *[names.acks(p) for p in sorted(policy.partners)])
    ledger = _raw_topic(app, names.ledger, internal=True, partitions=settings.partitions)
    # bytes key and value types make Faust use the "raw" codec for the changelog too
    subjects = app.Table(
        "consent-subjects", partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    tickets = app.Table(
        "consent-tickets", partitions=settings.partitions, key_type=bytes, value_type=bytes
    )

    in_order = _sequencers(app, parts, tickets)

    @app.agent(events, concurrency=1, name="consent-events")
    async def consent_events(stream: Any) -> None:
        async def handle(record: Inbound) -> None:
            await parts.events.handle(record, subjects)

        async for event in stream.events():
            await in_order["events"].handle(_inbound(event), handle)

    @app.agent(acks, concurrency=1, name="partner-acknowledgements")
    async def partner_acknowledgements(stream: Any) -> None:
        async def handle(record: Inbound) -> None:
            await parts.ledger.forward_ack(record.key, record.value, record.topic)

        async for event in stream.events():
            await in_order["acknowledgements"].handle(_inbound(event), handle)

    @app.agent(ledger, concurrency=1, name="instruction-ledger")
    async def instruction_ledger(stream: Any) -> None:
        async def handle(record: Inbound) -> None:
            await parts.ledger.handle(record.key or b"", record.value, tickets)

        async for event in stream.events():
            await in_order["ledger"].handle(_inbound(event), handle)

    @app.timer(interval=SWEEP_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def sweep_ledger() -> None:
        due, _ = parts.ledger.scan(
            [v for k, v in tickets.items() if not k.startswith(POSITION_KEY_PREFIX)]
        )
        if due:
            await parts.ledger.request_sweeps(due)
