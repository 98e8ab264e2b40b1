"""Removal of a namespace's data: its topics, consumer groups and Redis keys.

Used by ``consent-stream demo`` after a run (each run has its own namespace, so the local
broker would otherwise collect a few dozen partitions per run) and by the benchmark.
Only names under the namespace are touched: ``<ns>.*`` topics, the Faust app's
``<app id>-*`` internal topics, its consumer groups, and the ``<prefix>:*`` Redis keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from schemas.settings import Settings

__all__ = [
    "RemovedNamespace",
    "delete_groups",
    "delete_redis_prefix",
    "delete_topics",
    "remove_namespace",
]

log = logging.getLogger(__name__)

_REDIS_BATCH = 5000


@dataclass(frozen=True)
class RemovedNamespace:
    topics: int
    keys: int


def delete_topics(settings: Settings, prefixes: Iterable[str]) -> list[str]:
    """Delete every topic whose name starts with one of ``prefixes``; returns them."""
    admin = AdminClient(settings.admin_config())
    wanted = tuple(prefixes)
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(wanted)]
    if not names:
        return []
    for name, future in admin.delete_topics(names, operation_timeout=30).items():
        try:
            future.result()
        except KafkaException as exc:
            log.warning("could not delete topic %s: %s", name, exc)
    return names


def delete_groups(settings: Settings, groups: Iterable[str]) -> None:
    """Delete consumer groups (their committed offsets); absent groups are fine."""
    admin = AdminClient(settings.admin_config())
    for group in groups:
        try:
            for future in admin.delete_consumer_groups([group], request_timeout=15).values():
                future.result()
        except KafkaException as exc:  # already gone with its topics' offsets
            log.debug("consumer group %s not deleted: %s", group, exc)


def delete_redis_prefix(redis_url: str, prefix: str) -> int:
    """Delete the keys ``<prefix>:*``; returns how many."""
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=_REDIS_BATCH):
            batch.append(key)
            if len(batch) >= _REDIS_BATCH:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted


def remove_namespace(settings: Settings, partners: Iterable[str]) -> RemovedNamespace:
    """Everything of ``settings.topic_namespace`` (which must not be empty)."""
    namespace = settings.topic_namespace
    if not namespace or settings.redis_prefix != namespace:
        raise ValueError(
            "only a namespace whose Redis prefix is the namespace itself is removed "
            f"(namespace {namespace!r}, Redis prefix {settings.redis_prefix!r})"
        )
    topics = delete_topics(settings, [f"{namespace}.", f"{settings.app_id}-"])
    delete_groups(
        settings, [settings.app_id, *(settings.topics.partner_group(p) for p in partners)]
    )
    keys = delete_redis_prefix(settings.redis_url, settings.redis_prefix)
    if settings.security_protocol.startswith("SASL_"):
        from streams.acl.sync import remove_namespace_acls

        remove_namespace_acls(settings, sorted(partners))
    return RemovedNamespace(len(topics), keys)
