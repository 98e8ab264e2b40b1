"""``consent-stream publish FILE`` as a user runs it: bad lines are reported by number
and reason and never sent, valid lines arrive on consent.events.v1, the exit status says
whether everything went out.

The CLI always publishes to consent.events.v1, which other tests share: the records of a
run are found between the high watermarks before and after it, and told apart by the
fixture's subject ids."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from producers.publisher import EVENTS_TOPIC
from schemas.errors import ValidationError
from schemas.events import ConsentEvent
from schemas.jsonform import parse_event_line
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import ENV_PREFIX
from schemas.validation import validate_event

from .kafka_auth import admin_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BAD_EVENTS = REPO / "tests" / "fixtures" / "bad-events.jsonl"
CLI = Path(sys.executable).parent / "consent-stream"
RUN_TIMEOUT_S = 120.0
READ_TIMEOUT_S = 30.0
FIXTURE_KEY_PREFIX = b"cli-fixture-"  # every subject id in bad-events.jsonl
# line number in bad-events.jsonl -> reason it is rejected with (line 5 is blank)
BAD_LINES = {2: "not_json", 4: "unknown_purpose", 6: "not_withdrawable", 7: "invalid_field"}

Watermarks = dict[int, int]


def _valid_events(path: Path) -> list[ConsentEvent]:
    """What the CLI should publish from ``path``: the lines that parse and validate."""
    policy, now = load_policy(), int(time.time() * 1000)
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = parse_event_line(line)
            validate_event(event, policy, now)
        except ValidationError:
            continue
        events.append(event)
    return events


@pytest.fixture
def consumer(bootstrap_servers: str, unique_group: Callable[..., str]) -> Iterator[Consumer]:
    settings = admin_settings(bootstrap_servers=bootstrap_servers)
    c = Consumer(settings.consumer_config(unique_group("it-cli")))
    yield c
    c.close()


def _watermarks(consumer: Consumer) -> Watermarks:
    partitions = consumer.list_topics(EVENTS_TOPIC, timeout=10).topics[EVENTS_TOPIC].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(EVENTS_TOPIC, p), timeout=10)[1]
        for p in partitions
    }


def _read_range(
    consumer: Consumer, start: Watermarks, end: Watermarks
) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record between two sets of watermarks."""
    wanted = {p for p in end if end[p] > start.get(p, 0)}
    consumer.assign([TopicPartition(EVENTS_TOPIC, p, start.get(p, 0)) for p in wanted])
    records: list[tuple[bytes, bytes]] = []
    done: set[int] = set()
    deadline = time.monotonic() + READ_TIMEOUT_S
    while done != wanted and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        if offset < end[partition]:
            records.append((msg.key() or b"", msg.value() or b""))
        if offset >= end[partition] - 1:
            done.add(partition)
    assert done == wanted, f"could not read partitions {sorted(wanted - done)} up to {end}"
    return records


def _run_cli(path: Path, bootstrap_servers: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("SCHEMA_REGISTRY_URL", "POLICY"):
        env.pop(ENV_PREFIX + name, None)
    env[ENV_PREFIX + "BOOTSTRAP_SERVERS"] = bootstrap_servers
    assert CLI.exists(), f"{CLI} is not installed (pip install -e .)"
    return subprocess.run(
        [str(CLI), "publish", str(path)],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def _published_by_run(consumer: Consumer, before: Watermarks) -> list[ConsentEvent]:
    """The fixture's records that arrived since ``before`` (other tests share the topic)."""
    after = _watermarks(consumer)
    arrived = _read_range(consumer, before, after)
    assert len(arrived) == sum(after.values()) - sum(before.values())
    ours = [v for k, v in arrived if k.startswith(FIXTURE_KEY_PREFIX)]
    return [AvroSerde().decode_as(value, ConsentEvent) for value in ours]


def test_bad_lines_are_reported_and_only_valid_lines_arrive(
    bootstrap_servers: str, consumer: Consumer
) -> None:
    expected = _valid_events(BAD_EVENTS)
    assert len(expected) == 3
    before = _watermarks(consumer)

    result = _run_cli(BAD_EVENTS, bootstrap_servers)

    assert result.returncode == 1, result.stderr
    for number, reason in BAD_LINES.items():
        assert f"line {number}: rejected ({reason})" in result.stderr, result.stderr
    rejected_lines = [ln for ln in result.stderr.splitlines() if ": rejected (" in ln]
    assert len(rejected_lines) == len(BAD_LINES), result.stderr
    assert "missing field 'subject_id'" in result.stderr
    assert "published 3 of 7 events (4 rejected, 0 not delivered)" in result.stdout

    arrived = _published_by_run(consumer, before)
    assert sorted(arrived, key=lambda e: e.event_id) == sorted(expected, key=lambda e: e.event_id)


def test_only_valid_lines_exit_zero(
    bootstrap_servers: str, consumer: Consumer, tmp_path: Path
) -> None:
    valid_lines = []
    for line in BAD_EVENTS.read_text(encoding="utf-8").splitlines():
        try:
            validate_event(parse_event_line(line), load_policy(), int(time.time() * 1000))
        except ValidationError:
            continue
        valid_lines.append(line)
    path = tmp_path / "good-events.jsonl"
    path.write_text("\n".join(valid_lines) + "\n", encoding="utf-8")
    before = _watermarks(consumer)

    result = _run_cli(path, bootstrap_servers)

    assert result.returncode == 0, result.stderr
    assert "rejected (" not in result.stderr
    assert "published 3 of 3 events (0 rejected, 0 not delivered)" in result.stdout
    arrived = _published_by_run(consumer, before)
    assert {e.event_id for e in arrived} == {e.event_id for e in _valid_events(path)}
    assert len(arrived) == 3
