"""(c) The full pipeline's maximum rate: how fast one worker drains a backlog.

A large batch of realistic events is published as fast as possible to the worker's
namespaced consent.events.v1; ``consent_events_total`` is sampled from the worker's
/metrics. The rate is taken between two samples strictly inside the processing window
(first sample above the baseline, last sample below the target), so the polling interval
does not bias it; the end-to-end figure (events / first-to-last) is reported too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from benchlib import Record, produce_all
from cpu import cpu_delta, cpu_snapshot
from histograms import LOOP_LAG, loop_lag_within_s, reading
from workerproc import WorkerProcess
from workload import Workload

from producers.publisher import ConsentPublisher
from schemas.events import ConsentEvent
from schemas.policy import Policy
from schemas.settings import Settings

__all__ = ["CounterSampler", "prepare", "run_pipeline"]

log = logging.getLogger(__name__)


def prepare(settings: Settings, policy: Policy, events: Iterable[ConsentEvent]) -> list[Record]:
    """Validate and encode (key, value, CloudEvents headers) exactly as the SDK does."""
    publisher = ConsentPublisher(settings, policy, producer=_NoProducer())
    return [publisher.prepare(e) for e in events]


class _NoProducer:
    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("prepare only")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


@dataclass
class CounterSampler:
    """Samples the worker's consent_events_total every ``interval_s`` in a thread."""

    worker: WorkerProcess
    interval_s: float = 0.25
    samples: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.worker.events_total()))
            except (RuntimeError, ValueError) as exc:
                log.warning("metrics sample failed: %s", exc)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> CounterSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def latest(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0


def processing_rate(
    samples: list[tuple[float, float]], baseline: float, target: float
) -> dict[str, float]:
    """Rate between the first sample above ``baseline`` and the last below ``target``.

    A round shorter than two sampling intervals gets its end-to-end rate instead
    (``rate_from_end_to_end``), and a round that went from ``baseline`` to ``target``
    between two samples gets the rate over that interval, a lower bound
    (``rate_lower_bound``)."""
    inside = [(t, c) for t, c in samples if baseline < c < target]
    done = next(((t, c) for t, c in samples if c >= target), None)
    first = next(((t, c) for t, c in samples if c > baseline), None)
    out: dict[str, float] = {}
    if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        out["rate_events_per_s"] = (c1 - c0) / (t1 - t0)
        out["window_s"] = t1 - t0
    if first is not None and first == done:  # all of it between two samples
        first = next(((t, c) for t, c in reversed(samples) if c <= baseline and t < done[0]), None)
        if first is not None:
            out["rate_lower_bound"] = 1.0
    if first is not None and done is not None and done[0] > first[0]:
        out["first_to_last_s"] = done[0] - first[0]
        out["end_to_end_events_per_s"] = (target - baseline) / (done[0] - first[0])
        if "rate_events_per_s" not in out:  # a round shorter than two sampling intervals
            out["rate_events_per_s"] = out["end_to_end_events_per_s"]
            out["rate_from_end_to_end"] = 1.0
    return out


def run_pipeline(
    worker: WorkerProcess,
    policy: Policy,
    events: int,
    subjects: int,
    timeout_s: float,
    first_subject: int = 0,
) -> dict[str, Any]:
    workload = Workload(subjects, first_subject=first_subject, seed=11 + first_subject)
    records = prepare(worker.settings, policy, workload.events(events))
    size = sum(len(v) for _, v, _ in records) / len(records)
    before = _outcomes(worker)
    lag_before = reading(worker, LOOP_LAG)
    baseline = worker.events_total()
    target = baseline + len(records)
    deadline = time.monotonic() + timeout_s
    cpu_start = cpu_snapshot(worker.pid)
    with CounterSampler(worker) as sampler:
        delivered, sent_at, acked_at = produce_all(
            worker.settings, worker.settings.topics.events, records, timeout_s
        )
        while sampler.latest() < target and time.monotonic() < deadline and worker.alive():
            time.sleep(0.2)
        cpu_busy = cpu_snapshot(worker.pid)
        time.sleep(0.3)
    idle_lag = worker.wait_idle(policy, max(1.0, min(60.0, deadline - time.monotonic())))
    cpu_idle = cpu_snapshot(worker.pid)
    while_busy = cpu_delta(cpu_start, cpu_busy, len(records))
    result: dict[str, Any] = {
        "events": len(records),
        "subjects": subjects,
        "mean_value_bytes": round(size, 1),
        "publish_events_per_s": round(delivered / max(acked_at - sent_at, 1e-9), 1),
        "processed": sampler.latest() - baseline,
        "complete": sampler.latest() >= target,
        **{k: round(v, 2) for k, v in processing_rate(sampler.samples, baseline, target).items()},
        "worker_cpu_share_of_one_core": while_busy["worker_cpu_share_of_one_core"],
        "machine_busy_share": while_busy["machine_busy_share"],
        # all the work the batch caused (ledger included), up to an idle consumer group
        "worker_cpu_ms_per_event": cpu_delta(cpu_start, cpu_idle, len(records))[
            "worker_cpu_ms_per_event"
        ],
        "lag_after": idle_lag,
        "loop_lag_within_s": loop_lag_within_s(lag_before, reading(worker, LOOP_LAG)),
        "outcomes": {k: v - before.get(k, 0.0) for k, v in _outcomes(worker).items()},
    }
    if not result["complete"]:
        result["note"] = f"timed out after {timeout_s:.0f} s"
    return result


def _outcomes(worker: WorkerProcess) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, labels, value in worker.metrics():
        if name == "consent_events_total":
            key = f"{labels.get('type')}/{labels.get('outcome')}"
            out[key] = out.get(key, 0.0) + value
        elif name == "consent_deadletters_total":
            out["deadletters"] = out.get("deadletters", 0.0) + value
        elif name == "consent_instructions_total":
            out["instructions"] = out.get("instructions", 0.0) + value
    return out
