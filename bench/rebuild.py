"""(f) Time to rebuild the Redis store from consent.state.v1, per 100k subjects.

A namespaced, compacted state topic is filled with one realistic ``ConsentState`` per
subject (encoded like the worker does); ``consumers.store.rebuild.rebuild_from_topic``
then applies it to Redis under a namespaced prefix. Only the rebuild is timed.
"""

from __future__ import annotations

import random
import time
from typing import Any

from benchlib import Record, create_topics, delete_redis_prefix, delete_topics, produce_all
from workload import consent_state

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from consumers.store.rebuild import rebuild_from_topic
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.settings import Settings

__all__ = ["rebuild_time"]


def _states(settings: Settings, topic: str, subjects: int) -> list[Record]:
    serde = AvroSerde(settings.schema_registry(), settings.max_record_bytes)
    rng = random.Random(9)  # noqa: S311 - a workload, not a secret
    now = int(time.time() * 1000)
    records: list[Record] = []
    for i in range(subjects):
        state = consent_state(i, rng, now)
        records.append((state.subject_id.encode(), serde.encode(state, topic), []))
    return records


def rebuild_time(
    settings: Settings, policy: Policy, namespace: str, subjects: int, timeout_s: float
) -> dict[str, Any]:
    topic = f"{namespace}.consent.state.v1"
    create_topics(settings, [topic], {"cleanup.policy": "compact"})
    client = make_redis(settings, timeout_s=30)
    try:
        records = _states(settings, topic, subjects)
        delivered, _, _ = produce_all(settings, topic, records, timeout_s)
        store = ConsentStore(client, policy, settings.subject_keys, namespace)
        report = rebuild_from_topic(settings, store, topic, timeout_s=timeout_s)
    finally:
        client.close()
        delete_redis_prefix(settings.redis_url, namespace)
        delete_topics(settings, [topic])
    return {
        "subjects": subjects,
        "produced": delivered,
        "read": report.read,
        "applied": report.applied,
        "complete": report.complete and report.applied == subjects,
        "elapsed_s": round(report.elapsed_s, 2),
        "states_per_s": round(report.applied / max(report.elapsed_s, 1e-9), 1),
        "seconds_per_100k_subjects": round(report.elapsed_s * 100_000 / max(report.applied, 1), 1),
    }
