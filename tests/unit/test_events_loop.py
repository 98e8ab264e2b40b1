"""The events agent's loop (``streams.app.events_in_batches``) with fakes: when more records
are waiting, a batch's last wave is awaited with the next batch's first; a batch's records
are acknowledged, and its plan done, only once it is settled; a failure leaves both the
failed batch and the one behind it unacknowledged (both are processed again)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.errors import PublishError
from streams.app import events_in_batches
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
    """Yields the given batches; ``waiting`` says whether another one follows."""

    def __init__(self, batches: list[list[int]], log: list[str]) -> None:
        self._batches, self.log = [[Event(o) for o in b] for b in batches], log

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> list[Any]:
        if not self._batches:
            raise StopAsyncIteration
        return self._batches.pop(0)

    def waiting(self) -> bool:
        return bool(self._batches)

    async def ack(self, events: Sequence[Any]) -> None:
        self.log.append(f"ack {[e.offset for e in events]}")


class Reader:
    async def start_offset(self, topic: str, partition: int) -> int:
        return 0

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Inbound]:
        raise AssertionError(f"nothing is missing: read {start}..{end}")


class Processor:
    def __init__(self, log: list[str], fail_at: int | None = None) -> None:
        self.log, self.fail_at = log, fail_at

    async def start_batch(self, records: Sequence[Inbound], subjects: Any, outputs: Any) -> Any:
        first = records[0].offset
        if first == self.fail_at:
            self.log.append(f"fail {first}")
            raise PublishError("a record of the batch was not acknowledged")
        self.log.append(f"start {first}")
        return first

    async def settle(self, tail: Any, *, delivered: bool = False) -> None:
        self.log.append(f"settle {tail}{' (delivered with the next)' if delivered else ''}")


def run(batches: list[list[int]], fail_at: int | None = None) -> tuple[list[str], Any]:
    log: list[str] = []
    sequencer = SourceSequencer("events", Reader(), stream_metrics(CollectorRegistry()))
    loop = events_in_batches(
        Batches(batches, log),
        sequencer,
        Processor(log, fail_at),
        None,
        None,  # type: ignore[arg-type]
    )
    try:
        asyncio.run(loop)
    except PublishError:
        log.append("raised")
    return log, sequencer


def test_under_load_the_last_wave_goes_with_the_next_batch() -> None:
    log, sequencer = run([[0, 1], [2, 3], [4]])
    assert log == [
        "start 0",
        "start 2",  # batch 0's last wave is awaited by batch 2's first
        "settle 0 (delivered with the next)",
        "ack [0, 1]",
        "start 4",
        "settle 2 (delivered with the next)",
        "ack [2, 3]",
        "settle 4",  # nothing waiting: settled at once
        "ack [4]",
    ]
    assert sequencer.expected(TOPIC, 0) == 5


def test_a_lone_batch_is_settled_at_once() -> None:
    log, _ = run([[0]])
    assert log == ["start 0", "settle 0", "ack [0]"]


@pytest.mark.parametrize(("fail_at", "behind", "next_expected"), [(2, 0, None), (4, 2, 2)])
def test_a_failure_leaves_the_batch_behind_it_unacknowledged(
    fail_at: int, behind: int, next_expected: int | None
) -> None:
    log, sequencer = run([[0, 1], [2, 3], [4]], fail_at=fail_at)
    assert log[-2:] == [f"fail {fail_at}", "raised"]
    assert f"ack [{behind}, {behind + 1}]" not in log  # processed again with the failed one
    assert sequencer.expected(TOPIC, 0) == next_expected  # its plan not done either
