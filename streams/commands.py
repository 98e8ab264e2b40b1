"""The CLI's read and maintenance commands: check, status, report, replay.

Each takes the settings and policy built once in ``streams.cli`` and returns an exit code.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from consumers.consent_store import ConsentStore
from consumers.store_clients import make_redis
from consumers.topic_reader import TopicToEnd
from schemas.errors import ContractError, UnknownPurposeError
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.views import ConsentState
from streams.evidence import evidence_json, evidence_text, status_line
from streams.fanout import FanOut
from streams.ledger_codec import OpenEntry, encode_entry
from streams.outbox import instruction_headers
from streams.pseudonyms import Pseudonyms
from streams.replay import ReplayPlan, replay_instructions
from streams.request_views import RequestViews

__all__ = ["run_check", "run_replay", "run_report", "run_status"]

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


@dataclass(slots=True)
class _States:
    """The latest state of every subject on the compacted topic, as read to its end."""

    latest: dict[str, ConsentState] = field(default_factory=dict)
    undecodable: int = 0
    complete: bool = False


def _read_states(settings: Settings, serde: AvroSerde, timeout_s: float) -> _States:
    read = _States()
    reader = TopicToEnd(settings, settings.topics.state, timeout_s)
    for msg in reader.messages():
        key, value = (msg.key() or b"").decode("utf-8", "replace"), msg.value()
        if value is None:  # a tombstone: the subject has no state any more
            read.latest.pop(key, None)
            continue
        try:
            state = serde.decode_as(value, ConsentState, reader.topic)
        except ContractError as exc:
            read.undecodable += 1
            log.warning(
                "replay: undecodable state at %d@%d: %s", msg.partition(), msg.offset(), exc.reason
            )
            continue
        read.latest[state.subject_id] = state
    read.complete = reader.complete
    return read


def run_replay(
    settings: Settings, policy: Policy, partner: str, out: TextIO, timeout_s: float = 600.0
) -> int:
    from producers.publisher import make_producer

    if partner not in policy.partners:
        print(f"consent-stream: partner {partner!r} is not in the policy", file=sys.stderr)
        return 2
    serde = AvroSerde(settings.schema_registry(), settings.max_record_bytes)
    plan = ReplayPlan(partner, tuple(sorted(policy.partners[partner].purposes)))
    fan = FanOut(policy, Pseudonyms(settings.subject_keys), int(time.time() * 1000))
    read = _read_states(settings, serde, timeout_s)
    if not read.complete:
        print(
            f"consent-stream: {settings.topics.state} was not read to its end within "
            f"{timeout_s:g} s; nothing replayed (--timeout-s)",
            file=sys.stderr,
        )
        return 1
    states = list(read.latest.values())
    instructions = [i for s in states for i in replay_instructions(plan, s, fan)]
    producer = make_producer(settings)
    for ins in instructions:  # the ledger first: an ack can never precede its ticket
        entry = OpenEntry(ins.ack_key, None, ((ins, ""),))
        producer.produce(
            settings.topics.ledger, value=encode_entry(entry), key=ins.ack_key.encode()
        )
    if producer.flush(60.0):
        print("consent-stream: ledger entries not acknowledged", file=sys.stderr)
        return 1
    topic = settings.topics.instructions(partner)
    for ins in instructions:
        producer.produce(
            topic,
            value=serde.encode(ins, topic),
            key=ins.subject_ref.encode(),
            headers=instruction_headers(ins, "consentstream.v1"),
        )
    left = producer.flush(60.0)
    print(
        f"replayed {len(states)} subjects to {partner}: "
        f"{len(instructions) - left} instructions sent",
        file=out,
    )
    if read.undecodable:
        print(
            f"consent-stream: {read.undecodable} undecodable state record(s) not replayed",
            file=sys.stderr,
        )
    return 0 if left == 0 and not read.undecodable else 1
