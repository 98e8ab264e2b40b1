"""``POST /v1/acks`` over real HTTP on loopback with a fake Kafka producer: a webhook
partner's signed callback becomes exactly the ack record the webhook bridge produces;
every refusal (401 for who may not call back or a bad signature, 400, 413, 429, 503)
sends nothing, and says nothing about which partners exist."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gateway_harness import (
    PARTNER,
    WEBHOOK_SECRET,
    FakeKafka,
    Served,
    callback_body,
    callbacks,
    event,
    serve,
    signed,
)
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumers.partner_sender import ack_record
from consumers.webhook.callback import acknowledgement_from_callback
from consumers.webhook.delivery import MAX_ANSWER_BYTES, ack_ce_id
from schemas.cloudevents import header_map
from schemas.contracts import PARTNER_ACKNOWLEDGEMENT
from schemas.partner import AcknowledgementStatus, PartnerAcknowledgement
from schemas.policy import load_policy, parse_policy
from schemas.secrets import Secret
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.topics import TopicNames
from schemas.webhook_signing import DEFAULT_TOLERANCE_S
from streams.gateway.callbacks import Callbacks

ACKS_TOPIC = TopicNames().acks(PARTNER)

SKEW_S = DEFAULT_TOLERANCE_S + 60
"""Outside the tolerance by a margin: the gateway reads the clock later than the test, and a
signature's ``t`` is whole seconds (at +301 s a slow run was accepted)."""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def acks(served: Served, outcome: str, partner: str = PARTNER) -> float:
    text = generate_latest(served.registry).decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "consent_gateway_acks_total"
        and s.labels == {"partner": partner, "outcome": outcome}
    )


def test_a_signed_callback_is_202_once_the_ack_record_of_the_bridge_is_on_kafka() -> None:
    now = time.time()
    iid = str(uuid.uuid4())
    body = callback_body(iid, completed_at=int(now * 1000) - 5000)
    signature = signed(body, now)

    async def scenario() -> Served:
        async with serve(callbacks=callbacks(clock=lambda: now)) as g:
            status, answer, headers = await g.client.post_ack(
                body, partner=PARTNER, signature=signature
            )
            assert status == 202, answer
            assert answer == {"status": 202, "instruction_id": iid}
            assert "Retry-After" not in headers
            return g

    g = run(scenario())
    (record,) = g.kafka.records
    # the record the webhook bridge's AckSender would produce for it (test_partner_sdk:
    # AckSender produces exactly ack_record), at the same clock
    pending = acknowledgement_from_callback(
        body, signature, partner=PARTNER, secrets=WEBHOOK_SECRET.reveal(), now_s=now
    )
    expected = ack_record(
        pending,
        AvroSerde(),
        topic=ACKS_TOPIC,
        data_schema=PARTNER_ACKNOWLEDGEMENT,
        published_at_ms=int(now * 1000),
    )
    assert record == (ACKS_TOPIC, *expected)
    _topic, key, value, headers = record
    ack = AvroSerde().decode_as(value, PartnerAcknowledgement)
    assert (ack.instruction_id, ack.partner, ack.status) == (
        iid,
        PARTNER,
        AcknowledgementStatus.DONE,
    )
    assert ack.completed_at == int(now * 1000) - 5000
    assert key == f"key-{iid}".encode()
    assert header_map(headers)["ce_id"] == ack_ce_id(iid).encode()
    assert header_map(headers)["ce_source"] == f"partner/{PARTNER}".encode()
    assert acks(g, "accepted") == 1


