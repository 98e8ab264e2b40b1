"""``consent-stream acl sync``: make the broker's ACLs those of the policy (as admin).

Idempotent: creates the missing ACLs of ``streams.acl.rules.wanted_acls``; ACLs of the
service's principals that the policy does not give are listed and, with ``prune``,
deleted (principals: worker, publisher, gateway and every ``partner-*``; so a partner
moved from webhook to kafka delivery loses the gateway's write on its acks). ``dry_run`` only shows
the difference.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from schemas.client_errors import kafka_error
from schemas.errors import BrokerUnavailableError
from schemas.policy import Policy, webhook_partners
from schemas.settings import Settings
from streams.acl.rules import (
    ADMIN,
    GATEWAY,
    PARTNER_PREFIX,
    PUBLISHER,
    WORKER,
    Acl,
    wanted_acls,
)

__all__ = ["AclDiff", "acl_diff", "namespace_acls", "remove_namespace_acls", "run_acl_sync"]

_MANAGED = (WORKER, PUBLISHER, GATEWAY)
_ENFORCED_WITHIN_S = 30.0


@dataclass(frozen=True, slots=True)
class AclDiff:
    missing: list[Acl]
    extra: list[Acl]
    kept: int


def _managed(principal: str) -> bool:
    return principal in _MANAGED or principal.startswith(PARTNER_PREFIX)


def acl_diff(wanted: Iterable[Acl], existing: Iterable[Acl]) -> AclDiff:
    """What to create and what the policy does not give (service principals only)."""
    want, have = set(wanted), {a for a in existing if _managed(a.principal)}
    return AclDiff(sorted(want - have), sorted(have - want), len(want & have))


def _kafka(mod: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    resources = {"topic": mod.ResourceType.TOPIC, "group": mod.ResourceType.GROUP}
    operations = {
        "read": mod.AclOperation.READ,
        "write": mod.AclOperation.WRITE,
        "describe": mod.AclOperation.DESCRIBE,
        "all": mod.AclOperation.ALL,
    }
    return resources, operations


def _binding(mod: Any, acl: Acl, kind: str = "AclBinding") -> Any:
    """``acl`` as a ``confluent_kafka`` AclBinding (or, ``kind="AclBindingFilter"``, the
    filter matching exactly it, for deletes)."""
    resources, operations = _kafka(mod)
    pattern = mod.ResourcePatternType.PREFIXED if acl.prefixed else mod.ResourcePatternType.LITERAL
    return getattr(mod, kind)(
        resources[acl.resource], acl.name, pattern, f"User:{acl.principal}", "*",
        operations[acl.operation], mod.AclPermissionType.ALLOW,
    )  # fmt: skip


def _from_binding(mod: Any, binding: Any) -> Acl | None:
    resources, operations = _kafka(mod)
    resource = next((k for k, v in resources.items() if v == binding.restype), None)
    operation = next((k for k, v in operations.items() if v == binding.operation), None)
    principal = str(binding.principal).removeprefix("User:")
    if (
        resource is None
        or operation is None
        or binding.permission_type != mod.AclPermissionType.ALLOW
        or binding.host != "*"
    ):
        return None
    prefixed = binding.resource_pattern_type == mod.ResourcePatternType.PREFIXED
    return Acl(principal, resource, str(binding.name), prefixed, operation)


def _existing(mod: Any, admin: Any) -> list[Acl]:
    everything = mod.AclBindingFilter(
        mod.ResourceType.ANY, None, mod.ResourcePatternType.ANY, None, None,
        mod.AclOperation.ANY, mod.AclPermissionType.ANY,
    )  # fmt: skip
    bindings = admin.describe_acls(everything, request_timeout=30).result()
    return [a for a in (_from_binding(mod, b) for b in bindings) if a is not None]


def _apply(mod: Any, admin: Any, diff: AclDiff, prune: bool) -> None:
    if diff.missing:
        for future in admin.create_acls(
            [_binding(mod, a) for a in diff.missing], request_timeout=30
        ).values():
            future.result()
    if prune and diff.extra:
        filters = [_binding(mod, a, "AclBindingFilter") for a in diff.extra]
        for future in admin.delete_acls(filters, request_timeout=30).values():
            future.result()


def _wait_enforced(mod: Any, admin: Any, wanted: Sequence[Acl]) -> None:
    """Until the broker describes every wanted ACL: the controller commits new ACLs
    before the broker's authorizer applies them, and a client that starts in between is
    refused (a fresh stack's first consumer saw GROUP_AUTHORIZATION_FAILED)."""
    deadline = time.monotonic() + _ENFORCED_WITHIN_S
    while missing := set(wanted) - set(_existing(mod, admin)):
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"Kafka: {len(missing)} ACLs not in force {_ENFORCED_WITHIN_S:.0f} s after "
                f"their creation, e.g. {min(missing)}"
            )
        time.sleep(0.1)


