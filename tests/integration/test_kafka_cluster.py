"""On three brokers (``kafka_cluster.KafkaCluster``), the service's topics have three
replicas and ``min.insync.replicas=2``, and an event is acknowledged only once two brokers
have it: with one broker SIGKILLed, events are still accepted; with two, and only the
third in sync, none is (the same events to topics created with
``CONSENT_STREAM_MIN_INSYNC_REPLICAS=1`` are: one copy); they go through once a broker is
back. Read afterwards, every event is there exactly once (idempotent retries), in order
per subject. And a worker on these brokers rides through losing one. The brokers are
secured as the local stack's: the events are published as ``publisher`` and the worker
runs as ``worker``, each with its namespace's ACLs only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from schemas.events import ConsentEvent
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import ENV_PREFIX, Settings
from streams.topics import ensure_topics

from .kafka_auth import admin_settings, sync_acls
from .kafka_cluster import KafkaCluster
from .processes import WorkerFactory, consent_changed, new_subject, read_until
from .processes import worker_factory as worker_factory

pytestmark = pytest.mark.integration

POLICY = load_policy()
PURPOSE = "personalized_ads"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    brokers = KafkaCluster(Path(tmp_path_factory.mktemp("kafka-cluster")))
    try:
        brokers.start()
        yield brokers
    finally:
        brokers.stop()


def namespace(cluster: KafkaCluster, **overrides: Any) -> Settings:
    """A new namespace's topics and ACLs on the cluster; its settings as admin."""
    s = admin_settings(
        bootstrap_servers=cluster.bootstrap,
        replication_factor=3,
        topic_namespace=f"c{uuid.uuid4().hex[:8]}",
        dev_mode=True,
        **overrides,
    )
    ensure_topics(s, POLICY, timeout_s=60)
    sync_acls(s, POLICY.partners)
    return s


@pytest.fixture(scope="module")
def settings(cluster: KafkaCluster) -> Settings:
    return namespace(cluster)


def in_sync(settings: Settings, topic: str) -> set[int]:
    """The brokers in sync on every partition of ``topic``."""
    partitions = AdminClient(settings.admin_config()).list_topics(topic, timeout=30)
    isrs = [set(p.isrs) for p in partitions.topics[topic].partitions.values()]
    return set.intersection(*isrs)


def events(n: int) -> list[ConsentEvent]:
    subjects = [new_subject("cluster") for _ in range(10)]
    return [consent_changed(subjects[i % 10], PURPOSE, i % 2 == 0) for i in range(n)]


def read_events(settings: Settings) -> list[ConsentEvent]:
    topic, serde = settings.topics.events, AvroSerde()
    consumer = Consumer(settings.consumer_config(f"read-{uuid.uuid4().hex[:8]}"))
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in consumer.list_topics(topic, timeout=30).topics[topic].partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        got: list[ConsentEvent] = []
        while sum(ends.values()) > len(got):
            for msg in consumer.consume(500, 1.0):
                assert msg.error() is None, msg.error()
                got.append(serde.decode_as(msg.value() or b"", ConsentEvent, topic))
        return got
    finally:
        consumer.close()


def test_the_topics_have_three_replicas_and_writes_count_on_two(
    cluster: KafkaCluster, settings: Settings
) -> None:
    admin = AdminClient(settings.admin_config())
    names = list(settings.topics.specs(POLICY.partners, settings.max_record_bytes))
    meta = admin.list_topics(timeout=30).topics
    assert {len(p.replicas) for n in names for p in meta[n].partitions.values()} == {3}
    described = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, n) for n in names], request_timeout=30
    )
    held = {r.name: f.result()["min.insync.replicas"].value for r, f in described.items()}
    assert held == dict.fromkeys(names, "2")


def test_the_brokers_take_logins_and_acls_as_the_stacks_does(settings: Settings) -> None:
    producer = Producer(settings.as_principal("publisher").producer_config())
    topics = settings.topics
    for topic, refused in (
        (topics.events, False),
        (topics.state, True),
        (topics.acks("ads"), True),
    ):
        error = producer.list_topics(topic, timeout=30).topics[topic].error
        assert (error is not None and error.name() == "TOPIC_AUTHORIZATION_FAILED") is refused
    anonymous = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 0})
    with pytest.raises(KafkaException):
        anonymous.list_topics(timeout=5)  # no SASL: the brokers close the connection


