"""A Redis primary, two replicas and one Sentinel on loopback, started for a test.

Debian's ``redis-server`` (the local stack's) runs all three (``--sentinel`` for the
Sentinel). With ``tls``, every one of them listens on TLS only (certificates of a test CA,
``trustme``) and the replicas and the Sentinel reach the others over TLS too. Each
process is started here and stopped, or killed for a failover, by the pid it got, never by
name. The Sentinel promotes a replica one second after it loses the
primary (``down-after-milliseconds``; with one Sentinel its quorum is 1): the one with the
most of the primary's writes, and the other replica then follows it.

With ``users`` (``NodeUsers``), the data nodes take no anonymous login, as a production
store's would: the store's ``writer`` and ``reader`` with the rules of
``consumers.store.acl`` on one prefix, a ``replica`` user the replicas replicate as
(``masteruser``), a ``sentinel`` user with the commands Sentinel needs to watch and promote
(``sentinel auth-user``), and ``admin`` for this harness; the Sentinel itself asks for a
password (``requirepass``).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import redis

from consumers.store.acl import setuser_args
from schemas.redis_settings import DEFAULT_SENTINEL_SERVICE, RedisSentinel
from schemas.secrets import Secret
from streams.demo.processes import free_port

from .processes import poll_until, stop_all

__all__ = ["NodeUsers", "SentinelRedis", "TlsFiles"]

HOST: Final = "127.0.0.1"
DOWN_AFTER_MS: Final = 1000
READY_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True)
class TlsFiles:
    """A test CA and one certificate for 127.0.0.1, as PEM files."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def issue(cls, base: Path) -> TlsFiles:
        import trustme

        ca = trustme.CA()
        issued = ca.issue_cert(HOST)
        files = cls(base / "ca.pem", base / "redis.pem", base / "redis.key")
        ca.cert_pem.write_to_path(str(files.ca))
        issued.cert_chain_pems[0].write_to_path(str(files.cert))
        issued.private_key_pem.write_to_path(str(files.key))
        return files

    def server_args(self) -> list[str]:
        """``redis-server`` options: TLS only, for clients and for replication."""
        return [
            "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
            "--tls-replication", "yes",
        ]  # fmt: skip


SENTINEL_RULES: Final = (
    "allchannels", "+multi", "+slaveof", "+ping", "+exec", "+subscribe", "+config|rewrite",
    "+role", "+publish", "+info", "+client|setname", "+client|kill", "+script|kill",
)  # fmt: skip
"""What a Sentinel runs on the data nodes it watches (Redis's Sentinel documentation)."""


@dataclass(frozen=True)
class NodeUsers:
    """The data nodes' users (one password each) and the Sentinel's own password."""

    prefix: str = field(default_factory=lambda: f"ha{uuid.uuid4().hex[:8]}")
    passwords: dict[str, str] = field(
        default_factory=lambda: {
            name: secrets.token_urlsafe(16)
            for name in ("admin", "writer", "reader", "replica", "sentinel", "sentinel-own")
        }
    )

    def acl_file(self) -> str:
        """Every data node's ``aclfile``: no ``default``; the store's roles on ``prefix``."""
        pw = self.passwords
        lines = [
            "user default off",
            f"user admin on >{pw['admin']} ~* &* +@all",
            f"user replica on >{pw['replica']} resetchannels -@all +psync +replconf +ping",
            f"user sentinel on >{pw['sentinel']} -@all {' '.join(SENTINEL_RULES)}",
        ]
        for role in ("writer", "reader"):
            args = setuser_args(role, Secret(pw[role]), self.prefix, role)
            lines.append(" ".join(["user", *args]))
        return "\n".join(lines) + "\n"


