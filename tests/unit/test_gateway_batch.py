"""The gateway's pure parts: bodies into items, each item's checks, the answer's status,
and the token list of CONSENT_STREAM_GATEWAY_TOKENS."""

from __future__ import annotations

import json

import pytest
from gateway_harness import event

from producers.publisher import ConsentPublisher
from schemas.errors import ConfigurationError, ValidationError
from schemas.policy import load_policy
from schemas.settings import Settings
from streams.gateway.batch import (
    Item,
    Outcome,
    RequestError,
    answer_body,
    answer_status,
    check_items,
    parse_body,
)
from streams.gateway.settings import GatewaySettings, parse_gateway_tokens

SOURCES = frozenset({"order-service"})
TOKEN = "t" * 16


def prepare() -> ConsentPublisher:
    return ConsentPublisher(Settings(dev_mode=True), load_policy(), producer=object())  # type: ignore[arg-type]


def test_one_object_an_array_and_json_lines() -> None:
    one, two = event(), event("m-2")
    assert parse_body(json.dumps(one).encode(), "application/json", 10) == [(None, one)]
    assert parse_body(json.dumps([one, two]).encode(), "application/json", 10) == [
        (None, one),
        (None, two),
    ]
    lines = f"{json.dumps(one)}\n\n{{not json\n{json.dumps(two)}\n".encode()
    raws = parse_body(lines, "application/x-ndjson", 10)
    assert [n for n, _ in raws] == [1, 3, 4]
    assert raws[0][1] == one and raws[2][1] == two
    assert isinstance(raws[1][1], ValidationError) and raws[1][1].reason == "not_json"
    assert parse_body(json.dumps(one).encode(), "application/jsonl", 10) == [(1, one)]


@pytest.mark.parametrize(
    ("body", "media_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"42", "application/json", 400),
        (b"[]", "application/json", 400),
        (b"\n\n", "application/x-ndjson", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"{}", "text/plain", 415),
        (b"{}", "application/octet-stream", 415),
        (json.dumps([event()] * 4).encode(), "application/json", 413),
    ],
)
def test_bodies_refused_as_a_whole(body: bytes, media_type: str, status: int) -> None:
    with pytest.raises(RequestError) as caught:
        parse_body(body, media_type, 3)
    assert caught.value.status == status


def test_each_item_checked_as_the_sdk_checks_it_plus_the_source() -> None:
    unknown_purpose = event("m-2")
    unknown_purpose["payload"] = {**unknown_purpose["payload"], "purpose": "telepathy"}
    raws = [
        (None, event()),
        (None, unknown_purpose),
        (None, event("m-3", source="ads-settings")),
        (None, {"type": "consent.changed"}),
        (None, [1, 2]),
        (None, event("m-4", event_id="not-a-uuid")),
    ]
    items = check_items(raws, SOURCES, prepare().prepare)
    got = [(i.outcome, i.reason, i.field) for i in items]
    assert got == [
        (Outcome.ACCEPTED, None, None),
        (Outcome.REJECTED, "unknown_purpose", "payload.purpose"),
        (Outcome.REJECTED, "source_not_allowed", "source"),
        (Outcome.REJECTED, "invalid_field", "subject_id"),
        (Outcome.REJECTED, "invalid_field", "(root)"),
        (Outcome.REJECTED, "invalid_field", "event_id"),
    ]
    assert items[0].prepared is not None and items[0].prepared[0] == b"m-1"
    assert all(i.prepared is None for i in items[1:])


def test_an_oversized_event_is_rejected_by_item() -> None:
    settings = Settings(dev_mode=True, max_record_bytes=100)  # smaller than any event
    publisher = ConsentPublisher(settings, load_policy(), producer=object())  # type: ignore[arg-type]
    (item,) = check_items([(None, event())], SOURCES, publisher.prepare)
    assert (item.outcome, item.reason) == (Outcome.REJECTED, "oversized")


