"""Building partner instructions: who is told what, with which references and deadline.

Deletion reaches only the partners that hold the subject's data (the data.shared
lineage), with ERASE, or RESTRICT until the end of a legal retention.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from schemas.events import ConsentEvent, DeletionRequested, DeletionScope
from schemas.partner import InstructionAction, PartnerInstruction
from schemas.policy import Partner, Policy
from streams.pseudonyms import Pseudonyms, instruction_id
from streams.subject import Share

__all__ = ["FanOut", "RequestOpening", "deletion_fan_out", "merge_refs"]


@dataclass(frozen=True, slots=True)
class RequestOpening:
    """A deletion request as first recorded (no raw subject id)."""

    request_id: str
    subject_digest: str
    scope: DeletionScope
    categories: tuple[str, ...]
    requested_at: int
    received_at: int
    due_by: int
    store_erased_at: int | None


@dataclass(frozen=True, slots=True)
class FanOut:
    """Everything instruction building needs besides the event: policy, keys, clock."""

    policy: Policy
    pseudonyms: Pseudonyms
    now_ms: int

    def instruction(
        self,
        event: ConsentEvent,
        partner: str,
        action: InstructionAction,
        *,
        purposes: tuple[str, ...] = (),
        categories: tuple[str, ...] = (),
        refs: Iterable[tuple[str, str]] = (),
        request_id: str | None = None,
        retain_until: int | None = None,
        app_id: str | None = None,
        refs_dropped: int = 0,
    ) -> PartnerInstruction:
        spec: Partner = self.policy.partners[partner]
        iid = instruction_id(event.event_id, partner, action.value)
        return PartnerInstruction(
            instruction_id=iid,
            source_event_id=event.event_id,
            request_id=request_id,
            partner=partner,
            action=action,
            purposes=purposes,
            categories=categories,
            partner_refs=MappingProxyType(dict(refs)),
            subject_ref=self.pseudonyms.subject_ref(partner, event.subject_id),
            subject_id=event.subject_id if spec.holds_identity else None,
            app_id=app_id,
            issued_at=self.now_ms,
            due_by=self.now_ms + self.policy.deadline_ms(partner, action),
            retain_until=retain_until,
            ack_key=request_id or iid,
            references_dropped=refs_dropped,
        )

    def request_opening(
        self, event: ConsentEvent, p: DeletionRequested, *, store_erased: bool
    ) -> RequestOpening:
        return RequestOpening(
            request_id=p.request_id,
            subject_digest=self.pseudonyms.evidence_digest(event.subject_id),
            scope=p.scope,
            categories=tuple(sorted(p.categories)),
            requested_at=event.occurred_at,
            received_at=self.now_ms,
            due_by=event.occurred_at + self.policy.request_answer_ms,
            store_erased_at=self.now_ms if store_erased else None,
        )


def merge_refs(shares: Iterable[Share]) -> tuple[tuple[str, str], ...]:
    """All references of the shares; several values of one name are comma-joined."""
    values: dict[str, list[str]] = {}
    for share in shares:
        for name, value in share.refs:
            if value not in values.setdefault(name, []):
                values[name].append(value)
    return tuple((name, ",".join(v)) for name, v in sorted(values.items()))


def _retain_until(
    policy: Policy, partner: Partner, category: str, shares: list[Share]
) -> int | None:
    """End of the longest retention that applies to ``category`` at this partner."""
    rules = [r for r in policy.retention.values() if category in r.categories]
    if partner.retention is not None:
        rules.append(policy.retention[partner.retention])
    ends = [
        s.retention_start + rule.duration_ms
        for rule in rules
        for s in shares
        if category in s.categories
    ]
    return max(ends, default=None)


def _partner_instructions(
    partner: Partner,
    shares: list[Share],
    wanted: frozenset[str] | None,
    event: ConsentEvent,
    fan: FanOut,
    request_id: str,
) -> list[PartnerInstruction]:
    held = sorted({c for s in shares for c in s.categories if wanted is None or c in wanted})
    erase, restrict, until = [], [], 0
    for category in held:
        end = _retain_until(fan.policy, partner, category, shares)
        if end is not None and end > fan.now_ms:
            restrict.append(category)
            until = max(until, end)
        else:
            erase.append(category)
    out = []
    for action, cats in ((InstructionAction.ERASE, erase), (InstructionAction.RESTRICT, restrict)):
        if cats:
            carried = [s for s in shares if set(s.categories) & set(cats)]
            out.append(
                fan.instruction(
                    event,
                    partner.name,
                    action,
                    categories=tuple(cats),
                    refs=merge_refs(carried),
                    request_id=request_id,
                    retain_until=until if action is InstructionAction.RESTRICT else None,
                    refs_dropped=sum(s.refs_dropped for s in carried),
                )
            )
    return out


def deletion_fan_out(
    shares: Iterable[Share],
    wanted: frozenset[str] | None,
    event: ConsentEvent,
    fan: FanOut,
    request_id: str,
) -> tuple[PartnerInstruction, ...]:
    """ERASE/RESTRICT instructions for the partners that hold (the wanted) data."""
    by_partner: dict[str, list[Share]] = {}
    for share in shares:
        by_partner.setdefault(share.partner, []).append(share)
    out: list[PartnerInstruction] = []
    for name in sorted(by_partner):
        partner = fan.policy.partners.get(name)
        if partner is not None:
            out.extend(
                _partner_instructions(partner, by_partner[name], wanted, event, fan, request_id)
            )
    return tuple(out)
