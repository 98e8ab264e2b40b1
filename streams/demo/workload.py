"""A realistic, reproducible workload built from the policy (for ``consent-stream demo``).

Pure: a seeded ``random.Random`` and a ``now_ms`` in, immutable events out; no I/O. Per
subject, in event-time order: data shared with the partners (orders to the partners without
consent-based purposes, with their transaction times, so a legal retention applies;
pseudonymous data to opt-out partners; data to opt-in partners only after the grant), then
consent changes that really change the effective decision, permission and app revocations,
a deletion of categories for some subjects, and an account closure (last) for a fraction.
Event times are recent (the last ``window_ms``) and strictly increasing per subject; the
events are returned in global event-time order, which keeps every subject's own order.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    Payload,
    PermissionRevoked,
)
from schemas.policy import Partner, Policy

__all__ = ["Workload", "WorkloadSpec", "build_workload"]

_DAY_MS: Final = 86_400_000
_REFS: Final = {
    "payment": ("payment_account_ref", "order_no"),
    "logistics": ("waybill_no", "order_no"),
    "ads": ("ad_id",),
    "research": ("dataset_ref",),
}
_DELETIONS: Final = (("behaviour",), ("behaviour", "pseudonymous_ids"), ("delivery_details",))
_SOURCES: Final = {
    DataShared: "platform.order-service",
    ConsentChanged: "platform.app-settings",
    PermissionRevoked: "platform.app-settings",
    DeletionRequested: "platform.account-service",
}


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    subjects: int
    seed: int
    now_ms: int
    closure_fraction: float = 0.10
    category_deletion_fraction: float = 0.15
    window_ms: int = 30 * 60_000
    max_orders: int = 3


@dataclass(frozen=True, slots=True)
class Workload:
    events: tuple[ConsentEvent, ...]
    requests: Mapping[str, DeletionScope]
    subjects: int

    def count_by_type(self) -> Counter[str]:
        return Counter(e.type.value for e in self.events)

    def requests_by_scope(self) -> Counter[str]:
        return Counter(scope.value for scope in self.requests.values())


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ref(rng: random.Random, name: str, order_no: str) -> str:
    if name == "order_no":
        return order_no
    if name == "waybill_no":
        return f"SF{rng.randrange(10**11, 10**12)}"
    if name == "payment_account_ref":
        return f"PA-{rng.getrandbits(40):010x}"
    if name == "ad_id":
        return f"adid-{rng.getrandbits(64):016x}"
    return f"{name[:-4] if name.endswith('_ref') else name}-{rng.getrandbits(32):08x}"


class _Subject:
    """Plans one subject's events; tracks the effective decision of each purpose."""

    def __init__(self, policy: Policy, spec: WorkloadSpec, rng: random.Random) -> None:
        self.policy, self.spec, self.rng = policy, spec, rng
        self.allowed = {p.name: p.default_allowed for p in policy.purposes.values()}
        self.steps: list[Payload] = []

    def share(self, partner: Partner, order_no: str, tx_at: int | None) -> DataShared:
        names = _REFS.get(partner.name, (f"{partner.name}_ref",))
        refs = {name: _ref(self.rng, name, order_no) for name in names}
        return DataShared(
            partner.name, tuple(sorted(partner.receives)), MappingProxyType(refs), tx_at
        )

    def retained(self, partner: Partner) -> bool:
        covered = {c for r in self.policy.retention.values() for c in r.categories}
        return partner.retention is not None or bool(partner.receives & covered)

    def orders(self, order_partners: list[Partner]) -> None:
        for _ in range(self.rng.randint(1, self.spec.max_orders)):
            order_no = f"SO{self.rng.randrange(10**13, 10**14)}"
            tx_at = self.spec.now_ms - self.rng.randint(1, 700) * _DAY_MS
            for partner in order_partners:
                when = tx_at if self.retained(partner) else None
                self.steps.append(self.share(partner, order_no, when))

    def consent(self, purpose: str, granted: bool) -> ConsentChanged:
        self.allowed[purpose] = granted
        decision = ConsentDecision.GRANTED if granted else ConsentDecision.WITHDRAWN
        method = self.rng.choice(("app-settings", "web-settings", "customer-service"))
        return ConsentChanged(purpose, decision, self.policy.notice_version, method)

    def change(self, purposes: list[str], granted: bool) -> bool:
        """One real change of a purpose that is currently the other way; False if none is."""
        candidates = [p for p in purposes if self.allowed[p] != granted]
        if not candidates:
            return False
        self.steps.append(self.consent(self.rng.choice(candidates), granted))
        return True


