"""The Faust application: thin agents that take a batch, call the processors, acknowledge.

Built by ``create_app`` from settings and injected dependencies; nothing connects at
import time. Agents on consent paths run with ``concurrency=1``. Each agent reads its
stream in self-sizing batches (``streams.faust_glue.batches``), puts each batch in offset
order per partition (``streams.sequencer``), hands it to its processor, and acknowledges
the batch's records only when its effects are on the broker. The events agent does not
wait for that before it takes the next batch: several batches are in flight at once,
in order (``streams.events.loop``).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry

from schemas.errors import ConsentStreamError
from schemas.policy import Policy
from schemas.settings import Settings
from streams.events.loop import events_in_flights
from streams.events.processor import EventProcessor
from streams.faust_glue import transport
from streams.faust_glue.batches import EventBatches, inbound
from streams.faust_glue.consumer_loop import fetch_with_librdkafka
from streams.faust_glue.direct import deliver_directly
from streams.faust_glue.raw_topics import raw_topic
from streams.faust_glue.tables import StagedTable
from streams.ledger_processor import LedgerProcessor
from streams.loop_lag import LoopPulse
from streams.metrics import StreamMetrics
from streams.output import OutputProducer
from streams.sequencer import Plan, SourceReader, SourceSequencer

__all__ = ["WorkerParts", "attach_agents", "create_app"]

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S: Final = 5.0
MAX_BATCH_RECORDS: Final = 500


@dataclass(frozen=True)
class WorkerParts:
    """What the agents call; built by ``streams.worker.build_parts``."""

    events: EventProcessor
    ledger: LedgerProcessor
    registry: CollectorRegistry
    metrics: StreamMetrics
    source_reader: SourceReader
    output: OutputProducer
    loop_pulse: LoopPulse


def _sequencers(
    app: faust.App, parts: WorkerParts, tickets: StagedTable
) -> dict[str, SourceSequencer]:
    """One sequencer per agent (the ledger's positions kept in its table), forgetting
    revoked partitions at every rebalance."""

    def mark_handled(topic: str, partition: int, start: int, end: int) -> None:
        consumer = cast(transport.RedeliveringConsumer, app.consumer)
        consumer.mark_handled(TP(topic, partition), start, end)

    def sequencer(stage: str, positions: Any = None) -> SourceSequencer:
        return SourceSequencer(stage, parts.source_reader, parts.metrics, mark_handled, positions)

    sequencers = {
        # events: a redelivered event is recognised by its id (outcome "duplicate"), so
        # no position write per batch on the hot path
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


def _batches(stream: Any, parts: WorkerParts, stage: str) -> EventBatches:
    return EventBatches(
        stream, MAX_BATCH_RECORDS, parts.metrics.batch_records.labels(stage).observe
    )


async def _failures_counted(stage: str, metrics: StreamMetrics, loop: Awaitable[None]) -> None:
    """Runs an agent's ``loop``; a failure is counted (``consent_batch_failures_total``)
    before it stops the agent (Faust logs it and starts the agent again)."""
    try:
        await loop
    except Exception as exc:
        reason = exc.reason if isinstance(exc, ConsentStreamError) else "unexpected"
        metrics.batch_failures.labels(stage, reason).inc()
        raise


async def _in_batches(
    batches: EventBatches,
    sequencer: SourceSequencer,
    handle: Callable[[Plan], Awaitable[object]],
) -> None:
    """The agent loop: a batch, in offset order, handled, then acknowledged. Started
    again after a failure, it first handles the records taken but not done."""
    unfinished = await sequencer.unfinished()
    if unfinished.records:
        await handle(unfinished)
        sequencer.done(unfinished)
    async for events in batches:
        plan = await sequencer.plan([inbound(e) for e in events])
        if plan.records:
            await handle(plan)
        sequencer.done(plan)
        await batches.ack(events)


def tls_context(ca_location: str | None) -> ssl.SSLContext:
    """aiokafka's TLS context: it checks the brokers' certificates and names, trusting the
    CAs of ``ca_location`` (a PEM file or a directory, as librdkafka's
    ``ssl.ca.location``), else the system's."""
    if ca_location is not None and Path(ca_location).is_dir():
        return ssl.create_default_context(capath=ca_location)
    return ssl.create_default_context(cafile=ca_location)


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """aiokafka's SASL login (and TLS context) from the same settings as librdkafka's."""
    protocol = settings.security_protocol
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = tls_context(settings.ssl_ca_location)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol != "SASL_PLAINTEXT" and context is None:
        return None
    password = settings.sasl_password.reveal().decode() if settings.sasl_password else None
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=password,
        mechanism=settings.sasl_mechanism,
        ssl_context=context,
    )


