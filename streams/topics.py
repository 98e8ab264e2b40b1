"""Creation of the service's topics (a partner added to the policy gets its topics).

Created topics are waited for until every partition has a leader in the broker's metadata,
so a consumer that subscribes next sees them (a freshly restarted broker publishes new
topics with a delay).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from schemas.errors import BrokerUnavailableError
from schemas.policy import Policy
from schemas.settings import Settings

__all__ = ["ensure_topics", "wait_for_leaders"]

log = logging.getLogger(__name__)

_POLL_S: Final = 0.2

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
