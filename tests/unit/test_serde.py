"""AvroSerde: round trips of every contract in both wire formats, schema evolution, and
a typed error for every way the bytes can be wrong."""

from __future__ import annotations

import dataclasses
import json
import uuid
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas.contracts import (
    CONSENT_EVENT,
    CONTRACT_FILES,
    REQUEST_STATUS,
    Contract,
    contract,
    earlier_contracts,
    load_contract,
)
from schemas.errors import (
    ContractError,
    DecodeError,
    OversizedRecordError,
    SchemaMismatchError,
    TruncatedRecordError,
    UnknownSchemaError,
)
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    PermissionRevoked,
)
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.records import Contracted, contract_name_of, to_record
from schemas.serde import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroSerde, wire_format_of
from schemas.views import (
    ConsentState,
    OutcomeStatus,
    PartnerOutcome,
    PermissionRevocation,
    PurposeDecision,
    RequestState,
    RequestStatus,
)

TOPIC = "consent.events.v1"
V0_EVENT = Path(__file__).parents[1] / "fixtures" / "schemas" / "consent_event.v0.avsc"
T0 = 1_709_258_400_000  # 2024-03-01T02:00:00Z


def _id(n: int) -> str:
    return str(uuid.UUID(int=0x5EED_0000_0000_4000_8000_0000_0000_0000 + n))


def _event(payload: Any, n: int = 1) -> ConsentEvent:
    return ConsentEvent(_id(n), "member-000123", T0 + n, "account-service", payload)


CONSENT_CHANGED = _event(
    ConsentChanged("personalized_ads", ConsentDecision.WITHDRAWN, "2023-09-01", "app_settings"), 1
)
PERMISSION_DEVICE = _event(PermissionRevoked(permission="camera", device_id="ios-7F3A"), 2)
PERMISSION_APP = _event(PermissionRevoked(app_id="ads-insights"), 3)
DELETION_ACCOUNT = _event(DeletionRequested(_id(90), DeletionScope.ACCOUNT, "user_request"), 4)
DELETION_CATEGORIES = _event(
    DeletionRequested(
        _id(91), DeletionScope.CATEGORIES, "consent_withdrawn", ("behaviour", "pseudonymous_ids")
    ),
    5,
)
DATA_SHARED = _event(
    DataShared(
        "payment",
        ("account_profile", "payment_records"),
        MappingProxyType({"order_no": "SO-2024-000981", "payment_account_ref": "PA-77"}),
        transaction_completed_at=T0 + 86_400_000,
    ),
    6,
)
DATA_SHARED_MINIMAL = _event(DataShared("ads", ("behaviour",)), 7)

INSTRUCTION = PartnerInstruction(
    instruction_id=_id(10),
    source_event_id=_id(4),
    partner="payment",
    action=InstructionAction.RESTRICT,
    subject_ref="ab" * 32,
    issued_at=T0,
    due_by=T0 + 7,
    ack_key=_id(90),
    request_id=_id(90),
    categories=("payment_records",),
    partner_refs=MappingProxyType({"order_no": "SO-2024-000981"}),
    subject_id="member-000123",
    retain_until=T0 + 1095 * 86_400_000,
)
INSTRUCTION_MINIMAL = PartnerInstruction(
    _id(11),
    _id(3),
    "ads",
    InstructionAction.REVOKE_ACCESS,
    "cd" * 32,
    T0,
    T0 + 1,
    _id(11),
    app_id="ads-insights",
)
ACK = PartnerAcknowledgement(
    _id(10),
    "payment",
    AcknowledgementStatus.RESTRICTED,
    T0 + 9,
    retain_until=T0 + 1095 * 86_400_000,
)
ACK_REJECTED = PartnerAcknowledgement(
    _id(12), "ads", AcknowledgementStatus.REJECTED, T0, reason="unknown subject"
)
STATE = ConsentState(
    "member-000123",
    7,
    T0 + 100,
    account_closed_at=None,
    purposes=(
        PurposeDecision("personalized_ads", False, T0 + 1, "2023-09-01"),
        PurposeDecision("research_sharing", True, T0 + 2, "2023-09-01"),
    ),
    permissions=(
        PermissionRevocation(T0 + 2, permission="camera", device_id="ios-7F3A"),
        PermissionRevocation(T0 + 3, app_id="ads-insights"),
    ),
)
STATE_CLOSED = ConsentState("member-000124", 1, T0, account_closed_at=T0 - 5)
REQUEST = RequestStatus(
    request_id=_id(90),
    subject_digest="9f" * 32,
    scope=DeletionScope.ACCOUNT,
    status=RequestState.COMPLETED_WITH_RESTRICTIONS,
    requested_at=T0,
    received_at=T0 + 3,
    due_by=T0 + 15 * 86_400_000,
    updated_at=T0 + 50,
    store_erased_at=T0 + 4,
    completed_at=T0 + 50,
    partners=(
        PartnerOutcome(
            "payment",
            _id(10),
            "RESTRICT",
            T0 + 3,
            T0 + 7,
            OutcomeStatus.RESTRICTED,
            ("payment_records",),
            "aa" * 32,
            T0 + 9,
            T0 + 1095 * 86_400_000,
        ),
        PartnerOutcome(
            "ads", _id(13), "ERASE", T0 + 3, T0 + 8, overdue=True, follows_instruction_id=_id(14)
        ),
    ),
)
REQUEST_CATEGORIES = RequestStatus(
    _id(91),
    "9e" * 32,
    DeletionScope.CATEGORIES,
    RequestState.RECEIVED,
    T0,
    T0,
    T0 + 1,
    T0,
    categories=("behaviour",),
)