@pytest.mark.timeout(300)
def test_accepted_stays_accepted_through_losing_brokers(
    cluster: KafkaCluster, settings: Settings
) -> None:
    before, one_down, two_down = events(200), events(200), events(200)
    one_copy = namespace(cluster, min_insync_replicas=1)
    topic = settings.topics.events
    with ConsentPublisher(settings.as_principal("publisher"), POLICY) as publisher:
        assert len(publisher.publish_many(before, timeout_s=60)) == len(before)

        cluster.kill(1)
        assert len(publisher.publish_many(one_down, timeout_s=60)) == len(one_down)

        cluster.kill(2)
        cluster.wait_until(lambda: in_sync(settings, topic) == {3}, "brokers 1, 2 fenced")
        for event in two_down:
            publisher.publish_async(event)
        assert publisher.flush(10.0) == len(two_down)  # one copy: not acknowledged
        with ConsentPublisher(one_copy.as_principal("publisher"), POLICY) as careless:
            assert len(careless.publish_many(events(20), timeout_s=30)) == 20  # it would be

        cluster.restart(2)
        assert publisher.flush(120.0) == 0
    cluster.restart(1)

    got = read_events(settings)
    sent = before + one_down + two_down
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in sent)  # once each
    for subject in {e.subject_id for e in sent}:
        order = [e.event_id for e in sent if e.subject_id == subject]
        assert [e.event_id for e in got if e.subject_id == subject] == order


@pytest.mark.timeout(300)
def test_a_worker_on_three_brokers_rides_through_losing_one(
    cluster: KafkaCluster, worker_factory: WorkerFactory
) -> None:
    """Topics with 3 replicas, a broker SIGKILLed while events come (one that leads some
    of the worker's partitions): every withdrawal reaches the store and the ads partner's
    topic, and the worker never restarts."""
    worker = worker_factory(cluster=cluster.bootstrap, env={ENV_PREFIX + "REPLICATION_FACTOR": "3"})
    settings = worker.settings
    own = [settings.topics.events, settings.topics.state, settings.topics.instructions("ads")]
    meta = AdminClient(settings.admin_config()).list_topics(timeout=30).topics
    assert any(p.leader == 1 for t in own for p in meta[t].partitions.values())
    before, during = withdrawals(60), withdrawals(120)
    client = make_redis(settings)
    store = ConsentStore(client, POLICY, settings.subject_keys, settings.redis_prefix)
    try:
        with ConsentPublisher(settings.as_principal("publisher"), POLICY) as publisher:
            publisher.publish_many(before, timeout_s=60)
            worker.poll(lambda: all_withdrawn(store, before), 60.0, "the first withdrawals")
            for n, event in enumerate(during):
                publisher.publish_async(event)
                if n == 30:
                    cluster.kill(1)
                time.sleep(0.02)
            assert publisher.flush(120.0) == 0
        everything = before + during
        worker.poll(lambda: all_withdrawn(store, everything), 180.0, "every withdrawal")
    finally:
        client.close()
        cluster.restart(1)
    wanted = {e.event_id for e in everything}
    read_until(
        settings,
        settings.topics.instructions("ads"),
        lambda rs: wanted <= {r.obj.source_event_id for r in rs},
        timeout_s=120.0,
        what="a STOP_PROCESSING for each withdrawal",
        explain=worker.describe,
    )
    assert worker.running and worker.starts == 1, worker.describe()


def withdrawals(n: int) -> list[ConsentEvent]:
    return [consent_changed(new_subject("cluster"), PURPOSE, False) for _ in range(n)]


def all_withdrawn(store: ConsentStore, events: list[ConsentEvent]) -> bool:
    return all(store.is_allowed(e.subject_id, PURPOSE) is False for e in events)
