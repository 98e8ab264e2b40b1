"""Who may read and write what, against the real (secured) broker: every principal logs in
with its own SCRAM credential and the ACLs of ``consent-stream acl sync`` decide.

Each refusal has its positive control (the same principal on its own topic succeeds), so
a refusal cannot come from a broken login. Topics live under a uuid namespace whose ACLs
are synced as the workers' are, from the packaged policy with ``logistics`` delivered by
webhook (so the ``gateway`` principal may write its acks, and no other partner's).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from producers.publisher import ConsentPublisher
from schemas.errors import AccessDeniedError
from schemas.events import ConsentChanged, ConsentDecision, ConsentEvent
from schemas.policy import Policy, load_policy
from schemas.settings import ENV_PREFIX, Settings
from streams.namespace import remove_namespace
from streams.topics import ensure_topics

from .kafka_auth import (
    admin_settings,
    as_principal,
    principal_credentials,
    sync_acls,
    webhook_policy,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "consent-stream"
REFUSED_WITHIN_S = 10.0
WEBHOOK_PARTNER = "logistics"


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    return webhook_policy(path, [WEBHOOK_PARTNER], "https://carrier.example/hook")


@pytest.fixture(scope="module")
def policy(policy_file: Path) -> Policy:
    return load_policy(policy_file)


@pytest.fixture(scope="module")
def admin(stack: Any, policy: Policy, policy_file: Path) -> Iterator[Settings]:
    """A namespace with the service's topics and its ACLs."""
    ns = f"acl{uuid.uuid4().hex[:10]}"
    settings = admin_settings(
        topic_namespace=ns,
        redis_prefix=ns,
        app_id=f"consent-stream-{ns}",
        policy_path=str(policy_file),
    )
    ensure_topics(settings, policy)
    sync_acls(settings, policy.partners)
    yield settings
    remove_namespace(settings, policy.partners)


def _consume_error(settings: Settings, topic: str, group: str) -> KafkaError | None:
    """The first error a consumer of ``topic`` meets (None: it reads, or waits quietly)."""
    consumer = Consumer(settings.consumer_config(group))
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + REFUSED_WITHIN_S
        while time.monotonic() < deadline:
            for message in consumer.consume(10, timeout=0.5):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    return error  # type: ignore[no-any-return]
                if error is None:
                    return None
        return None
    finally:
        consumer.close()


def _produce_error(settings: Settings, topic: str) -> KafkaError | None:
    """The delivery error of one record sent to ``topic`` (None: acknowledged)."""
    outcome: list[KafkaError | None] = []
    producer = Producer(settings.producer_config())
    producer.produce(topic, key=b"k", value=b"v", on_delivery=lambda err, _: outcome.append(err))
    deadline = time.monotonic() + REFUSED_WITHIN_S
    while not outcome and time.monotonic() < deadline:
        producer.poll(0.1)
    assert outcome, f"no delivery report for {topic} within {REFUSED_WITHIN_S} s"
    return outcome[0]


def _topic_error(settings: Settings, topic: str) -> str | None:
    """The metadata error name of ``topic`` as ``settings``' principal sees it."""
    producer = Producer(settings.producer_config())
    meta = producer.list_topics(topic, timeout=REFUSED_WITHIN_S)
    error = meta.topics[topic].error
    return None if error is None else str(error.name())


def _event() -> ConsentEvent:
    payload = ConsentChanged("marketing_sms", ConsentDecision.WITHDRAWN, "2023-09-01", "app")
    subject = f"acl-{uuid.uuid4().hex[:8]}"
    return ConsentEvent(str(uuid.uuid4()), subject, int(time.time() * 1000), "app", payload)


def test_ads_cannot_read_the_payment_instructions(admin: Settings) -> None:
    ads = admin.as_principal("partner-ads")
    names = admin.topics
    group = names.partner_group("ads")
    refused = _consume_error(ads, names.instructions("payment"), group)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _consume_error(ads, names.instructions("ads"), group) is None  # its own: allowed