SAMPLES: dict[str, Contracted] = {
    "consent.changed": CONSENT_CHANGED,
    "permission.revoked/device": PERMISSION_DEVICE,
    "permission.revoked/app": PERMISSION_APP,
    "deletion.requested/account": DELETION_ACCOUNT,
    "deletion.requested/categories": DELETION_CATEGORIES,
    "data.shared": DATA_SHARED,
    "data.shared/minimal": DATA_SHARED_MINIMAL,
    "instruction": INSTRUCTION,
    "instruction/minimal": INSTRUCTION_MINIMAL,
    "acknowledgement": ACK,
    "acknowledgement/rejected": ACK_REJECTED,
    "consent-state": STATE,
    "consent-state/closed": STATE_CLOSED,
    "request-status": REQUEST,
    "request-status/categories": REQUEST_CATEGORIES,
}


def _registry() -> Any:
    return SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4()}"})


def _v0() -> Contract:
    return load_contract(V0_EVENT.read_text(encoding="utf-8"))


@pytest.fixture
def registry() -> Any:
    return _registry()


# ---- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("obj", SAMPLES.values(), ids=SAMPLES.keys())
def test_single_object_round_trip(obj: Contracted) -> None:
    serde = AvroSerde()
    data = serde.encode(obj, TOPIC)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == contract(_contract_name(obj)).fingerprint
    assert wire_format_of(data) == "single-object"
    assert serde.decode(data) == obj
    assert serde.decode_as(data, type(obj)) == obj


@pytest.mark.parametrize("obj", SAMPLES.values(), ids=SAMPLES.keys())
def test_confluent_round_trip(obj: Contracted, registry: Any) -> None:
    serde = AvroSerde(registry)
    assert serde.uses_registry
    data = serde.encode(obj, TOPIC)
    assert data[:1] == CONFLUENT_MAGIC
    assert wire_format_of(data) == "confluent"
    schema_id = int.from_bytes(data[1:5], "big")
    assert registry.get_schema(schema_id).schema_str  # registered under <topic>-value
    assert f"{TOPIC}-value" in registry.get_subjects()
    assert serde.decode(data, TOPIC) == obj
    assert AvroSerde(registry).decode_as(data, type(obj), TOPIC) == obj


def _contract_name(obj: Contracted) -> str:
    return f"consentstream.v1.{type(obj).__name__}"


def test_decode_picks_the_format_by_the_first_bytes(registry: Any) -> None:
    with_registry = AvroSerde(registry)
    single = AvroSerde().encode(DATA_SHARED, TOPIC)
    confluent = with_registry.encode(DATA_SHARED, TOPIC)
    assert single != confluent
    # one serde with a registry reads both formats on the same topic
    assert with_registry.decode(single, TOPIC) == DATA_SHARED
    assert with_registry.decode(confluent, TOPIC) == DATA_SHARED


