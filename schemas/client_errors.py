"""What the client libraries' own exceptions mean, as project errors.

librdkafka (``confluent_kafka.KafkaException``, by error code) and redis-py raise their
own exceptions for operational failures: a broker that does not answer, a topic that
does not exist, refused credentials, a record too large, a Redis that is down. The
command line (and any caller that wants one error tree) maps them here, in one place, to
the tree of ``schemas.errors``; ``exit_code`` gives the command line's exit status.

Exit codes (the README's table)::

    0  success (``check``: allowed)
    1  a negative answer or partial success: ``check`` denied, an unknown request,
       ``publish`` with rejected or undelivered lines
    2  bad input or usage: an invalid event or argument (``ContractError``)
    3  configuration: settings, policy, unknown partner or topic (``ConfigurationError``)
    4  access denied by the broker or the consent store: credentials or ACLs
       (``AccessDeniedError``)
    5  Kafka unavailable or failing (``BrokerUnavailableError``, ``PublishError``)
    6  the consent store (Redis) unavailable (``StoreUnavailableError``)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

from typing import Any, Final

from schemas.errors import (
    AccessDeniedError,
    BrokerUnavailableError,
    ConfigurationError,
    ConsentStreamError,
    ContractError,
    OversizedRecordError,
    StoreUnavailableError,
    TransientError,
    UnknownTopicError,
)

__all__ = ["EXIT_INTERRUPTED", "exit_code", "kafka_error", "project_error", "redis_error"]

EXIT_INTERRUPTED: Final = 130

_UNAVAILABLE: Final = (
    "_TRANSPORT",
    "_ALL_BROKERS_DOWN",
    "_TIMED_OUT",
    "_MSG_TIMED_OUT",
    "_RESOLVE",
    "REQUEST_TIMED_OUT",
    "COORDINATOR_NOT_AVAILABLE",
    "NOT_COORDINATOR",
    "LEADER_NOT_AVAILABLE",
    "BROKER_NOT_AVAILABLE",
)
_UNKNOWN_TOPIC: Final = ("_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_PARTITION")
_DENIED: Final = (
    "_AUTHENTICATION",
    "SASL_AUTHENTICATION_FAILED",
    "TOPIC_AUTHORIZATION_FAILED",
    "GROUP_AUTHORIZATION_FAILED",
    "CLUSTER_AUTHORIZATION_FAILED",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
)
_TOO_LARGE: Final = ("MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE")
_CONFIG: Final = ("_INVALID_ARG", "_INVALID_TYPE", "_UNKNOWN_PROTOCOL", "_SSL")


def _code_name(error: Any) -> str:
    """The name of a ``KafkaError``'s code (``"_TRANSPORT"``, ``"UNKNOWN_TOPIC_OR_PART"``)."""
    from confluent_kafka import KafkaError

    code = error.code() if isinstance(error, KafkaError) else None
    if not isinstance(code, int):
        return ""
    return next((n for n in dir(KafkaError) if getattr(KafkaError, n, None) == code), "")


def kafka_error(error: Any, doing: str = "") -> ConsentStreamError:
    """A librdkafka ``KafkaError`` (or the exception carrying it) as a project error."""
    from confluent_kafka import KafkaException

    if isinstance(error, KafkaException):
        error = error.args[0] if error.args else error
    name = _code_name(error)
    text = error.str() if hasattr(error, "str") else str(error)
    message = f"Kafka: {doing + ': ' if doing else ''}{text}"
    if name in _UNAVAILABLE:
        return BrokerUnavailableError(message)
    if name in _UNKNOWN_TOPIC:
        return UnknownTopicError(message)
    if name in _DENIED:
        return AccessDeniedError(message)
    if name in _TOO_LARGE:
        return OversizedRecordError(message)
    if name in _CONFIG:
        return ConfigurationError(message)
    return TransientError(message, reason="kafka_error")


_SCRIPT_DENIED: Final = "The user executing the script can't"
"""How Redis words a command or key refused inside a script (an ``ERR`` reply, not
``NOPERM``): "... can't run this command ...", "... can't access at least one of the keys
..." (Redis 7.0)."""


def redis_error(exc: BaseException, doing: str = "consent store") -> ConsentStreamError | None:
    """A redis-py exception as a project error: a refused login (``WRONGPASS``) or command
    (``NOPERM``, also inside the store's scripts) is ``AccessDeniedError``, never retried; a
    Redis that does not answer is ``StoreUnavailableError``; None for anything else."""
    from redis import exceptions

    if isinstance(exc, exceptions.AuthenticationError | exceptions.NoPermissionError) or (
        isinstance(exc, exceptions.ResponseError) and _SCRIPT_DENIED in str(exc)
    ):
        return AccessDeniedError(
            f"{doing}: Redis refused the user of CONSENT_STREAM_REDIS_URL: {exc}",
            reason="store_access_denied",
        )
    if isinstance(exc, exceptions.ConnectionError | exceptions.TimeoutError):
        return StoreUnavailableError(f"{doing}: {exc}")
    return None


def project_error(exc: BaseException) -> ConsentStreamError | None:
    """``exc`` as a project error, or None when it is not an operational error we know."""
    if isinstance(exc, ConsentStreamError):
        return exc
    from confluent_kafka import KafkaException

    if isinstance(exc, KafkaException):
        return kafka_error(exc)
    from redis.exceptions import RedisError

    if isinstance(exc, RedisError):
        return redis_error(exc) or StoreUnavailableError(f"consent store (Redis): {exc}")
    return None


def exit_code(error: ConsentStreamError) -> int:
    """The command line's exit status for ``error`` (the table above)."""
    if isinstance(error, AccessDeniedError):
        return 4
    if isinstance(error, ConfigurationError):
        return 3
    if isinstance(error, ContractError):
        return 2
    if isinstance(error, StoreUnavailableError):
        return 6
    if isinstance(error, TransientError):
        return 5
    return 1
