"""Creation of the service's topics (a partner added to the policy gets its topics).

Every topic is created with the settings' replication factor and ``min.insync.replicas``
(``Settings.insync_replicas``): with the producers' ``acks=all``, a record counts once
that many replicas have it. Created topics are waited for until every partition has a
leader in the broker's metadata, so a consumer that subscribes next sees them (a freshly
restarted broker publishes new topics with a delay).

A topic that exists with less than the settings ask is raised (``raise_topic_floors``),
never lowered: ``max.message.bytes`` below what the records need (``max_record_bytes``
raised since it was created; else the worker's records past the old limit would fail
their batch on every retry), and ``min.insync.replicas`` below the settings' (at most
the topic's own replica count, so a topic created with fewer replicas still takes
writes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from schemas.errors import BrokerUnavailableError
from schemas.policy import Policy
from schemas.settings import Settings

__all__ = ["ensure_topics", "raise_topic_floors", "wait_for_leaders"]

log = logging.getLogger(__name__)

_POLL_S: Final = 0.2
_LIMIT: Final = "max.message.bytes"
_INSYNC: Final = "min.insync.replicas"
_FLOORS: Final = (_LIMIT, _INSYNC)

TopicSpecs = Mapping[str, tuple[int, Mapping[str, str]]]


def ensure_topics(
    settings: Settings,
    policy: Policy,
    timeout_s: float = 30.0,
    extra: TopicSpecs | None = None,
) -> list[str]:
    """Create the missing topics of ``settings.topics`` (and ``extra``: name -> (partitions,
    config)); returns the names created, once each has a leader for every partition."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    specs = settings.topics.specs(policy.partners, settings.max_record_bytes)
    wanted: dict[str, tuple[int, Mapping[str, str]]] = {
        name: (settings.partitions, config) for name, config in specs.items()
    }
    wanted.update(extra or {})
    insync = {_INSYNC: str(settings.insync_replicas)}
    wanted = {name: (n, {**config, **insync}) for name, (n, config) in wanted.items()}
    admin = AdminClient(settings.admin_config())
    existing = {
        name: len(next(iter(meta.partitions.values())).replicas) if meta.partitions else 1
        for name, meta in admin.list_topics(timeout=timeout_s).topics.items()
    }
    held = {n: c for n, (_, c) in wanted.items() if n in existing}
    raise_topic_floors(admin, held, timeout_s, existing)
    missing = [
        NewTopic(name, partitions, settings.replication_factor, config=dict(config))
        for name, (partitions, config) in wanted.items()
        if name not in existing
    ]
    if not missing:
        return []
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result()
        except Exception as exc:  # another worker may have created it meanwhile
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        log.info("created topic %s", name)
    created = {t.topic: wanted[t.topic][0] for t in missing}
    wait_for_leaders(admin, created, timeout_s)
    return list(created)


def raise_topic_floors(
    admin: Any,
    wanted: Mapping[str, Mapping[str, str]],
    timeout_s: float,
    replicas: Mapping[str, int] | None = None,
) -> dict[tuple[str, str], tuple[int, int]]:
    """Raise ``max.message.bytes`` and ``min.insync.replicas`` of the existing topics in
    ``wanted`` (name -> config) that hold less than their config; ``min.insync.replicas``
    at most the topic's replicas (``replicas``: name -> count, 1 when not given). Returns
    (name, setting) -> (old, new) of those raised."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    floors = {
        name: {key: _floor(name, key, config[key], replicas) for key in _FLOORS if key in config}
        for name, config in wanted.items()
    }
    floors = {name: f for name, f in floors.items() if f}
    if not floors:
        return {}
    described = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, name) for name in floors], request_timeout=timeout_s
    )
    low: dict[tuple[str, str], tuple[int, int]] = {}
    for resource, future in described.items():
        held = future.result()
        for key, floor in floors[resource.name].items():
            if int(held[key].value) < floor:
                low[resource.name, key] = (int(held[key].value), floor)
    if not low:
        return {}
    entries: dict[str, list[Any]] = {}
    for (name, key), (_, new) in low.items():
        entry = ConfigEntry(key, str(new), incremental_operation=AlterConfigOpType.SET)
        entries.setdefault(name, []).append(entry)
    resources = [
        ConfigResource(ResourceType.TOPIC, name, incremental_configs=configs)
        for name, configs in entries.items()
    ]
    for resource, future in admin.incremental_alter_configs(
        resources, request_timeout=timeout_s
    ).items():
        future.result()
        for entry in entries[resource.name]:
            old, new = low[resource.name, entry.name]
            log.warning("raised %s of topic %s from %d to %d", entry.name, resource.name, old, new)
    return low


def _floor(name: str, key: str, value: str, replicas: Mapping[str, int] | None) -> int:
    if key == _INSYNC:
        return min(int(value), (replicas or {}).get(name, 1))
    return int(value)


def wait_for_leaders(admin: Any, topics: Mapping[str, int], timeout_s: float) -> None:
    """Until each topic has its number of partitions, each with a leader (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        meta = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        waiting = sorted(
            name
            for name, partitions in topics.items()
            if name not in meta
            or len(meta[name].partitions) != partitions
            or any(p.leader < 0 for p in meta[name].partitions.values())
        )
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"Kafka: topics without a leader after {timeout_s:.0f} s: {', '.join(waiting)}"
            )
        time.sleep(_POLL_S)
