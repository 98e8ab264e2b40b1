"""Nothing lost through a worker crash: SIGKILL mid-stream, restart, compare every effect.

A few thousand events over ~300 subjects are published while the worker runs; the worker
is killed (SIGKILL, by its pid) after it processed some but not all of them, restarted,
and then every accepted event is checked against its effects. The expected effects come
from replaying the same events, per subject in publish order, through the pure
``streams.events.decisions.decide`` with the same policy and key: the final consent store hash
of every subject, every instruction id (deterministic per event) on the partner topics,
and a status on consent.requests.v1 for every deletion request. Duplicates on partner
topics are allowed (at-least-once); a missing effect is not. The same with two workers
of one group, one of them killed and not restarted: the other takes over.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from consumers.store.layout import state_fields, text
from producers.publisher import ConsentPublisher, DeliveryReceipt
from schemas.errors import PublishError
from schemas.events import ConsentEvent, DeletionRequested
from schemas.policy import Policy
from schemas.settings import Settings
from streams.events.decisions import Outcome, decide
from streams.fanout import FanOut
from streams.pseudonyms import Pseudonyms
from streams.subject import SubjectState, to_consent_state

from .processes import (
    PROBE_PURPOSE,
    TopicRecord,
    WorkerFactory,
    WorkerProcess,
    app_revoked,
    consent_changed,
    data_shared,
    deletion_requested,
    new_subject,
    now_ms,
    permission_revoked,
    poll_until,
    read_all,
    read_until,
)
from .processes import worker_factory as worker_factory

pytestmark = pytest.mark.integration

SUBJECTS = 300
EVENTS = 3000
SEED = 20230901
KILL_AFTER_FRACTION = 0.25
PUBLISH_RATE = 1000.0
"""Events per second of the background publisher: the stream lasts 3 s, so the kill (at a
quarter of it) comes while it is still being published. Unpaced, it took ~0.6 s; the worker
counts an event when its batch settles, in jumps of up to ~1,900 with batches in flight,
and one CI run read all 3,000 counted at its first reading past the kill point."""
CATCH_UP_TIMEOUT_S = 150.0
RESTART_BOUND_S = 30.0
"""A named worker's restart to its withdrawals in the store: half the 60 s session timeout
it runs with, which an unnamed worker waits out."""
ADS = "personalized_ads"
DAY_MS = 86_400_000
PURPOSES = ("personalized_ads", "ads_analytics", "research_sharing", "marketing_sms")
APPS = ("carrier-tracking", "ads-insights", "partner-less-app")


@dataclass
class Workload:
    """The events in publish order (per subject: its event order)."""

    events: list[ConsentEvent] = field(default_factory=list)

    def by_subject(self) -> dict[str, list[ConsentEvent]]:
        out: dict[str, list[ConsentEvent]] = defaultdict(list)
        for e in self.events:
            out[e.subject_id].append(e)
        return out


def _shared(rng: random.Random, policy: Policy, subject: str, at: int) -> ConsentEvent:
    partner = rng.choice(sorted(policy.partners))
    receives = sorted(policy.partners[partner].receives)
    categories = tuple(rng.sample(receives, rng.randint(1, len(receives))))
    refs = {f"{partner}_ref": f"{partner[:3].upper()}-{rng.randrange(10**6)}"}
    completed = None
    if partner in ("payment", "logistics") and rng.random() < 0.7:
        # mostly recent transactions (RESTRICT), some older than the 3-year retention (ERASE)
        age_days = rng.choice((2, 30, 400, 1200))
        completed = at - age_days * DAY_MS
    return data_shared(subject, partner, categories, refs, transaction_completed_at=completed)


def _deletion(rng: random.Random, policy: Policy, subject: str) -> ConsentEvent:
    if rng.random() < 0.4:
        return deletion_requested(subject)
    categories = tuple(rng.sample(sorted(policy.categories), rng.randint(1, 3)))
    return deletion_requested(subject, categories=categories)


def _one(rng: random.Random, policy: Policy, subject: str, at: int) -> ConsentEvent:
    roll = rng.random()
    if roll < 0.35:
        ev = _shared(rng, policy, subject, at)
    elif roll < 0.75:
        ev = consent_changed(subject, rng.choice(PURPOSES), granted=rng.random() < 0.5)
    elif roll < 0.85:
        ev = app_revoked(subject, rng.choice(APPS))
    elif roll < 0.93:
        ev = permission_revoked(subject, rng.choice(("camera", "location")), "device-1")
    else:
        ev = _deletion(rng, policy, subject)
    return ev


def make_workload(policy: Policy, subjects: int, events: int, seed: int) -> Workload:
    rng = random.Random(seed)
    ids = [f"crash-{uuid.uuid4().hex[:12]}@example.com" for _ in range(subjects)]
    clock = dict.fromkeys(ids, now_ms() - 3_600_000)
    out = Workload()
    for _ in range(events):
        subject = rng.choice(ids)
        clock[subject] += rng.randint(1, 1000)
        at = clock[subject]
        if rng.random() < 0.05:
            at -= rng.randint(1000, 5000)  # some arrive out of event-time order
        ev = _one(rng, policy, subject, at)
        out.events.append(ConsentEvent(ev.event_id, subject, at, ev.source, ev.payload))
    return out


@dataclass
class Expected:
    store: dict[str, dict[str, str]]  # subject -> hash fields ({} when never written)
    instructions: dict[str, set[str]]  # partner -> instruction ids
    requests: set[str]
    closed: set[str]
    outcomes: Counter[str]


def expected_effects(workload: Workload, policy: Policy, settings: Settings) -> Expected:
    fan = FanOut(policy, Pseudonyms(settings.subject_keys), now_ms())
    store: dict[str, dict[str, str]] = {}
    instructions: dict[str, set[str]] = defaultdict(set)
    requests: set[str] = set()
    outcomes: Counter[str] = Counter()
    closed: set[str] = set()
    for subject, events in workload.by_subject().items():
        state = SubjectState(subject)
        store[subject] = {}
        for ev in events:
            d = decide(state, ev, fan)
            outcomes[d.outcome.value] += 1
            state = d.state
            if d.outcome is not Outcome.APPLIED:
                continue
            for ins in d.instructions:
                instructions[ins.partner].add(ins.instruction_id)
            if isinstance(ev.payload, DeletionRequested):
                requests.add(ev.payload.request_id)
            if d.consent_changed:
                store[subject] = state_fields(to_consent_state(state, 0))
        if state.closed_at is not None:
            closed.add(subject)
    return Expected(store, dict(instructions), requests, closed, outcomes)


class BackgroundPublisher:
    """Publishes the workload from a thread (``publish_async``) at ``PUBLISH_RATE``,
    recording receipts."""

    def __init__(self, settings: Settings, policy: Policy, events: list[ConsentEvent]) -> None:
        self._settings, self._policy, self._events = settings, policy, events
        self.receipts: list[DeliveryReceipt] = []
        self.errors: list[PublishError] = []
        self._thread = threading.Thread(target=self._run, name="crash-publisher", daemon=True)

    def _delivered(self, receipt: DeliveryReceipt | None, err: PublishError | None) -> None:
        if receipt is not None:
            self.receipts.append(receipt)
        if err is not None:
            self.errors.append(err)

    def _run(self) -> None:
        with ConsentPublisher(self._settings, self._policy) as publisher:
            started = time.monotonic()
            for i, ev in enumerate(self._events):
                publisher.publish_async(ev, self._delivered)
                if i % 50 == 49:  # a steady stream at PUBLISH_RATE rather than one burst
                    publisher.poll(0)
                    time.sleep(max(0.0, started + (i + 1) / PUBLISH_RATE - time.monotonic()))
            publisher.flush(60)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the publisher did not finish"


@pytest.fixture(scope="module")
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    # the session timeout (default 20 s) keeps the killed member's partitions unassigned
    # that long after a crash; the test worker uses 10 s
    return worker_factory(env={"CONSENT_STREAM_GROUP_SESSION_TIMEOUT_S": "10"})


@pytest.fixture(scope="module")
def redis_client(worker: WorkerProcess) -> Iterator[redis.Redis]:
    client = make_redis(worker.settings)
    yield client
    client.close()


def store_mismatches(
    client: redis.Redis, store: ConsentStore, expected: dict[str, dict[str, str]]
) -> list[str]:
    subjects = sorted(expected)
    with client.pipeline(transaction=False) as pipe:
        for subject in subjects:
            pipe.hgetall(store.key(subject))
        hashes: list[dict[Any, Any]] = pipe.execute()
    diffs = []
    for subject, raw in zip(subjects, hashes, strict=True):
        actual = {text(k) or "": text(v) or "" for k, v in raw.items()}
        if actual != expected[subject]:
            diffs.append(f"{store.key(subject)}: expected {expected[subject]}, got {actual}")
    return diffs


def ids_on(records: list[TopicRecord]) -> Counter[str]:
    return Counter(r.obj.instruction_id for r in records)


def test_sigkill_mid_stream_loses_no_effect(
    worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    settings, policy = worker.settings, worker.policy
    workload = make_workload(policy, SUBJECTS, EVENTS, SEED)
    expected = expected_effects(workload, policy, settings)
    assert expected.outcomes["applied"] > EVENTS * 0.8
    assert expected.closed and expected.requests and len(expected.instructions) == 4
    processed_before = worker.metric("consent_events_total")  # the readiness probe
    publisher = BackgroundPublisher(settings, policy, workload.events)

    publisher.start()
    kill_at = processed_before + int(EVENTS * KILL_AFTER_FRACTION)
    processed = worker.poll(
        lambda: (n := worker.metric("consent_events_total")) >= kill_at and n,
        60.0,
        f"{kill_at:.0f} events processed before the kill",
        interval_s=0.02,
    )
    worker.kill()
    publisher.join(60.0)
    started = time.monotonic()
    worker.start()
    worker.wait_ready(CATCH_UP_TIMEOUT_S)

    assert publisher.errors == []
    assert len(publisher.receipts) == EVENTS  # every event was accepted
    assert processed - processed_before < EVENTS, "the kill came after the end of the stream"
    remaining = max(10.0, CATCH_UP_TIMEOUT_S - (time.monotonic() - started))
    assert_every_effect(worker, redis_client, expected, remaining)


def test_a_second_worker_takes_over_from_a_sigkilled_one(worker_factory: WorkerFactory) -> None:
    """Two workers of one group share the partitions; one is SIGKILLed mid-stream and not
    restarted: the other takes its partitions over (after the 10 s session timeout),
    recovers their subjects' states and tickets from the changelogs, and every effect is
    there as if one worker had processed everything."""
    first = worker_factory(env={"CONSENT_STREAM_GROUP_SESSION_TIMEOUT_S": "10"})
    second = worker_factory(like=first)
    settings, policy = first.settings, first.policy
    shared_out(first, second)
    workload = make_workload(policy, SUBJECTS, EVENTS, SEED + 1)
    expected = expected_effects(workload, policy, settings)
    publisher = BackgroundPublisher(settings, policy, workload.events)

    def processed() -> float:
        return first.metric("consent_events_total") + second.metric("consent_events_total")

    kill_at = processed() + int(EVENTS * KILL_AFTER_FRACTION)
    publisher.start()
    first.poll(lambda: processed() >= kill_at, 60.0, f"{kill_at:.0f} events", interval_s=0.02)
    first.kill()
    publisher.join(60.0)

    assert publisher.errors == [] and len(publisher.receipts) == EVENTS
    client = make_redis(settings)
    try:
        assert_every_effect(second, client, expected, CATCH_UP_TIMEOUT_S)
    finally:
        client.close()
    assert second.running and second.starts == 1, second.describe()


def test_a_named_worker_restarted_after_sigkill_resumes_without_waiting_out_its_session(
    worker_factory: WorkerFactory,
) -> None:
    """A worker with ``CONSENT_STREAM_GROUP_INSTANCE_ID`` (a static member) and a 60 s
    session timeout, SIGKILLed and restarted: the group hands its partitions back when it
    rejoins, so withdrawals published while it was down take effect seconds after the
    restart. Without a name the new member waited for the dead one's session to expire
    (62.7 s measured, docs/benchmarks.md)."""
    worker = worker_factory(
        env={
            "CONSENT_STREAM_GROUP_INSTANCE_ID": f"w-{uuid.uuid4().hex}",
            "CONSENT_STREAM_GROUP_SESSION_TIMEOUT_S": "60",
        }
    )
    worker.kill()
    subjects = [new_subject("static") for _ in range(12)]  # on every partition
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        for granted in (True, False):
            publisher.publish_many([consent_changed(s, ADS, granted) for s in subjects])
    started = time.monotonic()
    worker.start()

    def withdrawn() -> bool:
        views = [worker.get_json(f"/consent/{s}") for s in subjects]
        return all(
            code == 200 and v["seen"] and v["purposes"][ADS]["allowed"] is False
            for code, v in views
        )

    worker.poll(lambda: worker.http_status("/healthz") == 200, 30.0, "GET /healthz 200")
    worker.poll(withdrawn, RESTART_BOUND_S, "every withdrawal in the store", interval_s=0.1)
    assert time.monotonic() - started < RESTART_BOUND_S


def test_a_second_worker_with_the_same_name_stops_and_the_first_goes_on(
    worker_factory: WorkerFactory,
) -> None:
    """Two workers with one group instance id (a misconfiguration): the second takes the
    first one's place, Faust's assignor refuses the first one's assignment and aiokafka's
    group coordination dies; the second worker then stops (exit code 1, the reason in its
    log) instead of running in no group while it answers /healthz. The first rejoins and
    goes on processing."""
    first = worker_factory(env={"CONSENT_STREAM_GROUP_INSTANCE_ID": f"w-{uuid.uuid4().hex}"})
    second = worker_factory(like=first, start=False)
    second.start()
    second.exit_expected = True
    poll_until(lambda: not second.running, 60.0, "the second worker to stop")
    assert second.returncode == 1, second.describe()
    assert "group membership ended" in second.log_tail(200)
    first.wait_ready(60.0)  # a new probe event through the group into the store
    assert first.running and first.starts == 1


def shared_out(first: WorkerProcess, second: WorkerProcess) -> None:
    """Until the group's rebalance gave ``second`` a share of the partitions: probe events
    (grants no partner is told of, on fresh subjects, so on every partition) until both
    workers have processed some."""
    before = {w: w.metric("consent_events_total") for w in (first, second)}
    with ConsentPublisher(first.settings, first.policy) as publisher:

        def both() -> bool:
            probes = [consent_changed(new_subject("probe"), PROBE_PURPOSE, True) for _ in range(6)]
            publisher.publish_many(probes)
            time.sleep(0.2)
            return all(w.metric("consent_events_total") > n for w, n in before.items())

        first.poll(both, 60.0, "both workers processing", interval_s=0.3)


def assert_every_effect(
    worker: WorkerProcess, redis_client: redis.Redis, expected: Expected, timeout_s: float
) -> None:
    """The store, the partner topics, the request statuses and the dead-letter topic hold
    exactly what ``expected`` says (duplicates on partner topics allowed)."""
    settings, policy = worker.settings, worker.policy
    store = ConsentStore(redis_client, policy, settings.subject_keys, settings.redis_prefix)
    poll_until(
        lambda: not store_mismatches(redis_client, store, expected.store),
        timeout_s,
        "the consent store to reach the expected state of every subject",
        interval_s=0.5,
        explain=lambda: (
            "\n".join(store_mismatches(redis_client, store, expected.store)[:10])
            + f"\n{worker.describe()}"
        ),
    )
    for subject in expected.closed:
        assert store.is_allowed(subject, "personalized_ads") is False
    for partner, ids in sorted(expected.instructions.items()):
        records = read_until(
            settings,
            settings.topics.instructions(partner),
            lambda rs, ids=ids: ids <= set(ids_on(rs)),  # type: ignore[misc]
            timeout_s=60.0,
            what=f"every expected instruction id for {partner} ({len(ids)})",
            explain=worker.describe,
        )
        unexpected = set(ids_on(records)) - ids
        assert not unexpected, f"{partner}: instructions no event implies: {unexpected}"
    statuses = read_until(
        settings,
        settings.topics.requests,
        lambda rs: expected.requests <= {(r.key or b"").decode() for r in rs},
        timeout_s=60.0,
        what=f"a status for each of the {len(expected.requests)} deletion requests",
        explain=worker.describe,
    )
    assert {r.obj.request_id for r in statuses} == expected.requests
    assert read_all(settings, settings.topics.deadletter, decode=False) == []
