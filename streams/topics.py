"""Creation of the service's topics (a partner added to the policy gets its topics).

Created topics are waited for until every partition has a leader in the broker's metadata,
so a consumer that subscribes next sees them (a freshly restarted broker publishes new
topics with a delay). A topic that exists but takes smaller records than the settings
need (``max_record_bytes`` raised since it was created) gets its ``max.message.bytes``
raised: else the worker's records past the old limit would fail their batch on every
retry (``raise_record_limits``). Limits are only raised, never lowered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from schemas.errors import BrokerUnavailableError
from schemas.policy import Policy
from schemas.settings import Settings

__all__ = ["ensure_topics", "raise_record_limits", "wait_for_leaders"]

log = logging.getLogger(__name__)

_POLL_S: Final = 0.2
_LIMIT: Final = "max.message.bytes"

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

    wanted: dict[str, tuple[int, Mapping[str, str]]] = {
        name: (settings.partitions, config)
        for name, config in settings.topics.specs(
            policy.partners, settings.max_record_bytes
        ).items()
    }
    wanted.update(extra or {})
    admin = AdminClient(settings.admin_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    raise_record_limits(admin, {n: c for n, (_, c) in wanted.items() if n in existing}, timeout_s)
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


def raise_record_limits(
    admin: Any, wanted: Mapping[str, Mapping[str, str]], timeout_s: float
) -> dict[str, tuple[int, int]]:
    """Raise ``max.message.bytes`` of the existing topics in ``wanted`` (name -> config)
    whose limit is below their config's; returns name -> (old, new) of those raised."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    limits = {name: int(config[_LIMIT]) for name, config in wanted.items() if _LIMIT in config}
    if not limits:
        return {}
    described = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, name) for name in limits], request_timeout=timeout_s
    )
    low: dict[str, tuple[int, int]] = {}
    for resource, future in described.items():
        held = int(future.result()[_LIMIT].value)
        if held < limits[resource.name]:
            low[resource.name] = (held, limits[resource.name])
    if not low:
        return {}
    entry = {
        name: ConfigEntry(_LIMIT, str(new), incremental_operation=AlterConfigOpType.SET)
        for name, (_, new) in low.items()
    }
    resources = [ConfigResource(ResourceType.TOPIC, n, incremental_configs=[entry[n]]) for n in low]
    for resource, future in admin.incremental_alter_configs(
        resources, request_timeout=timeout_s
    ).items():
        future.result()
        old, new = low[resource.name]
        log.warning("raised %s of topic %s from %d to %d bytes", _LIMIT, resource.name, old, new)
    return low


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
