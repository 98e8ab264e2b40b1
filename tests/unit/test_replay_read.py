"""``consent-stream replay`` reading consent.state.v1: the latest state per subject,
tombstones and undecodable records, and nothing sent when the read was not complete."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from fake_topic import Record

import producers.publisher
import streams.commands
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.views import ConsentState, PurposeDecision

SETTINGS = Settings()
TOPIC = SETTINGS.topics.state
SERDE = AvroSerde()


def state(subject: str, version: int) -> ConsentState:
    ads = PurposeDecision("personalized_ads", False, 1_700_000_000_000 + version, "2023-09-01")
    return ConsentState(subject, version, 1_700_000_000_000 + version, purposes=(ads,))


def _topic(records: list[Record], complete: bool) -> type:
    class FakeReader:
        def __init__(self, settings: Settings, topic: str, timeout_s: float) -> None:
            self.topic, self.complete = topic, False

        def messages(self) -> Iterator[Record]:
            yield from records
            self.complete = complete

    return FakeReader


def _encoded(subject: str, version: int, offset: int) -> Record:
    return Record(0, offset, SERDE.encode(state(subject, version), TOPIC), key=subject.encode())


RECORDS = [
    _encoded("a", 1, 0),
    _encoded("b", 1, 1),
    _encoded("a", 2, 2),
    Record(0, 3, None, key=b"b"),  # b's state removed
    Record(0, 4, b"\x00not a state", key=b"c"),
]


def test_the_latest_state_per_subject_without_tombstoned_or_undecodable_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streams.commands, "TopicToEnd", _topic(RECORDS, complete=True))

    read = streams.commands._read_states(SETTINGS, SERDE, 5.0)

    assert {s: st.version for s, st in read.latest.items()} == {"a": 2}
    assert read.undecodable == 1 and read.complete


def test_an_incomplete_read_replays_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams.commands, "TopicToEnd", _topic(RECORDS, complete=False))

    def no_producer(settings: Settings) -> Any:
        raise AssertionError("nothing may be sent after an incomplete read")

    monkeypatch.setattr(producers.publisher, "make_producer", no_producer)
    policy = load_policy(SETTINGS.policy_path)
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", err)

    assert streams.commands.run_replay(SETTINGS, policy, "ads", out) == 1
    assert "was not read to its end within 600 s; nothing replayed" in err.getvalue()
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("command", "default"),
    [(["replay", "--partner", "ads"], 600.0), (["rebuild-store"], 600.0), (["dead-letters"], 60.0)],
)
def test_how_long_a_command_reads_its_topic_is_an_option(
    command: list[str], default: float, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(command).timeout_s == default
    assert parser.parse_args([*command, "--timeout-s", "1800"]).timeout_s == 1800.0
    for bad in ("0", "-5", "soon"):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args([*command, "--timeout-s", bad])
        assert exited.value.code == 2
        assert "is not a positive number of seconds" in capsys.readouterr().err
