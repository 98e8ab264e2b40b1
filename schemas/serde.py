"""Avro on the wire, with or without a Schema Registry.

* **Single-object encoding** (no registry): ``C3 01`` + 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's parsing canonical form + the Avro body. A partner
  decodes it from the published ``.avsc`` files alone.
* **Confluent wire format** (registry configured): ``00`` + 4-byte big-endian schema id +
  body, written by confluent-kafka's ``AvroSerializer`` (subject ``<topic>-value``).

``AvroSerde.decode`` accepts both, chosen by the first bytes, and resolves older writer
schemas against the current reader schema.
"""

from __future__ import annotations

import io
import json
from typing import Any, Final, TypeVar

from fastavro import schemaless_reader, schemaless_writer

from schemas.contracts import Contract, contract, contracts, earlier_contracts
from schemas.errors import (
    DecodeError,
    OversizedRecordError,
    SchemaMismatchError,
    TruncatedRecordError,
    UnknownSchemaError,
)
from schemas.records import Contracted, contract_name_of, from_record, to_record

__all__ = ["CONFLUENT_MAGIC", "SINGLE_OBJECT_MAGIC", "AvroSerde", "wire_format_of"]

SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
CONFLUENT_MAGIC: Final = b"\x00"
_SO_HEADER: Final = len(SINGLE_OBJECT_MAGIC) + 8
_CF_HEADER: Final = 5
DEFAULT_MAX_RECORD_BYTES: Final = 1_048_576

T = TypeVar("T", bound=Contracted)


def wire_format_of(data: bytes) -> str:
    """``single-object``, ``confluent`` or ``unknown``, from the first bytes."""
    if data[:2] == SINGLE_OBJECT_MAGIC:
        return "single-object"
    if data[:1] == CONFLUENT_MAGIC:
        return "confluent"
    return "unknown"


class _Writers:
    """Writer schemas by fingerprint: the current contracts plus registered older ones."""

    def __init__(self) -> None:
        self._by_fp: dict[bytes, tuple[Contract, Contract]] = {
            c.fingerprint: (c, c) for c in contracts().values()
        }
        for earlier in earlier_contracts():
            self.register(earlier)

    def register(self, writer: Contract) -> None:
        self._by_fp[writer.fingerprint] = (writer, contract(writer.name))

    def get(self, fingerprint: bytes) -> tuple[Contract, Contract]:
        try:
            return self._by_fp[fingerprint]
        except KeyError:
            raise UnknownSchemaError(f"unknown schema fingerprint {fingerprint.hex()}") from None


def _read_body(body: bytes, writer: dict[str, Any], reader: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO(body)
    try:
        rec = schemaless_reader(buf, writer, reader)
    except (EOFError, StopIteration, IndexError) as exc:
        raise TruncatedRecordError(f"record body ends early: {exc!r}") from exc
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, OverflowError) as exc:
        # OverflowError: a timestamp-millis out of datetime's range (found by fuzzing)
        raise SchemaMismatchError(f"record body does not match its schema: {exc!r}") from exc
    if buf.tell() != len(body):
        raise SchemaMismatchError(f"{len(body) - buf.tell()} bytes left after the record")
    if not isinstance(rec, dict):
        raise SchemaMismatchError("record body is not a record")
    return rec


