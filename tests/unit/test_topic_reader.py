"""``TopicToEnd``: a topic read to the end captured at the start, with a consumer fake."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from fake_topic import FakeConsumer, Record

from consumers.topic_reader import TopicToEnd
from schemas.errors import AccessDeniedError, UnknownTopicError
from schemas.settings import Settings


def _eof(partition: int, offset: int) -> Record:
    return Record(partition, offset, None, KafkaError(KafkaError._PARTITION_EOF))


def _reader(consumer: FakeConsumer, timeout_s: float = 5.0) -> TopicToEnd:
    return TopicToEnd(Settings(), "t", timeout_s, consumer_factory=consumer)


def test_reads_from_the_low_watermarks_to_the_captured_ends() -> None:
    consumer = FakeConsumer(
        ends={0: (5, 9), 1: (3, 3), 2: (0, 2)},  # 1: empty; 0@8: a marker, never delivered
        batches=[
            [Record(0, 5, b"a"), Record(2, 0, b"b"), Record(0, 6, None)],
            [Record(2, 1, b"c"), Record(0, 7, b"d")],
            [_eof(0, 9)],
            [Record(0, 9, b"written after the start")],
        ],
    )
    reader = _reader(consumer)

    batches = [[(r.partition(), r.offset()) for r in b] for b in reader.batches()]

    assert consumer.assigned == [(0, 5), (2, 0)]
    assert batches == [[(0, 5), (2, 0), (0, 6)], [(2, 1), (0, 7)]]  # a tombstone included
    assert reader.complete and consumer.closed
    assert consumer.config["enable.partition.eof"] is True
    assert consumer.config["enable.auto.commit"] is False
    assert consumer.config["group.id"].startswith(f"{Settings().app_id}-read-")


def test_a_read_from_given_offsets_starts_there_and_notes_every_ends() -> None:
    consumer = FakeConsumer(
        ends={0: (5, 9), 1: (0, 4), 2: (0, 2)},
        batches=[[Record(0, 8, b"a"), Record(2, 1, b"b")]],
    )
    reader = TopicToEnd(Settings(), "t", 5.0, consumer_factory=consumer, start={0: 8, 1: 4})

    assert [(r.partition(), r.offset()) for r in reader.messages()] == [(0, 8), (2, 1)]
    # 0 from 8; 1 has nothing past 4; 2 from its low watermark (no start given)
    assert consumer.assigned == [(0, 8), (2, 0)]
    assert reader.complete and reader.ends == {0: 9, 1: 4, 2: 2}


def test_a_record_at_the_end_completes_its_partition_without_the_eof() -> None:
    consumer = FakeConsumer(ends={0: (0, 2)}, batches=[[Record(0, 0, b"a"), Record(0, 1, b"b")]])
    reader = _reader(consumer)

    assert [r.offset() for r in reader.messages()] == [0, 1]
    assert reader.complete


def test_the_timeout_leaves_it_incomplete() -> None:
    consumer = FakeConsumer(ends={0: (0, 3)}, batches=[[Record(0, 0, b"a")]])
    reader = _reader(consumer, timeout_s=0.2)

    assert [r.offset() for r in reader.messages()] == [0]
    assert reader.complete is False and consumer.closed


def test_an_empty_topic_is_complete_at_once() -> None:
    consumer = FakeConsumer(ends={0: (4, 4)}, batches=[])
    reader = _reader(consumer)

    assert list(reader.messages()) == [] and reader.complete and consumer.assigned == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART), UnknownTopicError),
        (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), AccessDeniedError),
    ],
)
def test_a_topic_it_cannot_read_is_a_clear_error(error: Any, expected: type) -> None:
    consumer = FakeConsumer(ends={0: (0, 1)}, batches=[], error=error)

    with pytest.raises(expected, match="reading t"):
        list(_reader(consumer).messages())
    assert consumer.closed


def test_a_topic_without_partitions_does_not_exist() -> None:
    with pytest.raises(UnknownTopicError, match="topic t does not exist"):
        list(_reader(FakeConsumer(ends={}, batches=[])).messages())


def test_a_fatal_consumer_error_raises_and_a_passing_one_is_skipped() -> None:
    passing = Record(0, 0, None, KafkaError(KafkaError._TRANSPORT))
    fatal = Record(0, 0, None, KafkaError(KafkaError._FATAL, fatal=True))
    consumer = FakeConsumer(ends={0: (0, 2)}, batches=[[passing, Record(0, 0, b"a")], [fatal]])
    got: list[int] = []

    with pytest.raises(KafkaException):
        for record in _reader(consumer).messages():
            got.append(record.offset())
    assert got == [0] and consumer.closed
