"""The partner consumer SDK: everything a partner integration imports, in one place.

::

    from consumers.partner_sdk import Done, PartnerConsumer, Rejected, Restricted

    def handle(instruction: PartnerInstruction) -> Result:
        ...
        return Done()

    PartnerConsumer(Settings.from_env(), "logistics", handle, dedup=...).run()

See docs/partner-sdk.md for the contract.
"""

from __future__ import annotations

from consumers.dedup import (
    InMemoryProcessedInstructions,
    ProcessedInstructions,
    SentAck,
    SqliteProcessedInstructions,
)
from consumers.partner import PartnerConsumer, default_group_id
from consumers.partner_delivery import ACK_EVENT_TYPE, backoff_schedule
from consumers.partner_metrics import PartnerMetrics, partner_metrics
from consumers.partner_results import (
    Done,
    Handler,
    Rejected,
    Restricted,
    Result,
    ack_for_result,
    failed_ack,
)
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.settings import Settings

__all__ = [
    "ACK_EVENT_TYPE",
    "AcknowledgementStatus",
    "Done",
    "Handler",
    "InMemoryProcessedInstructions",
    "InstructionAction",
    "PartnerAcknowledgement",
    "PartnerConsumer",
    "PartnerInstruction",
    "PartnerMetrics",
    "ProcessedInstructions",
    "Rejected",
    "Restricted",
    "Result",
    "SentAck",
    "Settings",
    "SqliteProcessedInstructions",
    "ack_for_result",
    "backoff_schedule",
    "default_group_id",
    "failed_ack",
    "partner_metrics",
]
