"""Creation of the service's topics (a partner added to the policy gets its topics)."""

from __future__ import annotations

import logging

from schemas.policy import Policy
from schemas.settings import Settings

__all__ = ["ensure_topics"]

log = logging.getLogger(__name__)


def ensure_topics(settings: Settings, policy: Policy, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics of ``settings.topics``; returns the names created."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(settings.admin_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [
        NewTopic(name, settings.partitions, settings.replication_factor, config=config)
        for name, config in settings.topics.specs(
            policy.partners, settings.max_record_bytes
        ).items()
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
    return [t.topic for t in missing]
