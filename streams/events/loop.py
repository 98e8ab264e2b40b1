"""The events agent's loop: batches in flight, settled in order.

Each batch the agent takes is put in offset order (``streams.sequencer``), decided and
launched (``EventProcessor.launch``) while the batches before it are still in flight, at
most ``MAX_FLIGHTS`` at a time; ``streams.events.flight`` keeps their records in order on every
topic. A batch's records are acknowledged, and its plan done, once it is settled. A batch
that fails wakes the loop (``EventBatches.interrupt``), which then stops the agent (Faust
logs the error and restarts it: the records not acknowledged are processed again), even
when no record comes after it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final, NoReturn

from streams.events.flight import Flight, FlightAborted
from streams.events.processor import EventProcessor, OutputsFactory, Settle
from streams.faust_glue.batches import EventBatches, inbound
from streams.faust_glue.tables import StagedTable
from streams.sequencer import Plan, SourceSequencer

__all__ = ["MAX_FLIGHTS", "events_in_flights"]

MAX_FLIGHTS: Final = 8
"""Batches of the events agent in flight at once (decided, their round trips under way):
a backlog drains 7-10 % faster with 8 than with 4 (docs/benchmarks.md)."""

Flights = deque[tuple[Flight, Plan]]


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
    ``max_flights`` at a time (``streams.events.flight``). A batch's records are acknowledged, and
    its plan done, once it is settled, in order. When a batch fails, the loop is woken if
    it waits for records; it lets every flight land (those before it settle), forgets what
    the others staged and raises: their records are processed again. Flights still in the
    air when the agent stops are cancelled (their records, not acknowledged, are processed
    again after a restart). Started again after a failure, the loop first handles the
    records taken but not settled (``SourceSequencer.unfinished``)."""
    flights: Flights = deque()

    async def take_off(plan: Plan, received: list[Any]) -> None:
        before = flights[-1][0] if flights else None
        settle = _settler(sequencer, batches, plan, received)
        try:
            flight = events.launch(plan.records, subjects, outputs, before, settle)
        except BaseException as exc:
            await _abort(flights, subjects, exc)
        flight.task.add_done_callback(lambda task: _wake_on_failure(task, batches))
        flights.append((flight, plan))
        await _land(flights, subjects, oldest=len(flights) >= max_flights)

    try:
        unfinished = await sequencer.unfinished()
        if unfinished.records:
            await take_off(unfinished, [])
        async for received in batches:
            # planned first: if a failure stops the loop below, the sequencer still knows
            # these records were taken (``unfinished``), else they would wait for the
            # next record of their partition
            plan = await sequencer.plan([inbound(e) for e in received], _ahead(flights))
            await _land(flights, subjects, oldest=False)
            if received:  # else woken by a failure (``_land`` raised it) or none
                await take_off(plan, received)
    finally:
        for flight, _ in flights:
            flight.task.cancel()


def _wake_on_failure(task: asyncio.Task[Any], batches: EventBatches) -> None:
    if not task.cancelled() and task.exception() is not None:
        batches.interrupt()


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
