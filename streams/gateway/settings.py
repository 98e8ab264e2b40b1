"""The gateway's own settings, read once at the entry point next to ``Settings.from_env``.

``CONSENT_STREAM_GATEWAY_TOKENS`` lists the callers: ``name=token:source|source,...`` (a
token of 16+ characters, the ``source`` values that caller may publish). The Kafka
producer itself is built from ``schemas.settings.Settings`` with the overrides of
``producer_overrides`` (delivery timeout, local queue size).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.errors import ConfigurationError
from schemas.secrets import MIN_TOKEN_CHARS, Secret, parse_named_secrets
from schemas.settings import ENV_PREFIX, env_int

__all__ = ["QUEUE_FULL_RETRY_S", "GatewayCaller", "GatewaySettings", "parse_gateway_tokens"]

TOKENS_ENV: Final = ENV_PREFIX + "GATEWAY_TOKENS"
QUEUE_FULL_RETRY_S: Final = 1
"""``Retry-After`` of a 429 (the producer's local queue is full)."""


@dataclass(frozen=True, slots=True)
class GatewayCaller:
    """One caller: its token and the ``source`` values it may publish."""

    name: str
    token: Secret = field(repr=False)
    sources: frozenset[str]


def parse_gateway_tokens(text: str, what: str = TOKENS_ENV) -> dict[str, GatewayCaller]:
    """``name=token:source|source,...`` -> {name: caller}; errors name the entry, never a
    token (a token may not contain ``:``; sources may not contain ``|`` or ``,``)."""
    callers: dict[str, GatewayCaller] = {}
    for name, value in parse_named_secrets(text, what, value="token:sources").items():
        token, sep, sources = value.reveal().decode().partition(":")
        allowed = frozenset(s.strip() for s in sources.split("|") if s.strip())
        if not sep or not allowed:
            raise ConfigurationError(f"{what}: {name!r} names no sources (name=token:a|b)")
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigurationError(
                f"{what}: the token of {name!r} is shorter than {MIN_TOKEN_CHARS} characters"
            )
        callers[name] = GatewayCaller(name, Secret(token), allowed)
    return callers


@dataclass(frozen=True)
class GatewaySettings:
    port: int = 6080
    bind: str = "127.0.0.1"
    callers: Mapping[str, GatewayCaller] = field(default_factory=dict)
    max_body_bytes: int = 4 * 1024 * 1024
    """Larger bodies are answered 413 before they are read."""
    max_items: int = 1000
    """Events per request; more: 413."""
    delivery_timeout_ms: int = 10_000
    """librdkafka's ``message.timeout.ms``: an event not acknowledged by then is reported
    ``not_delivered`` (503, ``Retry-After``)."""
    queue_max_messages: int = 100_000
    """librdkafka's ``queue.buffering.max.messages``: a request that does not fit: 429."""
    retry_after_s: int = 5
    """``Retry-After`` of a 503 (a 429 says 1)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        d = _DEFAULT
        return cls(
            port=env_int(env, "GATEWAY_PORT", d.port),
            bind=env.get(ENV_PREFIX + "GATEWAY_BIND") or d.bind,
            callers=parse_gateway_tokens(env.get(TOKENS_ENV, "")),
            max_body_bytes=env_int(env, "GATEWAY_MAX_BODY_BYTES", d.max_body_bytes),
            max_items=env_int(env, "GATEWAY_MAX_ITEMS", d.max_items),
            delivery_timeout_ms=env_int(env, "GATEWAY_DELIVERY_TIMEOUT_MS", d.delivery_timeout_ms),
            queue_max_messages=env_int(env, "GATEWAY_QUEUE_MAX_MESSAGES", d.queue_max_messages),
            retry_after_s=env_int(env, "GATEWAY_RETRY_AFTER_S", d.retry_after_s),
        )

    def producer_overrides(self) -> dict[str, Any]:
        return {
            "message.timeout.ms": self.delivery_timeout_ms,
            "queue.buffering.max.messages": self.queue_max_messages,
        }

    @property
    def answer_timeout_s(self) -> float:
        """How long a request waits for its delivery reports: librdkafka's own timeout and a
        margin, so every accepted event has a definite report by then."""
        return self.delivery_timeout_ms / 1000 + 2.0


_DEFAULT = GatewaySettings()
