"""The events agent's loop (``streams.app.events_in_flights``) with a fake processor: each
batch is launched while the ones before it are in flight (at most ``max_flights``); a
batch's records are acknowledged, and its plan done, only once it is settled, in order;
a failure lets every flight land, leaves the failed batch and those after it
unacknowledged (processed again), forgets what they staged and raises the failure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.errors import PublishError
from streams.events.flight import Flight
from streams.events.loop import events_in_flights
from streams.events.processor import OutputsFactory, Settle
from streams.faust_glue.tables import StagedTable
from streams.inbound import Inbound
from streams.metrics import stream_metrics
from streams.sequencer import SourceSequencer

TOPIC = "ns.consent.events.v1"


@dataclass(frozen=True)
class Event:
    offset: int

    @property
    def message(self) -> Any:
        return self

    key = b"k"
    value = b"v"
    headers: tuple[()] = ()
    topic = TOPIC
    partition = 0


class Batches:
    """Yields the given batches, each once the test lets it through (``release``); a
    release with none left ends the stream (the worker stops)."""

    def __init__(self, batches: list[list[int]], log: list[str]) -> None:
        self._batches, self.log = [[Event(o) for o in b] for b in batches], log
        self.released = asyncio.Semaphore(0)
        self.interrupts = 0

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> list[Any]:
        await self.released.acquire()
        if self.interrupts:
            self.interrupts -= 1
            return []
        if not self._batches:
            raise StopAsyncIteration
        return self._batches.pop(0)

    def interrupt(self) -> None:
        self.interrupts += 1
        self.released.release()

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.released.release()

    async def ack(self, events: Sequence[Any]) -> None:
        self.log.append(f"ack {[e.offset for e in events]}")


class Reader:
    async def start_offset(self, topic: str, partition: int) -> int:
        return 0

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Inbound]:
        raise AssertionError(f"nothing is missing: read {start}..{end}")


class Processor:
    """Launches flights whose round trips end when the test says so (``deliver``); each
    batch stages one write, keyed by its first offset, in the table."""

    def __init__(self, log: list[str], subjects: StagedTable) -> None:
        self.log, self.subjects = log, subjects
        self.deliveries: dict[int, asyncio.Future[None]] = {}
        self.in_flight = 0

    def launch(
        self,
        records: Sequence[Inbound],
        subjects: StagedTable,
        outputs: OutputsFactory,
        before: Flight | None = None,
        settle: Settle | None = None,
    ) -> Flight:
        first = records[0].offset
        self.log.append(f"launch {first}")
        subjects.stage(0, str(first).encode(), b"staged")
        sealed = subjects.seal()
        self.deliveries[first] = asyncio.get_running_loop().create_future()
        flight = Flight(before)
        flight.start(self._carry(flight, first, sealed, settle))
        return flight

    async def _carry(self, flight: Flight, first: int, sealed: Any, settle: Settle | None) -> int:
        self.in_flight += 1
        try:
            await self.deliveries[first]
            await flight.after_states_before()
            self.log.append(f"states {first}")
            flight.states_sent.open()
            await flight.after_settled_before()
        except BaseException as exc:
            flight.fail(exc)
            raise
        finally:
            self.in_flight -= 1
        self.subjects.commit(sealed)
        assert settle is not None
        await settle()
        return first

    def deliver(self, first: int, error: BaseException | None = None) -> None:
        if error is None:
            self.deliveries[first].set_result(None)
        else:
            self.deliveries[first].set_exception(error)


@dataclass
class Run:
    batches: Batches
    processor: Processor
    sequencer: SourceSequencer
    store: dict[bytes, bytes]
    log: list[str]
    loop: asyncio.Task[None]


class LogReader(Reader):
    """A partition whose log has a record at every offset."""

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Inbound]:
        return [Inbound(b"k", b"v", {}, topic, partition, o) for o in range(start, end)]


async def start(
    batches: list[list[int]], max_flights: int = 4, reader: Reader | None = None
) -> Run:
    log: list[str] = []
    store: dict[bytes, bytes] = {}
    subjects = StagedTable(SimpleNamespace(data=store))
    metrics = stream_metrics(CollectorRegistry())
    sequencer = SourceSequencer("events", reader or Reader(), metrics)
    source, processor = Batches(batches, log), Processor(log, subjects)
    loop = asyncio.ensure_future(
        events_in_flights(
            source,  # type: ignore[arg-type]
            sequencer,
            processor,  # type: ignore[arg-type]
            subjects,
            lambda: None,  # type: ignore[arg-type, return-value]
            max_flights=max_flights,
        )
    )
    return Run(source, processor, sequencer, store, log, loop)


def of(log: list[str], kind: str) -> list[str]:
    return [line for line in log if line.startswith(kind)]


async def settle_down() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_batches_are_launched_while_the_ones_before_are_in_flight() -> None:
    async def scenario() -> None:
        run = await start([[0, 1], [2], [3, 4]])
        run.batches.release(3)
        await settle_down()
        assert run.log == ["launch 0", "launch 2", "launch 3"]
        assert run.processor.in_flight == 3
        run.processor.deliver(3)  # the last batch's round trips end first ...
        run.processor.deliver(2)
        await settle_down()
        assert "ack [3, 4]" not in run.log  # ... but it waits for the batches before it
        assert run.log[3:] == []
        run.processor.deliver(0)
        await settle_down()
        run.batches.release()  # the stream ends
        await run.loop
        assert of(run.log, "states") == ["states 0", "states 2", "states 3"]
        assert of(run.log, "ack") == ["ack [0, 1]", "ack [2]", "ack [3, 4]"]
        assert run.sequencer.expected(TOPIC, 0) == 5
        assert run.store == {b"0": b"staged", b"2": b"staged", b"3": b"staged"}

    asyncio.run(scenario())


def test_no_more_than_max_flights_are_in_the_air() -> None:
    async def scenario() -> None:
        run = await start([[0], [1], [2]], max_flights=2)
        run.batches.release(3)
        await settle_down()
        assert run.log == ["launch 0", "launch 1"]  # the third waits for the oldest to land
        run.processor.deliver(0)
        await settle_down()
        assert run.log == ["launch 0", "launch 1", "states 0", "ack [0]", "launch 2"]
        run.processor.deliver(1)
        run.processor.deliver(2)
        await settle_down()
        run.batches.release()
        await run.loop
        assert of(run.log, "ack") == ["ack [0]", "ack [1]", "ack [2]"]

    asyncio.run(scenario())


def test_a_failure_leaves_it_and_the_batches_after_it_unacknowledged() -> None:
    async def scenario() -> None:
        run = await start([[0, 1], [2, 3], [4], [5]])
        run.batches.release(3)
        await settle_down()
        run.processor.deliver(0)
        run.processor.deliver(4)  # after the failed one: stopped at its gate
        run.processor.deliver(2, PublishError("a record of the batch was not acknowledged"))
        run.batches.release()  # the next batch finds the failure
        with pytest.raises(PublishError):
            await run.loop
        assert "ack [0, 1]" in run.log  # the batch before the failed one settled
        assert "ack [2, 3]" not in run.log and "ack [4]" not in run.log
        assert "states 4" not in run.log  # not sent before the failed batch's
        assert "launch 5" not in run.log
        assert run.sequencer.expected(TOPIC, 0) == 2  # read again from offset 2
        assert run.store == {b"0": b"staged"}  # what the others staged is forgotten
        assert run.processor.in_flight == 0

    asyncio.run(scenario())


def test_a_failure_wakes_the_loop_when_no_record_comes_after_it() -> None:
    """Else a failed batch would wait, unnoticed, for the next record."""

    async def scenario() -> None:
        run = await start([[0], [1], [2]])
        run.batches.release(2)
        await settle_down()
        run.processor.deliver(0)
        run.processor.deliver(1, PublishError("a record of the batch was not acknowledged"))
        with pytest.raises(PublishError):
            await asyncio.wait_for(run.loop, 1)  # no release: no batch after it
        assert of(run.log, "ack") == ["ack [0]"]
        assert run.sequencer.expected(TOPIC, 0) == 1
        assert run.batches.interrupts == 0  # the empty batch was taken

    asyncio.run(scenario())


def test_started_again_after_a_failure_the_loop_first_handles_what_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust starts the agent again; the records of the failed batch are read again at
    once, not when the next record of their partition comes."""
    monkeypatch.setattr("streams.sequencer.RETRY_WAIT_S", 0)

    async def scenario() -> None:
        run = await start([[0], [1, 2]], reader=LogReader())
        run.batches.release(2)
        await settle_down()
        run.processor.deliver(0)
        run.processor.deliver(1, PublishError("a record of the batch was not acknowledged"))
        with pytest.raises(PublishError):
            await asyncio.wait_for(run.loop, 1)
        quiet = Batches([], run.log)  # no record comes after it
        again = asyncio.ensure_future(
            events_in_flights(
                quiet,  # type: ignore[arg-type]
                run.sequencer,
                run.processor,  # type: ignore[arg-type]
                run.processor.subjects,
                lambda: None,  # type: ignore[arg-type, return-value]
            )
        )
        await settle_down()
        assert run.log[-1] == "launch 1"  # offsets 1 and 2, read again
        run.processor.deliver(1)
        await settle_down()
        assert run.log[-2:] == ["states 1", "ack []"]  # nothing of the new stream to ack
        assert run.sequencer.expected(TOPIC, 0) == 3
        quiet.release()  # the stream ends
        await again

    asyncio.run(scenario())


