"""``consent-stream replay --partner P``: the current consent state to a (new) partner, in
memory that holds an offset per subject (and a small int for each it sent to), not its
state, whatever the number of subjects.

Reads of the compacted consent.state.v1, each to the end it has when it starts:

1. the index: each subject's latest offset, values not decoded; a tombstone removes the
   subject. Nothing is sent when this read does not reach the end within the timeout;
2. the sending: a record is replayed when it is its subject's latest in the index
   (``streams.replay.sender``: in chunks, ledger entries first);
3. the catch-up, from where the index ended: a subject whose state changed meanwhile was
   told of the change by the worker, and the replayed instruction may have reached the
   partner after that one. So each replayed action the newer state no longer implies is
   sent again as the newer state has it (``streams.replay.chunks.corrections``), and the
   catch-up reads again from where it ended, until a read finds nothing to correct (at
   most ``MAX_ROUNDS``). The worker must have the partner in its policy before the
   replay starts, or it tells the partner of no change at all.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from consumers.topic_reader import TopicToEnd
from schemas.errors import ContractError
from schemas.partner import PartnerInstruction
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.views import ConsentState
from streams.fanout import FanOut
from streams.pseudonyms import Pseudonyms
from streams.replay.chunks import ReplayPlan, Sent, corrections, replay_instructions, sent_of
from streams.replay.sender import CHUNK, ReplaySender

__all__ = ["MAX_ROUNDS", "LatestOffsets", "index_latest", "run_replay"]

log = logging.getLogger(__name__)

MAX_ROUNDS: Final = 5
"""Catch-up reads at most; subjects still changing after them: exit 1, run it again."""

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
    """The states read and what was sent for each subject."""

    plan: ReplayPlan
    fan: FanOut
    serde: AvroSerde
    subjects: int = 0
    undecodable: int = 0
    corrected: int = 0
    sent: dict[bytes, Sent] = field(default_factory=dict)
    """Per subject (record key) with instructions replayed: what they said."""

    def decoded(self, msg: Any, topic: str) -> ConsentState | None:
        try:
            state: ConsentState = self.serde.decode_as(msg.value(), ConsentState, topic)
        except ContractError as exc:
            self.undecodable += 1
            log.warning(
                "replay: undecodable state at %d@%d: %s", msg.partition(), msg.offset(), exc.reason
            )
            return None
        return state

    def replayed(self, reader: TopicToEnd, index: LatestOffsets) -> Iterator[PartnerInstruction]:
        """The instructions of each subject's latest state in ``index``."""
        for msg in reader.messages():
            offsets, key = index.get(msg.partition(), {}), msg.key() or b""
            if msg.value() is None or offsets.get(key) != msg.offset():
                continue
            del offsets[key]  # each subject's latest state is replayed once
            state = self.decoded(msg, reader.topic)
            if state is None:
                continue
            self.subjects += 1
            instructions = list(replay_instructions(self.plan, state, self.fan))
            if instructions:
                self.sent[key] = sent_of(self.plan, instructions)
                yield from instructions

    def to_correct(self, reader: TopicToEnd) -> list[PartnerInstruction]:
        """What to send again for the replayed subjects with a newer state in ``reader``."""
        newer: dict[bytes, ConsentState] = {}
        for msg in reader.messages():
            key = msg.key() or b""
            if msg.value() is not None and key in self.sent:
                state = self.decoded(msg, reader.topic)
                if state is not None:
                    newer[key] = state
        fixes: list[PartnerInstruction] = []
        for key, state in newer.items():
            fix = corrections(self.plan, self.sent[key], state, self.fan)
            if fix:
                self.sent[key] = sent_of(self.plan, fix, self.sent[key])
                fixes.extend(fix)
        self.corrected += len(fixes)
        return fixes


def _catch_up(
    settings: Settings,
    replay: _Replay,
    sender: ReplaySender,
    ends: Mapping[int, int],
    timeout_s: float,
    chunk_size: int,
) -> str | None:
    """Corrections until a read finds none; None when done, else what stopped it."""
    for _ in range(MAX_ROUNDS):
        tail = TopicToEnd(settings, settings.topics.state, timeout_s, start=ends)
        fixes = replay.to_correct(tail)
        if not tail.complete:
            return f"the catch-up read stopped short of the topic's end ({timeout_s:g} s)"
        if not fixes:
            return None
        if not sender.send(fixes, chunk_size):
            return "not every correction was delivered"
        ends = tail.ends
    return f"subjects still changed after {MAX_ROUNDS} catch-up reads"


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
    complete within ``timeout_s`` (each read), a record was not delivered, a state was
    undecodable or subjects kept changing; 2 for a partner not in the policy."""
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
    replay, second = _Replay(plan, fan, serde), TopicToEnd(settings, topic, timeout_s)
    sender = ReplaySender(settings, serde, partner, make_producer(settings))
    stopped: str | None = "not every instruction was delivered"
    if sender.send(replay.replayed(second, index), chunk_size):
        stopped = f"the second read stopped short of the topic's end ({timeout_s:g} s)"
        if second.complete:
            stopped = _catch_up(settings, replay, sender, first.ends, timeout_s, chunk_size)
    return _report(replay, sender, stopped, out)


def _report(replay: _Replay, sender: ReplaySender, stopped: str | None, out: TextIO) -> int:
    sent = sender.instructions.delivered
    partner = replay.plan.partner
    print(f"replayed {replay.subjects} subjects to {partner}: {sent} instructions sent", file=out)
    if replay.corrected:
        print(
            f"{replay.corrected} of them sent again: their subjects changed during the replay",
            file=out,
        )
    for line in sender.failures():
        print(f"consent-stream: {line}", file=sys.stderr)
    if stopped is not None:
        print(f"consent-stream: {stopped}; run it again", file=sys.stderr)
    if replay.undecodable:
        print(
            f"consent-stream: {replay.undecodable} undecodable state record(s) not replayed",
            file=sys.stderr,
        )
    return 0 if stopped is None and not replay.undecodable else 1
