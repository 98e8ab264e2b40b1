"""Bearer tokens of the worker's HTTP API: parsing (clear errors, never the token), the
constant-time check, and the settings they come from."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigurationError
from schemas.settings import ENV_PREFIX, Settings, parse_tokens
from streams.api.auth import TokenCheck

GOOD = "a" * 16
OTHER = "b" * 24


def test_tokens_are_parsed_by_name() -> None:
    tokens = parse_tokens(f"ops={GOOD}, privacy-office={OTHER}\n")
    assert sorted(tokens) == ["ops", "privacy-office"]
    assert tokens["ops"].reveal() == GOOD.encode()
    assert GOOD not in repr(tokens)  # a Secret never shows itself


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (GOOD, "entry 1 is not name=token"),
        (f"={GOOD}", "entry 1 is not name=token"),
        ("ops=short", "shorter than 16 characters"),
        (f"ops={GOOD},ops={OTHER}", "'ops' is given twice"),
    ],
)
def test_bad_token_settings_are_refused_without_showing_a_token(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as refused:
        parse_tokens(text)
    assert GOOD not in str(refused.value) and OTHER not in str(refused.value)


def test_the_caller_is_named_by_its_token() -> None:
    check = TokenCheck(parse_tokens(f"ops={GOOD},office={OTHER}"))
    assert check.caller(f"Bearer {GOOD}") == "ops"
    assert check.caller(f"bearer {OTHER}") == "office"
    for header in (
        None,
        "",
        GOOD,
        f"Basic {GOOD}",
        f"Bearer {GOOD}x",
        "Bearer ",
        f"Bearer {GOOD[:-1]}",
    ):
        assert check.caller(header) is None, header
    assert not TokenCheck({}) and TokenCheck({}).caller(f"Bearer {GOOD}") is None


def test_settings_read_the_tokens_and_the_metrics_token() -> None:
    env = {
        ENV_PREFIX + "HTTP_TOKENS": f"ops={GOOD}",
        ENV_PREFIX + "METRICS_TOKEN": OTHER,
        ENV_PREFIX + "DEV_MODE": "1",
    }
    settings = Settings.from_env(env)
    assert list(settings.http_tokens) == ["ops"]
    assert settings.metrics_token is not None and settings.metrics_token.reveal() == OTHER.encode()
    dev = {ENV_PREFIX + "DEV_MODE": "1"}
    assert Settings.from_env(dev).http_tokens == {} and Settings.from_env(dev).metrics_token is None
    with pytest.raises(ConfigurationError, match="METRICS_TOKEN is shorter"):
        Settings.from_env({ENV_PREFIX + "METRICS_TOKEN": "short", ENV_PREFIX + "DEV_MODE": "1"})


def test_the_subject_key_is_required_outside_development_mode() -> None:
    with pytest.raises(ConfigurationError, match="SUBJECT_KEY is not set"):
        Settings.from_env({})
    dev = Settings.from_env({ENV_PREFIX + "DEV_MODE": "1"})
    default = Settings().subject_keys
    assert dev.dev_mode and dev.subject_keys.current.reveal() == default.current.reveal()
    assert dev.subject_keys.current_id == default.current_id == "dev"
    key = "k" * 32
    production = Settings.from_env({ENV_PREFIX + "SUBJECT_KEY": key})
    assert production.subject_keys.current.reveal() == key.encode() and not production.dev_mode
    assert production.subject_keys.current_id == "k1" and not production.subject_keys.rotating
    with pytest.raises(ConfigurationError, match="SUBJECT_KEY is shorter"):
        Settings.from_env({ENV_PREFIX + "SUBJECT_KEY": "short"})