def item(outcome: Outcome, reason: str | None = None) -> Item:
    return Item(0, outcome=outcome, reason=reason)


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ([item(Outcome.ACCEPTED)], 202),
        ([item(Outcome.ACCEPTED), item(Outcome.REJECTED, "invalid_field")], 400),
        ([item(Outcome.REJECTED, "source_not_allowed")] * 2, 403),
        ([item(Outcome.REJECTED, "source_not_allowed"), item(Outcome.ACCEPTED)], 400),
        ([item(Outcome.REJECTED, "source_not_allowed"), item(Outcome.REJECTED, "x")], 400),
        ([item(Outcome.ACCEPTED), item(Outcome.NOT_SENT, "queue_full")], 429),
        ([item(Outcome.NOT_SENT), item(Outcome.NOT_DELIVERED, "timeout")], 503),
        ([item(Outcome.REJECTED, "x"), item(Outcome.NOT_DELIVERED, "timeout")], 503),
    ],
)
def test_the_answer_status(outcomes: list[Item], status: int) -> None:
    assert answer_status(outcomes) == status


def test_the_answer_body_counts_and_lists_every_item() -> None:
    items = check_items(
        [(1, event()), (2, ValidationError("no", reason="not_json"))], SOURCES, prepare().prepare
    )
    body = answer_body(400, items)
    assert {
        k: body[k] for k in ("status", "accepted", "rejected", "not_delivered", "not_sent")
    } == {
        "status": 400,
        "accepted": 1,
        "rejected": 1,
        "not_delivered": 0,
        "not_sent": 0,
    }
    first, second = body["items"]
    assert first["status"] == "accepted" and first["line"] == 1 and "event_id" in first
    assert second == {
        "index": 1,
        "line": 2,
        "status": "rejected",
        "reason": "not_json",
        "error": "no",
    }


def test_gateway_tokens_name_their_sources() -> None:
    callers = parse_gateway_tokens(f"orders={TOKEN}:order-service|checkout, app={TOKEN}2:app")
    assert callers["orders"].sources == {"order-service", "checkout"}
    assert callers["app"].sources == {"app"}
    assert callers["orders"].token.reveal() == TOKEN.encode()
    assert TOKEN not in repr(callers)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f"orders={TOKEN}", "names no sources"),
        (f"orders={TOKEN}:", "names no sources"),
        (f"orders={TOKEN}: | ", "names no sources"),
        ("orders=short:order-service-with-a-long-name", "shorter than 16"),
        (f"={TOKEN}:a", "not name=token:sources"),
        (f"a={TOKEN}:x,a={TOKEN}:y", "given twice"),
    ],
)
def test_bad_token_lists_are_refused_without_showing_a_token(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_gateway_tokens(text)
    assert says in str(caught.value)
    assert TOKEN not in str(caught.value) and "short:" not in str(caught.value)


def test_gateway_settings_from_the_environment() -> None:
    env = {
        "CONSENT_STREAM_GATEWAY_TOKENS": f"orders={TOKEN}:order-service",
        "CONSENT_STREAM_GATEWAY_PORT": "7000",
        "CONSENT_STREAM_GATEWAY_MAX_ITEMS": "50",
        "CONSENT_STREAM_GATEWAY_DELIVERY_TIMEOUT_MS": "2500",
    }
    config = GatewaySettings.from_env(env)
    assert (config.port, config.bind, config.max_items) == (7000, "127.0.0.1", 50)
    assert config.producer_overrides() == {
        "message.timeout.ms": 2500,
        "queue.buffering.max.messages": 100_000,
    }
    assert config.answer_timeout_s > 2.5
    assert GatewaySettings.from_env({}).callers == {}
    with pytest.raises(ConfigurationError, match="GATEWAY_PORT"):
        GatewaySettings.from_env({"CONSENT_STREAM_GATEWAY_PORT": "http"})
