"""The client libraries' operational errors become project errors with an exit code, and
the command line prints one line for them, never a traceback."""

from __future__ import annotations

import argparse

import pytest
from confluent_kafka import KafkaError, KafkaException
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.client_errors import exit_code, kafka_error, project_error, redis_error
from schemas.errors import (
    AccessDeniedError,
    BrokerUnavailableError,
    ConfigurationError,
    OversizedRecordError,
    PolicyError,
    PublishError,
    StoreUnavailableError,
    TransientError,
    UnknownPurposeError,
    UnknownTopicError,
)
from streams import cli

KAFKA = {
    KafkaError._TRANSPORT: (BrokerUnavailableError, 5),
    KafkaError._ALL_BROKERS_DOWN: (BrokerUnavailableError, 5),
    KafkaError._TIMED_OUT: (BrokerUnavailableError, 5),
    KafkaError._UNKNOWN_TOPIC: (UnknownTopicError, 3),
    KafkaError.UNKNOWN_TOPIC_OR_PART: (UnknownTopicError, 3),
    KafkaError._AUTHENTICATION: (AccessDeniedError, 4),
    KafkaError.SASL_AUTHENTICATION_FAILED: (AccessDeniedError, 4),
    KafkaError.TOPIC_AUTHORIZATION_FAILED: (AccessDeniedError, 4),
    KafkaError.GROUP_AUTHORIZATION_FAILED: (AccessDeniedError, 4),
    KafkaError.MSG_SIZE_TOO_LARGE: (OversizedRecordError, 2),
    KafkaError._INVALID_ARG: (ConfigurationError, 3),
    KafkaError._FATAL: (TransientError, 5),
}


@pytest.mark.parametrize(("code", "expected"), list(KAFKA.items()), ids=str)
def test_kafka_errors_by_code(code: int, expected: tuple[type[Exception], int]) -> None:
    kind, status = expected
    error = kafka_error(KafkaException(KafkaError(code)), "doing it")
    assert type(error) is kind
    assert str(error).startswith("Kafka: doing it: ")
    assert exit_code(error) == status


def test_redis_errors_and_project_errors() -> None:
    down = project_error(RedisConnectionError("Connection refused"))
    assert isinstance(down, StoreUnavailableError) and exit_code(down) == 6
    assert exit_code(PublishError("x")) == 5
    assert exit_code(PolicyError("purposes.x", "bad")) == 3
    assert exit_code(UnknownPurposeError("x")) == 2
    assert project_error(ValueError("a bug")) is None  # not operational: not hidden


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (AuthenticationError("invalid username-password pair"), AccessDeniedError),
        (
            NoPermissionError("this user has no permissions to run the 'set' command"),
            AccessDeniedError,
        ),
        (
            ResponseError("The user executing the script can't run this command or subcommand"),
            AccessDeniedError,
        ),
        (
            ResponseError("The user executing the script can't access at least one of the keys"),
            AccessDeniedError,
        ),
        (RedisConnectionError("Connection refused"), StoreUnavailableError),
        (RedisTimeoutError("Timeout reading from socket"), StoreUnavailableError),
        (ResponseError("WRONGTYPE Operation against a key"), None),
    ],
)
def test_a_refused_redis_user_is_access_denied_not_an_outage(
    exc: Exception, expected: type[Exception] | None
) -> None:
    error = redis_error(exc, "consent store: read")
    if expected is None:
        assert error is None  # anything else goes on as it was raised
        return
    assert type(error) is expected and str(error).startswith("consent store: read: ")
    assert not error.retriable if expected is AccessDeniedError else error.retriable
    assert exit_code(error) == (4 if expected is AccessDeniedError else 6)
    assert type(project_error(exc)) is expected


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exc: BaseException
) -> tuple[int, str]:
    def handler(args: argparse.Namespace, *_: object) -> int:
        raise exc

    monkeypatch.setattr(cli, "_status", handler)
    monkeypatch.setenv("CONSENT_STREAM_DEV_MODE", "1")
    code = cli.main(["status", "some-request"])
    return code, capsys.readouterr().err


def test_the_command_line_prints_one_line_and_exits_with_the_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = KafkaException(KafkaError(KafkaError._TRANSPORT, "127.0.0.1:1/bootstrap: refused"))
    code, err = run_main(monkeypatch, capsys, error)
    assert code == 5
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("consent-stream: broker_unavailable: Kafka: ")
    code, err = run_main(monkeypatch, capsys, RedisConnectionError("Error 111\nrefused"))
    assert code == 6 and err.count("\n") == 1 and "store_unavailable" in err


def test_a_bug_still_shows_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ZeroDivisionError):
        run_main(monkeypatch, capsys, ZeroDivisionError("a bug"))


def test_every_command_refuses_to_start_without_a_subject_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONSENT_STREAM_DEV_MODE", raising=False)
    monkeypatch.delenv("CONSENT_STREAM_SUBJECT_KEY", raising=False)
    assert cli.main(["status", "some-request"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("consent-stream: configuration: CONSENT_STREAM_SUBJECT_KEY is not set")
    assert "CONSENT_STREAM_DEV_MODE=1" in err and err.count("\n") == 1
