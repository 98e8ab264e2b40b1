"""The demo's warm-up probes and consumer-group check (no processes, no Kafka)."""

from __future__ import annotations

import itertools
import uuid
from types import SimpleNamespace

from confluent_kafka import ConsumerGroupState, TopicPartition

from schemas.events import ConsentChanged, DataShared, DeletionRequested, DeletionScope
from schemas.policy import load_policy
from schemas.validation import validate_event
from streams.demo.warmup import PROBE_SOURCE, assigned, probe_events

POLICY = load_policy()
NOW = 1_800_000_000_000


def test_a_probe_subject_reaches_every_partner_and_closes_its_account() -> None:
    counter = itertools.count(1)
    events, request_id = probe_events(
        POLICY, "probe-1", NOW, lambda: str(uuid.UUID(int=next(counter), version=4))
    )
    for event in events:
        validate_event(event, POLICY, NOW)
    payloads = [e.payload for e in events]
    assert isinstance(payloads[0], ConsentChanged)
    assert sorted(p.partner for p in payloads if isinstance(p, DataShared)) == sorted(
        POLICY.partners
    )
    last = payloads[-1]
    assert isinstance(last, DeletionRequested)
    assert (last.request_id, last.scope) == (request_id, DeletionScope.ACCOUNT)
    assert {e.subject_id for e in events} == {"probe-1"}
    assert {e.source for e in events} == {PROBE_SOURCE}
    times = [e.occurred_at for e in events]
    assert times == sorted(set(times)) and times[-1] < NOW
    assert len({e.event_id for e in events} | {request_id}) == len(events) + 1


def test_a_load_subject_that_does_not_close_sends_no_instruction() -> None:
    events, request_id = probe_events(POLICY, "probe-2", NOW, closes=False)
    assert request_id is None
    assert not any(isinstance(e.payload, DeletionRequested) for e in events)
    assert len(events) == 1 + len(POLICY.partners)
    for event in events:
        validate_event(event, POLICY, NOW)


def group(state: ConsumerGroupState, *members: list[tuple[str, int]]) -> SimpleNamespace:
    return SimpleNamespace(
        state=state,
        members=[
            SimpleNamespace(
                assignment=SimpleNamespace(topic_partitions=[TopicPartition(t, p) for t, p in m])
            )
            for m in members
        ],
    )


def test_a_group_holds_its_partitions_once_stable_with_every_member() -> None:
    two = group(ConsumerGroupState.STABLE, [("e", 0), ("e", 1)], [("e", 2)])
    assert assigned(two, 2) == {("e", 0), ("e", 1), ("e", 2)}
    assert assigned(two, 3) == set()  # a worker has not joined yet
    rebalancing = group(ConsumerGroupState.PREPARING_REBALANCING, [("e", 0)])
    assert assigned(rebalancing, 1) == set()
