"""The worker's topics hand records over as the broker gave them, without Faust's codecs."""

from __future__ import annotations

import asyncio

import faust
from faust.types import TP
from faust.types.tuples import Message

from streams.faust_glue.raw_topics import RawSchema, raw_topic


def message(key: bytes | None, value: bytes | None) -> Message:
    return Message("t", 0, 7, 0.0, 0, [("ce_id", b"x")], key, value, None, tp=TP("t", 0))


def test_keys_and_values_reach_the_event_as_bytes() -> None:
    app = faust.App("test-raw-topics", autodiscover=False)
    topic = raw_topic(app, "t")
    assert isinstance(topic.schema, RawSchema)

    async def decode() -> list[tuple[object, object]]:
        events = [await topic.decode(message(k, v)) for k, v in [(b"k", b"\x00v"), (None, None)]]
        return [(e.key, e.value) for e in events]

    assert asyncio.run(decode()) == [(b"k", b"\x00v"), (None, None)]
