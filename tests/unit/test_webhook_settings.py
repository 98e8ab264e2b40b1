"""Webhook settings: per-partner signing secrets from the environment (never the policy),
the bridge's concurrency and timeout."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigurationError
from schemas.settings import ENV_PREFIX, Settings

BASE = {ENV_PREFIX + "DEV_MODE": "1"}


def test_secrets_are_read_per_partner_and_never_shown() -> None:
    env = {
        **BASE,
        ENV_PREFIX + "WEBHOOK_SECRETS": "logistics=0123456789abcdef-log, ads=0123456789abcdef-ads",
        ENV_PREFIX + "WEBHOOK_CONCURRENCY": "4",
        ENV_PREFIX + "WEBHOOK_TIMEOUT_S": "3",
    }
    settings = Settings.from_env(env)
    assert settings.webhook_secret("logistics").reveal() == b"0123456789abcdef-log"
    assert settings.webhook_secret("ads").reveal() == b"0123456789abcdef-ads"
    assert "0123456789abcdef" not in repr(settings)
    assert settings.webhook_concurrency == 4
    assert settings.webhook_timeout_s == 3


def test_defaults() -> None:
    settings = Settings.from_env(BASE)
    assert settings.webhook_secrets == {}
    assert settings.webhook_concurrency == 8
    assert settings.webhook_timeout_s == 10


def test_a_partner_without_a_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"WEBHOOK_SECRETS=logistics=<16\+"):
        Settings.from_env(BASE).webhook_secret("logistics")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("logistics=short", "the secret of 'logistics' is shorter than 16"),
        ("0123456789abcdef0123", "entry 1 is not partner=secret"),
        ("a=0123456789abcdef,a=0123456789abcdefX", "'a' is given twice"),
    ],
)
def test_bad_secrets_are_refused_without_showing_them(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        Settings.from_env({**BASE, ENV_PREFIX + "WEBHOOK_SECRETS": text})
    assert problem in str(err.value)
    assert "0123456789abcdef" not in str(err.value)
    assert ENV_PREFIX + "WEBHOOK_SECRETS" in str(err.value)
