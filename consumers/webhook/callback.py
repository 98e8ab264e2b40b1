"""A partner's signed callback (``POST /v1/acks`` on the gateway) as an acknowledgement.

A partner that answered an instruction ``202`` later POSTs its acknowledgement, signed
exactly like the deliveries it receives (``Consent-Stream-Signature`` under its secret).
The body is the acknowledgement's JSON form plus the two fields of the instruction that
route it (both copied from the instruction it got)::

    {"instruction_id": "...", "ack_key": "...", "subject_ref": "...",
     "status": "DONE", "completed_at": 1717171717000}

``acknowledgement_from_callback`` verifies and parses it into the ``PendingAck`` that
``consumers.partner_sender.AckSender`` produces to ``partner.<p>.acks.v1`` (key
``ack_key``, CloudEvents headers, ce_id derived from the instruction id, as the bridge
does). The gateway wires it (``streams.gateway.acks``): answer 401 for a
``SignatureError``, 400 for a ``ValidationError``, 202 once the ack is produced.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from consumers.dedup import SentAck
from consumers.partner_sender import PendingAck
from consumers.webhook.delivery import MAX_ANSWER_BYTES, ack_ce_id, with_short_reason
from schemas.errors import ValidationError
from schemas.jsonform import ack_from_json
from schemas.webhook_signing import DEFAULT_TOLERANCE_S, SignatureGuard, verify

__all__ = ["acknowledgement_from_callback"]

_ROUTING = ("ack_key", "subject_ref")


def acknowledgement_from_callback(
    body: bytes,
    signature: str | None,
    *,
    partner: str,
    secrets: bytes | Iterable[bytes],
    now_s: float,
    guard: SignatureGuard | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> PendingAck:
    """The acknowledgement a verified callback of ``partner`` carries, ready to produce.

    ``signature``: the ``Consent-Stream-Signature`` header; ``secrets``: the partner's
    (``Settings.webhook_secret(partner).reveal()``). Raises ``SignatureError`` (forged,
    stale, replayed: answer 401) before reading the body, ``ValidationError`` (answer
    400) for a body that is not a callback."""
    verify(secrets, signature, body, now_s=now_s, tolerance_s=tolerance_s, guard=guard)
    if len(body) > MAX_ANSWER_BYTES:
        raise ValidationError(f"callback larger than {MAX_ANSWER_BYTES} bytes", field="(root)")
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValidationError("the callback is not JSON", reason="not_json") from None
    if not isinstance(obj, dict):
        raise ValidationError("a callback is a JSON object", field="(root)")
    routing = {name: obj.pop(name, None) for name in _ROUTING}
    for name, value in routing.items():
        if not isinstance(value, str) or not value:
            raise ValidationError(f"missing field {name!r}", field=name)
    ack = ack_from_json(obj, partner=partner, now_ms=int(now_s * 1000))
    sent = SentAck(with_short_reason(ack), ack_ce_id(ack.instruction_id))
    return PendingAck(sent, str(routing["ack_key"]), str(routing["subject_ref"]))
