"""``consent-stream replay --partner P``: tell a newly added partner the current consent.

Reads the compacted consent.state.v1 to its end and, for every subject whose effective
decision on a purpose the partner processes differs from the purpose's default (or whose
account is closed), sends STOP_PROCESSING or RESUME_PROCESSING. Instruction ids derive
from (partner, subject, purpose, state version, subject key id), so running it twice
changes nothing for a partner that de-duplicates by instruction id, while a run after a
subject key rotation re-sends the decisions under the new refs (docs/security.md).
Instructions are tracked by the ledger. ``corrections``: what to send again for a subject
whose state changed while it was replayed (``streams.replay.command`` reads those).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from schemas.events import ConsentChanged, ConsentDecision, ConsentEvent
from schemas.partner import InstructionAction, PartnerInstruction
from schemas.policy import Policy
from schemas.views import ConsentState
from streams.fanout import FanOut
from streams.pseudonyms import instruction_id

__all__ = [
    "ReplayPlan",
    "Sent",
    "corrections",
    "current_action",
    "replay_instructions",
    "sent_of",
]

_REPLAY_NAMESPACE = uuid.UUID("c2b7c6a4-8f31-4c5e-9d0b-1e6f2a7d3b55")


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    partner: str
    purposes: tuple[str, ...]


def current_action(policy: Policy, state: ConsentState, purpose: str) -> InstructionAction:
    """What the partner must do for ``purpose`` now: the subject's decision, or the
    purpose's default; a closed account stops everything."""
    if state.account_closed_at is not None:
        return InstructionAction.STOP_PROCESSING
    decision = next((d for d in state.purposes if d.purpose == purpose), None)
    granted = policy.purposes[purpose].default_allowed if decision is None else decision.granted
    return InstructionAction.RESUME_PROCESSING if granted else InstructionAction.STOP_PROCESSING


def _wanted(policy: Policy, state: ConsentState, purpose: str) -> InstructionAction | None:
    """The action to replay: none where the subject is at the purpose's default."""
    action = current_action(policy, state, purpose)
    default = policy.purposes[purpose].default_allowed
    at_default = (action is InstructionAction.RESUME_PROCESSING) == default
    return None if at_default and state.account_closed_at is None else action


def replay_instructions(
    plan: ReplayPlan, state: ConsentState, fan: FanOut
) -> Iterator[PartnerInstruction]:
    """The instructions that bring ``plan.partner`` in line with one subject's state."""
    for purpose in plan.purposes:
        action = _wanted(fan.policy, state, purpose)
        if action is not None:
            yield _instruction(plan, state, fan, purpose, action)


Sent = int
"""What a subject's replayed instructions said, in one small int (kept per subject while
the replay runs): for the ``i``-th purpose of the plan, bit ``2i`` set when an instruction
went out, bit ``2i + 1`` set when it was RESUME_PROCESSING."""


def sent_of(plan: ReplayPlan, instructions: Iterable[PartnerInstruction], sent: Sent = 0) -> Sent:
    """``sent`` with ``instructions`` (one purpose each) noted over it."""
    for ins in instructions:
        i = plan.purposes.index(ins.purposes[0])
        resume = ins.action is InstructionAction.RESUME_PROCESSING
        sent = (sent & ~(3 << 2 * i)) | (1 << 2 * i) | (int(resume) << (2 * i + 1))
    return sent


def _sent_actions(plan: ReplayPlan, sent: Sent) -> Iterator[tuple[str, InstructionAction]]:
    for i, purpose in enumerate(plan.purposes):
        if sent >> 2 * i & 1:
            resume = sent >> (2 * i + 1) & 1
            yield (
                purpose,
                (
                    InstructionAction.RESUME_PROCESSING
                    if resume
                    else InstructionAction.STOP_PROCESSING
                ),
            )


def corrections(
    plan: ReplayPlan, sent: Sent, newer: ConsentState, fan: FanOut
) -> list[PartnerInstruction]:
    """For a subject whose state changed while it was replayed (``newer``): the worker
    told the partner of the change, and a replayed instruction may have come after it.
    So every replayed action that ``newer`` no longer implies is sent again as ``newer``
    has it."""
    out = []
    for purpose, action in _sent_actions(plan, sent):
        now = current_action(fan.policy, newer, purpose)
        if now is not action:
            out.append(_instruction(plan, newer, fan, purpose, now))
    return out


def _instruction(
    plan: ReplayPlan,
    state: ConsentState,
    fan: FanOut,
    purpose: str,
    action: InstructionAction,
) -> PartnerInstruction:
    cause = str(uuid.uuid5(_REPLAY_NAMESPACE, f"{state.subject_id}/{state.version}"))
    decision = (
        ConsentDecision.GRANTED
        if action is InstructionAction.RESUME_PROCESSING
        else ConsentDecision.WITHDRAWN
    )
    event = ConsentEvent(
        cause,
        state.subject_id,
        state.updated_at,
        "replay",
        ConsentChanged(purpose, decision, "-", "replay"),
    )
    ins = fan.instruction(event, plan.partner, action, purposes=(purpose,))
    iid = instruction_id("replay", plan.partner, cause, purpose, fan.pseudonyms.key_id)
    return replace(ins, instruction_id=iid, ack_key=iid)
