"""The evidence of a deletion request: what was asked of whom and when, each answer,
retention holds. Built from ``RequestStatus`` only, so it holds no deleted personal data
(the subject and the partners' references appear as digests)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.records import to_record
from schemas.views import OutcomeStatus, RequestStatus

__all__ = ["evidence_json", "evidence_text", "status_line"]


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def status_line(s: RequestStatus) -> str:
    done = sum(o.status is not OutcomeStatus.PENDING for o in s.partners)
    late = " OVERDUE" if s.overdue else ""
    return (
        f"{s.request_id} {s.status.value}{late} scope={s.scope.value} "
        f"partners answered {done}/{len(s.partners)} due_by={_iso(s.due_by)}"
    )


def evidence_json(s: RequestStatus) -> dict[str, Any]:
    doc = to_record(s)
    doc["retention_holds"] = [
        {
            "partner": o.partner,
            "instruction_id": o.instruction_id,
            "categories": list(o.categories),
            "retain_until": o.retain_until,
        }
        for o in s.partners
        if o.status is OutcomeStatus.RESTRICTED
    ]
    doc["references_dropped"] = sum(o.refs_dropped for o in s.partners)
    doc["contains_personal_data"] = False
    return doc


def evidence_text(s: RequestStatus) -> str:
    lines = [
        f"Deletion request {s.request_id}",
        f"  subject (digest)   {s.subject_digest}",
        f"  scope              {s.scope.value} {', '.join(s.categories)}".rstrip(),
        f"  requested          {_iso(s.requested_at)}",
        f"  received           {_iso(s.received_at)}",
        f"  answer due by      {_iso(s.due_by)}{'  (OVERDUE)' if s.overdue else ''}",
        f"  consent store      {'erased ' + _iso(s.store_erased_at) if s.store_erased_at else '-'}",
        f"  status             {s.status.value}",
        f"  completed          {_iso(s.completed_at)}",
        "",
        f"  {'partner':<10} {'action':<9} {'status':<10} {'issued':<25} {'answered':<25} "
        "categories / notes",
    ]
    for o in s.partners:
        notes = ", ".join(o.categories)
        if o.retain_until:
            notes += f"; retained until {_iso(o.retain_until)}"
        if o.reason:
            notes += f"; reason: {o.reason}"
        if o.follows_instruction_id:
            notes += f"; follows {o.follows_instruction_id}"
        if o.refs_dropped:
            notes += f"; LACKS the references of {o.refs_dropped} data.shared record(s)"
        if o.overdue:
            notes += "; OVERDUE"
        lines.append(
            f"  {o.partner:<10} {o.action:<9} {o.status.value:<10} {_iso(o.issued_at):<25} "
            f"{_iso(o.acknowledged_at):<25} {notes}"
        )
    if not s.partners:
        lines.append("  (no partner held the subject's data)")
    if any(o.refs_dropped for o in s.partners):
        lines.append("")
        lines.append(
            "  Some instructions lack references: the subject's state was full when those "
            "data.shared records arrived. Their references are on the dead-letter topic: "
            "consent-stream dead-letters --reason references_dropped --subject <id>."
        )
    lines.append("")
    lines.append("  This report holds no deleted personal data: identifiers are keyed digests.")
    return "\n".join(lines)
