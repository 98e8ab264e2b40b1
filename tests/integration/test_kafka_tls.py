"""The service over TLS, as a real cluster runs it (docs/security.md): the local stack's
broker also serves ``SASL_SSL`` (``stack.py env --tls``: that listener and the stack's own
CA; the same principals and ACLs).

A worker given only that listener joins its group (aiokafka, with the TLS context of
``streams.app``), fetches and sends (librdkafka) over TLS, and talks to no other Kafka port;
a withdrawal published over TLS reaches the store and the partner's topic. A client that
does not trust the broker's certificate (another CA, or none: the system's) is refused at
once with librdkafka's reason, not after a timeout, and so is a certificate of the trusted
CA that names another host; a CA file that does not exist is a configuration error before
anything connects.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from schemas.settings import ENV_PREFIX, Settings
from streams.app import tls_context

from .conftest import parse_exports, run_stack
from .processes import WorkerFactory, consent_changed, new_subject, read_until
from .processes import worker_factory as worker_factory
from .test_cli_errors import cli, line, one_line

pytestmark = pytest.mark.integration

ADS = "personalized_ads"
TIMEOUT_S = 30.0
REFUSED_WITHIN_S = 5.0
"""A refused certificate is known at the first handshake; the broker-down timeout is 10 s."""


@pytest.fixture(scope="module")
def tls() -> dict[str, str]:
    """The Kafka settings of the stack's TLS listener (``CONSENT_STREAM_*`` names)."""
    env = parse_exports(run_stack("env", "--tls", timeout=30))
    host, port = env[ENV_PREFIX + "BOOTSTRAP_SERVERS"].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        pytest.fail(
            f"the stack's TLS listener {host}:{port} does not answer ({exc}); a stack started "
            "before it existed: `make stop && make stack`"
        )
    keys = ("BOOTSTRAP_SERVERS", "SECURITY_PROTOCOL", "SSL_CA_LOCATION")
    return {ENV_PREFIX + k: env[ENV_PREFIX + k] for k in keys}


def over_tls(settings: Settings, tls: Mapping[str, str]) -> Settings:
    return replace(
        settings,
        bootstrap_servers=tls[ENV_PREFIX + "BOOTSTRAP_SERVERS"],
        security_protocol=tls[ENV_PREFIX + "SECURITY_PROTOCOL"],
        ssl_ca_location=tls[ENV_PREFIX + "SSL_CA_LOCATION"],
    )


def remote_ports(pid: int) -> set[int]:
    """The remote ports of the TCP connections of process ``pid`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with_target = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd)) if fd.exists() else None
        if with_target:
            inodes.add(with_target.group(1))
    ports = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def test_a_worker_on_the_tls_listener_carries_a_withdrawal_to_store_and_partner(
    worker_factory: WorkerFactory, tls: dict[str, str]
) -> None:
    worker = worker_factory(env=tls)
    settings = over_tls(worker.settings, tls)
    subject = new_subject("tls")
    withdrawal = consent_changed(subject, ADS, granted=False)

    with ConsentPublisher(settings.as_principal("publisher"), worker.policy) as publisher:
        publisher.publish(withdrawal)

    redis_client = make_redis(settings)
    try:
        store = ConsentStore(
            redis_client, worker.policy, settings.subject_keys, settings.redis_prefix
        )
        worker.poll(lambda: not store.is_allowed(subject, ADS), TIMEOUT_S, "the store to deny")
    finally:
        redis_client.close()
    records = read_until(
        settings,  # the tests' admin principal, over TLS too
        settings.topics.instructions("ads"),
        lambda rs: any(r.obj.source_event_id == withdrawal.event_id for r in rs),
        timeout_s=TIMEOUT_S,
        what="the ads partner's instruction",
        explain=worker.describe,
    )
    assert [r.obj.subject_ref for r in records if r.obj.source_event_id == withdrawal.event_id]
    assert worker.pid is not None
    tls_port = int(settings.bootstrap_servers.rsplit(":", 1)[1])
    plaintext_port = int(worker.config.bootstrap_servers.rsplit(":", 1)[1])
    ports = remote_ports(worker.pid)
    assert tls_port in ports, ports
    assert plaintext_port not in ports, ports  # every Kafka connection of it is TLS


def test_remove_worker_reaches_the_group_coordinator_over_tls(
    worker_factory: WorkerFactory, tls: dict[str, str]
) -> None:
    worker = worker_factory(env=tls)
    app_id = worker.config.app_id
    result = cli(
        "remove-worker",
        "absent-worker",
        APP_ID=app_id,
        TOPIC_NAMESPACE=worker.settings.topic_namespace,
        **{k.removeprefix(ENV_PREFIX): v for k, v in tls.items()},
    )
    assert result.returncode == 1, result.stderr  # asked, answered: not a member
    assert result.stdout.splitlines() == [f"absent-worker: not in it (group {app_id})"]


@pytest.mark.parametrize("trusted", ["another CA", "the system's CAs"])
@pytest.mark.parametrize("command", ["publish", "worker"])
def test_a_client_that_does_not_trust_the_broker_is_refused_at_once(
    tmp_path: Path, tls: dict[str, str], trusted: str, command: str
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    env = {k.removeprefix(ENV_PREFIX): v for k, v in tls.items()}
    env["SSL_CA_LOCATION"] = str(other) if trusted == "another CA" else ""
    env["TOPIC_NAMESPACE"] = f"tls{os.getpid()}"

    started = time.monotonic()
    result = cli(command, *(["-"] if command == "publish" else []), stdin=line("tls-1"), **env)
    elapsed = time.monotonic() - started

    assert result.returncode == 3, result.stderr  # a configuration error, not retried
    message = one_line(result, "tls_failed")
    assert "certificate verify failed" in message
    assert env["BOOTSTRAP_SERVERS"] in message
    assert elapsed < REFUSED_WITHIN_S + 3, elapsed  # + the interpreter's start


def test_a_ca_file_that_does_not_exist_is_a_configuration_error(
    tmp_path: Path, tls: dict[str, str]
) -> None:
    env = {k.removeprefix(ENV_PREFIX): v for k, v in tls.items()}
    env["SSL_CA_LOCATION"] = str(tmp_path / "missing.pem")

    result = cli("publish", "-", stdin=line("tls-2"), **env)

    assert result.returncode == 3, result.stderr
    message = one_line(result, "configuration")
    assert "CONSENT_STREAM_SSL_CA_LOCATION" in message and "no such file" in message


def test_a_broker_certificate_for_another_name_is_refused_by_both_clients(
    tmp_path: Path,
) -> None:
    """A listener whose certificate (from the trusted CA) names another host: librdkafka
    and aiokafka's context both check the name, so a stolen certificate of another broker
    cannot stand in for this one."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("broker.example").configure_cert(server_context)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:  # handshakes only: the client refuses before any request
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), conn:
                conn.settimeout(2)
                server_context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            pytest.raises(ssl.SSLCertVerificationError, match="mismatch"),
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ):
            tls_context(str(tmp_path / "ca.pem")).wrap_socket(raw, server_hostname="127.0.0.1")
        result = cli(
            "publish",
            "-",
            stdin=line("tls-3"),
            BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
            SECURITY_PROTOCOL="SASL_SSL",
            SSL_CA_LOCATION=str(tmp_path / "ca.pem"),
        )
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert result.returncode == 3, result.stderr
    # the CA is trusted: only the name differs (librdkafka says no more than this)
    assert "certificate verify failed" in one_line(result, "tls_failed")
