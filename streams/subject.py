"""Per-subject state held by the worker: consent, permissions, closure and data lineage.

Plain immutable data with a JSON codec for the changelog-backed table. The published,
smaller view is ``schemas.views.ConsentState`` (``to_consent_state``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from schemas.views import ConsentState, PermissionRevocation, PurposeDecision

__all__ = [
    "RECENT_EVENT_IDS",
    "Share",
    "SubjectState",
    "permission_key",
    "state_from_json",
    "state_to_json",
    "to_consent_state",
]

RECENT_EVENT_IDS: Final = 128
"""How many applied event ids a subject remembers for duplicate detection."""


@dataclass(frozen=True, slots=True)
class Share:
    """One data.shared record: what a partner received and the references it knows."""

    event_id: str
    partner: str
    categories: tuple[str, ...]
    refs: tuple[tuple[str, str], ...]
    shared_at: int
    transaction_completed_at: int | None = None
    refs_dropped: int = 0
    """How many of its data.shared records were applied without their references (the
    subject's state was full: ``streams.events.state_limit``); a deletion's evidence says so."""

    @property
    def retention_start(self) -> int:
        return self.transaction_completed_at or self.shared_at

    def holds_as(self, other: Share) -> bool:
        """``other`` went to the same partner with the same categories (merged into one)."""
        return self.partner == other.partner and self.categories == other.categories

    def merged(self, later: Share) -> Share:
        """This share and ``later`` (same partner and categories) as one: its first
        event id, every reference of both (in the order first seen), and the times of
        whichever retention starts later, and the references either dropped. What a
        deletion sends is the same for the one as for the two (``streams.fanout``:
        references by categories, the latest retention end), so a subject's lineage grows
        by new references, not by a share per data.shared event."""
        known = set(self.refs)
        refs = self.refs + tuple(r for r in later.refs if r not in known)
        times = later if later.retention_start >= self.retention_start else self
        return Share(
            self.event_id,
            self.partner,
            self.categories,
            refs,
            times.shared_at,
            times.transaction_completed_at,
            self.refs_dropped + later.refs_dropped,
        )


@dataclass(frozen=True, slots=True)
class SubjectState:
    subject_id: str
    version: int = 0
    purposes: tuple[PurposeDecision, ...] = ()
    permissions: tuple[PermissionRevocation, ...] = ()
    closed_at: int | None = None
    closed_by_request: str | None = None
    shares: tuple[Share, ...] = ()
    recent_event_ids: tuple[str, ...] = field(default=())

    def decision(self, purpose: str) -> PurposeDecision | None:
        return next((d for d in self.purposes if d.purpose == purpose), None)

    def revocation(self, key: str) -> PermissionRevocation | None:
        return next((p for p in self.permissions if permission_key(p) == key), None)

    def seen(self, event_id: str) -> bool:
        return event_id in self.recent_event_ids

    def remember(
        self,
        event_id: str,
        *,
        version: int | None = None,
        purposes: tuple[PurposeDecision, ...] | None = None,
        permissions: tuple[PermissionRevocation, ...] | None = None,
        shares: tuple[Share, ...] | None = None,
    ) -> SubjectState:
        """This state with ``event_id`` among the recent ids and the other fields given
        (one constructor call per event: ``dataclasses.replace`` costs 2.2 us to its 0.9)."""
        return SubjectState(
            self.subject_id,
            self.version if version is None else version,
            self.purposes if purposes is None else purposes,
            self.permissions if permissions is None else permissions,
            self.closed_at,
            self.closed_by_request,
            self.shares if shares is None else shares,
            (*self.recent_event_ids, event_id)[-RECENT_EVENT_IDS:],
        )


def permission_key(p: PermissionRevocation) -> str:
    if p.app_id is not None:
        return f"app:{p.app_id}"
    return f"perm:{p.device_id}:{p.permission}"


def to_consent_state(state: SubjectState, updated_at: int) -> ConsentState:
    return ConsentState(
        subject_id=state.subject_id,
        version=state.version,
        updated_at=updated_at,
        account_closed_at=state.closed_at,
        purposes=tuple(sorted(state.purposes, key=lambda d: d.purpose)),
        permissions=tuple(sorted(state.permissions, key=permission_key)),
    )


def state_to_json(state: SubjectState) -> bytes:
    doc: dict[str, Any] = {
        "s": state.subject_id,
        "v": state.version,
        "p": [[d.purpose, d.granted, d.event_time, d.notice_version] for d in state.purposes],
        "r": [[p.permission, p.device_id, p.app_id, p.event_time] for p in state.permissions],
        "c": state.closed_at,
        "cr": state.closed_by_request,
        # tuples serialize as JSON arrays: the same bytes as lists, without copying them
        "sh": [_share_doc(s) for s in state.shares],
        "e": state.recent_event_ids,
    }
    return orjson.dumps(doc)


def _share_doc(s: Share) -> tuple[Any, ...]:
    doc = (s.event_id, s.partner, s.categories, s.refs, s.shared_at, s.transaction_completed_at)
    # the count only where there is one: the states of every other share keep their bytes
    return (*doc, s.refs_dropped) if s.refs_dropped else doc


def state_from_json(data: bytes) -> SubjectState:
    doc = orjson.loads(data)
    return SubjectState(
        subject_id=doc["s"],
        version=doc["v"],
        purposes=tuple(PurposeDecision(p, g, t, n) for p, g, t, n in doc["p"]),
        permissions=tuple(
            PermissionRevocation(event_time=t, permission=p, device_id=d, app_id=a)
            for p, d, a, t in doc["r"]
        ),
        closed_at=doc["c"],
        closed_by_request=doc["cr"],
        shares=tuple(
            Share(e, pa, tuple(c), tuple((k, v) for k, v in r), t, tc, *dropped)
            for e, pa, c, r, t, tc, *dropped in doc["sh"]
        ),
        recent_event_ids=tuple(doc["e"]),
    )