def test_who_may_not_call_back_and_bad_signatures_get_one_401_and_nothing_is_sent() -> None:
    body = callback_body()
    now = time.time()
    other = Secret("whsec-someone-else-" + "q" * 20)
    refused = [
        {"partner": PARTNER, "signature": signed(body, secret=other)},  # forged
        {"partner": PARTNER, "signature": signed(body, now - SKEW_S)},  # stale
        {"partner": PARTNER, "signature": signed(body, now + SKEW_S)},  # from the future
        {"partner": PARTNER, "signature": None},  # missing
        {"partner": PARTNER, "signature": "t=1,v1=zz"},  # malformed
        {"partner": "payment", "signature": signed(body)},  # may not call back (kafka)
        {"partner": "nobody", "signature": signed(body)},  # unknown
        {"partner": None, "signature": signed(body)},  # no partner named
    ]

    async def scenario() -> Served:
        async with serve(callbacks=callbacks()) as g:
            answers = [await g.client.post_ack(body, **kw) for kw in refused]
            for (status, answer, headers), kw in zip(answers, refused, strict=True):
                assert status == 401, kw
                assert answer == answers[0][1], kw  # one answer for all: nothing told
                assert headers["WWW-Authenticate"].startswith("Consent-Stream-Signature")
            assert set(answers[0][1]) == {"status", "error"}
            return g

    g = run(scenario())
    assert g.kafka.records == []
    assert acks(g, "unauthorized") == 5
    assert acks(g, "unauthorized", partner="unknown") == 3


def test_a_replayed_callback_is_refused_and_produces_no_second_record() -> None:
    body = callback_body()
    signature = signed(body)

    async def scenario() -> Served:
        async with serve(callbacks=callbacks()) as g:
            assert (await g.client.post_ack(body, partner=PARTNER, signature=signature))[0] == 202
            status, answer, _ = await g.client.post_ack(body, partner=PARTNER, signature=signature)
            assert status == 401, answer
            # the same acknowledgement signed anew is accepted (the ledger keeps the first)
            again = signed(body, time.time() + 1)
            assert (await g.client.post_ack(body, partner=PARTNER, signature=again))[0] == 202
            return g

    g = run(scenario())
    first, second = g.kafka.records
    assert first[:2] == second[:2]  # topic and key
    assert header_map(first[3])["ce_id"] == header_map(second[3])["ce_id"]


@pytest.mark.parametrize(
    ("body", "reason", "field"),
    [
        (b"{not json", "not_json", None),
        (b"[]", "invalid_field", "(root)"),
        (callback_body(status="MAYBE"), "invalid_field", "status"),
        (callback_body(ack_key=""), "invalid_field", "ack_key"),
        (callback_body(partner="ads"), "invalid_field", "partner"),
        (callback_body(status="REJECTED"), "invalid_field", "reason"),
        (callback_body(colour="red"), "invalid_field", "colour"),
    ],
)
def test_a_signed_body_that_is_not_a_callback_is_400(
    body: bytes, reason: str, field: str | None
) -> None:
    async def scenario() -> Served:
        async with serve(callbacks=callbacks()) as g:
            status, answer, _ = await g.client.post_ack(
                body, partner=PARTNER, signature=signed(body)
            )
            assert status == 400, answer
            assert answer["reason"] == reason and answer.get("field") == field, answer
            assert answer["error"]
            return g

    g = run(scenario())
    assert g.kafka.records == [] and acks(g, "invalid") == 1


def test_a_body_over_64_kib_is_413_for_every_partner_streamed_or_not() -> None:
    body = callback_body(reason="x" * MAX_ANSWER_BYTES, status="FAILED")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    async def scenario() -> Served:
        async with serve(callbacks=callbacks()) as g:
            for partner in (PARTNER, "nobody"):  # the same answer: nothing told
                status, answer, _ = await g.client.post_ack(
                    body, partner=partner, signature=signed(body)
                )
                assert status == 413 and "65,536" in answer["error"], answer
            status, _, _ = await g.client.post_ack(  # no Content-Length: read up to 64 KiB
                chunks(), partner=PARTNER, signature=signed(body)
            )
            assert status == 413
            return g

    g = run(scenario())
    assert g.kafka.records == [] and acks(g, "too_large") == 2


