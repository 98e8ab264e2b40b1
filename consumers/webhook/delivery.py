"""Pure decisions of webhook delivery: the request, what an answer means, when to retry.

No I/O and no clock here (times are passed in), so every rule is unit-tested:

- the request: the instruction's JSON form as the body, CloudEvents HTTP binding in
  binary mode (``ce-id`` = the instruction id, ``ce-type``, ``ce-source``, ``ce-time``,
  ``ce-subject`` = the partner-scoped subject ref...), signed (``Consent-Stream-Signature``);
- the answer: ``200``/``201`` with an acknowledgement in the body, ``202`` (the partner
  calls back later), retriable (``5xx``, ``408``, ``429``, timeouts, connection errors),
  or final (any other status, or a 2xx whose body is not an acknowledgement);
- the wait before a retry: exponential backoff with full jitter, or ``Retry-After``;
  never past the instruction's ``due_by``, where it is acknowledged FAILED instead.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

from consumers.partner_delivery import backoff_schedule
from consumers.partner_results import failed_ack, truncate_reason
from schemas.cloudevents import ce_headers, instruction_event_type
from schemas.contracts import PARTNER_INSTRUCTION
from schemas.errors import ValidationError
from schemas.jsonform import ack_from_json, instruction_to_json
from schemas.partner import PartnerAcknowledgement, PartnerInstruction, instruction_extensions
from schemas.webhook_signing import SIGNATURE_HEADER, signature_header

__all__ = [
    "JSON_CONTENT_TYPE",
    "MAX_ANSWER_BYTES",
    "Accepted",
    "Acknowledged",
    "Answer",
    "Refused",
    "Retry",
    "RetryPolicy",
    "ack_ce_id",
    "classify",
    "deadline_ack",
    "instruction_body",
    "request_headers",
    "retry_after_s",
    "transport_retry",
    "with_short_reason",
]

JSON_CONTENT_TYPE: Final = "application/json"
MAX_ANSWER_BYTES: Final = 64 * 1024
DEADLINE_REASON: Final = "webhook: not delivered before the deadline"
_ACK_NAMESPACE: Final = uuid.UUID("0f5b8f1e-3c2d-4b7a-9e61-5a4c3b2d1e0f")
_RETRIABLE_4XX: Final = frozenset({408, 429})


# ---- the request ----------------------------------------------------------------------


def instruction_body(instruction: PartnerInstruction) -> bytes:
    """The request body: the instruction's JSON form, compact UTF-8 (the signed bytes)."""
    return json.dumps(
        instruction_to_json(instruction), separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def request_headers(
    instruction: PartnerInstruction, body: bytes, secret: bytes, now_s: int
) -> dict[str, str]:
    """CloudEvents HTTP binary-mode headers (``ce-*``), Content-Type and the signature.

    The attributes are the ones the instruction carries on Kafka (``ce_*``), renamed for
    HTTP; ``ce-id`` is the instruction id on every attempt, so a partner de-duplicates."""
    kafka = ce_headers(
        event_id=instruction.instruction_id,
        event_type=instruction_event_type(instruction.action.value),
        source="consent-stream",
        time_ms=instruction.issued_at,
        subject=instruction.subject_ref,
        content_type=JSON_CONTENT_TYPE,
        data_schema=PARTNER_INSTRUCTION,
        published_at_ms=instruction.issued_at,
        extensions=instruction_extensions(instruction),
    )
    headers = {
        ("ce-" + name[3:] if name.startswith("ce_") else name): value.decode()
        for name, value in kafka
        if name.startswith("ce_") or name == "content-type"
    }
    headers["Content-Type"] = headers.pop("content-type")
    headers[SIGNATURE_HEADER] = signature_header(secret, now_s, body)
    return headers


# ---- the answer -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """200/201: the body is the partner's acknowledgement."""

    ack: PartnerAcknowledgement


@dataclass(frozen=True, slots=True)
class Accepted:
    """202: the partner will answer with a signed callback (``POST /v1/acks``)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again: ``cause`` is a metric label (``server_error``, ``throttled``,
    ``timeout``, ``connection``); ``after_s`` the partner's ``Retry-After``, if any."""

    cause: str
    detail: str
    after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """The partner refused, or answered something that is not an acknowledgement: the
    instruction is acknowledged FAILED with ``reason`` (trying again will not help)."""

    reason: str


Answer = Acknowledged | Accepted | Retry | Refused


def with_short_reason(ack: PartnerAcknowledgement) -> PartnerAcknowledgement:
    """``ack`` with its reason truncated like the partner SDK's (no stack traces in acks)."""
    if ack.reason is None:
        return ack
    return replace(ack, reason=truncate_reason(ack.reason))


def retry_after_s(value: str | None, now_s: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent
    or unreadable (then the backoff decides)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)


def classify(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    instruction: PartnerInstruction,
    partner: str,
    now_ms: int,
) -> Answer:
    """What the partner's HTTP answer means for ``instruction``."""
    if status in (200, 201):
        return _acknowledgement(body, instruction, partner, now_ms)
    if status == 202:
        return Accepted()
    if status >= 500 or status in _RETRIABLE_4XX:
        cause = "throttled" if status in _RETRIABLE_4XX else "server_error"
        after = retry_after_s(headers.get("Retry-After"), now_ms / 1000)
        return Retry(cause, f"HTTP {status}", after)
    return Refused(f"webhook: HTTP {status}" + _hint(body))


def transport_retry(exc: BaseException) -> Retry:
    """A request that got no answer: a timeout or a connection error (retried)."""
    if isinstance(exc, TimeoutError):
        return Retry("timeout", "timeout")
    return Retry("connection", type(exc).__name__)


def _hint(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip()
    return f": {' '.join(text.split())}" if text else ""


def _acknowledgement(
    body: bytes, instruction: PartnerInstruction, partner: str, now_ms: int
) -> Answer:
    if len(body) > MAX_ANSWER_BYTES:
        return Refused(f"webhook: answer larger than {MAX_ANSWER_BYTES} bytes")
    try:
        obj = json.loads(body)
        ack = ack_from_json(
            obj, partner=partner, now_ms=now_ms, instruction_id=instruction.instruction_id
        )
    except json.JSONDecodeError:
        return Refused("webhook: the answer is not JSON")
    except ValidationError as exc:
        return Refused(truncate_reason(f"webhook: invalid acknowledgement: {exc}"))
    return Acknowledged(with_short_reason(ack))


# ---- retries and the deadline ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: the k-th wait is uniform in
    [0, min(cap_s, base_s * 2**k)]; a ``Retry-After`` is honoured as given (up to
    ``max_retry_after_s``). No attempt limit: the instruction's deadline ends the retries."""

    base_s: float = 0.5
    cap_s: float = 60.0
    max_retry_after_s: float = 3600.0

    def wait_s(self, retry: int, after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        if after_s is not None:
            return min(max(after_s, 0.0), self.max_retry_after_s)
        ceilings = backoff_schedule(min(retry, 30) + 2, self.base_s, self.cap_s)
        return rng.uniform(0.0, ceilings[-1])


def ack_ce_id(instruction_id: str) -> str:
    """The CloudEvents id of the bridge's acknowledgement of ``instruction_id``: derived
    from it (UUID v5), so an ack re-sent after a restart carries the same id."""
    return str(uuid.uuid5(_ACK_NAMESPACE, instruction_id))


def deadline_ack(
    instruction: PartnerInstruction, partner: str, last: str | None, now_ms: int
) -> PartnerAcknowledgement:
    """FAILED: not delivered before ``due_by``; the reason names the last problem."""
    reason = DEADLINE_REASON + (f" (last attempt: {last})" if last else " (never attempted)")
    return failed_ack(instruction, partner, reason, now_ms)
