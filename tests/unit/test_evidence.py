"""The deletion evidence (``consent-stream report``): built from the request status alone,
it says which instructions lack references, and holds no personal data."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

from schemas.events import DeletionScope
from schemas.views import OutcomeStatus, PartnerOutcome, RequestState, RequestStatus
from streams.ledger.evidence import evidence_json, evidence_text, status_line

T0 = 1_700_000_000_000
DAY = 86_400_000


def _id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"test:{name}"))


STATUS = RequestStatus(
    request_id=_id("request"),
    subject_digest="k1:" + "9f" * 32,
    scope=DeletionScope.ACCOUNT,
    status=RequestState.COMPLETED_WITH_RESTRICTIONS,
    requested_at=T0,
    received_at=T0 + 3,
    due_by=T0 + 15 * DAY,
    updated_at=T0 + 50,
    store_erased_at=T0 + 4,
    completed_at=T0 + 50,
    partners=(
        PartnerOutcome(
            "payment",
            _id("payment"),
            "RESTRICT",
            T0 + 3,
            T0 + 7 * DAY,
            OutcomeStatus.RESTRICTED,
            ("payment_records",),
            "k1:" + "aa" * 16,
            T0 + 9,
            T0 + 1095 * DAY,
        ),
        PartnerOutcome(
            "logistics",
            _id("logistics"),
            "ERASE",
            T0 + 3,
            T0 + 7 * DAY,
            OutcomeStatus.DONE,
            ("delivery_details",),
            acknowledged_at=T0 + 20,
        ),
    ),
)


def test_a_complete_deletion_says_nothing_of_missing_references() -> None:
    text = evidence_text(STATUS)
    assert "LACKS" not in text and "dead-letters" not in text
    doc = evidence_json(STATUS)
    assert doc["references_dropped"] == 0 and doc["contains_personal_data"] is False
    assert [p["refs_dropped"] for p in doc["partners"]] == [0, 0]
    assert [h["partner"] for h in doc["retention_holds"]] == ["payment"]
    assert status_line(STATUS).startswith(f"{STATUS.request_id} COMPLETED_WITH_RESTRICTIONS")
    assert "partners answered 2/2" in status_line(STATUS)


def test_instructions_lacking_references_are_named_with_how_to_find_them() -> None:
    pay, log = STATUS.partners
    lacking = replace(STATUS, partners=(pay, replace(log, refs_dropped=99)))

    text = evidence_text(lacking)
    (line,) = [x for x in text.splitlines() if x.strip().startswith("logistics")]
    assert "LACKS the references of 99 data.shared record(s)" in line
    assert "--reason references_dropped" in text
    (pay_line,) = [x for x in text.splitlines() if x.strip().startswith("payment")]
    assert "LACKS" not in pay_line
    doc = evidence_json(lacking)
    assert doc["references_dropped"] == 99
    assert json.loads(json.dumps(doc))["partners"][1]["refs_dropped"] == 99
