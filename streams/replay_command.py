"""``consent-stream replay --partner P``: the current consent state to a (new) partner, in
memory that holds an offset per subject, not its state, whatever the number of subjects.

Two reads of the compacted consent.state.v1, each to the end it has when it starts:

1. the index: each subject's latest offset, values not decoded; a tombstone removes the
   subject. Nothing is sent when this read does not reach the end within the timeout;
2. the sending: a record is replayed when it is its subject's latest in the index. A
   state written after the first read is not replayed: the worker told the partner itself.

The instructions go out in chunks of ``CHUNK``: the chunk's ledger entries first, all of
them acknowledged (an acknowledgement can never precede its ticket), then its
instructions. A full local queue is waited out, and every delivery report is counted
(``producers.sending``): a record the broker refused is a failure, reported, exit 1.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TextIO

from consumers.topic_reader import TopicToEnd
from producers.sending import CountedSends
from schemas.errors import ContractError
from schemas.partner import PartnerInstruction
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.views import ConsentState
from streams.fanout import FanOut
from streams.ledger_codec import OpenEntry, encode_entry
from streams.outbox import instruction_headers
from streams.pseudonyms import Pseudonyms
from streams.replay import ReplayPlan, replay_instructions

__all__ = ["CHUNK", "LatestOffsets", "index_latest", "run_replay"]

log = logging.getLogger(__name__)

CHUNK: Final = 5_000
"""Instructions per chunk: their ledger entries are acknowledged before they are sent."""
_SETTLE_S: Final = 60.0

LatestOffsets = dict[int, dict[bytes, int]]
"""Per partition, each subject's (record key's) latest offset."""


def index_latest(records: Iterable[Any]) -> LatestOffsets:
    """The latest offset of every key with a state; a tombstone removes its key."""
    latest: LatestOffsets = {}
    for msg in records:
        offsets = latest.setdefault(msg.partition(), {})
        key = msg.key() or b""
        if msg.value() is None:
            offsets.pop(key, None)
        else:
            offsets[key] = msg.offset()
    return latest


@dataclass(slots=True)
class _Replay:
    """What the second read found: latest states replayed, undecodable ones skipped."""

    index: LatestOffsets
    serde: AvroSerde
    subjects: int = 0
    undecodable: int = 0

    def states(self, reader: TopicToEnd) -> Iterator[ConsentState]:
        for msg in reader.messages():
            offsets, key = self.index.get(msg.partition(), {}), msg.key() or b""
            if msg.value() is None or offsets.get(key) != msg.offset():
                continue
            del offsets[key]  # each subject's latest state is replayed once
            try:
                state = self.serde.decode_as(msg.value(), ConsentState, reader.topic)
            except ContractError as exc:
                self.undecodable += 1
                log.warning(
                    "replay: undecodable state at %d@%d: %s",
                    msg.partition(),
                    msg.offset(),
                    exc.reason,
                )
                continue
            self.subjects += 1
            yield state


def _chunks(items: Iterable[PartnerInstruction], size: int) -> Iterator[list[PartnerInstruction]]:
    chunk: list[PartnerInstruction] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Sender:
    """Each chunk's ledger entries (acknowledged), then its instructions."""

    def __init__(self, settings: Settings, serde: AvroSerde, partner: str, producer: Any) -> None:
        self._ledger_topic = settings.topics.ledger
        self._topic = settings.topics.instructions(partner)
        self._serde = serde
        self.ledger, self.instructions = CountedSends(producer), CountedSends(producer)

    def send(self, instructions: Iterable[PartnerInstruction], chunk_size: int) -> bool:
        for chunk in _chunks(instructions, chunk_size):
            for ins in chunk:
                entry = OpenEntry(ins.ack_key, None, ((ins, ""),))
                self.ledger.send(self._ledger_topic, ins.ack_key.encode(), encode_entry(entry))
            if not self.ledger.settle(_SETTLE_S):
                return False
            for ins in chunk:
                value = self._serde.encode(ins, self._topic)
                headers = instruction_headers(ins, "consentstream.v1")
                self.instructions.send(self._topic, ins.subject_ref.encode(), value, headers)
        return self.instructions.settle(_SETTLE_S)


def run_replay(
    settings: Settings,
    policy: Policy,
    partner: str,
    out: TextIO,
    timeout_s: float = 600.0,
    *,
    chunk_size: int = CHUNK,
) -> int:
    """Exit 0 when every replayed instruction was delivered; 1 when a read was not
    complete within ``timeout_s`` (each read), a record was not delivered or a state was
    undecodable; 2 for a partner not in the policy."""
    from producers.publisher import make_producer

    if partner not in policy.partners:
        print(f"consent-stream: partner {partner!r} is not in the policy", file=sys.stderr)
        return 2
    topic = settings.topics.state
    first = TopicToEnd(settings, topic, timeout_s)
    index = index_latest(first.messages())
    if not first.complete:
        print(
            f"consent-stream: {topic} was not read to its end within "
            f"{timeout_s:g} s; nothing replayed (--timeout-s)",
            file=sys.stderr,
        )
        return 1
    serde = AvroSerde(settings.schema_registry(), settings.max_record_bytes)
    plan = ReplayPlan(partner, tuple(sorted(policy.partners[partner].purposes)))
    fan = FanOut(policy, Pseudonyms(settings.subject_keys), int(time.time() * 1000))
    replay, second = _Replay(index, serde), TopicToEnd(settings, topic, timeout_s)
    sender = _Sender(settings, serde, partner, make_producer(settings))
    instructions = (i for s in replay.states(second) for i in replay_instructions(plan, s, fan))
    delivered = sender.send(instructions, chunk_size)
    return _report(replay, sender, second.complete and delivered, partner, timeout_s, out)


def _report(
    replay: _Replay, sender: _Sender, done: bool, partner: str, timeout_s: float, out: TextIO
) -> int:
    sent = sender.instructions
    print(
        f"replayed {replay.subjects} subjects to {partner}: {sent.delivered} instructions sent",
        file=out,
    )
    failed = [s for s in (sender.ledger, sender.instructions) if s.failed or s.pending]
    for what, sends in (("ledger entries", sender.ledger), ("instructions", sender.instructions)):
        if sends in failed:
            print(f"consent-stream: {what}: {sends.summary()}", file=sys.stderr)
    if not done and not failed:
        print(
            f"consent-stream: {sent.delivered} instructions sent before the second read "
            f"stopped short of the topic's end ({timeout_s:g} s); run it again",
            file=sys.stderr,
        )
    if replay.undecodable:
        print(
            f"consent-stream: {replay.undecodable} undecodable state record(s) not replayed",
            file=sys.stderr,
        )
    return 0 if done and not replay.undecodable else 1
