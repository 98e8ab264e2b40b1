"""``consent-stream replay`` (``streams.replay.command``): the index of each subject's latest
state, only those replayed, instructions in chunks behind their acknowledged ledger
entries, and a clear exit code when a read is short or a record is not delivered."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from fake_producer import QueueProducer
from fake_topic import Record

import producers.publisher
import streams.replay.command as replay
from schemas.partner import InstructionAction, PartnerInstruction
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.views import ConsentState, PurposeDecision
from streams.ledger.codec import OpenEntry, decode_entry
from streams.pseudonyms import Pseudonyms

SETTINGS = Settings()
TOPIC = SETTINGS.topics.state
SERDE = AvroSerde()
POLICY = load_policy(SETTINGS.policy_path)
INSTRUCTIONS = SETTINGS.topics.instructions("ads")


def state(subject: str, version: int, ads_allowed: bool = False) -> ConsentState:
    at = 1_700_000_000_000 + version
    ads = PurposeDecision("personalized_ads", ads_allowed, at, "2023-09-01")
    return ConsentState(subject, version, at, purposes=(ads,))


def encoded(subject: str, version: int, offset: int, ads_allowed: bool = False) -> Record:
    value = SERDE.encode(state(subject, version, ads_allowed), TOPIC)
    return Record(offset % 2, offset, value, key=subject.encode())


def tombstone(subject: str, offset: int) -> Record:
    return Record(offset % 2, offset, None, key=subject.encode())


def test_the_index_holds_each_subjects_latest_offset_and_forgets_tombstoned_ones() -> None:
    records = [encoded("a", 1, 0), encoded("b", 1, 1), encoded("a", 2, 2), tombstone("b", 3)]

    assert replay.index_latest(records) == {0: {b"a": 2}, 1: {}}


class Reads:
    """Stands in for ``TopicToEnd``: each instance is the next read of ``reads`` (the
    index, the sending, then the catch-up reads); a read past them finds nothing."""

    def __init__(self, *reads: tuple[list[Record], bool]) -> None:
        self.reads, self.made = list(reads), 0
        self.starts: list[dict[int, int] | None] = []

    def __call__(self, settings: Settings, topic: str, timeout_s: float, start: Any = None) -> Any:
        records, complete = self.reads[self.made] if self.made < len(self.reads) else ([], True)
        self.made += 1
        self.starts.append(start)
        ends = {0: 1000 * self.made}

        class Read:
            def __init__(self) -> None:
                self.topic, self.complete, self.ends = topic, False, ends

            def messages(self) -> Iterator[Record]:
                yield from records
                self.complete = complete

        return Read()


def run(
    monkeypatch: pytest.MonkeyPatch,
    reads: Reads,
    producer: QueueProducer | None = None,
    chunk_size: int = replay.CHUNK,
) -> tuple[int, str, str, QueueProducer]:
    producer = producer or QueueProducer()
    monkeypatch.setattr(replay, "TopicToEnd", reads)
    monkeypatch.setattr(producers.publisher, "make_producer", lambda settings: producer)
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    code = replay.run_replay(SETTINGS, POLICY, "ads", out, chunk_size=chunk_size)
    return code, out.getvalue(), err.getvalue(), producer


def sent_to(producer: QueueProducer, topic: str) -> list[tuple[bytes | None, bytes]]:
    return [(key, value) for t, key, value in producer.log if t == topic]


def test_only_each_subjects_latest_state_is_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    first = [
        encoded("a", 1, 0),
        encoded("b", 1, 1),
        encoded("a", 2, 2),  # a: still withdrawn, at version 2
        encoded("c", 1, 3),
        encoded("c", 2, 5, ads_allowed=True),  # c: back to the default, nothing to send
        tombstone("b", 7),  # b: no state any more
    ]
    later = [encoded("d", 1, 8), encoded("a", 3, 10, ads_allowed=True)]  # after the index
    code, out, err, producer = run(monkeypatch, Reads((first, True), (first + later, True)))

    assert code == 0, err
    assert out == "replayed 2 subjects to ads: 1 instructions sent\n"
    ((ref, value),) = sent_to(producer, INSTRUCTIONS)
    ins = SERDE.decode_as(value, PartnerInstruction, INSTRUCTIONS)
    assert ins.action is InstructionAction.STOP_PROCESSING
    assert ins.subject_ref == Pseudonyms(SETTINGS.subject_keys).subject_ref("ads", "a")
    assert ref == ins.subject_ref.encode()
    ((ticket_key, ticket),) = sent_to(producer, SETTINGS.topics.ledger)
    assert ticket_key == ins.ack_key.encode()
    assert isinstance(decode_entry(ticket), OpenEntry)


def test_an_undecodable_latest_state_is_counted_not_replaced_by_an_older_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = [encoded("a", 1, 0), Record(0, 2, b"\x00not a state", key=b"a")]
    code, out, err, producer = run(monkeypatch, Reads((records, True), (records, True)))

    assert code == 1
    assert "1 undecodable state record(s) not replayed" in err
    assert out == "replayed 0 subjects to ads: 0 instructions sent\n"
    assert sent_to(producer, INSTRUCTIONS) == []


def withdrawn(count: int) -> list[Record]:
    return [encoded(f"s{n}", 1, n) for n in range(count)]


def test_each_chunks_ledger_entries_are_acknowledged_before_its_instructions_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = withdrawn(5)
    producer = QueueProducer(capacity=2)  # smaller than a chunk: the queue fills
    code, out, err, _ = run(
        monkeypatch, Reads((records, True), (records, True)), producer, chunk_size=2
    )

    assert code == 0, err
    assert out == "replayed 5 subjects to ads: 5 instructions sent\n"
    assert producer.queue_full > 0
    kinds = {SETTINGS.topics.ledger: "L", INSTRUCTIONS: "I", "flush": "|"}
    assert "".join(kinds[t] for t, _, _ in producer.log) == "LL|IILL|IIL|I|"


def test_instructions_the_broker_refuses_fail_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    records = withdrawn(3)
    producer = QueueProducer(refused=frozenset({INSTRUCTIONS}))
    code, out, err, _ = run(monkeypatch, Reads((records, True), (records, True)), producer)

    assert code == 1
    assert out == "replayed 3 subjects to ads: 0 instructions sent\n"
    assert "instructions: 0 delivered, 3 failed (" in err
    assert "Topic authorization failed" in err


def test_refused_ledger_entries_stop_the_replay_before_any_instruction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = withdrawn(3)
    producer = QueueProducer(refused=frozenset({SETTINGS.topics.ledger}))
    code, _, err, _ = run(monkeypatch, Reads((records, True), (records, True)), producer)

    assert code == 1
    assert sent_to(producer, INSTRUCTIONS) == []
    assert "ledger entries: 0 delivered, 3 failed (" in err


def test_a_short_second_read_says_what_was_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    records = withdrawn(3)
    code, out, err, _ = run(monkeypatch, Reads((records, True), (records[:2], False)))

    assert code == 1
    assert out == "replayed 2 subjects to ads: 2 instructions sent\n"
    assert "the second read stopped short of the topic's end (600 s); run it again" in err


def test_an_incomplete_first_read_replays_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err, producer = run(monkeypatch, Reads(([encoded("a", 1, 0)], False)))

    assert code == 1
    assert "was not read to its end within 600 s; nothing replayed" in err
    assert out == "" and producer.log == []


def actions(producer: QueueProducer) -> list[tuple[str, str]]:
    found = []
    for _, value in sent_to(producer, INSTRUCTIONS):
        ins = SERDE.decode_as(value, PartnerInstruction, INSTRUCTIONS)
        found.append((ins.subject_ref, ins.action.value))
    return found


def test_a_subject_that_changed_during_the_replay_gets_its_newer_decision_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = withdrawn(2)  # s0, s1 withdrew personalized_ads
    tail = [
        encoded("s0", 2, 10, ads_allowed=True),  # s0 granted again while replayed
        encoded("s1", 2, 11),  # s1 changed something else: still withdrawn
        encoded("new", 1, 12),  # not replayed: the worker told the partner
    ]
    reads = Reads((records, True), (records, True), (tail, True))
    code, out, err, producer = run(monkeypatch, reads)

    assert code == 0, err
    ref = Pseudonyms(SETTINGS.subject_keys).subject_ref
    assert actions(producer) == [
        (ref("ads", "s0"), "STOP_PROCESSING"),
        (ref("ads", "s1"), "STOP_PROCESSING"),
        (ref("ads", "s0"), "RESUME_PROCESSING"),  # after whatever the worker sent
    ]
    assert out.splitlines() == [
        "replayed 2 subjects to ads: 3 instructions sent",
        "1 of them sent again: their subjects changed during the replay",
    ]
    assert reads.starts[2] == {0: 1000}  # the catch-up starts where the index ended
    assert reads.starts[3] == {0: 3000} and reads.made == 4  # a last read: nothing new


def test_subjects_that_keep_changing_end_the_replay_with_exit_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = withdrawn(1)
    flips = [([encoded("s0", v, v, ads_allowed=v % 2 == 0)], True) for v in range(2, 2 + 9)]
    code, _, err, _ = run(monkeypatch, Reads((records, True), (records, True), *flips))

    assert code == 1
    assert f"subjects still changed after {replay.MAX_ROUNDS} catch-up reads" in err


def test_what_was_sent_is_noted_per_purpose_and_corrected_as_the_newer_state_has_it() -> None:
    from streams.fanout import FanOut
    from streams.replay.chunks import ReplayPlan, corrections, replay_instructions, sent_of

    plan = ReplayPlan("ads", tuple(sorted(POLICY.partners["ads"].purposes)))
    assert "personalized_ads" in plan.purposes
    fan = FanOut(POLICY, Pseudonyms(SETTINGS.subject_keys), 1_700_000_000_000)
    replayed = list(replay_instructions(plan, state("a", 1), fan))  # ads withdrawn: a STOP
    sent = sent_of(plan, replayed)

    assert corrections(plan, sent, state("a", 2), fan) == []  # still withdrawn
    (again,) = corrections(plan, sent, state("a", 3, ads_allowed=True), fan)
    assert again.action is InstructionAction.RESUME_PROCESSING
    assert again.purposes == ("personalized_ads",)
    now = sent_of(plan, [again], sent)  # noted over what was sent before
    assert corrections(plan, now, state("a", 4, ads_allowed=True), fan) == []
    assert corrections(plan, now, state("a", 5), fan)[0].action is InstructionAction.STOP_PROCESSING
