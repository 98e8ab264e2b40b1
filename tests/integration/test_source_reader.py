"""The sequencer's direct reads against the real broker: committed offsets and ranges."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.source_reader import KafkaSourceReader

from .conftest import GroupFactory, TopicFactory
from .kafka_auth import admin_settings

pytestmark = pytest.mark.integration


def test_start_offset_and_range_reads(
    bootstrap_servers: str, unique_topic: TopicFactory, unique_group: GroupFactory
) -> None:
    settings = admin_settings(bootstrap_servers=bootstrap_servers)
    topic = unique_topic("reader", partitions=1)
    group = unique_group("reader")
    producer = Producer(settings.producer_config())
    for i in range(10):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("h", b"x")])
    assert producer.flush(30) == 0
    reader = KafkaSourceReader(settings, group)
    try:
        assert asyncio.run(reader.start_offset(topic, 0)) == 0  # nothing committed yet

        records = asyncio.run(reader.read(topic, 0, 3, 7))
        assert [r.offset for r in records] == [3, 4, 5, 6]
        assert [r.key for r in records] == [b"k3", b"k4", b"k5", b"k6"]
        assert records[0].value == b"v3" and records[0].headers == {"h": b"x"}
        assert {(r.topic, r.partition) for r in records} == {(topic, 0)}

        committer = Consumer(settings.consumer_config(group))
        committer.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
        committer.close()
        assert asyncio.run(reader.start_offset(topic, 0)) == 5

        assert [r.offset for r in asyncio.run(reader.read(topic, 0, 9, 10))] == [9]
    finally:
        reader.close()
