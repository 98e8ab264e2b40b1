"""ConsentPublisher with an injected fake producer: validation before sending, key and
CloudEvents headers, acknowledgement semantics, batches and a full local queue."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from producers.publisher import EVENTS_TOPIC, ConsentPublisher, DeliveryReceipt
from schemas.contracts import CONSENT_EVENT
from schemas.errors import (
    NonWithdrawableError,
    PublishError,
    UnknownPurposeError,
    ValidationError,
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
from schemas.policy import Policy, load_policy
from schemas.serde import AvroSerde
from schemas.settings import Secret, Settings, SubjectKeys

NOW_S = 1_710_064_800.0  # 2024-03-10T10:00:00Z
NOW_MS = int(NOW_S * 1000)
OCCURRED = NOW_MS - 3_600_000  # 2024-03-10T09:00:00Z
SUBJECT = "member-000123"

DeliveryCb = Callable[[Any, Any], None]


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


@dataclass
class Produced:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    on_delivery: DeliveryCb


@dataclass
class FakeProducer:
    """Records calls; delivers (calls on_delivery) from poll/flush like librdkafka does.

    ``deliver_on_poll``: deliver pending records on the n-th poll (0: never by poll);
    ``fail``: event ids whose delivery fails; ``buffer_errors``: how many produce calls
    raise BufferError first (local queue full).
    """

    deliver_on_poll: int = 1
    fail: set[str] = field(default_factory=set)
    buffer_errors: int = 0
    deliver_on_flush: bool = True
    calls: list[str] = field(default_factory=list)
    produced: list[Produced] = field(default_factory=list)
    pending: list[Produced] = field(default_factory=list)
    polls: int = 0

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append("produce")
        if self.buffer_errors:
            self.buffer_errors -= 1
            raise BufferError("Local: Queue full")
        record = Produced(
            topic, kwargs["key"], kwargs["value"], kwargs["headers"], kwargs["on_delivery"]
        )
        self.produced.append(record)
        self.pending.append(record)

    def poll(self, timeout: float) -> int:
        self.calls.append("poll")
        self.polls += 1
        if self.deliver_on_poll and self.polls >= self.deliver_on_poll:
            return self._deliver()
        return 0

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        if self.deliver_on_flush:
            self._deliver()
        return len(self.pending)

    def _deliver(self) -> int:
        served = 0
        while self.pending:
            record = self.pending.pop(0)
            offset = self.produced.index(record)
            event_id = dict(record.headers)["ce_id"].decode()
            if event_id in self.fail:
                record.on_delivery("Broker: Not enough in-sync replicas", None)
            else:
                record.on_delivery(None, FakeMessage(record.topic, 0, offset))
            served += 1
        return served


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def consent(n: int = 1, purpose: str = "personalized_ads", **kw: Any) -> ConsentEvent:
    payload = ConsentChanged(purpose, ConsentDecision.WITHDRAWN, "2023-09-01", "app_settings")
    event = ConsentEvent(_id(n), SUBJECT, OCCURRED, "app-settings", payload)
    return dataclasses.replace(event, **kw)


def publisher(policy: Policy, fake: FakeProducer, **kw: Any) -> ConsentPublisher:
    return ConsentPublisher(Settings(), policy, producer=fake, clock=lambda: NOW_S, **kw)


# ---- validation before anything is sent -----------------------------------------------


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (consent(purpose="telepathy"), UnknownPurposeError),
        (consent(purpose="order_fulfilment"), NonWithdrawableError),
        (consent(event_id="not-a-uuid"), ValidationError),
        (consent(subject_id=""), ValidationError),
        (consent(occurred_at=NOW_MS + 7 * 86_400_000), ValidationError),
        (consent(payload=PermissionRevoked(permission="camera")), ValidationError),
        (consent(payload=DataShared("ads", ("bank_account",))), ValidationError),
    ],
)
def test_invalid_event_raises_and_nothing_is_produced(
    policy: Policy, event: ConsentEvent, error: type[ValidationError]
) -> None:
    fake = FakeProducer()
    pub = publisher(policy, fake)
    with pytest.raises(error):
        pub.publish(event)
    with pytest.raises(error):
        pub.publish_async(event)
    assert fake.calls == []
    assert fake.produced == []


# ---- what goes on the wire ------------------------------------------------------------


def test_key_is_the_subject_id_and_value_decodes_to_the_event(policy: Policy) -> None:
    fake = FakeProducer()
    event = consent()
    publisher(policy, fake).publish(event)
    (record,) = fake.produced
    assert record.topic == EVENTS_TOPIC
    assert record.key == SUBJECT.encode()
    assert AvroSerde().decode_as(record.value, ConsentEvent) == event


def test_topic_can_be_chosen(policy: Policy) -> None:
    fake = FakeProducer()
    receipt = publisher(policy, fake, topic="test.events").publish(consent())
    assert fake.produced[0].topic == "test.events"
    assert receipt.topic == "test.events"


@pytest.mark.parametrize(
    ("event", "ce_type"),
    [
        (consent(), "consent.changed"),
        (consent(payload=PermissionRevoked(app_id="ads-insights")), "permission.revoked"),
        (
            consent(payload=DeletionRequested(_id(99), DeletionScope.ACCOUNT, "user_request")),
            "deletion.requested",
        ),
        (consent(payload=DataShared("research", ("deidentified_data",))), "data.shared"),
    ],
)
def test_cloudevents_headers(policy: Policy, event: ConsentEvent, ce_type: str) -> None:
    fake = FakeProducer()
    publisher(policy, fake).publish(event)
    headers = fake.produced[0].headers
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), "a header appears twice"
    assert dict(headers) == {
        "ce_specversion": b"1.0",
        "ce_id": event.event_id.encode(),
        "ce_type": ce_type.encode(),
        "ce_source": b"app-settings",
        "ce_time": b"2024-03-10T09:00:00.000+00:00",
        "ce_subject": SUBJECT.encode(),
        "content-type": b"application/avro",
        "ce_dataschema": CONSENT_EVENT.encode(),
        "cs_published_at": str(NOW_MS).encode(),
    }


def test_dataschema_names_the_registry_when_configured(policy: Policy) -> None:
    fake = FakeProducer()
    url = f"mock://{uuid.uuid4()}"
    settings = Settings(schema_registry_url=url)
    ConsentPublisher(settings, policy, producer=fake).publish(consent())
    record = fake.produced[0]
    assert dict(record.headers)["ce_dataschema"] == url.encode()
    assert record.value[:1] == b"\x00"  # Confluent wire format with a registry


# ---- acknowledgement ------------------------------------------------------------------


def test_publish_returns_the_receipt_only_after_the_delivery_callback(policy: Policy) -> None:
    fake = FakeProducer(deliver_on_poll=3)
    receipt = publisher(policy, fake).publish(consent())
    assert fake.calls == ["produce", "poll", "poll", "poll"]
    assert receipt == DeliveryReceipt(_id(1), EVENTS_TOPIC, 0, 0)


def test_publish_without_acknowledgement_times_out(policy: Policy) -> None:
    fake = FakeProducer(deliver_on_poll=0)
    with pytest.raises(PublishError, match="no acknowledgement within") as info:
        publisher(policy, fake).publish(consent(), timeout_s=0.2)
    assert info.value.retriable is True
    assert fake.polls >= 1


def test_delivery_error_raises_publish_error(policy: Policy) -> None:
    fake = FakeProducer(fail={_id(1)})
    with pytest.raises(PublishError, match="in-sync replicas") as info:
        publisher(policy, fake).publish(consent())
    assert _id(1) in str(info.value)
    assert info.value.retriable is True
    assert info.value.reason == "publish_failed"


def test_publish_async_reports_through_the_callback(policy: Policy) -> None:
    fake = FakeProducer(deliver_on_poll=0, fail={_id(2)})
    pub = publisher(policy, fake)
    outcomes: list[tuple[DeliveryReceipt | None, PublishError | None]] = []
    pub.publish_async(consent(1), lambda r, e: outcomes.append((r, e)))
    pub.publish_async(consent(2), lambda r, e: outcomes.append((r, e)))
    assert outcomes == []  # nothing is acknowledged before poll/flush
    assert pub.flush(1.0) == 0
    assert outcomes[0] == (DeliveryReceipt(_id(1), EVENTS_TOPIC, 0, 0), None)
    receipt, error = outcomes[1]
    assert receipt is None
    assert isinstance(error, PublishError)


def test_failed_delivery_without_callback_is_logged_without_the_subject(
    policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeProducer(fail={_id(1)})
    with caplog.at_level(logging.ERROR, logger="producers.publisher"):
        pub = publisher(policy, fake)
        pub.publish_async(consent())
        pub.poll(0)
    assert _id(1) in caplog.text
    assert SUBJECT not in caplog.text


# ---- batches --------------------------------------------------------------------------


def test_publish_many_validates_all_before_sending_any(policy: Policy) -> None:
    fake = FakeProducer()
    events = [consent(1), consent(2), consent(3, purpose="payment"), consent(4)]
    with pytest.raises(NonWithdrawableError):
        publisher(policy, fake).publish_many(events)
    assert fake.calls == []


def test_publish_many_returns_a_receipt_per_event_in_order(policy: Policy) -> None:
    fake = FakeProducer(deliver_on_poll=0)
    events = [consent(n) for n in range(1, 6)]
    receipts = publisher(policy, fake).publish_many(events)
    assert [r.event_id for r in receipts] == [e.event_id for e in events]
    assert [r.offset for r in receipts] == [0, 1, 2, 3, 4]
    assert fake.calls == ["produce"] * 5 + ["flush"]


def test_publish_many_raises_when_one_is_not_delivered(policy: Policy) -> None:
    fake = FakeProducer(fail={_id(2)})
    with pytest.raises(PublishError, match="1 of 3 failed"):
        publisher(policy, fake).publish_many([consent(1), consent(2), consent(3)])
    assert len(fake.produced) == 3


def test_publish_many_raises_when_flush_leaves_events_undelivered(policy: Policy) -> None:
    fake = FakeProducer(deliver_on_poll=0, deliver_on_flush=False)
    with pytest.raises(PublishError, match="2 of 2 failed"):
        publisher(policy, fake).publish_many([consent(1), consent(2)])


def test_buffer_error_is_retried_after_poll(policy: Policy) -> None:
    fake = FakeProducer(buffer_errors=2)
    receipt = publisher(policy, fake).publish(consent())
    assert fake.calls[:5] == ["produce", "poll", "produce", "poll", "produce"]
    assert len(fake.produced) == 1
    assert receipt.event_id == _id(1)


def test_context_manager_flushes_on_close(policy: Policy, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeProducer(deliver_on_poll=0, deliver_on_flush=False)
    with caplog.at_level(logging.ERROR), publisher(policy, fake) as pub:
        pub.publish_async(consent())
    assert fake.calls[-1] == "flush"
    assert "1 events were not acknowledged" in caplog.text


# ---- settings: the one place producer configuration is built -------------------------


def test_producer_config_is_idempotent_with_acks_all() -> None:
    config = Settings(bootstrap_servers="kafka-1:9092").producer_config()
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["max.in.flight.requests.per.connection"] <= 5
    assert config["bootstrap.servers"] == "kafka-1:9092"


def test_producer_config_overrides_and_extras() -> None:
    settings = Settings.from_env(
        {"CONSENT_STREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "CONSENT_STREAM_DEV_MODE": "1"}
    )
    config = settings.producer_config(**{"statistics.interval.ms": 100})
    assert config["security.protocol"] == "SSL"
    assert config["statistics.interval.ms"] == 100
    assert config["enable.idempotence"] is True


def test_consumer_config_commits_manually() -> None:
    config = Settings().consumer_config("group-1")
    assert config["group.id"] == "group-1"
    assert config["enable.auto.commit"] is False
    assert config["auto.offset.reset"] == "earliest"


@pytest.mark.parametrize(
    "settings",
    [
        Settings(subject_keys=SubjectKeys.single(Secret("s3cr3t-subject-key"))),
        Settings.from_env(
            {
                "CONSENT_STREAM_SUBJECT_KEY": "s3cr3t-subject-key",
                "CONSENT_STREAM_SUBJECT_KEYS_ACCEPTED": "k0=s3cr3t-previous-key",
            }
        ),
    ],
)
def test_repr_does_not_show_the_subject_key(settings: Settings) -> None:
    assert settings.subject_keys.current.reveal() == b"s3cr3t-subject-key"
    for text in (repr(settings), str(settings), repr(settings.subject_keys)):
        assert "s3cr3t" not in text
    assert "s3cr3t" not in repr(settings.producer_config())
    assert "s3cr3t" not in repr(settings.consumer_config("g"))


def test_default_development_key_is_not_shown_either() -> None:
    settings = Settings()
    assert settings.subject_keys.current.reveal().decode() not in repr(settings)