def test_single_object_body_is_plain_avro_readable_from_the_avsc_alone() -> None:
    from io import BytesIO

    from fastavro import parse_schema, schemaless_reader

    data = AvroSerde().encode(CONSENT_CHANGED, TOPIC)
    schema = parse_schema(json.loads(contract(CONSENT_EVENT).schema_text))
    rec = schemaless_reader(BytesIO(data[10:]), schema, None)
    assert isinstance(rec, dict)
    assert rec["subject_id"] == "member-000123"
    assert rec["payload"]["purpose"] == "personalized_ads"


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        (b"", "unknown"),
        (b"\xc3", "unknown"),
        (b"\xc3\x01", "single-object"),
        (b"\x00", "confluent"),
        (b"\x01\x02", "unknown"),
        (b"{", "unknown"),
    ],
)
def test_wire_format_of(text: bytes, fmt: str) -> None:
    assert wire_format_of(text) == fmt


# ---- schema evolution -----------------------------------------------------------------


def _v0_record(event: ConsentEvent) -> dict[str, Any]:
    """The record as a v0 writer has it: without the fields added later."""
    rec = to_record(event)
    rec["payload"][1].pop("transaction_completed_at", None)
    rec["payload"][1].pop("app_id", None)
    return rec


V0_EVENTS = {
    "data.shared": _event(
        DataShared("logistics", ("delivery_details",), MappingProxyType({"waybill_no": "SF10"})), 8
    ),
    "permission.revoked": PERMISSION_DEVICE,
    "consent.changed": CONSENT_CHANGED,
    "deletion.requested": DELETION_CATEGORIES,
}


@pytest.mark.parametrize("event", V0_EVENTS.values(), ids=V0_EVENTS.keys())
def test_current_reader_decodes_a_registered_v0_writer(event: ConsentEvent) -> None:
    v0 = _v0()
    data = AvroSerde.encode_single_object(v0, _v0_record(event))
    assert data[2:10] == v0.fingerprint
    serde = AvroSerde()
    serde.register_writer(v0)
    decoded = serde.decode_as(data, ConsentEvent)
    assert decoded == event  # fields added later get their defaults
    if isinstance(decoded.payload, DataShared):
        assert decoded.payload.transaction_completed_at is None
    if isinstance(decoded.payload, PermissionRevoked):
        assert decoded.payload.app_id is None


def test_v0_writer_is_unknown_until_registered() -> None:
    v0 = _v0()
    data = AvroSerde.encode_single_object(v0, _v0_record(PERMISSION_DEVICE))
    with pytest.raises(UnknownSchemaError, match=v0.fingerprint.hex()) as info:
        AvroSerde().decode(data)
    assert info.value.reason == "unknown_schema"


def test_v0_writer_rejects_a_field_it_does_not_have() -> None:
    with pytest.raises(SchemaMismatchError, match="transaction_completed_at"):
        AvroSerde.encode_single_object(_v0(), to_record(DATA_SHARED))


def test_current_reader_decodes_v0_through_the_registry(registry: Any) -> None:
    v0 = _v0()
    schema_id = registry.register_schema(f"{TOPIC}-value", Schema(v0.schema_text, "AVRO"))
    serializer = AvroSerializer(
        registry, v0.schema_text, conf={"auto.register.schemas": False, "use.latest.version": True}
    )
    event = V0_EVENTS["data.shared"]
    data = serializer(_v0_record(event), SerializationContext(TOPIC, MessageField.VALUE))
    assert data[:1] == CONFLUENT_MAGIC
    assert int.from_bytes(data[1:5], "big") == schema_id
    assert AvroSerde(registry).decode_as(data, ConsentEvent, TOPIC) == event


# ---- typed errors ---------------------------------------------------------------------


def _single(obj: Contracted = DATA_SHARED) -> bytes:
    return AvroSerde().encode(obj, TOPIC)


def _single_with(**fields: Any) -> bytes:
    """A ``DATA_SHARED`` body with ``fields`` written as given (no checks on the way)."""
    record = {**to_record(DATA_SHARED), **fields}
    return AvroSerde.encode_single_object(contract(CONSENT_EVENT), record)


