"""Who may read and write what on Kafka: the ACLs, derived from the policy.

Pure data (no Kafka here; ``streams.acl.sync`` applies them). Adding a partner to the
policy adds its principal's ACLs, nothing else changes:

    partner-<p>  reads  [ns.]partner.<p>.instructions.v1, writes [ns.]partner.<p>.acks.v1,
                 consumes as group [ns.]partner.<p> (or one starting [ns.]partner.<p>.)
    publisher    writes [ns.]consent.events.v1
    gateway      writes [ns.]consent.events.v1 and, for each partner whose policy says
                 ``delivery = "webhook"``, [ns.]partner.<p>.acks.v1 (the partner's signed
                 callbacks, ``POST /v1/acks``); never a kafka-delivery partner's acks
    worker       everything under [ns.]consent. and [ns.]partner., its Faust topics
                 (<app id>-...) and its consumer groups (<app id>...)
    admin        the super user (broker setting ``super.users``), no ACL needed

Everything else is refused (``allow.everyone.if.no.acl.found=false``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from schemas.topics import TopicNames

__all__ = [
    "ADMIN",
    "GATEWAY",
    "PUBLISHER",
    "WORKER",
    "Acl",
    "partner_principal",
    "wanted_acls",
]

ADMIN: Final = "admin"
WORKER: Final = "worker"
PUBLISHER: Final = "publisher"
GATEWAY: Final = "gateway"
PARTNER_PREFIX: Final = "partner-"


def partner_principal(partner: str) -> str:
    return f"{PARTNER_PREFIX}{partner}"


@dataclass(frozen=True, order=True, slots=True)
class Acl:
    """One ALLOW rule: ``principal`` may ``operation`` on a topic or group ``name``
    (exactly, or every name starting with it when ``prefixed``), from any host."""

    principal: str
    resource: str  # "topic" | "group"
    name: str
    prefixed: bool
    operation: str  # "read" | "write" | "describe" | "all"

    def __str__(self) -> str:
        pattern = "prefix" if self.prefixed else "literal"
        return f"User:{self.principal} {self.operation} {self.resource} {pattern} {self.name}"


def _topic(principal: str, name: str, *operations: str, prefixed: bool = False) -> list[Acl]:
    return [Acl(principal, "topic", name, prefixed, op) for op in operations]


def _partner(names: TopicNames, partner: str) -> list[Acl]:
    who = partner_principal(partner)
    group = names.partner_group(partner)
    return [
        *_topic(who, names.instructions(partner), "read", "describe"),
        *_topic(who, names.acks(partner), "write", "describe"),
        Acl(who, "group", group, False, "read"),
        Acl(who, "group", group, False, "describe"),
        Acl(who, "group", group + ".", True, "read"),
        Acl(who, "group", group + ".", True, "describe"),
    ]


def _worker(names: TopicNames, app_id: str) -> list[Acl]:
    return [
        *_topic(WORKER, names.scoped("consent."), "all", prefixed=True),
        *_topic(WORKER, names.scoped("partner."), "all", prefixed=True),
        *_topic(WORKER, f"{app_id}-", "all", prefixed=True),
        Acl(WORKER, "group", app_id, True, "all"),
    ]


def _gateway(names: TopicNames, webhook: Iterable[str]) -> list[Acl]:
    acks = [names.acks(p) for p in sorted(webhook)]
    return [
        *_topic(GATEWAY, names.events, "write", "describe"),
        *(acl for topic in acks for acl in _topic(GATEWAY, topic, "write", "describe")),
    ]


def wanted_acls(
    partners: Iterable[str], names: TopicNames, app_id: str, webhook: Iterable[str] = ()
) -> list[Acl]:
    """Every ACL of the service for one topic namespace and worker app id, sorted.
    ``webhook``: the partners (among ``partners``) delivered by webhook."""
    partners, webhook = sorted(partners), sorted(webhook)
    if not set(webhook) <= set(partners):
        raise ValueError(f"webhook partners {sorted(set(webhook) - set(partners))} not in partners")
    acls = [
        *_worker(names, app_id),
        *_topic(PUBLISHER, names.events, "write", "describe"),
        *_gateway(names, webhook),
        *(acl for p in partners for acl in _partner(names, p)),
    ]
    return sorted(set(acls))