def test_a_batch_taken_as_a_failure_is_found_is_handled_again_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streams.sequencer.RETRY_WAIT_S", 0)

    async def scenario() -> None:
        run = await start([[0], [1, 2], [3]], reader=LogReader())
        monkeypatch.setattr(run.batches, "interrupt", lambda: None)  # found by the next batch
        run.batches.release(2)
        await settle_down()
        run.processor.deliver(0)
        run.processor.deliver(1, PublishError("a record of the batch was not acknowledged"))
        await settle_down()
        run.batches.release()  # [3] is taken, then the failure stops the loop
        with pytest.raises(PublishError):
            await asyncio.wait_for(run.loop, 1)
        assert "launch 3" not in run.log
        again = await run.sequencer.unfinished()
        assert [r.offset for r in again.records] == [1, 2, 3]

    asyncio.run(scenario())


def test_an_empty_batch_with_no_failure_is_passed_over() -> None:
    async def scenario() -> None:
        run = await start([[0]])
        run.batches.interrupt()
        run.batches.release()
        await settle_down()
        run.processor.deliver(0)
        await settle_down()
        run.batches.release()  # the stream ends
        await run.loop
        assert run.log == ["launch 0", "states 0", "ack [0]"]

    asyncio.run(scenario())


@pytest.mark.parametrize("how", ["the stream ends", "the agent is cancelled"])
def test_flights_in_the_air_when_the_agent_stops_are_cancelled_unacknowledged(how: str) -> None:
    async def scenario() -> None:
        run = await start([[0], [1]])
        run.batches.release(2)
        await settle_down()
        assert run.processor.in_flight == 2
        if how == "the stream ends":
            run.batches.release()
            await run.loop
        else:
            run.loop.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run.loop
        await settle_down()
        assert run.processor.in_flight == 0
        assert not any(line.startswith("ack") for line in run.log)
        assert run.sequencer.expected(TOPIC, 0) is None

    asyncio.run(scenario())


def test_a_cancelled_flight_ends_cancelled_not_aborted() -> None:
    """Waiting for the batch before it to settle, a flight that is cancelled itself (the
    agent stops) ends cancelled; only a failure of the batch before aborts it."""

    async def scenario() -> tuple[bool, bool]:
        release = asyncio.get_running_loop().create_future()
        first, second = Flight(None), Flight(None)
        second.before = first
        first.start(release)
        second.start(second.after_settled_before())
        await settle_down()
        second.task.cancel()
        await asyncio.wait([second.task])
        release.set_result(None)
        await first.task
        return second.task.cancelled(), first.task.cancelled()

    assert asyncio.run(scenario()) == (True, False)
