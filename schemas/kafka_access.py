"""Fail fast on refused credentials: librdkafka retries a refused SASL login forever.

A client whose password is wrong (or whose principal does not exist) gets no error from
``list_topics`` or ``flush``, only timeouts, while the broker refuses each attempt; the
refusal is reported through ``error_cb`` alone. ``check_access`` connects once as the
configured principal and turns that into an ``AccessDeniedError`` naming the principal and
the listener, within about a second, before a command starts its work.
"""

from __future__ import annotations

import time
from typing import Any, Final

from schemas.client_errors import kafka_error
from schemas.errors import AccessDeniedError
from schemas.settings import Settings

__all__ = ["check_access", "refused_credentials"]

_ATTEMPT_S: Final = 0.5


def refused_credentials(settings: Settings, detail: str = "") -> AccessDeniedError:
    who = settings.sasl_username or "(none: no SASL login configured)"
    return AccessDeniedError(
        f"Kafka refused the credentials of principal {who!r} on listener "
        f"{settings.listener} ({settings.sasl_mechanism}): wrong password or unknown "
        f"principal{': ' + detail if detail else ''}",
        reason="authentication_failed",
    )


def check_access(settings: Settings, timeout_s: float = 10.0) -> None:
    """Connect as ``settings``' principal: ``AccessDeniedError`` as soon as the broker
    refuses the login, ``BrokerUnavailableError`` when it does not answer in time."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    refusals: list[str] = []

    def on_error(error: Any) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            refusals.append(str(error.str()))

    config: dict[str, Any] = {**settings.admin_config(), "error_cb": on_error, "log_level": 0}
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=_ATTEMPT_S)
            return
        except KafkaException as exc:
            admin.poll(0)
            if refusals:
                raise refused_credentials(settings) from None
            if time.monotonic() >= deadline:
                raise kafka_error(exc, f"connecting to {settings.listener}") from None