def _partners(policy: Policy) -> tuple[list[Partner], list[Partner], list[Partner]]:
    """(order partners, opt-out consent partners, opt-in consent partners), sorted by name."""
    ordered = [policy.partners[n] for n in sorted(policy.partners)]
    orders = [p for p in ordered if not p.purposes]
    opt_out = [p for p in ordered if any(not policy.purposes[u].opt_in for u in p.purposes)]
    opt_in = [p for p in ordered if p.purposes and p not in opt_out]
    return orders, opt_out, opt_in


def _changes(policy: Policy, s: _Subject, opt_out: list[Partner], opt_in: list[Partner]) -> None:
    """Consent changes and revocations, in a random order of blocks (each block in order)."""
    rng = s.rng
    purposes = sorted(policy.purposes.values(), key=lambda p: p.name)
    withdrawable = [p.name for p in purposes if p.withdrawable and not p.opt_in]
    by_partner = sorted({u for p in opt_out for u in p.purposes if u in withdrawable})
    grantable = [p.name for p in purposes if p.opt_in]

    def withdrawals() -> None:
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            s.change(by_partner if by_partner and rng.random() < 0.6 else withdrawable, False)
        if rng.random() < 0.15:
            s.change(withdrawable, granted=True)  # a withdrawal taken back

    def opt_in_sharing() -> None:
        for partner in opt_in:
            if rng.random() < 0.15 and s.change(sorted(partner.purposes), granted=True):
                s.steps.append(s.share(partner, "", None))
                if rng.random() < 0.3:
                    s.change(sorted(partner.purposes), granted=False)

    def other_grants() -> None:
        if rng.random() < 0.08:
            s.change(grantable, granted=True)

    def revocations() -> None:
        if rng.random() < 0.25:
            permission = rng.choice(sorted(policy.system_permissions))
            device = f"dev-{rng.getrandbits(48):012x}"
            s.steps.append(PermissionRevoked(permission=permission, device_id=device))
        for app in sorted(a for p in policy.partners.values() for a in p.apps):
            if rng.random() < 0.08:
                s.steps.append(PermissionRevoked(app_id=app))

    blocks = [withdrawals, opt_in_sharing, other_grants, revocations]
    rng.shuffle(blocks)
    for block in blocks:
        block()


def _deletions(policy: Policy, s: _Subject, closes: bool) -> None:
    rng = s.rng
    if rng.random() < s.spec.category_deletion_fraction:
        choices = [c for c in _DELETIONS if set(c) <= policy.categories]
        categories = rng.choice(choices) if choices else (rng.choice(sorted(policy.categories)),)
        s.steps.append(
            DeletionRequested(_uuid(rng), DeletionScope.CATEGORIES, "user request", categories)
        )
    if closes:
        s.steps.append(
            DeletionRequested(_uuid(rng), DeletionScope.ACCOUNT, "account closure (注销账户)")
        )


def _plan(policy: Policy, spec: WorkloadSpec, rng: random.Random, closes: bool) -> list[Payload]:
    s = _Subject(policy, spec, rng)
    orders, opt_out, opt_in = _partners(policy)
    s.orders(orders)
    for partner in opt_out:
        if rng.random() < 0.7:
            s.steps.append(s.share(partner, "", None))
    _changes(policy, s, opt_out, opt_in)
    _deletions(policy, s, closes)
    return s.steps


def _source(payload: Payload, rng: random.Random) -> str:
    if isinstance(payload, DeletionRequested):
        return rng.choice(("platform.account-service", "platform.customer-service"))
    if isinstance(payload, ConsentChanged) and payload.purpose in ("personalized_ads",):
        return "platform.ads-settings"
    return _SOURCES[type(payload)]


def build_workload(policy: Policy, spec: WorkloadSpec) -> Workload:
    """The workload of ``spec.subjects`` subjects; the same spec gives the same events."""
    rng = random.Random(spec.seed)  # noqa: S311 - a reproducible simulation
    closing = set(rng.sample(range(spec.subjects), round(spec.subjects * spec.closure_fraction)))
    keyed: list[tuple[int, int, ConsentEvent]] = []
    requests: dict[str, DeletionScope] = {}
    for n in range(spec.subjects):
        subject = f"buyer-{rng.getrandbits(64):016x}@demo.example"
        at = spec.now_ms - spec.window_ms + rng.randrange(spec.window_ms // 2)
        for payload in _plan(policy, spec, rng, n in closing):
            at += rng.randint(1_000, 20_000)
            event = ConsentEvent(_uuid(rng), subject, at, _source(payload, rng), payload)
            keyed.append((at, n, event))
            if isinstance(payload, DeletionRequested):
                requests[payload.request_id] = payload.scope
    keyed.sort(key=lambda k: (k[0], k[1]))
    return Workload(tuple(k[2] for k in keyed), MappingProxyType(requests), spec.subjects)
