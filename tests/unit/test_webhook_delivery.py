"""Pure webhook delivery decisions: the request, what an answer means, retry waits,
deadline and refusal acks, and the callback a partner sends later."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from consumers.partner_results import MAX_REASON_CHARS, failed_ack
from consumers.webhook.callback import acknowledgement_from_callback
from consumers.webhook.delivery import (
    Accepted,
    Acknowledged,
    Refused,
    Retry,
    RetryPolicy,
    ack_ce_id,
    classify,
    deadline_ack,
    instruction_body,
    request_headers,
    retry_after_s,
    transport_retry,
)
from schemas.errors import ValidationError
from schemas.partner import AcknowledgementStatus, InstructionAction, PartnerInstruction
from schemas.webhook_signing import ReplayGuard, SignatureError, signature_header, verify

SECRET = b"whsec-logistics-0123456789"
NOW_S = 1_717_171_717
NOW_MS = NOW_S * 1000
INS = PartnerInstruction(
    instruction_id="7f1c0f1e-6f0e-4a55-9d43-2d1c2b1e0a99",
    source_event_id="0b8c1a5e-8f9f-4d3c-a5a9-0e3c5a8f9d11",
    partner="logistics",
    action=InstructionAction.STOP_PROCESSING,
    subject_ref="dev:" + "ab" * 32,
    issued_at=NOW_MS - 2000,
    due_by=NOW_MS + 60_000,
    ack_key="7f1c0f1e-6f0e-4a55-9d43-2d1c2b1e0a99",
    purposes=("marketing_sms",),
)


# ---- the request ----------------------------------------------------------------------


def test_the_body_is_the_instructions_json_form() -> None:
    body = instruction_body(INS)
    obj = json.loads(body)
    assert obj["instruction_id"] == INS.instruction_id
    assert obj["purposes"] == ["marketing_sms"]
    assert obj["due_by"] == INS.due_by
    assert b" " not in body  # compact: the signed bytes are exactly these


def test_cloudevents_binary_mode_headers_and_a_signature() -> None:
    body = instruction_body(INS)
    headers = request_headers(INS, body, SECRET, NOW_S)
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"] == INS.instruction_id
    assert headers["ce-type"] == "partner.instruction.stop_processing"
    assert headers["ce-source"] == "consent-stream"
    assert headers["ce-subject"] == INS.subject_ref
    assert headers["ce-time"] == "2024-05-31T16:08:35.000+00:00"
    assert headers["ce-dataschema"] == "consentstream.v1.PartnerInstruction"
    assert headers["Content-Type"] == "application/json"
    assert "cs_published_at" not in headers
    assert headers["Consent-Stream-Signature"] == signature_header(SECRET, NOW_S, body)
    assert verify(SECRET, headers["Consent-Stream-Signature"], body, now_s=NOW_S) == NOW_S


# ---- the answer -----------------------------------------------------------------------


def answer(status: int, body: Any = b"", **headers: str) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify(status, raw, headers, instruction=INS, partner="logistics", now_ms=NOW_MS)


@pytest.mark.parametrize("status", [200, 201])
def test_an_answer_with_the_acknowledgement(status: int) -> None:
    got = answer(status, {"status": "DONE"})
    assert isinstance(got, Acknowledged)
    assert got.ack.instruction_id == INS.instruction_id
    assert got.ack.status is AcknowledgementStatus.DONE
    assert got.ack.completed_at == NOW_MS


def test_a_long_reason_is_truncated_like_the_sdks() -> None:
    got = answer(200, {"status": "REJECTED", "reason": "x" * 2000})
    assert isinstance(got, Acknowledged)
    assert got.ack.reason is not None and len(got.ack.reason) == MAX_REASON_CHARS


def test_202_means_a_callback_later() -> None:
    assert answer(202) == Accepted()


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (408, "throttled"),
        (429, "throttled"),
    ],
)
def test_retriable_statuses(status: int, cause: str) -> None:
    got = answer(status, b"busy")
    assert got == Retry(cause, f"HTTP {status}", None)


def test_retry_after_is_read() -> None:
    assert classify(
        429, b"", {"Retry-After": "7"}, instruction=INS, partner="logistics", now_ms=NOW_MS
    ) == Retry("throttled", "HTTP 429", 7.0)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, b"bad\nrequest", "webhook: HTTP 400: bad request"),
        (401, b"", "webhook: HTTP 401"),
        (404, b"", "webhook: HTTP 404"),
        (301, b"", "webhook: HTTP 301"),
        (204, b"", "webhook: HTTP 204"),
        (200, b"not json", "webhook: the answer is not JSON"),
        (200, b'{"status": "MAYBE"}', "webhook: invalid acknowledgement: status must be"),
        (
            200,
            b'{"status": "DONE", "instruction_id": "0b8c1a5e-8f9f-4d3c-a5a9-0e3c5a8f9d11"}',
            "webhook: invalid acknowledgement: instruction_id is not the one delivered",
        ),
        (200, b"[" * 70_000, "webhook: answer larger than 65536 bytes"),
    ],
)
def test_final_failures(status: int, body: bytes, reason: str) -> None:
    got = answer(status, body)
    assert isinstance(got, Refused)
    assert got.reason.startswith(reason)


def test_no_answer_at_all_is_retried() -> None:
    assert transport_retry(TimeoutError()) == Retry("timeout", "timeout")
    assert transport_retry(ConnectionRefusedError()) == Retry(
        "connection", "ConnectionRefusedError"
    )


def test_retry_after_forms() -> None:
    assert retry_after_s(None, NOW_S) is None
    assert retry_after_s("", NOW_S) is None
    assert retry_after_s("120", NOW_S) == 120.0
    date = format_datetime(datetime.fromtimestamp(NOW_S + 30, tz=UTC), usegmt=True)
    assert retry_after_s(date, NOW_S) == pytest.approx(30.0)
    past = format_datetime(datetime.fromtimestamp(NOW_S - 30, tz=UTC), usegmt=True)
    assert retry_after_s(past, NOW_S) == 0.0
    assert retry_after_s("soon", NOW_S) is None
    assert retry_after_s("-5", NOW_S) is None


# ---- retries --------------------------------------------------------------------------


def test_full_jitter_under_an_exponential_ceiling() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=8.0)
    rng = random.Random(1)
    for retry, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        waits = [policy.wait_s(retry, None, rng) for _ in range(300)]
        assert all(0.0 <= w <= ceiling for w in waits), retry
        assert max(waits) > ceiling * 0.8  # spread over the whole range: full jitter
        assert min(waits) < ceiling * 0.2
    assert policy.wait_s(10_000, None, rng) <= 8.0  # no overflow far out


def test_retry_after_wins_up_to_its_cap() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=8.0, max_retry_after_s=60.0)
    rng = random.Random(1)
    assert policy.wait_s(0, 30.0, rng) == 30.0
    assert policy.wait_s(5, 0.0, rng) == 0.0
    assert policy.wait_s(0, 10_000.0, rng) == 60.0


# ---- acknowledgements the bridge makes ------------------------------------------------


def test_failed_at_the_deadline_names_the_last_problem() -> None:
    ack = deadline_ack(INS, "logistics", "HTTP 503", NOW_MS)
    assert ack.status is AcknowledgementStatus.FAILED
    assert ack.reason == "webhook: not delivered before the deadline (last attempt: HTTP 503)"
    assert ack.completed_at == NOW_MS
    never = deadline_ack(INS, "logistics", None, NOW_MS)
    assert never.reason == "webhook: not delivered before the deadline (never attempted)"
    assert failed_ack(INS, "logistics", "webhook: HTTP 400", NOW_MS).reason == "webhook: HTTP 400"


def test_the_ack_ce_id_is_derived_from_the_instruction() -> None:
    assert ack_ce_id(INS.instruction_id) == ack_ce_id(INS.instruction_id)
    assert ack_ce_id(INS.instruction_id) != ack_ce_id(str(uuid.uuid4()))
    assert uuid.UUID(ack_ce_id(INS.instruction_id)).version == 5


# ---- the callback (POST /v1/acks on the gateway) --------------------------------------


def callback_body(**fields: Any) -> bytes:
    obj = {
        "instruction_id": INS.instruction_id,
        "ack_key": INS.ack_key,
        "subject_ref": INS.subject_ref,
        "status": "DONE",
        **fields,
    }
    return json.dumps(obj).encode()


def test_a_signed_callback_becomes_the_ack_to_produce() -> None:
    body = callback_body(completed_at=NOW_MS - 10)
    pending = acknowledgement_from_callback(
        body,
        signature_header(SECRET, NOW_S, body),
        partner="logistics",
        secrets=SECRET,
        now_s=NOW_S,
    )
    assert pending.ack_key == INS.ack_key
    assert pending.subject_ref == INS.subject_ref
    assert pending.sent.ce_id == ack_ce_id(INS.instruction_id)
    assert pending.sent.ack.status is AcknowledgementStatus.DONE
    assert pending.sent.ack.completed_at == NOW_MS - 10
    assert pending.sent.ack.partner == "logistics"


def test_a_forged_stale_or_replayed_callback_is_refused() -> None:
    body = callback_body()
    kw: dict[str, Any] = {"partner": "logistics", "secrets": SECRET, "now_s": NOW_S}
    forged = signature_header(b"someone-else-0123456789", NOW_S, body)
    with pytest.raises(SignatureError):
        acknowledgement_from_callback(body, forged, **kw)
    with pytest.raises(SignatureError):
        acknowledgement_from_callback(body, None, **kw)
    stale = signature_header(SECRET, NOW_S - 301, body)
    with pytest.raises(SignatureError):
        acknowledgement_from_callback(body, stale, **kw)
    guard = ReplayGuard()
    good = signature_header(SECRET, NOW_S, body)
    acknowledgement_from_callback(body, good, guard=guard, **kw)
    with pytest.raises(SignatureError) as err:
        acknowledgement_from_callback(body, good, guard=guard, **kw)
    assert err.value.reason == "replayed_signature"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"nope", None),
        (b"[]", "(root)"),
        (json.dumps({"instruction_id": INS.instruction_id, "status": "DONE"}).encode(), "ack_key"),
        (callback_body(subject_ref=""), "subject_ref"),
        (callback_body(status="SOON"), "status"),
        (callback_body(partner="ads"), "partner"),
    ],
)
def test_a_signed_callback_that_is_not_an_ack(body: bytes, field: str | None) -> None:
    with pytest.raises(ValidationError) as err:
        acknowledgement_from_callback(
            body,
            signature_header(SECRET, NOW_S, body),
            partner="logistics",
            secrets=SECRET,
            now_s=NOW_S,
        )
    if field is not None:
        assert err.value.field == field
