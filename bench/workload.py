"""Realistic inbound events for the benchmark: a seeded mix over many subjects.

The mix (by weight) follows what a marketplace publishes: mostly data-sharing records
(orders paid and shipped, ad identifiers) and consent changes, some permission
revocations, and a few deletion requests. Event times increase, so nothing is stale.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
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
from schemas.views import ConsentState, PermissionRevocation, PurposeDecision

__all__ = [
    "MIX",
    "Workload",
    "consent_state",
    "subject_id",
]

NOTICE_VERSION: Final = "2023-09-01"
MIX: Final = (
    ("data.shared", 0.40),
    ("consent.changed", 0.48),
    ("permission.revoked", 0.10),
    ("deletion.requested", 0.02),
)
_PURPOSES: Final = (
    "personalized_recommendation",
    "personalized_ads",
    "ads_analytics",
    "marketing_sms",
    "marketing_push",
    "third_party_login",
    "research_sharing",
    "cross_border_transfer",
)
_SOURCES: Final = ("app-settings", "account-service", "ads-settings", "customer-service")
_PERMISSIONS: Final = ("camera", "microphone", "photos", "location", "notifications")


def subject_id(index: int) -> str:
    """A member id shaped like the platform's (``m-`` + digits)."""
    return f"m-{20_000_000 + index}"


def _event(subject: str, occurred_at: int, source: str, payload: Payload) -> ConsentEvent:
    return ConsentEvent(str(uuid.uuid4()), subject, occurred_at, source, payload)


@dataclass
class Workload:
    """Deterministic (seeded) events over subjects ``first_subject .. + subjects - 1``."""

    subjects: int
    first_subject: int = 0
    seed: int = 7

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - a workload, not a secret
        self._clock = int(time.time() * 1000) - 3_600_000

    def _subject(self) -> str:
        return subject_id(self.first_subject + self._rng.randrange(self.subjects))

    def events(self, count: int) -> Iterator[ConsentEvent]:
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        for _ in range(count):
            self._clock += 1
            kind = self._rng.choices(kinds, weights)[0]
            yield self.event(kind, self._subject(), self._clock)

    def one_per_subject(self, first: int, count: int) -> Iterator[ConsentEvent]:
        """The mix, one event for each of the fresh subjects ``first .. first + count - 1``."""
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        for i in range(count):
            self._clock += 1
            yield self.event(
                self._rng.choices(kinds, weights)[0], subject_id(first + i), self._clock
            )

    def shared_for_each_subject(self) -> Iterator[ConsentEvent]:
        """One data.shared per subject, in order: every subject lands in the table."""
        for i in range(self.subjects):
            self._clock += 1
            yield _event(
                subject_id(self.first_subject + i),
                self._clock,
                "order-service",
                self._shared(),
            )

    def event(self, kind: str, subject: str, at: int) -> ConsentEvent:
        source = self._rng.choice(_SOURCES)
        if kind == "data.shared":
            return _event(subject, at, "order-service", self._shared())
        if kind == "consent.changed":
            return _event(subject, at, source, self._consent())
        if kind == "permission.revoked":
            return _event(subject, at, source, self._permission())
        return _event(subject, at, "customer-service", self._deletion())

    def _order_no(self) -> str:
        return f"SO20241104-{self._rng.randrange(1_000_000):06d}"

    def _shared(self) -> DataShared:
        r = self._rng
        partner = r.choices(("payment", "logistics", "ads"), (0.4, 0.4, 0.2))[0]
        if partner == "payment":
            refs = {"order_no": self._order_no(), "payment_account_ref": f"PA-{r.randrange(10**8)}"}
            cats = ("account_profile", "bank_account", "payment_records")
            return DataShared(partner, cats, MappingProxyType(refs), self._clock - 2_000)
        if partner == "logistics":
            refs = {"order_no": self._order_no(), "waybill_no": f"SF{r.randrange(10**10):010d}"}
            return DataShared(
                partner, ("delivery_details", "order_records"), MappingProxyType(refs)
            )
        refs = {"ad_id": f"oaid-{r.randrange(16**8):08x}"}
        return DataShared(partner, ("pseudonymous_ids", "behaviour"), MappingProxyType(refs))

    def _consent(self) -> ConsentChanged:
        granted = self._rng.random() < 0.5
        decision = ConsentDecision.GRANTED if granted else ConsentDecision.WITHDRAWN
        return ConsentChanged(self._rng.choice(_PURPOSES), decision, NOTICE_VERSION, "settings")

    def _permission(self) -> PermissionRevoked:
        if self._rng.random() < 0.2:
            return PermissionRevoked(app_id=self._rng.choice(("carrier-tracking", "ads-insights")))
        device = f"dev-{self._rng.randrange(16**12):012x}"
        return PermissionRevoked(permission=self._rng.choice(_PERMISSIONS), device_id=device)

    def _deletion(self) -> DeletionRequested:
        request_id = str(uuid.uuid4())
        if self._rng.random() < 0.5:
            return DeletionRequested(request_id, DeletionScope.ACCOUNT, "account closure")
        cats = ("behaviour", "pseudonymous_ids")
        return DeletionRequested(request_id, DeletionScope.CATEGORIES, "user request", cats)


def consent_state(index: int, rng: random.Random, now_ms: int) -> ConsentState:
    """A realistic published state: a few purpose decisions, sometimes a revocation."""
    purposes = tuple(
        PurposeDecision(p, rng.random() < 0.5, now_ms - rng.randrange(10**9), NOTICE_VERSION)
        for p in rng.sample(_PURPOSES, rng.randint(1, 4))
    )
    permissions: tuple[PermissionRevocation, ...] = ()
    if rng.random() < 0.3:
        device = f"dev-{rng.randrange(16**12):012x}"
        permissions = (PermissionRevocation(now_ms, rng.choice(_PERMISSIONS), device),)
    return ConsentState(subject_id(index), rng.randint(1, 6), now_ms, None, purposes, permissions)