def _report(diff: AclDiff, dry_run: bool, prune: bool, out: TextIO) -> None:
    will = "would " if dry_run else ""
    for acl in diff.missing:
        print(f"+ {acl}", file=out)
    for acl in diff.extra if dry_run or prune else ():
        print(f"- {acl}" if prune else f"? {acl} (not in the policy; --prune deletes it)", file=out)
    removed = len(diff.extra) if prune else 0
    others = (
        f"; {len(diff.extra)} other ACLs of the service's principals "
        "(--dry-run lists them, --prune deletes them)"
        if diff.extra and not (dry_run or prune)
        else ""
    )
    print(
        f"acl sync: {will}create {len(diff.missing)}, {will}delete {removed}, "
        f"{diff.kept} already in place{others}",
        file=out,
    )


def namespace_acls(settings: Settings, partners: Sequence[str]) -> list[Acl]:
    """The ACLs ``acl sync`` gave ``settings``' namespace that are its own: those of its
    topics, and those of its app id only when the app id names the namespace (a test's,
    the demo's, the bench's ``consent-stream-<namespace>``). An app id shared with other
    namespaces (the default ``consent-stream``) keeps its group and internal topics'
    ACLs: they are the production worker's too."""
    wanted = wanted_acls(partners, settings.topics, settings.app_id, webhook=partners)
    if settings.topic_namespace in settings.app_id:
        return wanted
    return [a for a in wanted if not a.name.startswith(settings.app_id)]


def remove_namespace_acls(settings: Settings, partners: Sequence[str]) -> int:
    """Delete the ACLs ``acl sync`` gave a (non-empty) namespace and its app id; returns
    how many existed (a test's or a demo run's, when its topics go). The gateway's on the
    acks of every one of ``partners`` go too (whichever of them a policy said webhook)."""
    from confluent_kafka import KafkaException
    from confluent_kafka import admin as mod

    if not settings.topic_namespace:
        raise ValueError("the ACLs of the production namespace are never removed here")
    admin = mod.AdminClient({**settings.as_principal(ADMIN).admin_config(), "log_level": 4})
    try:
        filters = [_binding(mod, a, "AclBindingFilter") for a in namespace_acls(settings, partners)]
        deleted = admin.delete_acls(filters, request_timeout=30)
        return sum(len(future.result()) for future in deleted.values())
    except KafkaException as exc:
        raise kafka_error(exc, "removing a namespace's ACLs") from exc


def run_acl_sync(
    settings: Settings,
    policy: Policy,
    out: TextIO,
    *,
    dry_run: bool = False,
    prune: bool = False,
    partners: Sequence[str] | None = None,
) -> int:
    """Sync the ACLs of ``settings``' namespace and app id with the policy; exit status."""
    from confluent_kafka import KafkaException
    from confluent_kafka import admin as mod

    admin = mod.AdminClient({**settings.as_principal(ADMIN).admin_config(), "log_level": 4})
    chosen = sorted(partners or policy.partners)
    webhook = webhook_partners(policy, chosen)
    wanted = wanted_acls(chosen, settings.topics, settings.app_id, webhook=webhook)
    try:
        diff = acl_diff(wanted, _existing(mod, admin))
        if not dry_run:
            _apply(mod, admin, diff, prune)
            _wait_enforced(mod, admin, wanted)
    except KafkaException as exc:
        raise kafka_error(exc, "acl sync") from exc
    _report(diff, dry_run, prune, out)
    return 0
