"""The demo's warm-up: what a cold broker and fresh workers do once, done before the
measured workload (used by ``streams.demo.run.DemoRun``).

From the children's start: every worker and partner answers HTTP; every topic of the run
has a leader for each partition; every consumer group (the workers' Faust app, each
partner's) is stable with its members and all the partitions it reads assigned (on a
fresh broker the first join also creates ``__consumer_offsets``). Then rounds of probe
subjects go through the whole path, published with the producer the workload uses (its
metadata, connection and producer id): per subject a consent change, data shared with
every partner and an account closure, so store writes, an instruction to every partner,
its acknowledgement and a final request status. Another round runs while a partition
that a worker or partner reads has carried no record yet (a worker's first record of a
partition looks up where to start). Last, ``LOAD_S`` of probe subjects at the workload's
rate: a cold broker and fresh workers are slow for their first seconds under load. The
summary counts from the workers' metrics at the end of the warm-up (``Samples.since``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from types import MappingProxyType
from typing import Any, Final

from confluent_kafka import ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from producers.publisher import ConsentPublisher
from schemas.errors import PublishError
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    Payload,
)
from schemas.policy import Policy
from schemas.settings import Settings
from streams.demo.latency import Samples
from streams.demo.processes import Child, Children, http_get
from streams.demo.request_tracker import RequestTracker
from streams.demo.summary import ACKS, INSTRUCTIONS, WarmupReport, processed

__all__ = ["PROBE_SOURCE", "Warmup", "assigned", "probe_events"]

log = logging.getLogger(__name__)

PROBE_SOURCE: Final = "consent-stream.demo"
PROBE_PURPOSE: Final = "marketing_sms"  # opt-out: granting it sends no instruction
STEP_TIMEOUT_S: Final = 120.0
MAX_ROUNDS: Final = 4
SUBJECTS_PER_PARTITION: Final = 4  # per round: a topic misses a partition at ~2 % (3 of them)
_ADMIN_TIMEOUT_S: Final = 10.0
LOAD_S: Final = 10.0
"""How long the warm-up load runs at the workload's rate. On a freshly started stack the
path is slow for its first seconds under load, and a raw produce/consume burst does not
warm it; first runs after 3 s of load had p99 163-472 ms, after 10 s 81-156 ms
(docs/benchmarks.md, "Demo warm-up")."""
LOAD_CLOSING_EVERY: Final = 10
"""In the load, one subject in this many closes its account (the workload's 10 %): the
load's instructions, and the wait for their acks, stay in the workload's proportion."""
_LOAD_TICKS_PER_S: Final = 20

Partition = tuple[str, int]


def _new_id() -> str:
    return str(uuid.uuid4())


def probe_events(
    policy: Policy,
    subject: str,
    now_ms: int,
    new_id: Callable[[], str] = _new_id,
    *,
    closes: bool = True,
) -> tuple[list[ConsentEvent], str | None]:
    """One probe subject's events, in event-time order, and its deletion request id (the
    subject closes its account, an instruction to every partner, unless not ``closes``)."""
    request_id = new_id() if closes else None
    payloads: list[Payload] = [
        ConsentChanged(PROBE_PURPOSE, ConsentDecision.GRANTED, policy.notice_version, "demo-probe"),
        *(
            DataShared(name, tuple(sorted(p.receives)), MappingProxyType({"probe_ref": name}))
            for name, p in sorted(policy.partners.items())
        ),
    ]
    if request_id is not None:
        payloads.append(DeletionRequested(request_id, DeletionScope.ACCOUNT, "demo warm-up probe"))
    start = now_ms - len(payloads)
    events = [
        ConsentEvent(new_id(), subject, start + i, PROBE_SOURCE, payload)
        for i, payload in enumerate(payloads)
    ]
    return events, request_id


def assigned(description: Any, members: int) -> set[Partition]:
    """The partitions a consumer group holds once it is stable with ``members`` members."""
    if description.state != ConsumerGroupState.STABLE or len(description.members) != members:
        return set()
    return {
        (tp.topic, tp.partition)
        for m in description.members
        if m.assignment is not None
        for tp in m.assignment.topic_partitions
    }


class Warmup:
    """One warm-up; ``run`` returns its report, or why it failed."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        children: Children,
        workers: Sequence[Child],
        publisher: ConsentPublisher,
        redis: Any,
        snapshot: Callable[[], Samples],
        load_rate: float = 0.0,
    ) -> None:
        self.settings, self.policy, self.children = settings, policy, children
        self.workers, self.publisher, self.snapshot = workers, publisher, snapshot
        self.admin = AdminClient(settings.admin_config())
        self.redis = redis
        self.tracker = RequestTracker(redis, settings.redis_prefix, ())
        self.partitions: dict[str, int] = {}
        self.events: Counter[str] = Counter()
        self.subjects = 0
        self._token = uuid.uuid4().hex[:8]
        self.load_rate = load_rate

    def run(self, started: float) -> tuple[WarmupReport | None, str | None]:
        wait = self.children.wait_until
        failure = wait(self._answering, STEP_TIMEOUT_S, "the children to answer")
        answering = time.monotonic() - started
        failure = failure or wait(self._leaders, STEP_TIMEOUT_S, "the topics' leaders")
        failure = failure or wait(self._groups, STEP_TIMEOUT_S, "the consumer groups")
        joined = time.monotonic() - started
        if failure is not None:
            return None, failure
        rounds, empty, failure = self._probe()
        failure = failure or self._load()
        if failure is not None:
            return None, failure
        report = WarmupReport(
            answering,
            joined,
            time.monotonic() - started,
            rounds,
            self.subjects,
            sum(self.events.values()),
            len(self.policy.partners),
            tuple(f"{t}[{p}]" for t, p in empty),
        )
        return report, None

    def _probe(self) -> tuple[int, list[Partition], str | None]:
        """Probe rounds until every partition a worker or partner reads carried a record."""
        rounds, empty = 0, self._read_partitions()
        while empty and rounds < MAX_ROUNDS:
            rounds += 1
            failure = self._round(SUBJECTS_PER_PARTITION * max(self.partitions.values()))
            if failure is not None:
                return rounds, empty, failure
            empty = self._empty(empty)
            log.debug("warm-up round %d: %d partitions without a record", rounds, len(empty))
        return rounds, empty, None

    def _load(self) -> str | None:
        """``LOAD_S`` of probe subjects at the workload's rate (none unpaced): the cold
        broker's and workers' first seconds under load (JIT, caches, batch sizes) pass
        before the measured workload, not in it."""
        if self.load_rate <= 0:
            return None
        per_subject = len(probe_events(self.policy, "size", 0, closes=False)[0])
        subjects = max(1, round(self.load_rate * LOAD_S / per_subject))
        chunk = max(1, round(subjects / (LOAD_S * _LOAD_TICKS_PER_S)))
        start = time.monotonic()
        for i, first in enumerate(range(0, subjects, chunk)):
            time.sleep(max(0.0, start + i / _LOAD_TICKS_PER_S - time.monotonic()))
            failure = self._publish_probes(min(chunk, subjects - first), LOAD_CLOSING_EVERY)
            if failure is not None:
                return failure
        return self.children.wait_until(self._through, STEP_TIMEOUT_S, "the warm-up load")

    def _answering(self) -> bool:
        token = self.settings.metrics_token  # the gateway's /metrics asks for it
        answers = (
            http_get(c.port, "/healthz" if c in self.workers else "/metrics", 2.0, token)[0]
            for c in self.children.items
        )
        return all(status == 200 for status in answers)

    def _leaders(self) -> bool:
        """Every topic of the run exists, each partition with a leader (``partitions`` set)."""
        wanted = self.settings.topics.names(self.policy.partners)
        try:
            topics = self.admin.list_topics(timeout=_ADMIN_TIMEOUT_S).topics
        except KafkaException as exc:
            log.debug("no topic metadata yet: %s", exc)
            return False
        for name in wanted:
            meta = topics.get(name)
            if meta is None or meta.error is not None or not meta.partitions:
                return False
            if any(p.leader < 0 or p.error is not None for p in meta.partitions.values()):
                return False
            self.partitions[name] = len(meta.partitions)
        return True

    def _reads(self) -> dict[str, tuple[int, list[str]]]:
        """Consumer group -> (members, topics it reads)."""
        t, partners = self.settings.topics, sorted(self.policy.partners)
        groups = {
            self.settings.app_id: (
                len(self.workers),
                [t.events, t.ledger, *(t.acks(p) for p in partners)],
            )
        }
        groups.update({t.partner_group(p): (1, [t.instructions(p)]) for p in partners})
        return groups

    def _spread(self, topics: Iterable[str]) -> set[Partition]:
        return {(topic, p) for topic in topics for p in range(self.partitions[topic])}

    def _read_partitions(self) -> list[Partition]:
        return sorted(set().union(*(self._spread(ts) for _, ts in self._reads().values())))

    def _groups(self) -> bool:
        reads = self._reads()
        try:
            described = self.admin.describe_consumer_groups(
                list(reads), request_timeout=_ADMIN_TIMEOUT_S
            )
            return all(
                self._spread(reads[group][1]) <= assigned(future.result(), reads[group][0])
                for group, future in described.items()
            )
        except KafkaException as exc:
            log.debug("consumer groups not described yet: %s", exc)
            return False

    def _round(self, subjects: int) -> str | None:
        failure = self._publish_probes(subjects)
        if failure is not None:
            return failure
        return self.children.wait_until(self._through, STEP_TIMEOUT_S, "the warm-up probes")

    def _publish_probes(self, subjects: int, closing_every: int = 1) -> str | None:
        now = int(time.time() * 1000)
        events: list[ConsentEvent] = []
        requests: list[str] = []
        for _ in range(subjects):
            self.subjects += 1
            subject = f"demo-probe-{self._token}-{self.subjects}"
            closes = self.subjects % closing_every == 0
            more, request_id = probe_events(self.policy, subject, now, closes=closes)
            events += more
            if request_id is not None:
                requests.append(request_id)
        try:
            self.publisher.publish_many(events)
        except PublishError as exc:
            return f"the warm-up probes were not acknowledged by Kafka: {exc}"
        self.events.update(e.type.value for e in events)
        followed = [*self.tracker.ids, *requests]
        self.tracker = RequestTracker(self.redis, self.settings.redis_prefix, followed)
        return None

    def _through(self) -> bool:
        """Every probe processed, every instruction acknowledged, every request final."""
        samples = self.snapshot()
        return (
            processed(samples) >= sum(self.events.values())
            and samples.total(INSTRUCTIONS) == samples.total(ACKS)
            and self.tracker.final_count() == self.tracker.total
        )

    def _empty(self, partitions: Sequence[Partition]) -> list[Partition]:
        """Those of ``partitions`` that hold no record yet."""
        end = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # untyped in confluent-kafka
        latest = self.admin.list_offsets(
            {TopicPartition(t, p): end for t, p in partitions},
            request_timeout=_ADMIN_TIMEOUT_S,
        )
        try:
            return sorted(
                (tp.topic, tp.partition)
                for tp, future in latest.items()
                if future.result().offset <= 0
            )
        except KafkaException as exc:  # asked again after the next round
            log.warning("could not read the end offsets of the warm-up topics: %s", exc)
            return list(partitions)
