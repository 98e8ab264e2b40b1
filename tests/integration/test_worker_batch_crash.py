"""A worker killed in the middle of a large batch: half of the batch's instructions are on
the partners' topics, and nothing else of the batch is out (not its tickets, its state
records, its store writes or its subjects' states).

The worker runs with the ``events.mid_instructions`` failpoint (``streams.failpoint``):
on the first batch with at least ``MIN_INSTRUCTIONS`` instructions it sends half of them,
waits for the broker, records which, and stops; the test SIGKILLs it by its pid. The
first half of the events is published ``GROUP`` at a time, each group settled before the
next (batches below the failpoint's size); the second half comes as a burst. So the kill
comes with thousands of events settled, none of which may be done again. The
partners answer the instructions that are out before the worker is restarted, so their
acknowledgements may reach the ledger before their tickets do (``streams.ledger.parked``). After
the restart every effect is compared with the pure decisions over the same events,
exactly: the store of every subject; the set of instruction ids per partner (each one the
killed batch had sent is there twice, and nothing of an event the worker had acknowledged
before the kill is); one status per deletion request; and the ledger's instructions:
each tracked once, none lost or doubled, and the answered ones answered.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator

import pytest
import redis

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from schemas.partner import AcknowledgementStatus, PartnerInstruction
from schemas.settings import Settings
from streams.subject import state_from_json

from .processes import WorkerFactory, WorkerProcess, poll_until, read_all, read_until
from .processes import worker_factory as worker_factory
from .test_worker_crash import expected_effects, ids_on, make_workload, store_mismatches
from .test_worker_deletion import Acks

pytestmark = pytest.mark.integration

SUBJECTS = 400
EVENTS = 4000
SETTLED_FIRST = EVENTS // 2
"""Events published in small groups and processed before the burst that meets the failpoint."""
GROUP = 10
SEED = 20261202
MIN_INSTRUCTIONS = 40
FAILPOINT = "events.mid_instructions"
CATCH_UP_TIMEOUT_S = 150.0
ACKS = "consent_acknowledgements_total"
IGNORED = "consent_acknowledgements_ignored_total"
PARKED = "consent_acknowledgements_parked_total"


@pytest.fixture(scope="module")
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    failpoint = f"{FAILPOINT}:{MIN_INSTRUCTIONS}"
    # a short session timeout, so the restarted worker gets the partitions back soon
    return worker_factory(
        env={"CONSENT_STREAM_FAILPOINT": failpoint, "CONSENT_STREAM_GROUP_SESSION_TIMEOUT_S": "10"}
    )


@pytest.fixture(scope="module")
def redis_client(worker: WorkerProcess) -> Iterator[redis.Redis]:
    client = make_redis(worker.settings)
    yield client
    client.close()


def test_kill_in_the_middle_of_a_batch_loses_and_doubles_nothing(
    worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    settings, policy = worker.settings, worker.policy
    workload = make_workload(policy, SUBJECTS, EVENTS, SEED)
    expected = expected_effects(workload, policy, settings)
    marker = worker.config.data_dir / f"failpoint-{FAILPOINT}.json"

    first, burst = workload.events[:SETTLED_FIRST], workload.events[SETTLED_FIRST:]
    with ConsentPublisher(settings, policy) as publisher:
        for start in range(0, len(first), GROUP):  # small batches: below the failpoint
            group = first[start : start + GROUP]
            publisher.publish_many(group)
            done = start + len(group)
            worker.poll(
                lambda done=done: worker.metric("consent_events_total") >= done or None,  # type: ignore[misc]
                30.0,
                f"the worker to settle the first {done} events",
            )
        assert not marker.exists()
        receipts = publisher.publish_many(burst)  # a burst: large batches
    assert len(receipts) == len(burst)
    poll_until(marker.exists, 60.0, "the worker to reach the failpoint", explain=worker.describe)
    worker.kill()
    settled = applied_events(worker)
    stopped = json.loads(marker.read_text())
    sent_before_kill = set(stopped["sent"])
    assert stopped["instructions"] >= MIN_INSTRUCTIONS and stopped["records"] > 1
    assert len(settled) >= len(first) // 2, "the first events' states are on the changelog"
    assert 0 < len(sent_before_kill) < stopped["instructions"]

    answered = answer_sent_instructions(settings, policy.partners, sent_before_kill)

    worker.start()
    worker.wait_ready(CATCH_UP_TIMEOUT_S)

    store = ConsentStore(redis_client, policy, settings.subject_keys, settings.redis_prefix)
    poll_until(
        lambda: not store_mismatches(redis_client, store, expected.store),
        CATCH_UP_TIMEOUT_S,
        "the consent store to reach the expected state of every subject",
        interval_s=0.5,
        explain=lambda: "\n".join(store_mismatches(redis_client, store, expected.store)[:10]),
    )
    duplicated: Counter[str] = Counter()
    sources: dict[str, str] = {}
    for partner, ids in sorted(expected.instructions.items()):
        records = read_until(
            settings,
            settings.topics.instructions(partner),
            lambda rs, ids=ids: ids <= set(ids_on(rs)),  # type: ignore[misc]
            timeout_s=60.0,
            what=f"every expected instruction id for {partner} ({len(ids)})",
            explain=worker.describe,
        )
        seen = ids_on(records)
        assert set(seen) == ids, f"{partner}: instructions no event implies"
        sources.update({r.obj.instruction_id: r.obj.source_event_id for r in records})
        duplicated.update({i: n for i, n in seen.items() if n > 1})
    # the killed batch is done again; so are the batches in flight beside it, whose
    # instructions may have been out too (a batch's first wave goes out when it is
    # decided), but nothing the worker had acknowledged before the kill
    assert sent_before_kill <= set(duplicated)
    again = {sources[iid] for iid in duplicated}
    assert not again & settled, "an event whose subject's state was written, done again"
    assert all(n == 2 for n in duplicated.values())
    statuses = read_until(
        settings,
        settings.topics.requests,
        lambda rs: expected.requests <= {(r.key or b"").decode() for r in rs},
        timeout_s=60.0,
        what=f"a status for each of the {len(expected.requests)} deletion requests",
        explain=worker.describe,
    )
    assert {r.obj.request_id for r in statuses} == expected.requests
    total = sum(len(ids) for ids in expected.instructions.values())
    poll_until(
        lambda: worker.metric("consent_instructions_pending") == total - answered,
        30.0,
        f"the ledger to track each of the {total} instructions once, {answered} answered",
        explain=lambda: ledger_counts(worker),
    )
    applied = sum(worker.metric(ACKS, partner=p, status="DONE") for p in policy.partners)
    assert applied == answered
    assert worker.metric(IGNORED, reason="unknown_instruction") == 0
    parked = sum(worker.metric(PARKED, partner=p) for p in policy.partners)
    assert parked <= answered
    assert read_all(settings, settings.topics.deadletter, decode=False) == []


def answer_sent_instructions(settings: Settings, partners: Iterable[str], sent: set[str]) -> int:
    """Each partner answers DONE to the instructions of ``sent`` on its topic; how many."""
    acks = Acks(settings)
    answered: set[str] = set()
    for partner in partners:
        for record in read_all(settings, settings.topics.instructions(partner)):
            ins: PartnerInstruction = record.obj
            if ins.instruction_id in sent and ins.instruction_id not in answered:
                acks.answer(ins, AcknowledgementStatus.DONE)
                answered.add(ins.instruction_id)
    assert answered == sent
    return len(answered)


def applied_events(worker: WorkerProcess) -> set[str]:
    """The events the subjects' states on the table's changelog record (a redelivery of
    one of them is a duplicate, with no effect)."""
    changelog = f"{worker.config.app_id}-consent-subjects-changelog"
    last = {r.key: r.value for r in read_all(worker.settings, changelog, decode=False)}
    states = [state_from_json(v) for v in last.values() if v is not None]
    return {event_id for state in states for event_id in state.recent_event_ids}


def ledger_counts(worker: WorkerProcess) -> str:
    """What the ledger's metrics say (for a failure's message)."""
    m = worker.metrics()
    names = ("consent_instructions_pending", ACKS, IGNORED, PARKED, "consent_ledger_tickets")
    return "; ".join(f"{n} {m.series(n)}" for n in names)
