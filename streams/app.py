"""The Faust application: thin agents that take a batch, call the processors, acknowledge.

Built by ``create_app`` from settings and injected dependencies; nothing connects at
import time. Agents on consent paths run with ``concurrency=1``. Each agent reads its
stream in self-sizing batches (``streams.faust_glue.batches``), puts each batch in offset
order per partition (``streams.sequencer``), hands it to its processor, and acknowledges
the batch's records only when its effects are on the broker. The events agent does not
wait for that before it takes the next batch: up to ``MAX_FLIGHTS`` batches are in flight
at once, in order (``events_in_flights``, ``streams.flight``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn, cast

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry

from schemas.policy import Policy
from schemas.settings import Settings
from streams.faust_glue import transport
from streams.faust_glue.batches import EventBatches, inbound
from streams.faust_glue.tables import StagedTable
from streams.flight import Flight, FlightAborted
from streams.ledger_processor import LedgerProcessor
from streams.metrics import StreamMetrics
from streams.output import OutputProducer
from streams.processor import EventProcessor, OutputsFactory, Settle
from streams.sequencer import Plan, SourceReader, SourceSequencer

__all__ = ["WorkerParts", "create_app", "events_in_flights"]

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S: Final = 5.0
MAX_BATCH_RECORDS: Final = 500
MAX_FLIGHTS: Final = 8
"""Batches of the events agent in flight at once (decided, their round trips under way)."""

Flights = deque[tuple[Flight, Plan]]


@dataclass(frozen=True)
class WorkerParts:
    """What the agents call; built by ``streams.worker.build_parts``."""

    events: EventProcessor
    ledger: LedgerProcessor
    registry: CollectorRegistry
    metrics: StreamMetrics
    source_reader: SourceReader
    output: OutputProducer
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


async def _in_batches(
    stream: Any, sequencer: SourceSequencer, handle: Callable[[Plan], Awaitable[object]]
) -> None:
    """The agent loop: a batch, in offset order, handled, then acknowledged."""
    batches = EventBatches(stream, MAX_BATCH_RECORDS)
    async for events in batches:
        plan = await sequencer.plan([inbound(e) for e in events])
        if plan.records:
            await handle(plan)
        sequencer.done(plan)
        await batches.ack(events)


async def events_in_flights(
    batches: EventBatches,
    sequencer: SourceSequencer,
    events: EventProcessor,
    subjects: StagedTable,
    outputs: OutputsFactory,
    max_flights: int = MAX_FLIGHTS,
) -> None:
    """The events agent's loop: each batch is decided and launched as soon as it is taken,
    while the batches before it are still in flight (their round trips under way), at most
    ``max_flights`` at a time (``streams.flight``). A batch's records are acknowledged, and
    its plan done, once it is settled, in order. When a batch fails, the loop lets every
    flight land (those before it settle), forgets what the others staged and raises:
    their records are processed again. Flights still in the air when the agent stops are
    cancelled (their records, not acknowledged, are processed again after a restart)."""
    flights: Flights = deque()
    try:
        async for received in batches:
            await _land(flights, subjects, oldest=False)
            plan = await sequencer.plan([inbound(e) for e in received], _ahead(flights))
            before = flights[-1][0] if flights else None
            settle = _settler(sequencer, batches, plan, received)
            try:
                flight = events.launch(plan.records, subjects, outputs, before, settle)
            except BaseException as exc:
                await _abort(flights, subjects, exc)
            flights.append((flight, plan))
            await _land(flights, subjects, oldest=len(flights) >= max_flights)
    finally:
        for flight, _ in flights:
            flight.task.cancel()


def _ahead(flights: Flights) -> Plan | None:
    """What the batches in flight will have handled once they are done."""
    if not flights:
        return None
    ahead = Plan()
    for _, plan in flights:
        ahead.next.update(plan.next)
    return ahead


def _settler(
    sequencer: SourceSequencer, batches: EventBatches, plan: Plan, received: list[Any]
) -> Settle:
    async def settle() -> None:
        sequencer.done(plan)
        await batches.ack(received)

    return settle


async def _land(flights: Flights, subjects: StagedTable, *, oldest: bool) -> None:
    """Forget the flights that have landed (with ``oldest``: wait for the oldest first);
    if one of them failed, ``_abort``."""
    if oldest and flights:
        await asyncio.wait([flights[0][0].task])
    if any(flight.failed() for flight, _ in flights):
        await _abort(flights, subjects)
    while flights and flights[0][0].task.done():
        flights.popleft()


async def _abort(
    flights: Flights, subjects: StagedTable, error: BaseException | None = None
) -> NoReturn:
    """Every flight lands (those before the failed one settle, the later ones fail at
    their next gate), what the failed ones staged is forgotten, the first failure raised."""
    tasks = [flight.task for flight, _ in flights]
    if tasks:
        await asyncio.wait(tasks)
    flights.clear()
    subjects.discard()
    if error is not None:
        raise error
    errors = [asyncio.CancelledError() if t.cancelled() else t.exception() for t in tasks]
    failures = [e for e in errors if e is not None]
    raise next((e for e in failures if not isinstance(e, FlightAborted)), failures[0])


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """aiokafka's SASL login (and TLS context) from the same settings as librdkafka's."""
    protocol = settings.security_protocol
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_ca_location)
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
    """
    transport.register()
    brokers = [f"{transport.SCHEME}://{hp.strip()}" for hp in settings.bootstrap_servers.split(",")]
    return faust.App(
        settings.app_id,
        broker=brokers,
        broker_credentials=broker_credentials(settings),
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
        broker_commit_every=1_000_000_000,
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

    @app.agent(events, concurrency=1, name="consent-events")
    async def consent_events(stream: Any) -> None:
        batches = EventBatches(stream, MAX_BATCH_RECORDS)
        await events_in_flights(
            batches, in_order["events"], parts.events, subjects, lambda: out.outputs("events")
        )

    @app.agent(acks, concurrency=1, name="partner-acknowledgements")
    async def partner_acknowledgements(stream: Any) -> None:
        outputs = out.outputs("acknowledgements")

        async def handle(plan: Plan) -> None:
            await parts.ledger.forward_acks(plan.records, outputs)

        await _in_batches(stream, in_order["acknowledgements"], handle)

    @app.agent(ledger, concurrency=1, name="instruction-ledger")
    async def instruction_ledger(stream: Any) -> None:
        outputs = out.outputs("ledger")

        async def handle(plan: Plan) -> None:
            await parts.ledger.handle_batch(plan.records, tickets, outputs, plan.positions)

        await _in_batches(stream, in_order["ledger"], handle)

    sweeps = out.outputs("sweep")

    @tickets_table.on_recover
    async def index_tickets() -> None:
        started = time.monotonic()
        count = await parts.ledger.rebuild_index(list(tickets.store.items()))
        log.info("ledger index: %d tickets in %.1f s", count, time.monotonic() - started)

    @app.timer(interval=SWEEP_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def sweep_ledger() -> None:
        await parts.ledger.sweep_due(sweeps)
