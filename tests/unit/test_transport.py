"""The worker's transport: a record re-fetched below Faust's read offset is handed to
the streams, not dropped. No broker is involved: nothing here connects."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from schemas.errors import ConfigurationError
from schemas.settings import Settings
from streams.app import create_app
from streams.faust_glue import transport
from streams.faust_glue.direct import Chunk
from streams.faust_glue.transport import RedeliveringConsumer

# -- the consumer: a re-fetched record below Faust's read offset is handed over -------------


@dataclass(frozen=True)
class FakeMessage:
    offset: int


def drain(
    consumer: RedeliveringConsumer, batch: list[tuple[TP, int]], *, chunked: bool = False
) -> list[tuple[str, int]]:
    """What Faust's fetch loop (``Consumer._drain_messages``) hands to the streams: a record
    passes when its offset is not below the read offset, which then moves to it. With
    ``chunked``, the fetch yields each partition's records as one ``Chunk`` (a direct
    partition's, ``streams.faust_glue.fetched``)."""

    async def fetched(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        if not chunked:
            for tp, offset in batch:
                yield tp, FakeMessage(offset)
            return
        for tp in dict.fromkeys(tp for tp, _ in batch):
            yield tp, Chunk(tp, [FakeMessage(offset) for t, offset in batch if t == tp])

    async def scenario() -> list[tuple[str, int]]:
        handed: list[tuple[str, int]] = []
        async for tp, item in consumer.getmany(timeout=1.0):
            for message in item if isinstance(item, Chunk) else [item]:
                read = consumer._read_offset[tp]
                if read is None or message.offset >= read:
                    handed.append((tp.topic, message.offset))
                    consumer._read_offset[tp] = message.offset
        return handed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transport, "fetched", fetched)
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


def test_a_chunk_refetched_after_a_seek_back_is_handed_over_whole(
    consumer: RedeliveringConsumer,
) -> None:
    events = TP("ns.consent.events.v1", 2)
    consumer._read_offset[events] = 786
    refetched = [(events, offset) for offset in range(759, 789)]
    handed = drain(consumer, refetched, chunked=True)
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


# -- after a rebalance: every source partition sought, once the queues are cleared ---------


class FakeFetcher:
    def __init__(self) -> None:
        self.sought: dict[Any, int] = {}

    def seek_to(self, tp: Any, offset: int) -> None:
        self.sought[tp] = offset


def test_aiokafka_does_not_move_a_partition_with_nothing_committed() -> None:
    """The upstream defect: ``seek_to_committed`` seeks only offsets above 0."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    committed = {TopicPartition("e", 0): None, TopicPartition("e", 1): 0, TopicPartition("e", 2): 7}
    consumer: Any = AIOKafkaConsumer.__new__(AIOKafkaConsumer)
    consumer._fetcher = FakeFetcher()

    class Subscription:
        def assigned_partitions(self) -> set[Any]:
            return set(committed)

    async def committed_offset(tp: Any) -> int | None:
        return committed[tp]

    consumer._subscription = Subscription()
    consumer.committed = committed_offset
    result = asyncio.run(AIOKafkaConsumer.seek_to_committed(consumer))
    assert result == committed
    assert consumer._fetcher.sought == {TopicPartition("e", 2): 7}  # 0 and None: not moved


def test_faust_clears_the_agents_queues_when_the_flow_resumes() -> None:
    """The other half: what was queued before ``resume`` is dropped by it."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    flow = FlowControlEvent()
    queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    queue.put_nowait(1)
    flow.resume()
    assert queue.empty()


def test_uncommitted_partitions_seek_to_start(consumer: RedeliveringConsumer) -> None:
    events, acks = TP("ns.consent.events.v1", 0), TP("ns.partner.ads.acks.v1", 1)
    later, changelog = TP("ns.consent.events.v1", 2), TP("app-consent-subjects-changelog", 0)
    committed = {events: None, acks: 0, later: 7, changelog: None}
    sought: list[dict[Any, int]] = []

    class Thread:
        async def seek_to_committed(self) -> dict[Any, Any]:
            return committed

        async def seek_wait(self, partitions: dict[Any, int]) -> None:
            sought.append(dict(partitions))

    consumer._thread = Thread()  # type: ignore[assignment]
    assert asyncio.run(consumer.seek_to_committed()) == committed
    assert sought == [{events: 0, acks: 0}]  # changelogs are Faust's


def test_a_resumed_flow_after_a_rebalance_seeks_again(consumer: RedeliveringConsumer) -> None:
    seeks: list[str] = []

    async def perform_seek() -> None:
        seeks.append("seek")

    async def scenario(in_recovery: bool) -> None:
        consumer.app.in_recovery = in_recovery
        consumer.resume_flow()
        await asyncio.sleep(0.01)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(consumer, "perform_seek", perform_seek)
        asyncio.run(scenario(in_recovery=True))  # changelogs being read: not yet
        assert seeks == [] and consumer.reseeks == 0
        asyncio.run(scenario(in_recovery=False))
    assert seeks == ["seek"] and consumer.reseeks == 1
    assert consumer.flow_active


def test_faust_internal_topics_are_named_as_faust_names_them(tmp_path: Path) -> None:
    from streams.faust_glue.internal_topics import internal_topics

    app = create_app(Settings(data_dir=str(tmp_path), app_id="cs-test", partitions=4))
    table = app.Table("consent-subjects", partitions=4, key_type=bytes, value_type=bytes)
    topics = internal_topics(app, 4096)
    changelog = {"cleanup.policy": "compact", "max.message.bytes": str(4096 + 65_536)}
    assert topics == {
        "cs-test-consent-subjects-changelog": (4, changelog),
        "cs-test-__assignor-__leader": (1, {}),
    }
    assert table.changelog_topic.get_topic_name() in topics
    assert app._leader_assignor._leader_topic_name in topics


@pytest.mark.parametrize(("session_s", "heartbeat_s"), [(60, 3.0), (10, 3.0), (6, 2.0)])
def test_the_group_session_timeout_is_the_settings(
    tmp_path: Path, session_s: int, heartbeat_s: float
) -> None:
    app = create_app(Settings(data_dir=str(tmp_path), group_session_timeout_s=session_s))
    assert app.conf.broker_session_timeout == session_s
    assert app.conf.broker_heartbeat_interval == heartbeat_s


def test_a_group_instance_id_makes_the_worker_a_static_member(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"CONSENT_STREAM_GROUP_INSTANCE_ID": "worker-1.eu_west", "CONSENT_STREAM_DEV_MODE": "1"}
    )
    assert settings.group_instance_id == "worker-1.eu_west"
    app = create_app(replace(settings, data_dir=str(tmp_path)))
    assert app.conf.consumer_group_instance_id == "worker-1.eu_west"
    dynamic = create_app(Settings(data_dir=str(tmp_path)))
    assert dynamic.conf.consumer_group_instance_id is None


@pytest.mark.parametrize("value", ["worker 1", "worker/1", "..", "w" * 250, "wörker"])
def test_a_group_instance_id_kafka_would_refuse_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="GROUP_INSTANCE_ID"):
        Settings.from_env(
            {"CONSENT_STREAM_GROUP_INSTANCE_ID": value, "CONSENT_STREAM_DEV_MODE": "1"}
        )


def test_the_workers_url_names_its_host_and_port(tmp_path: Path) -> None:
    """Faust's assignor compares it: a second worker with a running one's group instance id
    on another host or port gets an assignment made for another URL and stops."""
    app = create_app(Settings(data_dir=str(tmp_path), http_port=7123))
    assert str(app.conf.canonical_url) == f"http://{socket.gethostname()}:7123"