class AvroSerde:
    """Encodes contract objects and decodes either wire format.

    ``registry`` is a confluent-kafka ``SchemaRegistryClient`` (``mock://`` in tests); with
    none, records are written in single-object encoding. Decoding a Confluent frame needs a
    registry; decoding single-object frames never does.
    """

    def __init__(
        self, registry: Any | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    ) -> None:
        self._registry = registry
        self._max = max_record_bytes
        self._writers = _Writers()
        self._serializers: dict[str, Any] = {}
        self._deserializers: dict[str, Any] = {}

    @property
    def uses_registry(self) -> bool:
        return self._registry is not None

    def register_writer(self, writer: Contract) -> None:
        """Accept single-object records written with an earlier version of a contract."""
        self._writers.register(writer)

    # -- encoding ------------------------------------------------------------------------

    def encode(self, obj: Contracted, topic: str) -> bytes:
        name = contract_name_of(obj)
        try:
            record = to_record(obj)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise SchemaMismatchError(f"{name}: object does not fit the contract: {exc}") from exc
        if self._registry is not None:
            return self._encode_confluent(name, record, topic)
        return self.encode_single_object(contract(name), record)

    @staticmethod
    def encode_single_object(writer: Contract, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(SINGLE_OBJECT_MAGIC)
        buf.write(writer.fingerprint)
        try:
            schemaless_writer(buf, writer.parsed, record, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SchemaMismatchError(f"{writer.name}: record does not match: {exc}") from exc
        return buf.getvalue()

    def _encode_confluent(self, name: str, record: dict[str, Any], topic: str) -> bytes:
        from confluent_kafka.schema_registry import topic_subject_name_strategy
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        serializer = self._serializers.get(name)
        if serializer is None:
            conf = {"subject.name.strategy": topic_subject_name_strategy}
            serializer = AvroSerializer(self._registry, contract(name).schema_text, conf=conf)
            self._serializers[name] = serializer
        try:
            data: bytes = serializer(record, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            raise SchemaMismatchError(f"{name}: cannot serialize: {exc}") from exc
        return data

    # -- decoding ------------------------------------------------------------------------

    @property
    def max_record_bytes(self) -> int:
        return self._max

    def check_size(self, data: bytes) -> bytes:
        """``data`` if it is within the record size limit (what every decoder accepts)."""
        if len(data) > self._max:
            raise OversizedRecordError(
                f"record of {len(data):,} bytes exceeds the maximum of {self._max:,} bytes "
                "(CONSENT_STREAM_MAX_RECORD_BYTES)"
            )
        return data

    def decode(self, data: bytes, topic: str = "") -> Contracted:
        """Decode a frame of either wire format into its domain object."""
        self.check_size(data)
        fmt = wire_format_of(data)
        if fmt == "single-object":
            return self._decode_single_object(data)
        if fmt == "confluent":
            return self._decode_confluent(data, topic)
        raise UnknownSchemaError(f"unknown magic bytes {data[:2].hex() or '(empty)'}")

    def decode_as(self, data: bytes, expected: type[T], topic: str = "") -> T:
        """Decode and insist on one contract type."""
        obj = self.decode(data, topic)
        if not isinstance(obj, expected):
            raise UnknownSchemaError(f"expected {expected.__name__}, got {type(obj).__name__}")
        return obj

    def _decode_single_object(self, data: bytes) -> Contracted:
        if len(data) < _SO_HEADER:
            raise TruncatedRecordError(f"single-object frame of {len(data)} bytes < header")
        writer, reader = self._writers.get(data[2:_SO_HEADER])
        rec = _read_body(data[_SO_HEADER:], writer.parsed, reader.parsed)
        return from_record(reader.name, rec)

    def _decode_confluent(self, data: bytes, topic: str) -> Contracted:
        if self._registry is None:
            raise UnknownSchemaError("Confluent-framed record but no Schema Registry configured")
        if len(data) < _CF_HEADER:
            raise TruncatedRecordError(f"Confluent frame of {len(data)} bytes < header")
        name = self._registered_name(int.from_bytes(data[1:_CF_HEADER], "big"))
        rec = self._deserialize_confluent(name, data, topic)
        return from_record(name, rec)

    def _registered_name(self, schema_id: int) -> str:
        try:
            schema = self._registry.get_schema(schema_id)  # type: ignore[union-attr]
        except Exception as exc:
            raise UnknownSchemaError(f"schema id {schema_id}: {exc}") from exc
        raw = json.loads(schema.schema_str)
        name = f"{raw.get('namespace', '')}.{raw.get('name', '')}"
        if name not in contracts():
            raise UnknownSchemaError(f"schema id {schema_id} is {name}, not a known contract")
        return name

    def _deserialize_confluent(self, name: str, data: bytes, topic: str) -> dict[str, Any]:
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        deserializer = self._deserializers.get(name)
        if deserializer is None:
            deserializer = AvroDeserializer(self._registry, contract(name).schema_text)
            self._deserializers[name] = deserializer
        try:
            rec = deserializer(data, SerializationContext(topic, MessageField.VALUE))
        except (EOFError, StopIteration, IndexError) as exc:
            raise TruncatedRecordError(f"record body ends early: {exc!r}") from exc
        except Exception as exc:
            raise DecodeError(f"{name}: cannot deserialize: {exc}") from exc
        if not isinstance(rec, dict):
            raise SchemaMismatchError(f"{name}: not a record")
        return rec