BAD_SINGLE_OBJECT: dict[str, tuple[bytes, type[DecodeError], str]] = {
    "empty": (b"", UnknownSchemaError, "unknown_schema"),
    "truncated header": (SINGLE_OBJECT_MAGIC + b"\x01\x02\x03", TruncatedRecordError, "truncated"),
    "magic only": (SINGLE_OBJECT_MAGIC, TruncatedRecordError, "truncated"),
    "truncated body": (_single()[:-3], TruncatedRecordError, "truncated"),
    "header without body": (_single()[:10], TruncatedRecordError, "truncated"),
    "unknown fingerprint": (
        SINGLE_OBJECT_MAGIC + b"\xff" * 8 + _single()[10:],
        UnknownSchemaError,
        "unknown_schema",
    ),
    "unknown magic": (b"\xc3\x02" + _single()[2:], UnknownSchemaError, "unknown_schema"),
    "json": (b'{"type": "consent.changed"}', UnknownSchemaError, "unknown_schema"),
    "trailing garbage": (_single() + b"\x00\x01", SchemaMismatchError, "schema_mismatch"),
    # what fastavro's logical types refused, the records module refuses
    "timestamp past datetime's range": (
        _single_with(occurred_at=253_402_300_800_000),
        SchemaMismatchError,
        "schema_mismatch",
    ),
    "timestamp before datetime's range": (
        _single_with(occurred_at=-62_135_596_800_001),
        SchemaMismatchError,
        "schema_mismatch",
    ),
    "uuid field not a uuid": (
        _single_with(event_id="not-a-uuid"),
        SchemaMismatchError,
        "schema_mismatch",
    ),
    "confluent frame without registry": (
        CONFLUENT_MAGIC + b"\x00\x00\x00\x01" + _single()[10:],
        UnknownSchemaError,
        "unknown_schema",
    ),
}


@pytest.mark.parametrize(
    ("data", "error", "reason"), BAD_SINGLE_OBJECT.values(), ids=BAD_SINGLE_OBJECT.keys()
)
def test_bad_bytes_raise_a_typed_error(data: bytes, error: type[DecodeError], reason: str) -> None:
    with pytest.raises(error) as info:
        AvroSerde().decode(data, TOPIC)
    assert type(info.value) is error
    assert info.value.reason == reason
    assert info.value.retriable is False


def test_a_uuid_in_another_form_decodes_to_the_canonical_one() -> None:
    upper = DATA_SHARED.event_id.upper()
    decoded = AvroSerde().decode_as(_single_with(event_id="{" + upper + "}"), ConsentEvent)
    assert decoded == DATA_SHARED


def test_the_last_millisecond_datetime_holds_decodes() -> None:
    decoded = AvroSerde().decode_as(_single_with(occurred_at=253_402_300_799_999), ConsentEvent)
    assert decoded.occurred_at == 253_402_300_799_999


def test_every_truncation_of_a_body_is_truncated() -> None:
    data, serde = _single(), AvroSerde()
    for cut in range(10, len(data)):
        with pytest.raises(TruncatedRecordError):
            serde.decode(data[:cut])


def test_confluent_unknown_schema_id(registry: Any) -> None:
    serde = AvroSerde(registry)
    data = serde.encode(DATA_SHARED, TOPIC)
    unknown = CONFLUENT_MAGIC + (4242).to_bytes(4, "big") + data[5:]
    with pytest.raises(UnknownSchemaError, match="schema id 4242"):
        serde.decode(unknown, TOPIC)


def test_confluent_schema_id_of_a_foreign_schema(registry: Any) -> None:
    foreign = '{"type":"record","name":"Other","namespace":"x","fields":[]}'
    schema_id = registry.register_schema("other-value", Schema(foreign, "AVRO"))
    data = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
    with pytest.raises(UnknownSchemaError, match="not a known contract"):
        AvroSerde(registry).decode(data, TOPIC)


@pytest.mark.parametrize(("cut", "error"), [(3, TruncatedRecordError), (-3, TruncatedRecordError)])
def test_confluent_truncated(registry: Any, cut: int, error: type[DecodeError]) -> None:
    serde = AvroSerde(registry)
    data = serde.encode(DATA_SHARED, TOPIC)
    with pytest.raises(error):
        serde.decode(data[:cut], TOPIC)


