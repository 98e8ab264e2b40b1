"""The worker's transport: a record re-fetched below Faust's read offset is handed to
the streams, not dropped. No broker is involved: nothing here connects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from schemas.settings import Settings
from streams.app import create_app
from streams.faust_glue.transport import RedeliveringConsumer

# -- the consumer: a re-fetched record below Faust's read offset is handed over -------------


@dataclass(frozen=True)
class FakeMessage:
    offset: int


def drain(consumer: RedeliveringConsumer, batch: list[tuple[TP, int]]) -> list[tuple[str, int]]:
    """What Faust's fetch loop (``Consumer._drain_messages``) hands to the streams: a record
    passes when its offset is not below the read offset, which then moves to it."""

    async def faust_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, FakeMessage]]:
        for tp, offset in batch:
            yield tp, FakeMessage(offset)

    async def scenario() -> list[tuple[str, int]]:
        handed: list[tuple[str, int]] = []
        async for tp, message in consumer.getmany(timeout=1.0):
            read = consumer._read_offset[tp]
            if read is None or message.offset >= read:
                handed.append((tp.topic, message.offset))
                consumer._read_offset[tp] = message.offset
        return handed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FaustConsumer, "getmany", faust_getmany)
        result: list[tuple[str, int]] = asyncio.run(scenario())
    return result


@pytest.fixture
def consumer(tmp_path: Path) -> RedeliveringConsumer:
    app = create_app(Settings(data_dir=str(tmp_path)))
    made = app.consumer
    assert isinstance(made, RedeliveringConsumer)
    return made


def test_records_refetched_after_a_seek_back_are_handed_over(
    consumer: RedeliveringConsumer,
) -> None:
    events = TP("ns.consent.events.v1", 2)
    consumer._read_offset[events] = 786  # left there by a batch that never reached the stream
    refetched = [(events, offset) for offset in range(759, 789)]
    handed = drain(consumer, refetched)
    assert handed == [("ns.consent.events.v1", offset) for offset in range(759, 789)]
    assert consumer.rewinds == 1
    assert consumer._read_offset[events] == 788


def test_without_the_fix_faust_would_drop_them(consumer: RedeliveringConsumer) -> None:
    """The scenario above through Faust's own getmany: the re-fetched records are lost."""
    events = TP("ns.consent.events.v1", 2)
    consumer._read_offset[events] = 786

    async def faust_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, FakeMessage]]:
        for offset in range(759, 789):
            yield events, FakeMessage(offset)

    async def scenario() -> list[int]:
        handed = []
        async for tp, message in faust_getmany(consumer, 1.0):
            read = consumer._read_offset[tp]
            if read is None or message.offset >= read:
                handed.append(message.offset)
                consumer._read_offset[tp] = message.offset
        return handed

    assert asyncio.run(scenario()) == [786, 787, 788]


def test_changelog_records_are_left_to_faust(consumer: RedeliveringConsumer) -> None:
    changelog = TP("consent-stream-consent-subjects-changelog", 0)
    consumer._read_offset[changelog] = 10
    handed = drain(consumer, [(changelog, 9), (changelog, 10), (changelog, 11)])
    assert handed == [(changelog.topic, 10), (changelog.topic, 11)]
    assert consumer.rewinds == 0


def test_records_in_order_pass_untouched(consumer: RedeliveringConsumer) -> None:
    acks = TP("ns.partner.ads.acks.v1", 1)
    handed = drain(consumer, [(acks, 0), (acks, 1), (acks, 2)])
    assert handed == [(acks.topic, 0), (acks.topic, 1), (acks.topic, 2)]
    assert consumer.rewinds == 0
