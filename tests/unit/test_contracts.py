"""The published .avsc contracts: they parse, are documented, use logical types, and
their single-object fingerprints are CRC-64-AVRO of the parsing canonical form."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.contracts import (
    CONSENT_EVENT,
    CONTRACT_FILES,
    Contract,
    contract,
    contracts,
    crc64_avro,
    load_contract,
)

AVRO_DIR = resources.files("schemas") / "avro"
V0_EVENT = Path(__file__).parents[1] / "fixtures" / "schemas" / "consent_event.v0.avsc"
UUID_FIELDS = {
    "event_id",
    "request_id",
    "instruction_id",
    "source_event_id",
    "follows_instruction_id",
}
TIME_FIELDS = {"due_by", "retain_until", "event_time"}


def _avsc_files() -> list[str]:
    return sorted(p.name for p in AVRO_DIR.iterdir() if p.name.endswith(".avsc"))


def _records(schema: Any) -> Iterator[dict[str, Any]]:
    """Every record schema nested anywhere in ``schema``."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _records(branch)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            yield schema
            for f in schema["fields"]:
                yield from _records(f["type"])
        elif schema.get("type") == "array":
            yield from _records(schema["items"])
        elif schema.get("type") == "map":
            yield from _records(schema["values"])


def _fields_of(raw: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``Record.field``, field) for every field of every record in ``raw``."""
    for record in _records(raw):
        for f in record["fields"]:
            yield f"{record['name']}.{f['name']}", f


def _fields(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    return _fields_of(json.loads(contract(name).schema_text))


def _non_null(field_type: Any) -> Any:
    """The type of a field, unwrapping the ``["null", X]`` of an optional field."""
    if isinstance(field_type, list) and len(field_type) == 2 and field_type[0] == "null":
        return field_type[1]
    return field_type


def _is_time(field_name: str) -> bool:
    return field_name.endswith("_at") or field_name in TIME_FIELDS


# ---- the files ------------------------------------------------------------------------


def test_every_contract_file_is_listed_and_every_listed_file_exists() -> None:
    assert _avsc_files() == sorted(CONTRACT_FILES.values())
    assert set(contracts()) == set(CONTRACT_FILES)


@pytest.mark.parametrize("file", _avsc_files())
def test_every_avsc_parses_with_fastavro(file: str) -> None:
    raw = json.loads((AVRO_DIR / file).read_text(encoding="utf-8"))
    parsed = parse_schema(raw)
    assert isinstance(parsed, dict)
    assert parsed["type"] == "record"
    assert raw["namespace"] == "consentstream.v1"
    assert raw.get("doc"), f"{file}: the top-level record has no doc"


@pytest.mark.parametrize("name", sorted(CONTRACT_FILES))
def test_every_field_of_every_record_has_a_doc(name: str) -> None:
    undocumented = [path for path, f in _fields(name) if not str(f.get("doc", "")).strip()]
    assert undocumented == []


@pytest.mark.parametrize("name", sorted(CONTRACT_FILES))
def test_nested_records_and_enums_are_documented(name: str) -> None:
    raw = json.loads(contract(name).schema_text)
    for record in _records(raw):
        assert record.get("doc"), f"{name}: record {record['name']} has no doc"
    for path, f in _fields(name):
        t = _non_null(f["type"])
        if isinstance(t, dict) and t.get("type") == "enum":
            assert t.get("doc"), f"{name}: enum of {path} has no doc"


@pytest.mark.parametrize("name", sorted(CONTRACT_FILES))
def test_times_are_timestamp_millis_and_ids_are_uuids(name: str) -> None:
    checked = 0
    for path, f in _fields(name):
        field_name = path.rsplit(".", 1)[1]
        t = _non_null(f["type"])
        if _is_time(field_name):
            assert t == {"type": "long", "logicalType": "timestamp-millis"}, path
            checked += 1
        elif field_name in UUID_FIELDS:
            assert t == {"type": "string", "logicalType": "uuid"}, path
            checked += 1
    assert checked >= 2, f"{name}: expected at least one id and one time field"


@pytest.mark.parametrize(
    ("name", "path", "logical_type"),
    [
        (CONSENT_EVENT, "ConsentEvent.event_id", "uuid"),
        (CONSENT_EVENT, "ConsentEvent.occurred_at", "timestamp-millis"),
        (CONSENT_EVENT, "DeletionRequested.request_id", "uuid"),
        (CONSENT_EVENT, "DataShared.transaction_completed_at", "timestamp-millis"),
        ("consentstream.v1.PartnerInstruction", "PartnerInstruction.due_by", "timestamp-millis"),
        ("consentstream.v1.PartnerInstruction", "PartnerInstruction.request_id", "uuid"),
        (
            "consentstream.v1.PartnerAcknowledgement",
            "PartnerAcknowledgement.completed_at",
            "timestamp-millis",
        ),
        ("consentstream.v1.ConsentState", "PurposeDecision.event_time", "timestamp-millis"),
        ("consentstream.v1.RequestStatus", "PartnerOutcome.follows_instruction_id", "uuid"),
    ],
)
def test_named_fields_have_their_logical_type(name: str, path: str, logical_type: str) -> None:
    fields = dict(_fields(name))
    assert _non_null(fields[path]["type"])["logicalType"] == logical_type


@pytest.mark.parametrize("name", sorted(CONTRACT_FILES))
def test_optional_fields_default_to_null(name: str) -> None:
    for path, f in _fields(name):
        if isinstance(f["type"], list) and f["type"][0] == "null":
            assert "default" in f and f["default"] is None, path


# ---- fingerprints ---------------------------------------------------------------------

# Apache Avro share/test/data/schema-tests.txt: canonical form -> fingerprint (signed i64).
AVRO_SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('"long"', -3434872931120570953),
    ('"float"', 5583340709985441680),
    ('"double"', -8181574048448539266),
    ('"bytes"', 5746618253357095269),
    ('"string"', -8142146995180207161),
    ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
    (
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
        7843277075252814651,
    ),
    (
        '{"name":"PigValue","type":"record","fields":[{"name":"value","type":'
        '["null","int","long","PigValue"]}]}',
        -1759257747318642341,
    ),
]


def test_crc64_of_null_is_the_avro_spec_value() -> None:
    assert crc64_avro(b'"null"') == 0x63DD24E7CC258F8A


@pytest.mark.parametrize(("canonical", "signed"), AVRO_SPEC_VECTORS)
def test_crc64_matches_the_avro_test_vectors(canonical: str, signed: int) -> None:
    assert crc64_avro(canonical.encode()) == signed & 0xFFFF_FFFF_FFFF_FFFF


@pytest.mark.parametrize(
    ("schema", "canonical"),
    [
        ('{"type":"null"}', '"null"'),
        ('{"type":"fixed","name":"foo","size":15}', '{"name":"foo","type":"fixed","size":15}'),
        (
            '{"type":"record","name":"foo","doc":"x","fields":[{"name":"f1","type":"boolean",'
            '"doc":"y"}]}',
            '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
        ),
    ],
)
def test_canonical_form_strips_docs_and_orders_keys(schema: str, canonical: str) -> None:
    assert to_parsing_canonical_form(json.loads(schema)) == canonical


@pytest.mark.parametrize("name", sorted(CONTRACT_FILES))
def test_contract_fingerprint_matches_fastavro(name: str) -> None:
    c: Contract = contract(name)
    assert len(c.fingerprint) == 8
    assert c.canonical_form == to_parsing_canonical_form(json.loads(c.schema_text))
    # fastavro's hex is the 8 fingerprint bytes in little-endian order, as on the wire.
    assert c.fingerprint.hex() == fingerprint(c.canonical_form, "CRC-64-AVRO")
    assert int.from_bytes(c.fingerprint, "little") == crc64_avro(c.canonical_form.encode())


def test_contract_fingerprints_are_distinct() -> None:
    fps = [c.fingerprint for c in contracts().values()]
    assert len(set(fps)) == len(fps)


def test_docs_do_not_change_the_fingerprint() -> None:
    raw = json.loads(contract(CONSENT_EVENT).schema_text)
    raw["doc"] = "a different description"
    assert load_contract(json.dumps(raw)).fingerprint == contract(CONSENT_EVENT).fingerprint


# ---- the earlier version used by the evolution tests ---------------------------------


def test_v0_fixture_is_an_earlier_compatible_version() -> None:
    v0 = load_contract(V0_EVENT.read_text(encoding="utf-8"))
    assert v0.name == CONSENT_EVENT
    assert v0.fingerprint != contract(CONSENT_EVENT).fingerprint
    old = dict(_fields_of(json.loads(v0.schema_text)))
    new = dict(_fields(CONSENT_EVENT))
    assert set(old) < set(new)
    added = set(new) - set(old)
    assert added == {"DataShared.transaction_completed_at", "PermissionRevoked.app_id"}
    for path in added:
        assert "default" in new[path], f"{path} was added without a default"
    for path, f in old.items():
        if not list(_records(f["type"])):  # records are compared field by field
            assert new[path]["type"] == f["type"], f"{path} changed type"
