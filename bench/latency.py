"""(d) Latency per hop at fixed publish rates.

Each step publishes the realistic mix at a fixed rate for a fixed time, one fresh subject
per event (so a state record maps to exactly one event). Two measurements per hop:

* observed end to end: an observer consumer reads ``consent.state.v1`` (publish -> store:
  the worker writes Redis, then sends the state record) and every partner's instruction
  topic (publish -> partner topic, matched on the instruction's ``source_event_id``); the
  latency is the wall-clock time it saw the record minus the ``cs_published_at`` header;
* the worker's own histograms (buckets delta over the step, Prometheus interpolation).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from cpu import cpu_delta, cpu_snapshot
from pipeline import CounterSampler, processing_rate
from quantiles import QUANTILES, bucket_delta, histogram_quantile, summary
from workerproc import Samples, WorkerProcess
from workload import Workload

from producers.publisher import ConsentPublisher, make_producer
from schemas.cloudevents import published_at_ms
from schemas.partner import PartnerInstruction
from schemas.policy import Policy
from schemas.serde import AvroSerde

__all__ = ["Observer", "run_latency_steps"]

log = logging.getLogger(__name__)

STORE_HISTOGRAM = "consent_publish_to_store_seconds"
PARTNER_HISTOGRAM = "consent_publish_to_partner_topic_seconds"


class Observer(threading.Thread):
    """Reads the state topic and the instruction topics from their current ends."""

    def __init__(self, worker: WorkerProcess, policy: Policy) -> None:
        super().__init__(daemon=True)
        s = worker.settings
        self.state_topic = s.topics.state
        topics = [self.state_topic, *(s.topics.instructions(p) for p in sorted(policy.partners))]
        self.serde = AvroSerde(s.schema_registry())
        self.consumer = Consumer(
            s.consumer_config(f"bench-observer-{uuid.uuid4().hex}", **{"fetch.wait.max.ms": 5})
        )
        assignment = []
        for topic in topics:
            for p in range(s.partitions):
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), 15)
                assignment.append(TopicPartition(topic, p, high))
        self.consumer.assign(assignment)
        self.store_seen: dict[bytes, int] = {}
        self.partner_seen: list[tuple[str, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                msg = self.consumer.poll(0.1)  # returns as soon as one record is there
                if msg is not None and msg.error() is None:
                    self._take(msg, int(time.time() * 1000))
        finally:
            self.consumer.close()

    def _take(self, msg: Any, now_ms: int) -> None:
        if msg.topic() == self.state_topic:
            self.store_seen.setdefault(msg.key(), now_ms)
            return
        ins = self.serde.decode_as(msg.value(), PartnerInstruction, msg.topic())
        self.partner_seen.append((ins.source_event_id, now_ms))

    def total(self) -> int:
        return len(self.store_seen) + len(self.partner_seen)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass
class Step:
    rate: float
    duration_s: float
    label: str
    published: dict[str, int] = field(default_factory=dict)  # event id -> published at
    subjects: dict[bytes, int] = field(default_factory=dict)  # subject -> published at


def _publish_paced(worker: WorkerProcess, policy: Policy, step: Step, events: list[Any]) -> float:
    """Publish at ``step.rate``; returns the rate achieved by the publisher."""
    producer: Any = make_producer(worker.settings)
    publisher = ConsentPublisher(worker.settings, policy, producer=producer)
    started = time.monotonic()
    for i, event in enumerate(events):
        delay = started + i / step.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key, value, headers = publisher.prepare(event)
        at = published_at_ms(dict(headers)) or 0
        step.published[event.event_id] = at
        step.subjects[key] = at
        producer.produce(worker.settings.topics.events, value, key, headers=headers)
        producer.poll(0)
    producer.flush(30)
    return len(events) / max(time.monotonic() - started, 1e-9)


def _histograms(samples: Samples, name: str) -> list[tuple[float, float]]:
    sums: dict[float, float] = {}
    for n, labels, value in samples:
        if n == f"{name}_bucket":
            bound = float(labels["le"])
            sums[bound] = sums.get(bound, 0.0) + value
    return sorted(sums.items())


def _hist_quantiles(before: Samples, after: Samples, name: str) -> dict[str, float]:
    delta = bucket_delta(_histograms(after, name), _histograms(before, name))
    out = {"count": delta[-1][1] if delta else 0.0}
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = histogram_quantile(q, delta) * 1000
    return out


def _observed(step: Step, observer: Observer, partner_from: int) -> dict[str, dict[str, float]]:
    store = [t - step.subjects[k] for k, t in observer.store_seen.items() if k in step.subjects]
    partner = [
        t - step.published[e]
        for e, t in observer.partner_seen[partner_from:]
        if e in step.published
    ]
    return {"store": summary(store), "partner": summary(partner)}


def run_step(
    worker: WorkerProcess,
    policy: Policy,
    observer: Observer,
    step: Step,
    first_subject: int,
    drain_timeout_s: float,
) -> dict[str, Any]:
    lag_before = worker.wait_idle(policy, drain_timeout_s / 4)
    count = int(step.rate * step.duration_s)
    events = list(Workload(1, seed=first_subject).one_per_subject(first_subject, count))
    before = worker.metrics()
    baseline = sum(v for n, _, v in before if n == "consent_events_total")
    target = baseline + len(events)
    partner_from = len(observer.partner_seen)
    cpu_before = cpu_snapshot(worker.pid)
    with CounterSampler(worker) as sampler:
        publisher_rate = _publish_paced(worker, policy, step, events)
        deadline = time.monotonic() + drain_timeout_s
        while sampler.latest() < target and time.monotonic() < deadline and worker.alive():
            time.sleep(0.1)
    cpu = cpu_delta(cpu_before, cpu_snapshot(worker.pid), len(events))
    _settle(observer)
    after = worker.metrics()
    rates = processing_rate(sampler.samples, baseline, target)
    achieved = rates.get("rate_events_per_s", math.nan)
    return {
        "label": step.label,
        "offered_events_per_s": step.rate,
        "duration_s": step.duration_s,
        "events": len(events),
        "publisher_events_per_s": round(publisher_rate, 1),
        "achieved_events_per_s": round(achieved, 1),
        "saturated": bool(achieved < 0.9 * step.rate) if not math.isnan(achieved) else None,
        "complete": sampler.latest() >= target,
        "lag_before_step": lag_before,
        "instructions_pending_after": sum(
            v for n, _, v in after if n == "consent_instructions_pending"
        ),
        "load_average_1m": round(os.getloadavg()[0], 2),
        **cpu,
        "observed_ms": _observed(step, observer, partner_from),
        "histogram_ms": {
            "store": _hist_quantiles(before, after, STORE_HISTOGRAM),
            "partner": _hist_quantiles(before, after, PARTNER_HISTOGRAM),
        },
    }


def _settle(observer: Observer, quiet_s: float = 0.5, timeout_s: float = 5.0) -> None:
    """Wait until the observer saw nothing new for ``quiet_s`` (bounded)."""
    deadline = time.monotonic() + timeout_s
    last, since = observer.total(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if observer.total() != last:
            last, since = observer.total(), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def run_latency_steps(
    worker: WorkerProcess,
    policy: Policy,
    steps: list[tuple[str, float, float]],
    drain_timeout_s: float,
    warmup: tuple[float, float] = (50.0, 5.0),
    first_subject: int = 5_000_000,
) -> list[dict[str, Any]]:
    """``steps``: (label, events/s, seconds). Runs them in order, draining between, after
    an unreported warm-up step (``warmup``: events/s, seconds): a fresh worker's first
    sends to each topic wait for metadata, which is start-up, not steady-state latency."""
    observer = Observer(worker, policy)
    observer.start()
    results = []
    try:
        for label, rate, duration in [("warm-up", *warmup), *steps]:
            log.info("latency step %s: %.0f events/s for %.0f s", label, rate, duration)
            step = Step(rate, duration, label)
            result = run_step(worker, policy, observer, step, first_subject, drain_timeout_s)
            if label != "warm-up":
                results.append(result)
            first_subject += int(rate * duration) + 1
    finally:
        observer.stop()
    return results
