"""The CLI's read commands: check, status, report (replay: ``streams.replay.command``).

Each takes the settings and policy built once in ``streams.cli`` and returns an exit code.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from schemas.errors import UnknownPurposeError
from schemas.policy import Policy
from schemas.settings import Settings
from streams.ledger.evidence import evidence_json, evidence_text, status_line
from streams.request_views import RequestViews

__all__ = ["run_check", "run_report", "run_status"]

log = logging.getLogger(__name__)


def run_check(settings: Settings, policy: Policy, subject: str, purpose: str, out: TextIO) -> int:
    """Exit 0 when processing is allowed, 1 when denied, 2 for an unknown purpose."""
    store = ConsentStore(make_redis(settings), policy, settings.subject_keys, settings.redis_prefix)
    try:
        allowed = store.is_allowed(subject, purpose)
    except UnknownPurposeError as exc:
        print(f"consent-stream: {exc}", file=sys.stderr)
        return 2
    print("allowed" if allowed else "denied", file=out)
    return 0 if allowed else 1


def _request(settings: Settings, request_id: str) -> Any:
    return RequestViews(make_redis(settings), settings.redis_prefix).get(request_id)


def run_status(settings: Settings, request_id: str, out: TextIO) -> int:
    status = _request(settings, request_id)
    if status is None:
        print(f"consent-stream: unknown request {request_id}", file=sys.stderr)
        return 1
    print(status_line(status), file=out)
    return 0


def run_report(settings: Settings, request_id: str, as_json: bool, out: TextIO) -> int:
    status = _request(settings, request_id)
    if status is None:
        print(f"consent-stream: unknown request {request_id}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(evidence_json(status), out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        print(evidence_text(status), file=out)
    return 0
