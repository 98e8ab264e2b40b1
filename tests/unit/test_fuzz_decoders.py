"""Fuzzing the decoders at the edges (hypothesis): every input either decodes or raises
one of the project's own exceptions (``ConsentStreamError``), never anything else, and
none takes long (the per-example deadline).

- ``AvroSerde.decode`` / ``decode_as`` (the worker's, the partner SDK's and the ledger's
  decoders of events, instructions and acknowledgements): arbitrary bytes, and valid
  records of every contract with bytes flipped, inserted, deleted or cut, in both wire
  formats' framing;
- the JSON-lines parser (``parse_event_line``, the CLI's and the gateway's): arbitrary text,
  and valid lines with their values replaced by arbitrary JSON;
- the policy loader: the packaged policy file with lines dropped, duplicated or edited,
  and its parsed document with values replaced.

``FUZZ_EXAMPLES`` sets the examples per test (default 150 in ``make test``); a longer run:
``FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/unit/test_fuzz_decoders.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_serde import SAMPLES

from schemas.errors import ConsentStreamError
from schemas.events import ConsentEvent
from schemas.jsonform import event_to_json, parse_event_line
from schemas.partner import PartnerAcknowledgement, PartnerInstruction
from schemas.policy import load_policy, parse_policy
from schemas.serde import AvroSerde

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=2000,  # ms per example: a decoder that loops shows as a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("FUZZ_RANDOM") is None,  # reproducible in CI
)
SERDE = AvroSerde(max_record_bytes=65_536)
ENCODED = [SERDE.encode(obj, "consent.events.v1") for obj in SAMPLES.values()]
EXPECTED = (None, ConsentEvent, PartnerInstruction, PartnerAcknowledgement)
POLICY_TEXT = (resources.files("schemas") / "policy" / "policy.v1.toml").read_text("utf-8")
EVENT_LINES = [
    line
    for line in (Path(__file__).resolve().parents[2] / "examples" / "sample-events.jsonl")
    .read_text(encoding="utf-8")
    .splitlines()
    if line.strip()
]


def decodes_or_refuses(call: Any, *args: Any) -> None:
    with contextlib.suppress(ConsentStreamError):  # anything else fails the test
        call(*args)


# -- Avro -------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "byte"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[at:]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=512), st.sampled_from(EXPECTED))
def test_avro_decode_of_arbitrary_bytes(data: bytes, expected: type | None) -> None:
    if expected is None:
        decodes_or_refuses(SERDE.decode, data, "consent.events.v1")
    else:
        decodes_or_refuses(SERDE.decode_as, data, expected, "consent.events.v1")


@FUZZ
@given(st.binary(max_size=64), st.binary(max_size=256))
def test_avro_decode_of_arbitrary_bodies_behind_a_valid_header(head: bytes, body: bytes) -> None:
    for original in ENCODED:
        decodes_or_refuses(SERDE.decode, original[:10] + body, "consent.events.v1")
    decodes_or_refuses(SERDE.decode, b"\x00" + head + body, "consent.events.v1")


# found by fuzzing: a timestamp-millis beyond datetime's range raised OverflowError
OVERFLOWING_TIMESTAMP = bytes.fromhex(
    "c30166ed2e9c952223994835656564303030302d303030302d343030302d383030302d3030303030"
    "3030303030303616646174612e7368617265641a6d656d6265722d30303031323380808c84ebfbbe"
    "631e6163636f756e742d73657276696365060e7061796d656e74041e6163636f756e745f70726f66"
    "696c651e7061796d656e745f7265636f7264730004106f726465725f6e6f1c534f2d323032342d30"
    "3030393831267061796d656e745f6163636f756e745f7265660a50412d3737000280f49dcebf63"
)


@FUZZ
@given(mutated(ENCODED), st.sampled_from(EXPECTED))
@example(OVERFLOWING_TIMESTAMP, None)
def test_avro_decode_of_mutated_records_of_every_contract(
    data: bytes, expected: type | None
) -> None:
    if expected is None:
        decodes_or_refuses(SERDE.decode, data, "consent.events.v1")
    else:
        decodes_or_refuses(SERDE.decode_as, data, expected, "consent.events.v1")


# -- JSON lines -------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(st.text(max_size=400))
def test_json_lines_parser_over_arbitrary_text(text: str) -> None:
    decodes_or_refuses(parse_event_line, text)


@st.composite
def mutated_event_line(draw: st.DrawFn) -> str:
    doc = json.loads(draw(st.sampled_from(EVENT_LINES)))
    for _ in range(draw(st.integers(1, 3))):
        target = (
            doc
            if draw(st.booleans()) or not isinstance(doc.get("payload"), dict)
            else doc["payload"]
        )
        keys = sorted(target) or ["x"]
        key = draw(st.sampled_from([*keys, draw(st.text(max_size=12))]))
        if draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(JSON_VALUES)
    return json.dumps(doc)


@FUZZ
@given(mutated_event_line())
def test_json_lines_parser_over_mutated_events(line: str) -> None:
    decodes_or_refuses(parse_event_line, line)


def test_the_valid_lines_parse_and_round_trip() -> None:
    for line in EVENT_LINES:
        event = parse_event_line(line)
        assert parse_event_line(json.dumps(event_to_json(event))) == event


# -- the policy -------------------------------------------------------------------------


@st.composite
def mutated_policy_text(draw: st.DrawFn) -> str:
    lines = POLICY_TEXT.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "edit", "value"]))
        if op == "drop":
            del lines[at]
        elif op == "dup":
            lines.insert(at, lines[at])
        elif op == "edit":
            lines[at] = draw(st.text(max_size=60))
        elif "=" in lines[at]:
            name = lines[at].split("=", 1)[0]
            value = draw(st.sampled_from(['""', "0", "-1", "[]", "{}", '"1x"', "true", '"x"']))
            lines[at] = f"{name}= {value}"
    return "\n".join(lines)


# found by fuzzing: a list where a partner's retention rule name belongs (TypeError)
LIST_AS_RETENTION = POLICY_TEXT.replace('retention = "transaction_records"', "retention = []")


@FUZZ
@given(mutated_policy_text())
@example(LIST_AS_RETENTION)
def test_policy_loader_over_mutated_files(text: str) -> None:
    def load(content: str) -> None:
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-policy-{os.getpid()}.toml"
        path.write_text(content, encoding="utf-8")
        try:
            load_policy(path)
        finally:
            path.unlink(missing_ok=True)

    decodes_or_refuses(load, text)


@st.composite
def mutated_policy_doc(draw: st.DrawFn) -> dict[str, Any]:
    doc = tomllib.loads(POLICY_TEXT)
    for _ in range(draw(st.integers(1, 3))):
        node: Any = doc
        while isinstance(node, dict) and node and draw(st.booleans()):
            child = node[draw(st.sampled_from(sorted(node)))]
            if not isinstance(child, dict):
                break
            node = child
        if isinstance(node, dict) and node:
            node[draw(st.sampled_from(sorted(node)))] = draw(JSON_VALUES)
    return doc


@FUZZ
@given(mutated_policy_doc())
def test_policy_parser_over_mutated_documents(doc: dict[str, Any]) -> None:
    decodes_or_refuses(parse_policy, doc)
