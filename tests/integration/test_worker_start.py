"""A worker that recovers a ledger at start handles a lone event published before it
joined its consumer group.

While the tickets changelog is recovered, Faust drops records it fetched from the source
partitions (not active yet, or queued when the flow resumes), and aiokafka's seek to the
committed offsets does not move a partition with nothing committed: the probe that
``wait_ready`` publishes, the only record of its partition, then never reached the
agent (8 of 21 starts with 2,000 tickets before ``RedeliveringConsumer`` sought again
after the rebalance). Each start here is a fresh group with tickets to recover.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType

from schemas.settings import Settings
from schemas.topics import record_limits
from streams.topics import ensure_topics

from .processes import WorkerFactory
from .processes import worker_factory as worker_factory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchlib import create_topics
from sweep import held_tickets

pytestmark = pytest.mark.integration

STARTS = 3
TICKETS = 2_000


@pytest.mark.timeout(240)
def test_a_lone_event_is_handled_after_a_start_that_recovers_the_ledger(
    worker_factory: WorkerFactory,
) -> None:
    for _ in range(STARTS):
        worker = worker_factory(start=False)
        changelog = f"{worker.config.app_id}-consent-tickets-changelog"
        create_topics(worker.settings, [changelog], {"cleanup.policy": "compact"})
        written = held_tickets(worker.settings, worker.policy, changelog, TICKETS, 60.0)
        assert written["tickets"] == TICKETS
        worker.start()
        worker.wait_ready(60.0)  # publishes one probe event and waits for it in the store
        assert worker.metric("consent_ledger_tickets") == TICKETS
        worker.stop()


def test_a_worker_with_a_larger_record_limit_raises_its_topics_limits(
    worker_factory: WorkerFactory,
) -> None:
    """Topics created under a smaller ``max_record_bytes`` (an earlier deployment) take
    the larger records once a worker with the larger setting starts: else a deletion's
    instruction past the old limit would fail its batch on every retry."""
    larger = 2 * 1024 * 1024
    worker = worker_factory(start=False, env={"CONSENT_STREAM_MAX_RECORD_BYTES": str(larger)})
    ensure_topics(replace(worker.settings, max_record_bytes=4096), worker.policy)
    changelog = f"{worker.config.app_id}-consent-subjects-changelog"
    small = str(record_limits(4096)[0])
    create_topics(
        worker.settings, [changelog], {"cleanup.policy": "compact", "max.message.bytes": small}
    )
    wanted = worker.settings.topics.specs(worker.policy.partners, larger)
    before = limits(worker.settings, [*wanted, changelog])
    assert set(before.values()) == {small, str(record_limits(4096)[1])}  # dead letters: [1]

    worker.start()
    worker.wait_ready(60.0)

    held = limits(worker.settings, [*wanted, changelog])
    assert held == {name: config["max.message.bytes"] for name, config in wanted.items()} | {
        changelog: str(record_limits(larger)[0])
    }


def limits(settings: Settings, topics: list[str]) -> dict[str, str]:
    """``max.message.bytes`` of each topic, as the broker holds it."""
    held = configs(settings, topics, "max.message.bytes")
    return {name: entry.value for name, entry in held.items()}


def configs(settings: Settings, topics: list[str], key: str) -> dict[str, Any]:
    """The ``key`` config entry of each topic, as the broker describes it."""
    admin = AdminClient(settings.admin_config())
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in topics]
    described = admin.describe_configs(resources, request_timeout=30)
    return {r.name: f.result()[key] for r, f in described.items()}


def test_topics_are_created_with_the_settings_min_insync_replicas(
    worker_factory: WorkerFactory,
) -> None:
    """Set on each topic, not left to the broker's default: with ``acks=all`` a record
    counts once that many replicas have it (2 of 3 in production; 1 on this one broker)."""
    worker = worker_factory(start=False)
    settings = worker.settings
    created = ensure_topics(settings, worker.policy)
    assert set(created) == set(settings.topics.specs(worker.policy.partners, 1))

    held = configs(settings, created, "min.insync.replicas")

    assert {name: e.value for name, e in held.items()} == dict.fromkeys(created, "1")
    assert {e.source for e in held.values()} == {ConfigSource.DYNAMIC_TOPIC_CONFIG.value}
