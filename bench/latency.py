"""(d) Latency per hop at fixed publish rates.

Each step publishes the realistic mix at a fixed rate for a fixed time, one fresh subject
per event (so a state record maps to exactly one event). Two measurements per hop:

* observed end to end: an observer consumer reads ``consent.state.v1`` (publish -> store:
  the worker writes Redis, then sends the state record) and every partner's instruction
  topic (publish -> partner topic, matched on the instruction's ``source_event_id``); the
  latency is the wall-clock time it saw the record minus the ``cs_published_at`` header;
* the worker's own histograms (buckets delta over the step, Prometheus interpolation).

Beside each rate (all of them in the full run), the no-op Faust agent gets the same events
at the same rate for the same time first (``noop_latency.py``): the framework's own latency
and CPU per event on this machine, in the same run, to judge the pipeline's against.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from cpu import cpu_delta, cpu_snapshot
from noop_latency import NoopLatency
from paced import Step, publish_paced
from pipeline import CounterSampler, processing_rate
from quantiles import QUANTILES, bucket_delta, histogram_quantile, summary
from workerproc import Samples, WorkerProcess
from workload import Workload

from schemas.events import ConsentEvent
from schemas.partner import PartnerInstruction
from schemas.policy import Policy
from schemas.serde import AvroSerde

__all__ = ["Observer", "Planned", "run_latency_steps"]

log = logging.getLogger(__name__)

STORE_HISTOGRAM = "consent_publish_to_store_seconds"
PARTNER_HISTOGRAM = "consent_publish_to_partner_topic_seconds"
WORKER_HISTOGRAM = "consent_publish_to_worker_seconds"
BATCH_HISTOGRAM = "consent_batch_records"


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


@dataclass(frozen=True)
class Planned:
    """One rate of the plan: publishing ``rate`` events/s for ``duration_s``; ``noop``: the
    no-op agent is measured at the same rate too."""

    label: str
    rate: float
    duration_s: float
    noop: bool = True

    @property
    def events(self) -> int:
        return max(1, round(self.rate * self.duration_s))

    @property
    def need_s(self) -> float:
        """A rough least time the step takes (publishing, and the drains between)."""
        return self.duration_s * (2 if self.noop else 1) + 10

    @property
    def logged(self) -> tuple[str, float, float]:
        return self.label, self.rate, self.duration_s

    def step(self) -> Step:
        return Step(self.rate, self.duration_s, self.label)

    def skipped(self, left_s: float) -> dict[str, Any]:
        return {
            "label": self.label,
            "offered_events_per_s": self.rate,
            "skipped": f"time budget of the latency steps spent ({max(left_s, 0):.0f} s left)",
        }


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


def _mean_batch(before: Samples, after: Samples, stage: str = "events") -> float | None:
    """The agent's mean batch over the step (``consent_batch_records``: sum / count)."""

    def total(samples: Samples, name: str) -> float:
        return sum(v for n, labels, v in samples if n == name and labels.get("stage") == stage)

    count = total(after, BATCH_HISTOGRAM + "_count") - total(before, BATCH_HISTOGRAM + "_count")
    taken = total(after, BATCH_HISTOGRAM + "_sum") - total(before, BATCH_HISTOGRAM + "_sum")
    return round(taken / count, 1) if count > 0 else None


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
    events: list[ConsentEvent],
    drain_timeout_s: float,
) -> dict[str, Any]:
    lag_before = worker.wait_idle(policy, drain_timeout_s / 4)
    before = worker.metrics()
    baseline = sum(v for n, _, v in before if n == "consent_events_total")
    target = baseline + len(events)
    partner_from = len(observer.partner_seen)
    cpu_before = cpu_snapshot(worker.pid)
    with CounterSampler(worker) as sampler:
        publisher_rate = publish_paced(
            worker.settings, policy, worker.settings.topics.events, step, events
        )
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
        "events_per_batch": _mean_batch(before, after),
        **cpu,
        "observed_ms": _observed(step, observer, partner_from),
        "histogram_ms": {
            "store": _hist_quantiles(before, after, STORE_HISTOGRAM),
            "partner": _hist_quantiles(before, after, PARTNER_HISTOGRAM),
            # the events agent taking the record: where the no-op agent measures
            "worker": _hist_quantiles(before, after, WORKER_HISTOGRAM),
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


@dataclass
class _Run:
    worker: WorkerProcess
    policy: Policy
    observer: Observer
    noop: NoopLatency | None
    drain_timeout_s: float

    def rate(self, planned: Planned, first_subject: int) -> dict[str, Any]:
        """The no-op agent's step (if asked for), then the pipeline's, on the same events."""
        log.info("latency step %s: %.0f events/s for %.1f s", *planned.logged)
        workload = Workload(1, seed=first_subject)
        events = list(workload.one_per_subject(first_subject, planned.events))
        agent = self.noop if planned.noop else None
        noop = self._noop(agent, planned, events) if agent is not None else None
        result = run_step(
            self.worker, self.policy, self.observer, planned.step(), events, self.drain_timeout_s
        )
        if noop is not None:
            result["noop"] = noop
        return result

    def _noop(
        self, agent: NoopLatency, planned: Planned, events: list[ConsentEvent]
    ) -> dict[str, Any]:
        self.worker.wait_idle(self.policy, self.drain_timeout_s / 4)  # the last step's work
        try:
            return agent.run_step(
                self.worker.settings, self.policy, planned.step(), events, self.drain_timeout_s
            )
        except Exception as exc:  # reported in its row; the pipeline's step still runs
            log.exception("no-op latency step %s failed", planned.label)
            return {"error": f"{type(exc).__name__}: {exc}"}


def run_latency_steps(
    worker: WorkerProcess,
    policy: Policy,
    plan: list[Planned],
    drain_timeout_s: float,
    warmup: tuple[float, float] = (50.0, 5.0),
    first_subject: int = 5_000_000,
    noop: NoopLatency | None = None,
    deadline: float = math.inf,
) -> list[dict[str, Any]]:
    """Runs the plan in order, draining between, after an unreported warm-up step
    (``warmup``: events/s, seconds): a fresh worker's first sends to each topic wait for
    metadata, which is start-up, not steady-state latency. With ``noop``, each rate marked
    so (and the warm-up) is first offered to the no-op agent: the same events, as fast.
    A step that would not end before ``deadline`` (monotonic) is reported as skipped."""
    observer = Observer(worker, policy)
    observer.start()
    run = _Run(worker, policy, observer, noop, drain_timeout_s)
    results = []
    try:
        for planned in [Planned("warm-up", *warmup), *plan]:
            if time.monotonic() + planned.need_s > deadline:
                results.append(planned.skipped(deadline - time.monotonic()))
            elif planned.label == "warm-up":
                run.rate(planned, first_subject)
            else:
                results.append(run.rate(planned, first_subject))
            first_subject += planned.events + 1
    finally:
        observer.stop()
    return results
