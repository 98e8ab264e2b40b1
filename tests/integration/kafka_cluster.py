"""Three Kafka brokers on loopback (KRaft), started for a test.

The local stack runs one broker; what only a cluster shows (replicas, ``min.insync.replicas``,
a broker lost) needs three. They run the stack's own Kafka jars (``deploy/local/stack.py``
installs them) under the test's directory, on free ports, secured as the local stack's
broker is (``deploy/local/stack_auth.security_properties``): SASL on every listener
(SCRAM-SHA-512 for clients and between brokers, PLAIN as ``admin`` to the controller), the
``StandardAuthorizer`` with ``admin`` the only super user, and every principal of the
stack's credentials file with the same password, so the tests' clients and the processes
under test log in and get their ACLs as on the stack. Broker
3 is also the cluster's one controller, so brokers 1 and 2 can both be lost while the
controller still moves leaders and shrinks the in-sync replicas: a broker that stops
answering its heartbeats is fenced after ``SESSION_TIMEOUT_MS`` and leaves them. Each is
started here and SIGKILLed or stopped by the pid it got, never by name.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Final

import pytest

from schemas.kafka_security import read_credentials
from schemas.settings import Settings
from streams.demo.processes import free_port

from .processes import poll_until, stop_all

__all__ = ["KafkaCluster"]

HOST: Final = "127.0.0.1"
NODES: Final = (1, 2, 3)
CONTROLLER: Final = 3
ADMIN: Final = "admin"
SESSION_TIMEOUT_MS: Final = 3000
READY_TIMEOUT_S: Final = 90.0
_STACK_PY: Final = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.py"


def _stack_auth() -> ModuleType:
    """``deploy/local/stack_auth.py``, loaded by its path as ``stack.py`` loads it."""
    _stack()
    module = sys.modules.get("stack_auth")
    assert module is not None, "stack.py did not load stack_auth"
    return module


def _credentials() -> dict[str, str]:
    """The principals and passwords of the stack's credentials file (``make env``)."""
    path = Settings.from_env().credentials_file
    assert path, "CONSENT_STREAM_CREDENTIALS_FILE is not set (make env)"
    return {name: secret.reveal().decode() for name, secret in read_credentials(path).items()}


def _stack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consent_stack", _STACK_PY)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return module


@dataclass
class KafkaCluster:
    """Brokers 1-3 under ``base``: ``ports[n]`` for clients; 3 is the controller too."""

    base: Path
    ports: dict[int, int] = field(default_factory=lambda: {n: free_port() for n in NODES})
    controller_port: int = field(default_factory=free_port)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{self.ports[n]}" for n in NODES)

    def start(self) -> None:
        stack = _stack()
        cfg = stack.load_config(stack.DEFAULT_CONFIG)
        if not stack.jars_installed(cfg.kafka):
            pytest.fail("the Kafka jars are not installed (make stack installs them)")
        self._java, self._libs = stack.java_executable(), str(cfg.kafka.libs)
        self._answers = stack.kafka_answers
        self._auth, self._credentials = _stack_auth(), _credentials()
        cluster_id = stack.kafka_uuid()
        for n in NODES:
            self._format(n, cluster_id)
        for n in NODES:
            self._spawn(n)
        for n in NODES:
            self.wait_until(lambda n=n: self._answers(HOST, self.ports[n]), f"broker {n}")
        self._add_principals()

    def kill(self, n: int) -> None:
        """SIGKILL broker ``n`` (1 or 2: 3 is the controller), by its pid."""
        assert n != CONTROLLER, "the controller stays: it is what fences the others"
        proc = self.procs.pop(n)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, n: int) -> None:
        self._spawn(n)
        self.wait_until(lambda: self._answers(HOST, self.ports[n]), f"broker {n} again")

    def stop(self) -> None:
        stop_all(self.procs.values(), 30.0)
        self.procs.clear()

    def wait_until(
        self, condition: Callable[[], bool], what: str, timeout_s: float = READY_TIMEOUT_S
    ) -> None:
        poll_until(condition, timeout_s, what, interval_s=0.2)

    # -- internals -----------------------------------------------------------------------

    def _add_principals(self) -> None:
        """Every principal of the credentials file, its SCRAM credential set as admin."""
        from confluent_kafka import admin as mod

        config = self._auth.admin_client_config(self.bootstrap, self._credentials[ADMIN])
        client = mod.AdminClient(config)
        self._auth.upsert_principals(mod, client, self._credentials)
        others = sorted(set(self._credentials) - {ADMIN})
        listed = lambda: all(  # noqa: E731
            f.result().scram_credential_infos
            for f in client.describe_user_scram_credentials(others, request_timeout=10).values()
        )
        self.wait_until(listed, "every principal's credential")

    def _properties(self, n: int) -> Path:
        props = self._auth.security_properties(
            HOST, self.ports[n], self.controller_port, self._credentials[ADMIN]
        )
        if n != CONTROLLER:  # it reaches the controller's listener, and serves none
            props["listeners"] = props["advertised.listeners"]
        props |= {
            "process.roles": "broker,controller" if n == CONTROLLER else "broker",
            "node.id": str(n),
            "controller.quorum.voters": f"{CONTROLLER}@{HOST}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.base / f"kafka-{n}"),
            "offsets.topic.replication.factor": "3",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "group.initial.rebalance.delay.ms": "0",
            "broker.session.timeout.ms": str(SESSION_TIMEOUT_MS),
            "broker.heartbeat.interval.ms": "500",
            "replica.lag.time.max.ms": "5000",
        }
        path = self.base / f"server-{n}.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _format(self, n: int, cluster_id: str) -> None:
        argv = [
            self._java, "-cp", f"{self._libs}/*", "kafka.tools.StorageTool", "format",
            "-t", cluster_id, "-c", str(self._properties(n)),
            *self._auth.scram_format_args(self._credentials[ADMIN]),
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            pytest.fail(f"formatting broker {n} failed:\n{result.stdout}{result.stderr}")

    def _spawn(self, n: int) -> None:
        argv = [
            self._java, "-Xmx384m", "-XX:+UseSerialGC", f"-Dkafka.logs.dir={self.base}",
            "-cp", f"{self._libs}/*", "kafka.Kafka", str(self.base / f"server-{n}.properties"),
        ]  # fmt: skip
        log = (self.base / f"kafka-{n}.log").open("ab")
        self.procs[n] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