def test_ads_cannot_write_into_the_payment_acknowledgements(admin: Settings) -> None:
    ads = admin.as_principal("partner-ads")
    names = admin.topics
    refused = _produce_error(ads, names.acks("payment"))
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _produce_error(ads, names.acks("ads")) is None  # its own acks: allowed


def test_a_publisher_cannot_read_any_partner_topic(admin: Settings, policy: Policy) -> None:
    publisher = admin.as_principal("publisher")
    names = admin.topics
    for partner in sorted(policy.partners):
        for topic in (names.instructions(partner), names.acks(partner)):
            assert _topic_error(publisher, topic) == "TOPIC_AUTHORIZATION_FAILED", topic
    refused = _consume_error(publisher, names.instructions("payment"), f"{names.events}-reader")
    assert refused is not None
    assert refused.code() in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    )
    assert _topic_error(publisher, names.events) is None  # it may see its own topic


def test_a_partner_cannot_publish_consent_events(admin: Settings, policy: Policy) -> None:
    with ConsentPublisher(admin.as_principal("partner-payment"), policy) as publisher:
        with pytest.raises(AccessDeniedError, match=r"consent\.events\.v1"):
            publisher.check_topic()
        with pytest.raises(AccessDeniedError, match=r"Topic authorization failed"):
            publisher.publish(_event(), timeout_s=REFUSED_WITHIN_S)
    with ConsentPublisher(admin.as_principal("publisher"), policy) as publisher:
        assert publisher.publish(_event()).offset >= 0  # the publisher may


def test_the_gateway_writes_the_acks_of_webhook_partners_only(
    admin: Settings, policy: Policy, tmp_path: Path
) -> None:
    gateway = as_principal(admin, "gateway", principal_credentials("gateway", tmp_path))
    names = admin.topics
    kafka_delivery = sorted(p for p, spec in policy.partners.items() if not spec.webhook)
    assert kafka_delivery and WEBHOOK_PARTNER not in kafka_delivery
    for partner in kafka_delivery:  # a forged DONE into a kafka partner's acks: refused
        refused = _produce_error(gateway, names.acks(partner))
        assert refused is not None, partner
        assert refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, partner
    assert _produce_error(gateway, names.acks(WEBHOOK_PARTNER)) is None  # a callback's ack
    assert _produce_error(gateway, names.events) is None  # and the events, as publisher
    for topic in (names.instructions(WEBHOOK_PARTNER), names.ledger):
        assert _topic_error(gateway, topic) == "TOPIC_AUTHORIZATION_FAILED", topic


def _cli(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    import os

    full = {k: v for k, v in os.environ.items() if k != ENV_PREFIX + "CREDENTIALS_FILE"}
    full.update({ENV_PREFIX + k: v for k, v in env.items()})
    started = time.monotonic()
    result = subprocess.run(
        [str(CLI), "--log-level", "ERROR", *args],
        env=full,
        cwd=REPO,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("command", "username"),
    [
        (("publish", "-"), "publisher"),  # wrong password
        (("publish", "-"), "nobody"),  # unknown principal
        (("worker",), "worker"),
        (("partner", "--name", "ads"), "partner-ads"),
    ],
)
def test_wrong_credentials_fail_fast_naming_the_principal_and_the_listener(
    bootstrap_servers: str, command: tuple[str, ...], username: str
) -> None:
    result, took = _cli(
        *command,
        BOOTSTRAP_SERVERS=bootstrap_servers,
        SECURITY_PROTOCOL="SASL_PLAINTEXT",
        SASL_USERNAME=username,
        SASL_PASSWORD="not-the-password",  # noqa: S106 - deliberately wrong
    )
    assert result.returncode == 4, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("consent-stream:")]
    assert lines == [
        f"consent-stream: authentication_failed: Kafka refused the credentials of principal "
        f"'{username}' on listener SASL_PLAINTEXT://{bootstrap_servers} (SCRAM-SHA-512): "
        "wrong password or unknown principal"
    ], result.stderr
    assert "Traceback" not in result.stderr
    assert took < REFUSED_WITHIN_S, f"took {took:.1f} s"
