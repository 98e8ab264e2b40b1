"""What an inbound event does: pure functions over the subject's state and the policy.

``decide(state, event, policy, ctx)`` returns the new state and every effect the event
implies (instructions, a deletion request to open, whether the consent store changes).
No I/O: the agents decode, call this, and carry out the effects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    PermissionRevoked,
)
from schemas.partner import InstructionAction, PartnerInstruction
from schemas.views import PermissionRevocation, PurposeDecision
from streams.fanout import FanOut, RequestOpening, deletion_fan_out
from streams.subject import Share, SubjectState, permission_key

__all__ = ["Decision", "Outcome", "decide", "share_of", "shared_without_refs"]


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    AFTER_CLOSURE = "after_closure"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    state: SubjectState
    instructions: tuple[PartnerInstruction, ...] = ()
    request: RequestOpening | None = None
    consent_changed: bool = False


def _applied(
    state: SubjectState,
    event: ConsentEvent,
    instructions: tuple[PartnerInstruction, ...] = (),
    *,
    consent_changed: bool = False,
    request: RequestOpening | None = None,
    purposes: tuple[PurposeDecision, ...] | None = None,
    permissions: tuple[PermissionRevocation, ...] | None = None,
    shares: tuple[Share, ...] | None = None,
) -> Decision:
    """The event applied: ``state`` (with the fields given) remembers it, one version on."""
    state = state.remember(
        event.event_id,
        version=state.version + 1,
        purposes=purposes,
        permissions=permissions,
        shares=shares,
    )
    return Decision(Outcome.APPLIED, state, instructions, request, consent_changed)


def _not_applied(state: SubjectState, event: ConsentEvent, outcome: Outcome) -> Decision:
    return Decision(outcome, state.remember(event.event_id))


def _consent(state: SubjectState, event: ConsentEvent, p: ConsentChanged, fan: FanOut) -> Decision:
    if state.closed_at is not None:
        return _not_applied(state, event, Outcome.AFTER_CLOSURE)
    current = state.decision(p.purpose)
    if current is not None and event.occurred_at < current.event_time:
        return _not_applied(state, event, Outcome.STALE)
    granted = p.decision is ConsentDecision.GRANTED
    was_allowed = current.granted if current else fan.policy.purposes[p.purpose].default_allowed
    decision = PurposeDecision(p.purpose, granted, event.occurred_at, p.notice_version)
    others = tuple(d for d in state.purposes if d.purpose != p.purpose)
    instructions: tuple[PartnerInstruction, ...] = ()
    if granted != was_allowed:
        action = (
            InstructionAction.RESUME_PROCESSING if granted else InstructionAction.STOP_PROCESSING
        )
        instructions = tuple(
            fan.instruction(event, partner, action, purposes=(p.purpose,))
            for partner in fan.policy.partners_processing(p.purpose)
        )
    return _applied(state, event, instructions, consent_changed=True, purposes=(*others, decision))


def _permission(
    state: SubjectState, event: ConsentEvent, p: PermissionRevoked, fan: FanOut
) -> Decision:
    if state.closed_at is not None:
        return _not_applied(state, event, Outcome.AFTER_CLOSURE)
    revocation = PermissionRevocation(event.occurred_at, p.permission, p.device_id, p.app_id)
    key = permission_key(revocation)
    current = state.revocation(key)
    if current is not None and event.occurred_at < current.event_time:
        return _not_applied(state, event, Outcome.STALE)
    others = tuple(r for r in state.permissions if permission_key(r) != key)
    partner = fan.policy.partner_of_app(p.app_id) if p.app_id else None
    instructions: tuple[PartnerInstruction, ...] = ()
    if partner is not None and current is None:
        instructions = (
            fan.instruction(event, partner, InstructionAction.REVOKE_ACCESS, app_id=p.app_id),
        )
    return _applied(
        state, event, instructions, consent_changed=True, permissions=(*others, revocation)
    )


def share_of(event: ConsentEvent, p: DataShared) -> Share:
    """What one data.shared event records: the partner, its categories and references."""
    return Share(
        event.event_id,
        p.partner,
        tuple(sorted(p.categories)),
        tuple(sorted(p.partner_refs.items())),
        event.occurred_at,
        p.transaction_completed_at,
    )


def shared_without_refs(state: SubjectState, event: ConsentEvent, fan: FanOut) -> Decision:
    """A data.shared ``event`` applied as if it had no references, its share counting them
    as dropped (``Share.refs_dropped``): what applies when they do not fit the state."""
    assert isinstance(event.payload, DataShared)  # noqa: S101 - the caller's check
    share = replace(share_of(event, event.payload), refs=(), refs_dropped=1)
    return _shared(state, event, share, fan)


def _shared(state: SubjectState, event: ConsentEvent, share: Share, fan: FanOut) -> Decision:
    if state.closed_at is not None and state.closed_by_request is not None:
        # Shared with a closed account (or arrived after the closure): the partner now
        # holds data it must delete under the closure request.
        instructions = deletion_fan_out((share,), None, event, fan, state.closed_by_request)
        return _applied(state, event, instructions)
    return _applied(state, event, shares=_with_share(state.shares, share))


def _with_share(shares: tuple[Share, ...], share: Share) -> tuple[Share, ...]:
    """``shares`` with ``share`` merged into the one of the same partner and categories,
    if there is one (``Share.merged``), else added."""
    for i, held in enumerate(shares):
        if held.holds_as(share):
            return (*shares[:i], held.merged(share), *shares[i + 1 :])
    return (*shares, share)


def _deletion(
    state: SubjectState, event: ConsentEvent, p: DeletionRequested, fan: FanOut
) -> Decision:
    account = p.scope is DeletionScope.ACCOUNT
    wanted = None if account else frozenset(p.categories)
    instructions = deletion_fan_out(state.shares, wanted, event, fan, p.request_id)
    if account:
        already_closed = state.closed_at is not None
        state = replace(
            state,
            purposes=(),
            permissions=(),
            shares=(),
            closed_at=state.closed_at if already_closed else event.occurred_at,
            closed_by_request=state.closed_by_request if already_closed else p.request_id,
        )
    else:
        state = replace(state, shares=_without(state.shares, wanted or frozenset()))
    opening = fan.request_opening(event, p, store_erased=account)
    return _applied(state, event, instructions, consent_changed=account, request=opening)


def _without(shares: tuple[Share, ...], categories: frozenset[str]) -> tuple[Share, ...]:
    kept = []
    for share in shares:
        left = tuple(c for c in share.categories if c not in categories)
        if left:
            kept.append(replace(share, categories=left))
    return tuple(kept)


def decide(state: SubjectState, event: ConsentEvent, fan: FanOut) -> Decision:
    """Apply one validated event to the subject's state. Pure; idempotent on event_id."""
    if state.seen(event.event_id):
        return Decision(Outcome.DUPLICATE, state)
    match event.payload:
        case ConsentChanged():
            return _consent(state, event, event.payload, fan)
        case PermissionRevoked():
            return _permission(state, event, event.payload, fan)
        case DataShared():
            return _shared(state, event, share_of(event, event.payload), fan)
        case DeletionRequested():
            return _deletion(state, event, event.payload, fan)
