"""The ``referencesdropped`` extension of an instruction: written only when something is
missing, read from Kafka's and HTTP's headers alike, and never part of the Avro record."""

from __future__ import annotations

from dataclasses import replace

import pytest
from multidict import CIMultiDict

from schemas.cloudevents import header_map, references_dropped
from schemas.partner import (
    InstructionAction,
    PartnerInstruction,
    instruction_extensions,
    received_instruction,
)
from schemas.serde import AvroSerde
from streams.outbox import instruction_headers

TOPIC = "partner.logistics.instructions.v1"
ERASE = PartnerInstruction(
    instruction_id="6f1c1d2e-8c39-4f58-9a3e-0c2b7d4e5f60",
    source_event_id="0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d",
    partner="logistics",
    action=InstructionAction.ERASE,
    subject_ref="k1:" + "ab" * 32,
    issued_at=1_700_000_000_000,
    due_by=1_700_086_400_000,
    ack_key="4d3c2b1a-0f9e-4d8c-b7a6-958473625140",
    categories=("delivery_details",),
)
LACKING = replace(ERASE, references_dropped=12)


def test_only_an_instruction_that_lacks_references_carries_the_extension() -> None:
    assert instruction_extensions(ERASE) == {}
    assert "ce_referencesdropped" not in header_map(instruction_headers(ERASE, "s"))
    assert instruction_extensions(LACKING) == {"referencesdropped": "12"}
    assert header_map(instruction_headers(LACKING, "s"))["ce_referencesdropped"] == b"12"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"ce_referencesdropped": b"12"}, 12),  # Kafka
        (CIMultiDict({"CE-ReferencesDropped": "12"}), 12),  # HTTP, any case
        ({}, 0),
        ({"ce_referencesdropped": b"-3"}, 0),
        ({"ce_referencesdropped": b"twelve"}, 0),
        ({"ce-referencesdropped": "\u00b2"}, 0),  # a digit to str.isdigit, not to int()
    ],
)
def test_the_count_is_read_from_either_transport(headers: object, expected: int) -> None:
    assert references_dropped(headers) == expected  # type: ignore[arg-type]
    got = received_instruction(ERASE, headers)  # type: ignore[arg-type]
    assert got.references_dropped == expected and replace(got, references_dropped=0) == ERASE


def test_the_avro_record_is_the_contract_as_it_was() -> None:
    serde = AvroSerde()
    encoded = serde.encode(LACKING, TOPIC)

    assert encoded == serde.encode(ERASE, TOPIC)  # old readers read it as before
    assert serde.decode_as(encoded, PartnerInstruction, TOPIC) == ERASE