def test_oversized_record_is_refused_before_decoding() -> None:
    data = _single()
    serde = AvroSerde(max_record_bytes=len(data) - 1)
    with pytest.raises(OversizedRecordError, match=f"{len(data)} bytes") as info:
        serde.decode(data)
    assert info.value.reason == "oversized"
    assert isinstance(info.value, ContractError)
    assert AvroSerde(max_record_bytes=len(data)).decode(data) == DATA_SHARED


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (DATA_SHARED, PartnerInstruction),
        (INSTRUCTION, PartnerAcknowledgement),
        (ACK, ConsentEvent),
        (STATE, RequestStatus),
        (REQUEST, ConsentState),
    ],
)
def test_decode_as_the_wrong_type(obj: Contracted, expected: type[Contracted]) -> None:
    data = _single(obj)
    with pytest.raises(UnknownSchemaError, match=f"expected {expected.__name__}"):
        AvroSerde().decode_as(data, expected)


class _NotAnAction:
    """Looks like an enum member but is not one of the schema's symbols."""

    value = "SHRED"


@pytest.mark.parametrize("registry_backed", [False, True], ids=["single-object", "confluent"])
@pytest.mark.parametrize(
    "bad",
    [
        dataclasses.replace(INSTRUCTION, action=_NotAnAction()),  # type: ignore[arg-type]
        dataclasses.replace(INSTRUCTION, issued_at="yesterday"),  # type: ignore[arg-type]
        dataclasses.replace(INSTRUCTION, partner=None),  # type: ignore[arg-type]
    ],
    ids=["action not a symbol", "time not a long", "partner null"],
)
def test_encoding_a_record_that_does_not_match(
    bad: PartnerInstruction, registry_backed: bool
) -> None:
    serde = AvroSerde(_registry()) if registry_backed else AvroSerde()
    with pytest.raises(SchemaMismatchError) as info:
        serde.encode(bad, TOPIC)
    assert info.value.reason == "schema_mismatch"


def test_encoding_an_action_given_as_a_plain_string() -> None:
    bad = dataclasses.replace(INSTRUCTION, action="SHRED")  # type: ignore[arg-type]
    with pytest.raises(SchemaMismatchError):
        AvroSerde().encode(bad, TOPIC)


# -- earlier published versions (schemas/avro/earlier) ---------------------------------------


def _fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in schema["fields"]}


def _as_written_by(record: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``record`` (of the current contract) without the fields ``schema`` does not have."""
    out = {}
    for name, field in _fields(schema).items():
        value = record[name]
        items = field["type"].get("items") if isinstance(field["type"], dict) else None
        if isinstance(items, dict) and items.get("type") == "record":
            value = [_as_written_by(v, items) for v in value]
        out[name] = value
    return out


@pytest.mark.parametrize("earlier", earlier_contracts(), ids=lambda c: c.fingerprint.hex())
def test_an_earlier_version_is_a_known_writer_of_its_contract(earlier: Contract) -> None:
    current = contract(earlier.name)
    assert earlier.fingerprint != current.fingerprint  # kept because it differs
    sample = next(s for s in SAMPLES.values() if contract_name_of(s) == earlier.name)
    data = AvroSerde.encode_single_object(
        earlier, _as_written_by(to_record(sample), earlier.parsed)
    )
    assert data[2:10] == earlier.fingerprint
    decoded = AvroSerde().decode(data)  # no register_writer: the earlier versions come with it
    assert type(decoded) is type(sample)


def test_request_status_written_before_refs_dropped_reads_as_none_dropped() -> None:
    (earlier,) = [c for c in earlier_contracts() if c.name == REQUEST_STATUS]
    dropped = dataclasses.replace(
        REQUEST, partners=tuple(dataclasses.replace(o, refs_dropped=3) for o in REQUEST.partners)
    )
    data = AvroSerde.encode_single_object(
        earlier, _as_written_by(to_record(dropped), earlier.parsed)
    )
    assert AvroSerde().decode_as(data, RequestStatus) == REQUEST  # refs_dropped: its default, 0
    assert AvroSerde().decode_as(AvroSerde().encode(dropped, TOPIC), RequestStatus) == dropped


def test_earlier_versions_are_distinct_and_named_after_their_file() -> None:
    fingerprints = [c.fingerprint for c in earlier_contracts()]
    assert len(set(fingerprints)) == len(fingerprints)
    folder = resources.files("schemas") / "avro" / "earlier"
    for item in folder.iterdir():
        stem, number, ext = item.name.rsplit(".", 2)
        assert ext == "avsc" and number.isdigit(), item.name
        assert f"{stem}.avsc" in CONTRACT_FILES.values(), item.name
        name = load_contract(item.read_text(encoding="utf-8")).name
        assert CONTRACT_FILES[name] == f"{stem}.avsc", item.name