@dataclass
class SentinelRedis:
    """The processes under ``base``; ``primary`` and ``replicas`` are ports."""

    base: Path
    tls: TlsFiles | None = None
    users: NodeUsers | None = None
    primary: int = field(default_factory=free_port)
    replicas: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))
    sentinel_port: int = field(default_factory=free_port)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    own_prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")

    @property
    def sentinel(self) -> RedisSentinel:
        password = None if self.users is None else Secret(self.users.passwords["sentinel-own"])
        return RedisSentinel(((HOST, self.sentinel_port),), DEFAULT_SENTINEL_SERVICE, password)

    @property
    def prefix(self) -> str:
        """The store prefix to use: the one the users may write, else this run's own."""
        return self.users.prefix if self.users is not None else self.own_prefix

    @property
    def url(self) -> str:
        """The data nodes' URL (its host and port are not used with Sentinels)."""
        login = "" if self.users is None else f"writer:{self.users.passwords['writer']}@"
        if self.tls is not None:
            return f"rediss://{login}{HOST}:{self.primary}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{login}{HOST}:{self.primary}/0"

    def start(self) -> None:
        self._server(self.primary)
        for replica in self.replicas:
            self._server(replica, "--replicaof", HOST, str(self.primary))
        conf = self.base / "sentinel.conf"  # Sentinel rewrites its file: one of its own
        conf.write_text(
            self._listen(self.sentinel_port) + f"bind {HOST}\ndir {self.base}\n"
            f"sentinel monitor {DEFAULT_SENTINEL_SERVICE} {HOST} {self.primary} 1\n"
            f"sentinel down-after-milliseconds {DEFAULT_SENTINEL_SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {DEFAULT_SENTINEL_SERVICE} 5000\n" + self._sentinel_login()
        )
        self._spawn(self.sentinel_port, str(conf), "--sentinel")
        self.wait_until(self._replicas_known, "the Sentinel to know the replicas")

    def stop_replicas(self) -> None:
        """Stop the replicas (SIGTERM, by their pids)."""
        for replica in self.replicas:
            proc = self.procs.pop(replica)
            proc.terminate()
            proc.wait(10)

    def kill_primary(self) -> None:
        """SIGKILL the primary, by its pid."""
        proc = self.procs.pop(self.primary)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def current_primary(self) -> tuple[str, int] | None:
        """Where the Sentinel says the primary is."""
        with self._client(self.sentinel_port) as client:
            answer = client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", DEFAULT_SENTINEL_SERVICE
            )
        return (answer[0].decode(), int(answer[1])) if answer else None

    def denied(self, port: int) -> list[tuple[str, str]]:
        """(user, what) of each refusal in the ACL log of the data node on ``port``."""
        with self._client(port) as client:
            entries = client.acl_log(count=1000)
        return [(str(e["username"]), str(e["object"])) for e in entries]

    def stop(self) -> None:
        stop_all(self.procs.values(), 10.0)
        self.procs.clear()

    def wait_until(
        self, condition: Callable[[], bool], what: str, timeout_s: float = READY_TIMEOUT_S
    ) -> None:
        poll_until(condition, timeout_s, what, interval_s=0.1)

    # -- internals -----------------------------------------------------------------------

    def _server(self, port: int, *args: str) -> None:
        data = self.base / str(port)
        data.mkdir(parents=True, exist_ok=True)
        listen = ["--port", str(port)]
        if self.tls is not None:
            listen = ["--port", "0", "--tls-port", str(port), *self.tls.server_args()]
        self._spawn(
            port, *listen, "--bind", HOST, "--dir", str(data),
            "--save", "", "--appendonly", "no", *self._login_args(), *args,
        )  # fmt: skip

    def _login_args(self) -> list[str]:
        """A data node's options for its users: its ACL file, and the replication user."""
        if self.users is None:
            return []
        acl = self.base / "users.acl"
        acl.write_text(self.users.acl_file())
        pw = self.users.passwords
        return ["--aclfile", str(acl), "--masteruser", "replica", "--masterauth", pw["replica"]]

    def _sentinel_login(self) -> str:
        """sentinel.conf's lines: how it logs in to the data nodes, and its own password."""
        if self.users is None:
            return ""
        pw, service = self.users.passwords, DEFAULT_SENTINEL_SERVICE
        return (
            f"sentinel auth-user {service} sentinel\nsentinel auth-pass {service} "
            f"{pw['sentinel']}\nrequirepass {pw['sentinel-own']}\n"
        )

    def _listen(self, port: int) -> str:
        """The Sentinel's configuration lines for where it listens (and how it connects)."""
        if self.tls is None:
            return f"port {port}\n"
        options = self.tls.server_args()
        pairs = zip(options[::2], options[1::2], strict=True)
        return f"port 0\ntls-port {port}\n" + "".join(f"{k[2:]} {v}\n" for k, v in pairs)

    def _spawn(self, port: int, *args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make stack installs it)")
        log = (self.base / f"{port}.log").open("ab")
        self.procs[port] = subprocess.Popen(
            [binary, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.wait_until(lambda: self._answers(port), f"redis-server on port {port}")

    def _client(self, port: int) -> redis.Redis:
        options: dict[str, Any] = {}
        if self.tls is not None:
            options = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        if self.users is not None and port == self.sentinel_port:
            options["password"] = self.users.passwords["sentinel-own"]
        elif self.users is not None:
            options |= {"username": "admin", "password": self.users.passwords["admin"]}
        return redis.Redis(
            host=HOST, port=port, socket_timeout=2, socket_connect_timeout=2, **options
        )

    def _answers(self, port: int) -> bool:
        try:
            with self._client(port) as client:
                return bool(client.ping())
        except redis.exceptions.RedisError:
            return False

    def _replicas_known(self) -> bool:
        with self._client(self.sentinel_port) as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", DEFAULT_SENTINEL_SERVICE)
        ready = [
            r
            for r in replicas
            if b"s_down" not in _text(r, "flags") and _text(r, "master-link-status") == b"ok"
        ]
        return len(ready) == len(self.replicas)


def _text(reply: dict[Any, Any], name: str) -> bytes:
    """A field of a parsed Sentinel reply (redis-py's keys may be str or bytes)."""
    value = reply.get(name, reply.get(name.encode(), b""))
    return value if isinstance(value, bytes) else str(value).encode()