def create_app(settings: Settings) -> faust.App:
    """The Faust app with its settings; agents are attached by ``attach_agents``.

    Offsets are committed by Faust's commit timer only (``broker_commit_every`` is never
    reached): a commit does not hold up the fetch loop, and commits can only pass records
    whose batches are acknowledged.

    The worker's URL (``web_host``: the host's name, and the HTTP port) goes with its
    group membership, and Faust's assignor refuses an assignment made for another URL:
    so a second worker that joins with a running worker's group instance id on another
    host or port stops (``consumer_loop.watch_membership``), while a worker restarted on
    its own host keeps its place. Nothing else reads the URL (no table routes).
    """
    transport.register()
    brokers = [f"{transport.SCHEME}://{hp.strip()}" for hp in settings.bootstrap_servers.split(",")]
    app = faust.App(
        settings.app_id,
        broker=brokers,
        broker_credentials=broker_credentials(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_in_thread=True,  # the HTTP API does not wait for the agents (streams.api.server)
        web_port=settings.http_port,
        web_bind=settings.http_bind,
        web_host=socket.gethostname(),  # in the URL Faust's assignor compares (below)
        datadir=settings.data_dir,
        autodiscover=False,
        broker_session_timeout=float(settings.group_session_timeout_s),
        broker_heartbeat_interval=min(3.0, settings.group_session_timeout_s / 3),
        consumer_group_instance_id=settings.group_instance_id,
        broker_commit_every=1_000_000_000,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        worker_redirect_stdouts=False,
    )
    if settings.fetch_client == "librdkafka":
        fetch_with_librdkafka(app, settings.fetch_config())
    return app


def attach_agents(app: faust.App, settings: Settings, policy: Policy, parts: WorkerParts) -> None:
    names = settings.topics
    events = raw_topic(app, names.events)
    acks = raw_topic(app, *[names.acks(p) for p in sorted(policy.partners)])
    ledger = raw_topic(app, names.ledger, internal=True, partitions=settings.partitions)
    # bytes key and value types make Faust use the "raw" codec for the changelog too
    subjects = StagedTable(
        app.Table(
            "consent-subjects", partitions=settings.partitions, key_type=bytes, value_type=bytes
        )
    )
    tickets_table = app.Table(
        "consent-tickets", partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    tickets = StagedTable(tickets_table)
    in_order = _sequencers(app, parts, tickets)
    out = parts.output
    deliver_directly(app, [names.events, names.ledger, *(names.acks(p) for p in policy.partners)])

    @app.agent(events, concurrency=1, name="consent-events")
    async def consent_events(stream: Any) -> None:
        batches = _batches(stream, parts, "events")
        loop = events_in_flights(
            batches, in_order["events"], parts.events, subjects, lambda: out.outputs("events")
        )
        await _failures_counted("events", parts.metrics, loop)

    @app.agent(acks, concurrency=1, name="partner-acknowledgements")
    async def partner_acknowledgements(stream: Any) -> None:
        outputs = out.outputs("acknowledgements")

        async def handle(plan: Plan) -> None:
            await parts.ledger.forward_acks(plan.records, outputs)

        batches = _batches(stream, parts, "acknowledgements")
        loop = _in_batches(batches, in_order["acknowledgements"], handle)
        await _failures_counted("acknowledgements", parts.metrics, loop)

    @app.agent(ledger, concurrency=1, name="instruction-ledger")
    async def instruction_ledger(stream: Any) -> None:
        outputs = out.outputs("ledger")

        async def handle(plan: Plan) -> None:
            await parts.ledger.handle_batch(plan.records, tickets, outputs, plan.positions)

        batches = _batches(stream, parts, "ledger")
        loop = _in_batches(batches, in_order["ledger"], handle)
        await _failures_counted("ledger", parts.metrics, loop)

    sweeps = out.outputs("sweep")

    @tickets_table.on_recover
    async def index_tickets() -> None:
        started = time.monotonic()
        count = await parts.ledger.rebuild_index(list(tickets.store.items()))
        log.info("ledger index: %d tickets in %.1f s", count, time.monotonic() - started)

    @app.timer(interval=SWEEP_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def sweep_ledger() -> None:
        await parts.ledger.sweep_due(sweeps)
