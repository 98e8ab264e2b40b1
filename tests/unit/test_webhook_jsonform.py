"""JSON forms of instructions (what webhook delivery POSTs) and acknowledgements (what a
partner answers): they mirror the Avro records; bad answers name the field."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest

from schemas.errors import ValidationError
from schemas.jsonform import ack_from_json, ack_to_json, instruction_to_json
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)

IID = "7f1c0f1e-6f0e-4a55-9d43-2d1c2b1e0a99"
OTHER = "0b8c1a5e-8f9f-4d3c-a5a9-0e3c5a8f9d11"
NOW = 1_717_171_717_000
INSTRUCTION = PartnerInstruction(
    instruction_id=IID,
    source_event_id="0b8c1a5e-8f9f-4d3c-a5a9-0e3c5a8f9d11",
    partner="logistics",
    action=InstructionAction.ERASE,
    subject_ref="dev:" + "ab" * 32,
    issued_at=NOW - 1000,
    due_by=NOW + 86_400_000,
    ack_key="5a0c8d5e-1f3b-4e2a-9a0b-3c4d5e6f7a8b",
    request_id="5a0c8d5e-1f3b-4e2a-9a0b-3c4d5e6f7a8b",
    categories=("delivery_details",),
    partner_refs=MappingProxyType({"waybill_no": "WB1"}),
)


def test_an_instruction_is_its_avro_record_in_json() -> None:
    obj = instruction_to_json(INSTRUCTION)
    assert json.loads(json.dumps(obj)) == obj
    assert obj["instruction_id"] == IID
    assert obj["action"] == "ERASE"
    assert obj["due_by"] == NOW + 86_400_000
    assert obj["partner_refs"] == {"waybill_no": "WB1"}
    assert obj["subject_id"] is None


def ack(obj: Any, instruction_id: str | None = IID) -> PartnerAcknowledgement:
    return ack_from_json(obj, partner="logistics", now_ms=NOW, instruction_id=instruction_id)


def test_the_smallest_answer() -> None:
    got = ack({"status": "DONE"})
    assert got == PartnerAcknowledgement(IID, "logistics", AcknowledgementStatus.DONE, NOW)


def test_a_full_answer_with_iso_times_round_trips() -> None:
    got = ack(
        {
            "instruction_id": IID,
            "partner": "logistics",
            "status": "RESTRICTED",
            "retain_until": "2027-01-01T00:00:00Z",
            "completed_at": NOW - 5,
        }
    )
    assert got.status is AcknowledgementStatus.RESTRICTED
    assert got.retain_until == 1_798_761_600_000
    assert got.completed_at == NOW - 5
    assert ack(ack_to_json(got)) == got


def test_a_callback_names_its_instruction() -> None:
    got = ack({"instruction_id": IID, "status": "REJECTED", "reason": "no such waybill"}, None)
    assert got.instruction_id == IID
    assert got.reason == "no such waybill"


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ([], "(root)"),
        ({"status": "OK"}, "status"),
        ({}, "status"),
        ({"status": "DONE", "extra": 1}, "extra"),
        ({"status": "DONE", "instruction_id": OTHER}, "instruction_id"),
        ({"status": "DONE", "partner": "ads"}, "partner"),
        ({"status": "RESTRICTED"}, "retain_until"),
        ({"status": "REJECTED"}, "reason"),
        ({"status": "FAILED", "reason": 5}, "reason"),
        ({"status": "DONE", "completed_at": "yesterday"}, "completed_at"),
        ({"status": "DONE", "completed_at": True}, "completed_at"),
    ],
)
def test_bad_answers_name_the_field(obj: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ack(obj)
    assert err.value.field == field


def test_a_callback_without_an_instruction_id_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        ack({"status": "DONE"}, None)
    assert err.value.field == "instruction_id"
    with pytest.raises(ValidationError) as err:
        ack({"status": "DONE", "instruction_id": "not-a-uuid"}, None)
    assert err.value.field == "(root)"


def test_an_instruction_comes_back_from_its_json_form() -> None:
    from schemas.jsonform import instruction_from_json

    assert instruction_from_json(json.loads(json.dumps(instruction_to_json(INSTRUCTION)))) == (
        INSTRUCTION
    )


@pytest.mark.parametrize("obj", [[], {"instruction_id": IID}, "x"])
def test_what_is_not_an_instruction_is_refused(obj: Any) -> None:
    from schemas.jsonform import instruction_from_json

    with pytest.raises(ValidationError):
        instruction_from_json(obj)
