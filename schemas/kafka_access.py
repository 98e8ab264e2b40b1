"""Fail fast on refused credentials: librdkafka retries a refused SASL login forever.

A client whose password is wrong (or whose principal does not exist) gets no error from
``list_topics`` or ``flush``, only timeouts, while the broker refuses each attempt; the
refusal is reported through ``error_cb`` alone. ``check_access`` connects once as the
configured principal and turns that into an ``AccessDeniedError`` naming the principal and
the listener, within about a second, before a command starts its work.

The same for TLS: a broker certificate the client does not trust (another CA, no
``CONSENT_STREAM_SSL_CA_LOCATION``, a name it does not hold) is also reported through
``error_cb`` alone, and becomes a ``ConfigurationError`` (reason ``tls_failed``) with
librdkafka's own words. When the broker does not answer in time, the error names the last
transport failure librdkafka reported (e.g. TLS spoken to a plaintext listener).
"""

from __future__ import annotations

import time
from typing import Any, Final

from schemas.client_errors import kafka_error
from schemas.errors import AccessDeniedError, ConfigurationError
from schemas.settings import Settings

__all__ = ["check_access", "refused_credentials", "refused_tls"]

_ATTEMPT_S: Final = 0.5


def refused_credentials(settings: Settings, detail: str = "") -> AccessDeniedError:
    who = settings.sasl_username or "(none: no SASL login configured)"
    return AccessDeniedError(
        f"Kafka refused the credentials of principal {who!r} on listener "
        f"{settings.listener} ({settings.sasl_mechanism}): wrong password or unknown "
        f"principal{': ' + detail if detail else ''}",
        reason="authentication_failed",
    )


def refused_tls(settings: Settings, detail: str) -> ConfigurationError:
    ca = settings.ssl_ca_location or "unset: the system's CAs"
    return ConfigurationError(
        f"Kafka: TLS with listener {settings.listener} failed (CONSENT_STREAM_SSL_CA_LOCATION "
        f"{ca}): {detail}",
        reason="tls_failed",
    )


def check_access(settings: Settings, timeout_s: float = 10.0) -> None:
    """Connect as ``settings``' principal: ``AccessDeniedError`` as soon as the broker
    refuses the login, ``BrokerUnavailableError`` when it does not answer in time."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    refusals: list[str] = []
    tls: list[str] = []
    transport: list[str] = []

    def on_error(error: Any) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            refusals.append(str(error.str()))
        elif error.code() == KafkaError._SSL:
            tls.append(str(error.str()))
        elif error.code() == KafkaError._TRANSPORT:
            transport.append(str(error.str()))

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
            if tls:
                raise refused_tls(settings, tls[-1]) from None
            if time.monotonic() >= deadline:
                last = f" (last: {transport[-1]})" if transport else ""
                raise kafka_error(exc, f"connecting to {settings.listener}{last}") from None