def test_a_full_queue_is_429_and_the_same_request_is_accepted_afterwards() -> None:
    body = callback_body()
    signature = signed(body)

    async def scenario() -> Served:
        async with serve(callbacks=callbacks(), queue_max_messages=1) as g:
            g.kafka.hold = True
            waiting = asyncio.create_task(g.client.post(event()))  # the queue's one place
            await asyncio.sleep(0.2)
            status, answer, headers = await g.client.post_ack(
                body, partner=PARTNER, signature=signature
            )
            assert status == 429 and headers["Retry-After"] == "1", answer
            assert g.kafka.records == []
            g.kafka.hold = False
            assert (await waiting)[0] == 202
            status, answer, _ = await g.client.post_ack(body, partner=PARTNER, signature=signature)
            assert status == 202, answer  # the same request: its signature was given back
            return g

    g = run(scenario())
    assert [r[0] for r in g.kafka.records] == ["consent.events.v1", ACKS_TOPIC]
    assert acks(g, "not_sent") == 1 and acks(g, "accepted") == 1


def test_an_ack_kafka_does_not_acknowledge_is_503_and_may_be_posted_again() -> None:
    body = callback_body()
    signature = signed(body)

    async def scenario() -> Served:
        async with serve(FakeKafka(down=True), callbacks=callbacks(), retry_after_s=7) as g:
            status, answer, headers = await g.client.post_ack(
                body, partner=PARTNER, signature=signature
            )
            assert status == 503 and headers["Retry-After"] == "7", answer
            assert "not delivered" in answer["error"]
            g.kafka.down = False  # the broker is back: the same request, the same signature
            status, answer, _ = await g.client.post_ack(body, partner=PARTNER, signature=signature)
            assert status == 202, answer
            return g

    g = run(scenario())
    assert len(g.kafka.records) == 1
    assert acks(g, "not_delivered") == 1 and acks(g, "accepted") == 1

    async def timed_out() -> None:
        async with serve(FakeKafka(hold=True), callbacks=callbacks(), delivery_timeout_ms=100) as g:
            status, answer, headers = await g.client.post_ack(
                body, partner=PARTNER, signature=signed(body)
            )
            assert status == 503 and "Retry-After" in headers
            assert "in time" in answer["error"]

    run(timed_out())


def test_the_access_log_names_the_partner_and_the_instruction_never_the_subject(
    caplog: pytest.LogCaptureFixture,
) -> None:
    iid = str(uuid.uuid4())
    body = callback_body(iid)
    subject_ref = json.loads(body)["subject_ref"]

    async def scenario() -> None:
        async with serve(callbacks=callbacks()) as g:
            signature = signed(body)
            await g.client.post_ack(body, partner=PARTNER, signature=signature)
            await g.client.post_ack(body, partner=PARTNER, signature=signature)
            await g.client.post_ack(body, partner="nobody", signature=signed(body))

    with caplog.at_level(logging.INFO, logger="streams.gateway.access"):
        run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "streams.gateway.access"]
    assert lines == [
        f"POST /v1/acks 202 by {PARTNER}: instruction {iid} DONE",
        f"POST /v1/acks 401 by {PARTNER}: replayed_signature",
        "POST /v1/acks 401 by unknown: not a partner that may call back",
    ]
    assert all(subject_ref not in line and "nobody" not in line for line in lines)


def test_only_webhook_partners_with_a_secret_may_call_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import tomllib
    from importlib import resources

    raw = tomllib.loads((resources.files("schemas") / "policy" / "policy.v1.toml").read_text())
    for partner in ("logistics", "ads"):
        raw["partners"][partner].update(delivery="webhook", webhook_url="https://p.example/h")
    policy = parse_policy(raw)
    secret = Secret("whsec-" + "s" * 20)
    settings = Settings(webhook_secrets={"logistics": secret, "payment": secret})
    with caplog.at_level(logging.WARNING, logger="streams.gateway.callbacks"):
        got = Callbacks.of(settings, policy, AvroSerde())
    assert set(got.secrets) == {"logistics"}  # payment: kafka delivery; ads: no secret
    assert "partner ads is delivered by webhook but has no secret" in caplog.text
    assert set(Callbacks.of(settings, load_policy(), AvroSerde()).secrets) == set()
