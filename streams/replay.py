"""``consent-stream replay --partner P``: tell a newly added partner the current consent.

Reads the compacted consent.state.v1 to its end and, for every subject whose effective
decision on a purpose the partner processes differs from the purpose's default (or whose
account is closed), sends STOP_PROCESSING or RESUME_PROCESSING. Instruction ids derive
from (partner, subject, purpose, state version, subject key id), so running it twice
changes nothing for a partner that de-duplicates by instruction id, while a run after a
subject key rotation re-sends the decisions under the new refs (docs/security.md).
Instructions are tracked by the ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

from schemas.events import ConsentChanged, ConsentDecision, ConsentEvent
from schemas.partner import InstructionAction, PartnerInstruction
from schemas.policy import Policy
from schemas.views import ConsentState
from streams.fanout import FanOut
from streams.pseudonyms import instruction_id

__all__ = ["ReplayPlan", "replay_instructions"]

_REPLAY_NAMESPACE = uuid.UUID("c2b7c6a4-8f31-4c5e-9d0b-1e6f2a7d3b55")


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    partner: str
    purposes: tuple[str, ...]


def _wanted(policy: Policy, state: ConsentState, purpose: str) -> InstructionAction | None:
    default = policy.purposes[purpose].default_allowed
    if state.account_closed_at is not None:
        return InstructionAction.STOP_PROCESSING
    decision = next((d for d in state.purposes if d.purpose == purpose), None)
    if decision is None or decision.granted == default:
        return None
    return (
        InstructionAction.RESUME_PROCESSING
        if decision.granted
        else InstructionAction.STOP_PROCESSING
    )


def replay_instructions(
    plan: ReplayPlan, state: ConsentState, fan: FanOut
) -> Iterator[PartnerInstruction]:
    """The instructions that bring ``plan.partner`` in line with one subject's state."""
    for purpose in plan.purposes:
        action = _wanted(fan.policy, state, purpose)
        if action is None:
            continue
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
        yield replace(ins, instruction_id=iid, ack_key=iid)
