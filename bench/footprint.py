"""(e) Memory: Redis bytes per subject, and the worker's RSS with many subjects in its table.

* Redis: ``ConsentStore.apply_states`` of realistic ``ConsentState`` records under a
  namespaced prefix; ``INFO memory`` ``used_memory`` before and after, divided by the
  subjects; cross-checked with ``MEMORY USAGE`` of a sample of the keys. The Redis is the
  shared local one, so other clients' writes during the step would show up in the delta.
* Worker: one data.shared event per subject (every subject lands in the worker's
  ``consent-subjects`` table), published as fast as possible, in two rounds of new
  subjects; VmRSS of the worker pid from /proc before and after each. The first round
  also fills what the worker allocates once under load (librdkafka's fetch queue, the
  allocator's arenas: about 100 MiB), so it overstates the bytes per subject; the second
  may reuse memory the first freed, so it can understate them. Both are reported.
"""

from __future__ import annotations

import random
import time
from typing import Any

import redis
from benchlib import delete_redis_prefix, produce_all
from pipeline import CounterSampler, prepare, processing_rate
from workerproc import WorkerProcess, rss_kib
from workload import Workload, consent_state, subject_id

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from schemas.policy import Policy
from schemas.settings import Settings

__all__ = ["redis_per_subject", "worker_rss"]

_BATCH = 1000
_SAMPLE_KEYS = 1000


def _used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def redis_per_subject(
    settings: Settings, policy: Policy, prefix: str, subjects: int, timeout_s: float
) -> dict[str, Any]:
    client = make_redis(settings, timeout_s=30)
    store = ConsentStore(client, policy, settings.subject_keys, prefix)
    rng = random.Random(3)  # noqa: S311 - a workload, not a secret
    now = int(time.time() * 1000)
    deadline = time.monotonic() + timeout_s
    try:
        before = _used_memory(client)
        started = time.monotonic()
        written = 0
        while written < subjects and time.monotonic() < deadline:
            size = min(_BATCH, subjects - written)
            store.apply_states([consent_state(written + i, rng, now) for i in range(size)])
            written += size
        elapsed = time.monotonic() - started
        after = _used_memory(client)
        sample = [store.key(subject_id(i)) for i in range(min(_SAMPLE_KEYS, written))]
        usage = [int(client.memory_usage(k, samples=0) or 0) for k in sample]
    finally:
        delete_redis_prefix(settings.redis_url, prefix)
        client.close()
    return {
        "subjects": written,
        "complete": written >= subjects,
        "used_memory_delta_bytes": after - before,
        "bytes_per_subject": round((after - before) / max(written, 1), 1),
        "memory_usage_sample_bytes_per_key": round(sum(usage) / max(len(usage), 1), 1),
        "apply_states_per_s": round(written / max(elapsed, 1e-9), 1),
    }


def worker_rss(
    worker: WorkerProcess, policy: Policy, subjects: int, timeout_s: float
) -> dict[str, Any]:
    """RSS of a ready worker, then after one data.shared event for each of ``subjects``
    new subjects, twice; the bytes per subject over each round."""
    deadline = time.monotonic() + timeout_s
    rss = [rss_kib(worker.pid)]
    processed, rate = 0.0, 0.0
    for first in (0, subjects):
        done, rate = _shared_round(worker, policy, subjects, first, deadline)
        processed += done
        rss.append(rss_kib(worker.pid))
    before, first_round, after = rss
    return {
        "subjects": 2 * subjects,
        "events_processed": processed,
        "complete": processed >= 2 * subjects,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_first_round_mib": round(first_round / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "rss_first_round_per_subject_bytes": round((first_round - before) * 1024 / subjects, 1),
        "rss_per_subject_bytes": round((after - first_round) * 1024 / subjects, 1),
        "data_shared_events_per_s": round(rate, 1),
    }


def _shared_round(
    worker: WorkerProcess, policy: Policy, subjects: int, first: int, deadline: float
) -> tuple[float, float]:
    """Events processed and their rate, for one data.shared per new subject."""
    workload = Workload(subjects, first_subject=first, seed=5)
    records = prepare(worker.settings, policy, workload.shared_for_each_subject())
    baseline = worker.events_total()
    target = baseline + len(records)
    with CounterSampler(worker, interval_s=0.5) as sampler:
        produce_all(
            worker.settings,
            worker.settings.topics.events,
            records,
            max(deadline - time.monotonic(), 1.0),
        )
        while sampler.latest() < target and time.monotonic() < deadline and worker.alive():
            time.sleep(0.5)
    time.sleep(1.0)  # let the changelog sends settle before reading the RSS
    rates = processing_rate(sampler.samples, baseline, target)
    return sampler.latest() - baseline, rates.get("rate_events_per_s", 0.0)
