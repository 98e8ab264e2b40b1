"""Topic names (SPEC section 3) and the creation of the ones the worker writes."""

from __future__ import annotations

import logging
from typing import Final

from schemas.partner import acks_topic, instructions_topic
from schemas.policy import Policy
from schemas.settings import Settings

__all__ = [
    "DEADLETTER_TOPIC",
    "EVENTS_TOPIC",
    "LEDGER_TOPIC",
    "REQUESTS_TOPIC",
    "STATE_TOPIC",
    "ensure_topics",
    "topic_specs",
]

log = logging.getLogger(__name__)

EVENTS_TOPIC: Final = "consent.events.v1"
STATE_TOPIC: Final = "consent.state.v1"
REQUESTS_TOPIC: Final = "consent.requests.v1"
DEADLETTER_TOPIC: Final = "consent.deadletter.v1"
LEDGER_TOPIC: Final = "consent.ledger.v1"
_COMPACT: Final = {"cleanup.policy": "compact"}


def topic_specs(policy: Policy) -> dict[str, dict[str, str]]:
    """Every topic of the service with its configuration overrides."""
    specs: dict[str, dict[str, str]] = {
        EVENTS_TOPIC: {},
        STATE_TOPIC: dict(_COMPACT),
        REQUESTS_TOPIC: dict(_COMPACT),
        DEADLETTER_TOPIC: {},
        LEDGER_TOPIC: {},
    }
    for partner in policy.partners:
        specs[instructions_topic(partner)] = {}
        specs[acks_topic(partner)] = {}
    return specs


def ensure_topics(settings: Settings, policy: Policy, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics (a partner added to the policy gets its topics)."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(settings.admin_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [
        NewTopic(name, settings.partitions, settings.replication_factor, config=config)
        for name, config in topic_specs(policy).items()
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
