"""Kafka security settings: one principal per process, secrets never shown."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from deploy_modules import deploy_module

from schemas.errors import ConfigurationError
from schemas.kafka_security import security_env
from schemas.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BASE = {"CONSENT_STREAM_DEV_MODE": "1"}


def _stack_auth() -> Any:
    return deploy_module("stack_auth")


def _credentials(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text('[principals]\nadmin = "admin-password-1"\nworker = "worker-password-1"\n')
    path.chmod(mode)
    return path


def test_an_explicit_principal_goes_to_librdkafka_and_never_into_a_repr() -> None:
    env = {
        **BASE,
        "CONSENT_STREAM_SASL_USERNAME": "worker",
        "CONSENT_STREAM_SASL_PASSWORD": "s3cret-password-xyz",
    }
    settings = Settings.from_env(env)
    config = settings.producer_config()
    assert config["security.protocol"] == "SASL_PLAINTEXT"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("worker", "s3cret-password-xyz")
    assert "s3cret-password-xyz" not in repr(settings)


def test_plaintext_stays_the_default_without_any_security_setting() -> None:
    config = Settings.from_env(BASE).consumer_config("g")
    assert config["security.protocol"] == "PLAINTEXT"
    assert "sasl.username" not in config


def test_each_command_takes_its_own_principal_from_the_credentials_file(tmp_path: Path) -> None:
    env = {**BASE, "CONSENT_STREAM_CREDENTIALS_FILE": str(_credentials(tmp_path))}
    settings = Settings.from_env(env)
    with pytest.raises(ConfigurationError, match="needs a principal"):
        settings.admin_config()
    worker = settings.as_principal("worker")
    assert worker.admin_config()["sasl.username"] == "worker"
    assert worker.as_principal("admin").admin_config()["sasl.password"] == "admin-password-1"
    with pytest.raises(ConfigurationError, match="no Kafka principal 'publisher'"):
        settings.as_principal("publisher")


def test_an_explicit_principal_wins_over_the_credentials_file(tmp_path: Path) -> None:
    env = {
        **BASE,
        "CONSENT_STREAM_CREDENTIALS_FILE": str(_credentials(tmp_path)),
        "CONSENT_STREAM_SASL_USERNAME": "svc-orders",
        "CONSENT_STREAM_SASL_PASSWORD": "orders-password-1",
    }
    settings = Settings.from_env(env).as_principal("worker")
    assert settings.admin_config()["sasl.username"] == "svc-orders"


def test_a_credentials_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    env = {**BASE, "CONSENT_STREAM_CREDENTIALS_FILE": str(_credentials(tmp_path, 0o644))}
    with pytest.raises(ConfigurationError, match="readable by others"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"CONSENT_STREAM_SECURITY_PROTOCOL": "TLS"}, "must be one of"),
        ({"CONSENT_STREAM_SASL_MECHANISM": "GSSAPI"}, "must be one of"),
        ({"CONSENT_STREAM_SASL_USERNAME": "worker"}, "go together"),
        ({"CONSENT_STREAM_CREDENTIALS_FILE": "/nonexistent/creds.toml"}, "cannot read"),
    ],
)
def test_bad_security_settings_are_clear_errors(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({**BASE, **extra})


def test_child_processes_get_the_security_settings_only() -> None:
    env = {
        "CONSENT_STREAM_CREDENTIALS_FILE": "/x",
        "CONSENT_STREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CONSENT_STREAM_TOPIC_NAMESPACE": "ns",
    }
    assert security_env(env) == {
        "CONSENT_STREAM_CREDENTIALS_FILE": "/x",
        "CONSENT_STREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    }


def test_the_local_broker_denies_by_default_with_admin_the_only_super_user() -> None:
    props = _stack_auth().security_properties("127.0.0.1", 19092, 19093, "pw-123")
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    assert props["listeners"].startswith("SASL_PLAINTEXT://127.0.0.1:19092")
    assert "PLAINTEXT://" not in props["advertised.listeners"].replace("SASL_PLAINTEXT://", "")


def test_stack_credentials_are_generated_once_and_owner_only(tmp_path: Path) -> None:
    auth = _stack_auth()
    path = tmp_path / "credentials.toml"
    first, added = auth.ensure_credentials(path, ["admin", "worker"])
    assert added == ["admin", "worker"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, added = auth.ensure_credentials(path, ["admin", "worker", "partner-ads"])
    assert added == ["partner-ads"]
    assert again["admin"] == first["admin"] and again["worker"] == first["worker"]
    assert (
        Settings.from_env({**BASE, "CONSENT_STREAM_CREDENTIALS_FILE": str(path)})
        .as_principal("partner-ads")
        .sasl_username
        == "partner-ads"
    )


def _stack_tls() -> Any:
    return deploy_module("stack_tls")


def test_the_ca_location_is_a_file_or_a_directory_that_exists(tmp_path: Path) -> None:
    tls = {**BASE, "CONSENT_STREAM_SECURITY_PROTOCOL": "SSL"}
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    for where in (ca, tmp_path):
        settings = Settings.from_env({**tls, "CONSENT_STREAM_SSL_CA_LOCATION": str(where)})
        assert settings.admin_config()["ssl.ca.location"] == str(where)
    unset = Settings.from_env({**tls, "CONSENT_STREAM_SSL_CA_LOCATION": " "})
    assert unset.ssl_ca_location is None and "ssl.ca.location" not in unset.admin_config()
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match=r"SSL_CA_LOCATION='.*missing\.pem': no such file"):
        Settings.from_env({**tls, "CONSENT_STREAM_SSL_CA_LOCATION": missing})


def test_aiokafka_trusts_the_same_ca_file_or_directory(tmp_path: Path) -> None:
    import ssl

    import trustme

    from streams.app import tls_context

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    from_file = tls_context(str(tmp_path / "ca.pem"))
    assert len(from_file.get_ca_certs()) == 1
    for context in (from_file, tls_context(str(tmp_path)), tls_context(None)):
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_the_local_broker_also_serves_sasl_ssl_with_the_same_logins(tmp_path: Path) -> None:
    props = _stack_auth().security_properties("127.0.0.1", 19092, 19093, "pw-1", tls_port=19094)
    assert props["listeners"] == (
        "SASL_PLAINTEXT://127.0.0.1:19092,SASL_SSL://127.0.0.1:19094,CONTROLLER://127.0.0.1:19093"
    )
    assert props["advertised.listeners"] == (
        "SASL_PLAINTEXT://127.0.0.1:19092,SASL_SSL://127.0.0.1:19094"
    )
    assert "SASL_SSL:SASL_SSL" in props["listener.security.protocol.map"].split(",")
    jaas = "listener.name.{}.scram-sha-512.sasl.jaas.config"
    assert props[jaas.format("sasl_ssl")] == props[jaas.format("sasl_plaintext")]
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    tls = _stack_tls()
    files = tls.TlsFiles(tmp_path)
    assert tls.listener_properties("SASL_SSL", files) == {
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(tmp_path / "broker.pem"),
        "listener.name.sasl_ssl.ssl.client.auth": "none",
        "listener.name.sasl_ssl.ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
    }


@pytest.mark.parametrize(
    ("host", "names"),
    [
        ("127.0.0.1", "IP:127.0.0.1,DNS:localhost"),
        ("::1", "IP:::1,DNS:localhost"),
        ("kafka.internal", "DNS:kafka.internal,DNS:localhost"),
        ("localhost", "DNS:localhost"),
    ],
)
def test_the_broker_certificate_names_the_stack_host_and_localhost(host: str, names: str) -> None:
    assert _stack_tls().subject_alt_names(host) == names


def test_a_redis_password_in_the_url_never_shows_in_a_repr() -> None:
    url = "redis://consent-writer:redis-password-1@127.0.0.1:16379/0"
    settings = Settings.from_env({**BASE, "CONSENT_STREAM_REDIS_URL": url})
    assert settings.redis_url == url
    assert "redis-password-1" not in repr(settings)
