"""Hot-path shortcuts give exactly what the library functions they replace give."""

from __future__ import annotations

import uuid

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import ValidationError
from schemas.validation import _uuid
from streams.pseudonyms import INSTRUCTION_NAMESPACE, instruction_id
from streams.subject import Share, SubjectState, state_from_json, state_to_json


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=4))
def test_instruction_ids_are_uuid5_of_the_joined_parts(parts: list[str]) -> None:
    expected = str(uuid.uuid5(INSTRUCTION_NAMESPACE, "/".join(parts)))
    assert instruction_id(*parts) == expected


@settings(max_examples=300, deadline=None)
@given(st.uuids())
def test_every_uuid_form_uuid_accepts_is_accepted(value: uuid.UUID) -> None:
    for text in (str(value), str(value).upper(), value.hex, f"{{{value}}}", value.urn):
        _uuid(text, "event_id")  # the canonical form takes the shortcut, the others UUID()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-uuid",
        "0f9d6c1a-3b7e-4d52-8c11-7a2e5b9f4c0",
        "0f9d6c1a-3b7e-4d52-8c11-7a2e5b9f4c03x",
    ],
)
def test_what_is_no_uuid_is_still_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="event_id is not a UUID"):
        _uuid(text, "event_id")


def test_the_state_codec_writes_the_same_document_as_with_lists() -> None:
    share = Share("e1", "payment", ("a", "b"), (("order_no", "SO-1"),), 10, 20)
    state = SubjectState("s", 3, shares=(share,), recent_event_ids=("e1", "e2"))
    doc = orjson.loads(state_to_json(state))
    assert doc["sh"] == [["e1", "payment", ["a", "b"], [["order_no", "SO-1"]], 10, 20]]
    assert doc["e"] == ["e1", "e2"]
    assert state_from_json(state_to_json(state)) == state
