#!/usr/bin/env python3
"""Local stack for Consent Stream: single-node Apache Kafka (KRaft) + Redis on loopback.

Standard library only (Python 3.11). Topic creation uses confluent_kafka's AdminClient
when the interpreter running this script has it (the project venv does), otherwise the
broker's own ``org.apache.kafka.tools.TopicCommand``.

Subcommands::

    install   apt-get install what is missing (redis-server, promtool, java, mvn, openssl) and
              fetch the pinned Kafka jars with Maven into the jar cache (once)
    up        install if needed, format KRaft storage once, start Kafka and Redis
              detached, wait until both answer, create the topics (idempotent)
    down      stop what `up` started (pid files; SIGTERM, then SIGKILL after a timeout)
    status    what runs, ports, log files
    env       shell `export` lines with the settings the application reads (`--tls`:
              through the broker's SASL_SSL listener, trusting the stack's own CA)
    reset     down, then delete data, logs and generated config (keeps the jar cache)

Configuration: deploy/local/stack.toml, merged with deploy/local/stack.local.toml when
that file exists (machine-specific overrides, gitignored).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import importlib
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # stack_auth beside this file, also when loaded by path

import stack_auth  # noqa: E402
import stack_tls  # noqa: E402

REPO_ROOT = HERE.parent.parent
DEFAULT_CONFIG = HERE / "stack.toml"
LOCAL_CONFIG = HERE / "stack.local.toml"
POM = HERE / "pom.xml"
POLICY_ENV = "CONSENT_STREAM_POLICY"  # the policy file the application reads

# command on PATH -> Debian package that provides it
APT_PACKAGES: dict[str, str] = {
    "redis-server": "redis-server",
    "promtool": "prometheus",
    "java": "default-jre-headless",
    "mvn": "maven",
    "openssl": "openssl",  # the TLS listener's certificates (stack_tls)
}


class StackError(Exception):
    """A failure with a message meant for the person running the stack."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


@dataclass(frozen=True)
class KafkaConfig:
    version: str
    host: str
    port: int
    controller_port: int
    tls_port: int
    heap: str
    jvm_opts: tuple[str, ...]
    cache_dir: Path
    maven_repo_local: Path | None
    data_dir: Path
    log_file: Path
    stdout_log_file: Path
    server_properties: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def tls_bootstrap(self) -> str:
        return f"{self.host}:{self.tls_port}"

    @property
    def jar_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}"

    @property
    def libs(self) -> Path:
        return self.jar_dir / "libs"

    @property
    def marker(self) -> Path:
        return self.jar_dir / ".complete"


@dataclass(frozen=True)
class RedisConfig:
    host: str
    port: int
    db: int
    persistence: str
    data_dir: Path
    log_file: Path

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path
    startup_timeout_s: float
    stop_timeout_s: float
    reset_dirs: tuple[Path, ...]
    kafka: KafkaConfig
    redis: RedisConfig
    partitions: int
    replication_factor: int
    partners: tuple[str, ...]
    topics: tuple[TopicSpec, ...] = field(default_factory=tuple)

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def conf_dir(self) -> Path:
        return self.state_dir / "conf"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def server_properties(self) -> Path:
        return self.conf_dir / "server.properties"

    @property
    def redis_acl_file(self) -> Path:
        """The Redis users (``stack_auth.store_acl_file``; hashed passwords, 0600)."""
        return self.conf_dir / "redis-users.acl"

    @property
    def log4j_properties(self) -> Path:
        return self.conf_dir / "log4j.properties"

    @property
    def credentials_file(self) -> Path:
        """Passwords of the stack's Kafka principals (0600; kept by ``reset``)."""
        return self.state_dir / "credentials.toml"

    @property
    def admin_properties(self) -> Path:
        """The admin principal's client settings for the Java tools (0600)."""
        return self.conf_dir / "admin.properties"

    @property
    def tls_files(self) -> stack_tls.TlsFiles:
        """The stack's CA and the broker's keystore (``stack_tls``; kept by ``reset``)."""
        return stack_tls.TlsFiles(self.state_dir / "tls")

    @property
    def auth_marker(self) -> Path:
        """Digest of the admin password the KRaft storage was formatted with."""
        return self.kafka.data_dir / "consent-stream-admin.sha256"


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into a copy of ``base``; tables merge, other values replace."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise StackError(f"cannot read {path}: {exc}") from exc


def table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise StackError(f"[{key}] must be a table")
    return value


def repo_path(value: object, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise StackError(f"{what} must be a non-empty path string")
    path = Path(value)
    return path if path.is_absolute() else REPO_ROOT / path


def str_map(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise StackError(f"{what} must be a table of strings")
    return {str(k): str(v) for k, v in value.items()}


def parse_kafka(data: Mapping[str, Any]) -> KafkaConfig:
    repo_local = str(data.get("maven_repo_local", ""))
    return KafkaConfig(
        version=str(data.get("version", "3.9.1")),
        host=str(data.get("host", "127.0.0.1")),
        port=int(data.get("port", 19092)),
        controller_port=int(data.get("controller_port", 19093)),
        tls_port=int(data.get("tls_port", 19094)),
        heap=str(data.get("heap", "1g")),
        jvm_opts=tuple(str(o) for o in data.get("jvm_opts", [])),
        cache_dir=repo_path(data.get("cache_dir", ".stack/cache"), "kafka.cache_dir"),
        maven_repo_local=repo_path(repo_local, "maven_repo_local") if repo_local else None,
        data_dir=repo_path(data.get("data_dir", ".stack/data/kafka"), "kafka.data_dir"),
        log_file=repo_path(data.get("log_file", ".stack/logs/kafka.log"), "log_file"),
        stdout_log_file=repo_path(
            data.get("stdout_log_file", ".stack/logs/kafka.stdout.log"), "stdout_log_file"
        ),
        server_properties=str_map(data.get("server_properties", {}), "server_properties"),
    )


def parse_redis(data: Mapping[str, Any]) -> RedisConfig:
    persistence = str(data.get("persistence", "none"))
    if persistence not in ("none", "aof"):
        raise StackError('redis.persistence must be "none" or "aof"')
    return RedisConfig(
        host=str(data.get("host", "127.0.0.1")),
        port=int(data.get("port", 16379)),
        db=int(data.get("db", 0)),
        persistence=persistence,
        data_dir=repo_path(data.get("data_dir", ".stack/data/redis"), "redis.data_dir"),
        log_file=repo_path(data.get("log_file", ".stack/logs/redis.log"), "redis.log_file"),
    )


def topic_spec(entry: object, default_partitions: int, name: str | None) -> TopicSpec:
    if not isinstance(entry, dict):
        raise StackError("each [[topics.topic]] / [[topics.per_partner]] must be a table")
    return TopicSpec(
        name=name if name is not None else str(entry["name"]),
        partitions=int(entry.get("partitions", default_partitions)),
        config=str_map(entry.get("config", {}), f"config of topic {entry.get('name')}"),
    )


def parse_topics(data: Mapping[str, Any], partners: Sequence[str]) -> tuple[TopicSpec, ...]:
    partitions = int(data.get("partitions", 3))
    specs = [topic_spec(e, partitions, None) for e in data.get("topic", [])]
    for template in data.get("per_partner", []):
        for partner in partners:
            name = str(template["name"]).replace("{partner}", partner)
            specs.append(topic_spec(template, partitions, name))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StackError(f"topics listed twice: {', '.join(duplicates)}")
    return tuple(specs)


def policy_partners(topics: Mapping[str, Any]) -> list[str]:
    """Partner names of the policy file ([partners.<name>] tables), if there is one."""
    configured = os.environ.get(POLICY_ENV) or str(topics.get("partners_policy_file", ""))
    if not configured:
        return []
    path = repo_path(configured, "topics.partners_policy_file")
    if not path.is_file():
        return []
    return [str(name) for name in table(read_toml(path), "partners")]


def load_config(path: Path) -> StackConfig:
    data = read_toml(path)
    if path == DEFAULT_CONFIG and LOCAL_CONFIG.exists():
        data = deep_merge(data, read_toml(LOCAL_CONFIG))
    stack, topics = table(data, "stack"), table(data, "topics")
    listed = [str(p) for p in topics.get("partners", [])]
    partners = tuple(dict.fromkeys([*listed, *policy_partners(topics)]))
    return StackConfig(
        state_dir=repo_path(stack.get("state_dir", ".stack"), "stack.state_dir"),
        startup_timeout_s=float(stack.get("startup_timeout_s", 90)),
        stop_timeout_s=float(stack.get("stop_timeout_s", 30)),
        reset_dirs=tuple(repo_path(d, "stack.reset_dirs") for d in stack.get("reset_dirs", [])),
        kafka=parse_kafka(table(data, "kafka")),
        redis=parse_redis(table(data, "redis")),
        partitions=int(topics.get("partitions", 3)),
        replication_factor=int(topics.get("replication_factor", 1)),
        partners=partners,
        topics=parse_topics(topics, partners),
    )


# --------------------------------------------------------------------------- helpers


def say(message: str) -> None:
    print(f"stack: {message}", flush=True)


def rel(path: Path) -> str:
    """Path relative to the repo root when inside it (shorter messages)."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def which(command: str) -> str | None:
    return shutil.which(command)


def require(command: str) -> str:
    found = which(command)
    if found is None:
        raise StackError(f"`{command}` not found on PATH (run: stack.py install)")
    return found


def java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return require("java")


def tail(path: Path, lines: int = 25) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"    ({rel(path)} not readable)"
    return "\n".join(f"    {line}" for line in content[-lines:])


@contextlib.contextmanager
def stack_lock(cfg: StackConfig) -> Iterator[None]:
    """Serialise up/down/reset of one stack (e.g. `make stack` vs a pytest fixture)."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.run_dir / "stack.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- install


def missing_commands() -> list[str]:
    return [cmd for cmd in APT_PACKAGES if which(cmd) is None]


@contextlib.contextmanager
def no_service_starts() -> Iterator[None]:
    """Keep apt postinst scripts from starting system daemons (Debian policy-rc.d)."""
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        with contextlib.suppress(OSError):
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            created = True
    try:
        yield
    finally:
        if created:
            policy.unlink(missing_ok=True)


def apt_prefix() -> list[str]:
    if os.geteuid() == 0:
        return []
    sudo = which("sudo")
    if sudo is None:
        raise StackError("not root and no sudo: install the packages by hand")
    return [sudo, "-n"]


def apt_install(packages: Sequence[str]) -> None:
    apt_get = require("apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    prefix = apt_prefix()
    say(f"apt-get install {' '.join(packages)}")
    with no_service_starts():
        for args in (["update", "-q"], ["install", "-y", "-q", *packages]):
            result = subprocess.run(
                [*prefix, apt_get, *args], env=env, stdin=subprocess.DEVNULL, check=False
            )
            if result.returncode != 0:
                raise StackError(f"apt-get {args[0]} failed ({result.returncode})")


def ensure_system_packages() -> None:
    missing = missing_commands()
    if missing:
        apt_install(sorted({APT_PACKAGES[cmd] for cmd in missing}))
    still = missing_commands()
    if still:
        raise StackError(f"still missing after apt-get: {', '.join(still)}")


def jar_fingerprint(cfg: KafkaConfig) -> str:
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    return f"kafka {cfg.version} pom {digest}\n"


def jars_installed(cfg: KafkaConfig) -> bool:
    if not cfg.marker.is_file() or not cfg.libs.is_dir():
        return False
    return cfg.marker.read_text() == jar_fingerprint(cfg)


def maven_argv(cfg: KafkaConfig, output_dir: Path) -> list[str]:
    argv = [require("mvn"), "-q", "-B", "-f", str(POM), f"-Dkafka.version={cfg.version}"]
    if cfg.maven_repo_local is not None:
        argv.append(f"-Dmaven.repo.local={cfg.maven_repo_local}")
    return [
        *argv,
        "dependency:copy-dependencies",
        f"-DoutputDirectory={output_dir}",
        "-DincludeScope=runtime",
    ]


def fetch_jars(cfg: KafkaConfig) -> None:
    partial = cfg.jar_dir / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    cfg.jar_dir.mkdir(parents=True, exist_ok=True)
    argv = maven_argv(cfg, partial)
    say(f"fetching Kafka {cfg.version} jars with Maven into {rel(cfg.libs)}")
    started = time.monotonic()
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not any(partial.glob("kafka_*.jar")):
        output = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise StackError(f"mvn failed ({result.returncode}): {shlex.join(argv)}\n{output}")
    shutil.rmtree(cfg.libs, ignore_errors=True)
    partial.rename(cfg.libs)
    cfg.marker.write_text(jar_fingerprint(cfg))
    say(f"jars ready in {time.monotonic() - started:.1f} s")


def ensure_jars(cfg: StackConfig) -> None:
    if jars_installed(cfg.kafka):
        return
    if owned_pid(kafka_service(cfg)) is not None:
        say("warning: Kafka jars are outdated (pom.xml or version changed) but Kafka runs")
        say("         from them; `stack.py down` then `stack.py up` to refetch")
        return
    fetch_jars(cfg.kafka)


def cmd_install(cfg: StackConfig) -> None:
    started = time.monotonic()
    with stack_lock(cfg):
        ensure_system_packages()
        ensure_jars(cfg)
    say(f"installed ({time.monotonic() - started:.1f} s): {rel(cfg.kafka.libs)}")


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Service:
    name: str
    pid_file: Path
    markers: tuple[str, ...]  # all must occur in /proc/<pid>/cmdline
    endpoint: tuple[str, int]
    logs: tuple[Path, ...]
    login: tuple[str, str] | None = None  # Redis: the admin user the readiness check uses


def kafka_service(cfg: StackConfig) -> Service:
    k = cfg.kafka
    return Service(
        name="kafka",
        pid_file=cfg.run_dir / "kafka.pid",
        markers=("kafka.Kafka", str(cfg.server_properties)),
        endpoint=(k.host, k.port),
        logs=(k.log_file, k.stdout_log_file),
    )


def redis_service(cfg: StackConfig) -> Service:
    r = cfg.redis
    return Service(
        name="redis",
        pid_file=cfg.run_dir / "redis.pid",
        # redis-server rewrites its title to "<path>/redis-server <host>:<port>"
        markers=("redis-server", f"{r.host}:{r.port}"),
        endpoint=(r.host, r.port),
        logs=(r.log_file,),
        login=redis_admin_login(cfg),
    )


def redis_admin_login(cfg: StackConfig) -> tuple[str, str] | None:
    try:
        password = stack_auth.read_store_users(cfg.credentials_file).get(stack_auth.ADMIN)
    except stack_auth.CredentialsError:
        return None
    return None if password is None else (stack_auth.ADMIN, password)


def services(cfg: StackConfig) -> tuple[Service, Service]:
    return kafka_service(cfg), redis_service(cfg)


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def process_cmdline(pid: int) -> str | None:
    """The command line of a live (non-zombie) process, or None."""
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return None
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return None
    return cmdline.replace(b"\0", b" ").decode(errors="replace").strip()


def owned_pid(service: Service) -> int | None:
    """The pid from the pid file if that process is alive and is the one we started."""
    pid = read_pid(service.pid_file)
    if pid is None:
        return None
    cmdline = process_cmdline(pid)
    if cmdline is None or not all(m in cmdline for m in service.markers):
        return None
    return pid


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_detached(argv: Sequence[str], log_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def write_pid(service: Service, pid: int) -> None:
    service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    service.pid_file.write_text(f"{pid}\n")


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on a TCP port (from /proc/net/tcp and tcp6)."""
    inodes: set[str] = set()
    for table_file in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table_file).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def port_owner(port: int) -> str:
    """'pid N: cmdline' of the process listening on a port, when it can be found."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in wanted for fd in (proc / "fd").iterdir()):
                cmdline = process_cmdline(int(proc.name)) or "?"
                short = cmdline if len(cmdline) <= 160 else "..." + cmdline[-160:]
                return f"pid {proc.name}: {short}"
    return "owner unknown"


def ensure_ports_free(service: Service, ports: Sequence[int]) -> None:
    host = service.endpoint[0]
    busy = [p for p in ports if port_open(host, p)]
    if busy:
        by_owner: dict[str, list[str]] = {}
        for p in busy:
            by_owner.setdefault(port_owner(p), []).append(str(p))
        owners = "; ".join(f"{', '.join(ps)} by {o}" for o, ps in by_owner.items())
        raise StackError(
            f"{service.name}: port(s) on {host} used by a process this stack did not start "
            f"({owners}). Stop it (another checkout's stack: `stack.py down` there) or "
            "set other ports in deploy/local/stack.local.toml"
        )


# --------------------------------------------------------------------------- kafka


def kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        raw = os.urandom(16)
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if not text.startswith("-") and raw.strip(b"\0"):
            return text


def credentials(cfg: StackConfig) -> dict[str, str]:
    """Every principal's password (generated once, kept in ``credentials_file``)."""
    try:
        creds, added = stack_auth.ensure_credentials(
            cfg.credentials_file, stack_auth.principals(cfg.partners), cfg.redis.address
        )
    except stack_auth.CredentialsError as exc:
        raise StackError(str(exc)) from exc
    if added:
        say(f"credentials of {', '.join(added)} generated in {rel(cfg.credentials_file)} (0600)")
    return creds


def admin_password(cfg: StackConfig) -> str:
    return credentials(cfg)[stack_auth.ADMIN]


def password_digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()[:16] + "\n"


def check_auth_marker(cfg: StackConfig) -> None:
    """The storage must hold the admin credential of ``credentials_file``."""
    marker = cfg.auth_marker
    if marker.is_file() and marker.read_text() == password_digest(admin_password(cfg)):
        return
    why = (
        "was formatted without authentication (before SASL/SCRAM)"
        if not marker.is_file()
        else f"holds another admin password than {rel(cfg.credentials_file)}"
    )
    raise StackError(
        f"the Kafka data in {rel(cfg.kafka.data_dir)} {why}: `stack.py reset` (or "
        "`make reset`) deletes the local stack's data, then `make stack` starts it secured"
    )


def server_properties(cfg: StackConfig) -> dict[str, str]:
    k = cfg.kafka
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{k.host}:{k.controller_port}",
        "controller.listener.names": "CONTROLLER",
        **stack_auth.security_properties(
            k.host, k.port, k.controller_port, admin_password(cfg), tls_port=k.tls_port
        ),
        **stack_tls.listener_properties(stack_auth.TLS_PROTOCOL, cfg.tls_files),
        "log.dirs": str(k.data_dir),
        "num.partitions": str(cfg.partitions),
        "default.replication.factor": str(cfg.replication_factor),
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "delete.topic.enable": "true",
    }
    props.update(k.server_properties)
    return props


def log4j_properties(cfg: StackConfig) -> dict[str, str]:
    appender = "log4j.appender.file"
    return {
        "log4j.rootLogger": "INFO, file",
        appender: "org.apache.log4j.RollingFileAppender",
        f"{appender}.File": str(cfg.kafka.log_file),
        f"{appender}.MaxFileSize": "50MB",
        f"{appender}.MaxBackupIndex": "3",
        f"{appender}.layout": "org.apache.log4j.PatternLayout",
        f"{appender}.layout.ConversionPattern": "[%d] %p %m (%c)%n",
        "log4j.logger.kafka.request.logger": "WARN",
        "log4j.logger.org.apache.kafka.clients": "WARN",
        "log4j.logger.kafka.network.RequestChannel$": "WARN",
    }


def write_properties(path: Path, props: Mapping[str, str]) -> None:
    """Written owner-only: server.properties and admin.properties hold passwords."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# generated by deploy/local/stack.py from stack.toml; edits are overwritten"]
    lines += [f"{key}={value}" for key, value in props.items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    path.chmod(0o600)


def kafka_classpath(cfg: KafkaConfig) -> str:
    return f"{cfg.libs}/*"


def kafka_formatted(cfg: KafkaConfig) -> bool:
    return (cfg.data_dir / "meta.properties").is_file()


def format_kafka(cfg: StackConfig) -> None:
    k = cfg.kafka
    k.data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        java_executable(), f"-Dlog4j.configuration=file:{cfg.log4j_properties}",
        "-cp", kafka_classpath(k), "kafka.tools.StorageTool", "format",
        "-t", kafka_uuid(), "-c", str(cfg.server_properties),
        *stack_auth.scram_format_args(admin_password(cfg)),
    ]  # fmt: skip
    say(f"formatting KRaft storage in {rel(k.data_dir)} (admin credential included)")
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).replace(admin_password(cfg), "****")
        raise StackError(f"kafka storage format failed:\n{output}")
    cfg.auth_marker.write_text(password_digest(admin_password(cfg)))


def kafka_argv(cfg: StackConfig) -> list[str]:
    k = cfg.kafka
    return [
        java_executable(), f"-Xmx{k.heap}", *k.jvm_opts,
        f"-Dlog4j.configuration=file:{cfg.log4j_properties}",
        f"-Dkafka.logs.dir={k.log_file.parent}",
        "-cp", kafka_classpath(k), "kafka.Kafka", str(cfg.server_properties),
    ]  # fmt: skip


def api_versions_request(correlation_id: int) -> bytes:
    client_id = b"consent-stream-stack"
    # request header v1: api_key=18 (ApiVersions), api_version=0, correlation id, client id
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    return struct.pack(">i", len(body)) + body


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def kafka_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when the broker serves an ApiVersions request without error."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(api_versions_request(7))
            (size,) = struct.unpack(">i", recv_exact(sock, 4))
            correlation_id, error = struct.unpack(">ih", recv_exact(sock, min(size, 6)))
    except (OSError, struct.error):
        return False
    return bool(correlation_id == 7 and error == 0)


# --------------------------------------------------------------------------- redis


def redis_argv(cfg: StackConfig) -> list[str]:
    r = cfg.redis
    argv = [
        require("redis-server"), "--port", str(r.port), "--bind", r.host,
        "--protected-mode", "yes", "--daemonize", "no", "--dir", str(r.data_dir),
        "--logfile", "", "--databases", str(max(16, r.db + 1)),
    ]  # fmt: skip
    if r.persistence == "aof":
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
    else:
        argv += ["--save", "", "--appendonly", "no"]
    return [*argv, "--aclfile", str(cfg.redis_acl_file)]


def write_redis_users(cfg: StackConfig) -> None:
    """The ACL file of the stack's Redis (owner-only; rewritten at each start): its users
    and the SHA-256 of their passwords from the credentials file."""
    credentials(cfg)  # generates what is missing, the Redis users included
    users = stack_auth.read_store_users(cfg.credentials_file)
    path = cfg.redis_acl_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(stack_auth.store_acl_file(users))


def _resp(*words: str) -> bytes:
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def redis_answers(
    host: str, port: int, timeout: float = 2.0, login: tuple[str, str] | None = None
) -> bool:
    """True when Redis replies +PONG to a PING (not while it is loading data), logged in
    as ``login`` first when given."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall((_resp("AUTH", *login) if login else b"") + _resp("PING"))
            replies = b""
            while replies.count(b"\r\n") < (2 if login else 1):
                chunk = sock.recv(256)
                if not chunk:
                    return False
                replies += chunk
    except OSError:
        return False
    return replies.split(b"\r\n")[1 if login else 0].startswith(b"+PONG")


def redis_requires_login(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when Redis refuses a PING without a login (its ``default`` user is off)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_resp("PING"))
            return sock.recv(256).startswith(b"-NOAUTH")
    except OSError:
        return False


# --------------------------------------------------------------------------- up


def start_kafka(cfg: StackConfig, service: Service) -> subprocess.Popen[bytes]:
    try:
        stack_tls.ensure_tls(cfg.tls_files.base, cfg.kafka.host)
    except stack_tls.TlsError as exc:
        raise StackError(str(exc)) from exc
    write_properties(cfg.server_properties, server_properties(cfg))
    write_properties(cfg.log4j_properties, log4j_properties(cfg))
    if not kafka_formatted(cfg.kafka):
        format_kafka(cfg)
    check_auth_marker(cfg)
    proc = start_detached(kafka_argv(cfg), cfg.kafka.stdout_log_file, cfg.state_dir)
    write_pid(service, proc.pid)
    say(f"started kafka (pid {proc.pid}) on {cfg.kafka.bootstrap}")
    return proc


def start_redis(cfg: StackConfig, service: Service) -> subprocess.Popen[bytes]:
    cfg.redis.data_dir.mkdir(parents=True, exist_ok=True)
    write_redis_users(cfg)
    proc = start_detached(redis_argv(cfg), cfg.redis.log_file, cfg.state_dir)
    write_pid(service, proc.pid)
    say(f"started redis (pid {proc.pid}) on {cfg.redis.host}:{cfg.redis.port}")
    return proc


def answers(service: Service) -> bool:
    host, port = service.endpoint
    if service.name == "kafka":
        return kafka_answers(host, port)
    return redis_answers(host, port, login=service.login)


def failure_report(service: Service, reason: str) -> StackError:
    parts = [f"{service.name} {reason}; see {', '.join(rel(p) for p in service.logs)}"]
    for log in service.logs:
        parts.append(f"  last lines of {rel(log)}:\n{tail(log)}")
    return StackError("\n".join(parts))


def wait_until_answers(
    service: Service, proc: subprocess.Popen[bytes] | None, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not answers(service):
        if proc is not None and proc.poll() is not None:
            service.pid_file.unlink(missing_ok=True)
            raise failure_report(service, f"exited with code {proc.returncode} at start")
        if proc is None and owned_pid(service) is None:
            raise failure_report(service, "is no longer running")
        if time.monotonic() > deadline:
            host, port = service.endpoint
            raise failure_report(
                service, f"did not answer on {host}:{port} within {timeout_s:.0f} s"
            )
        time.sleep(0.25)


def not_running(cfg: StackConfig) -> list[Service]:
    """Our services that do not run; stale pid files of them are removed."""
    stopped = []
    for service in services(cfg):
        pid = owned_pid(service)
        if pid is None:
            service.pid_file.unlink(missing_ok=True)
            stopped.append(service)
        else:
            say(f"{service.name} already running (pid {pid})")
    return stopped


def service_ports(cfg: StackConfig, service: Service) -> tuple[int, ...]:
    if service.name == "kafka":
        return (cfg.kafka.port, cfg.kafka.controller_port, cfg.kafka.tls_port)
    return (cfg.redis.port,)


def start(cfg: StackConfig, service: Service) -> subprocess.Popen[bytes]:
    if service.name == "kafka":
        return start_kafka(cfg, service)
    return start_redis(cfg, service)


def cmd_up(cfg: StackConfig) -> None:
    started = time.monotonic()
    with stack_lock(cfg):
        ensure_system_packages()
        ensure_jars(cfg)
        booting = time.monotonic()
        cfg.logs_dir.mkdir(parents=True, exist_ok=True)
        to_start = not_running(cfg)
        for service in to_start:  # all ports checked before anything starts
            ensure_ports_free(service, service_ports(cfg, service))
        procs = {s.name: start(cfg, s) for s in to_start}
        for service in services(cfg):
            wait_until_answers(service, procs.get(service.name), cfg.startup_timeout_s)
        say(f"kafka and redis answer ({time.monotonic() - booting:.1f} s)")
        if not redis_requires_login(cfg.redis.host, cfg.redis.port):
            say("warning: Redis answers without a login: it was started before its users")
            say("         existed (.stack/conf/redis-users.acl); `stack.py down`, `up`")
        if not port_open(cfg.kafka.host, cfg.kafka.tls_port):
            say(f"warning: nothing listens on the TLS port {cfg.kafka.tls_bootstrap}: the broker")
            say("         was started before its TLS listener existed; `stack.py down`, `up`")
        ensure_topics(cfg)
    say(f"up in {time.monotonic() - started:.1f} s; `stack.py env` prints the settings")


# --------------------------------------------------------------------------- topics


def admin_module() -> ModuleType | None:
    try:
        return importlib.import_module("confluent_kafka.admin")
    except ImportError:
        return None


def ensure_topics(cfg: StackConfig) -> None:
    admin = admin_module()
    try:
        if admin is not None:
            ensure_topics_admin(cfg, admin)
        else:
            say("confluent_kafka not importable: creating topics with kafka TopicCommand")
            ensure_topics_cli(cfg)
    except StackError:
        raise
    except Exception as exc:  # KafkaException and friends from the admin client
        raise failure_report(kafka_service(cfg), f"topic setup failed: {exc}") from exc


def ensure_topics_admin(cfg: StackConfig, mod: ModuleType) -> None:
    creds = credentials(cfg)
    client = mod.AdminClient(
        stack_auth.admin_client_config(cfg.kafka.bootstrap, creds[stack_auth.ADMIN])
    )
    stack_auth.upsert_principals(mod, client, creds)
    say(f"principals: {', '.join(creds)} (SCRAM-SHA-512)")
    metadata = client.list_topics(timeout=30)
    existing = {str(name): len(t.partitions) for name, t in metadata.topics.items()}
    missing = [t for t in cfg.topics if t.name not in existing]
    if missing:
        create_topics_admin(cfg, mod, client, missing)
    present = [t for t in cfg.topics if t.name in existing]
    warn_partition_mismatch(present, existing)
    fixed = align_topic_configs(mod, client, present)
    say(
        f"topics: {len(cfg.topics)} ok ({len(missing)} created, "
        f"{len(present)} existed, {fixed} config(s) corrected)"
    )


def create_topics_admin(
    cfg: StackConfig, mod: ModuleType, client: Any, topics: Sequence[TopicSpec]
) -> None:
    new = [
        mod.NewTopic(
            t.name,
            num_partitions=t.partitions,
            replication_factor=cfg.replication_factor,
            config=dict(t.config),
        )
        for t in topics
    ]
    futures = client.create_topics(new, operation_timeout=30, request_timeout=60)
    for name, future in futures.items():
        try:
            future.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"creating topic {name} failed: {exc}") from exc


def warn_partition_mismatch(topics: Sequence[TopicSpec], existing: Mapping[str, int]) -> None:
    for t in topics:
        if existing[t.name] != t.partitions:
            say(
                f"warning: {t.name} has {existing[t.name]} partitions, config says "
                f"{t.partitions}; left as is (`stack.py reset` recreates everything)"
            )


def align_topic_configs(mod: ModuleType, client: Any, topics: Sequence[TopicSpec]) -> int:
    """Set configured topic configs that differ on existing topics; count changes."""
    wanted = [t for t in topics if t.config]
    if not wanted:
        return 0
    resources = [mod.ConfigResource(mod.ResourceType.TOPIC, t.name) for t in wanted]
    described = client.describe_configs(resources, request_timeout=30)
    changes = 0
    for spec, future in zip(wanted, described.values(), strict=True):
        actual = {str(k): str(v.value) for k, v in future.result().items()}
        diff = {k: v for k, v in spec.config.items() if actual.get(k) != v}
        if diff:
            alter_topic_config(mod, client, spec.name, diff)
            changes += len(diff)
    return changes


def alter_topic_config(mod: ModuleType, client: Any, topic: str, values: Mapping[str, str]) -> None:
    entries = [
        mod.ConfigEntry(k, v, incremental_operation=mod.AlterConfigOpType.SET)
        for k, v in values.items()
    ]
    resource = mod.ConfigResource(mod.ResourceType.TOPIC, topic, incremental_configs=entries)
    for future in client.incremental_alter_configs([resource]).values():
        future.result()
    say(f"set {', '.join(f'{k}={v}' for k, v in values.items())} on {topic}")


def kafka_tool(cfg: StackConfig, tool: str, *args: str) -> str:
    """Run a Kafka command-line tool as the admin principal."""
    write_properties(cfg.admin_properties, stack_auth.admin_client_properties(admin_password(cfg)))
    argv = [
        java_executable(), f"-Dlog4j.configuration=file:{cfg.log4j_properties}",
        "-cp", kafka_classpath(cfg.kafka), tool, "--bootstrap-server", cfg.kafka.bootstrap,
        "--command-config", str(cfg.admin_properties), *args,
    ]  # fmt: skip
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        shown = [a if "password=" not in a else "<credential>" for a in args]
        raise StackError(f"{tool.rsplit('.', 1)[-1]} {' '.join(shown)} failed:\n{result.stderr}")
    return result.stdout


def topic_command(cfg: StackConfig, *args: str) -> str:
    return kafka_tool(cfg, "org.apache.kafka.tools.TopicCommand", *args)


def upsert_principals_cli(cfg: StackConfig) -> None:
    for name, password in credentials(cfg).items():
        if name != stack_auth.ADMIN:
            kafka_tool(
                cfg, "kafka.admin.ConfigCommand", "--alter", "--entity-type", "users",
                "--entity-name", name, "--add-config",
                f"{stack_auth.MECHANISM}=[iterations={stack_auth.SCRAM_ITERATIONS},"
                f"password={password}]",
            )  # fmt: skip


def ensure_topics_cli(cfg: StackConfig) -> None:
    upsert_principals_cli(cfg)
    existing = set(topic_command(cfg, "--list").split())
    missing = [t for t in cfg.topics if t.name not in existing]
    for t in missing:
        configs = [a for k, v in t.config.items() for a in ("--config", f"{k}={v}")]
        topic_command(
            cfg, "--create", "--if-not-exists", "--topic", t.name,
            "--partitions", str(t.partitions),
            "--replication-factor", str(cfg.replication_factor), *configs,
        )  # fmt: skip
    say(f"topics: {len(cfg.topics)} ok ({len(missing)} created; configs not re-checked)")


# --------------------------------------------------------------------------- down


def signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(service: Service, pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process_cmdline(pid) is None:
            return True
        time.sleep(0.2)
    return process_cmdline(pid) is None


def stop_services(cfg: StackConfig) -> None:
    running: list[tuple[Service, int]] = []
    for service in services(cfg):
        pid = owned_pid(service)
        if pid is None:
            if service.pid_file.exists():
                say(f"{service.name}: stale pid file removed (process not ours/not alive)")
            service.pid_file.unlink(missing_ok=True)
            continue
        say(f"stopping {service.name} (pid {pid})")
        signal_pid(pid, signal.SIGTERM)
        running.append((service, pid))
    for service, pid in running:
        if not wait_gone(service, pid, cfg.stop_timeout_s):
            say(f"{service.name} still alive after {cfg.stop_timeout_s:.0f} s: SIGKILL")
            signal_pid(pid, signal.SIGKILL)
            wait_gone(service, pid, 10)
        service.pid_file.unlink(missing_ok=True)
        say(f"{service.name} stopped")


def cmd_kill_kafka(cfg: StackConfig) -> None:
    """A broker crash for the fault tests: SIGKILL, by the pid this stack started."""
    service = kafka_service(cfg)
    pid = owned_pid(service)
    if pid is None:
        raise StackError("kafka is not running (or not one this stack started)")
    signal_pid(pid, signal.SIGKILL)
    if not wait_gone(service, pid, cfg.stop_timeout_s):
        raise StackError(f"kafka (pid {pid}) did not die after SIGKILL")
    say(f"killed kafka (pid {pid})")


def cmd_down(cfg: StackConfig) -> None:
    with stack_lock(cfg):
        stop_services(cfg)


# --------------------------------------------------------------------------- reset


def safe_to_delete(path: Path, cfg: StackConfig) -> bool:
    resolved = path.resolve()
    protected = {Path("/"), Path.home().resolve(), REPO_ROOT, cfg.state_dir.resolve()}
    inside = resolved.is_relative_to(REPO_ROOT) or resolved.is_relative_to(cfg.state_dir.resolve())
    keeps_cache = not cfg.kafka.cache_dir.resolve().is_relative_to(resolved)
    return inside and resolved not in protected and keeps_cache


def cmd_reset(cfg: StackConfig) -> None:
    with stack_lock(cfg):
        stop_services(cfg)
        doomed = [
            cfg.kafka.data_dir, cfg.redis.data_dir, cfg.conf_dir, cfg.logs_dir,
            cfg.kafka.log_file.parent, cfg.redis.log_file.parent, *cfg.reset_dirs,
        ]  # fmt: skip
        for path in dict.fromkeys(doomed):
            if not path.exists():
                continue
            if not safe_to_delete(path, cfg):
                raise StackError(f"refusing to delete {path} (outside the stack's dirs)")
            shutil.rmtree(path)
            say(f"deleted {rel(path)}")
    say(f"reset done; jar cache kept in {rel(cfg.kafka.cache_dir)}")


# --------------------------------------------------------------------------- status/env


def service_line(service: Service) -> str:
    host, port = service.endpoint
    pid = owned_pid(service)
    if pid is None:
        state = "stale pid file" if service.pid_file.exists() else "stopped"
        return f"{service.name:<6} {state:<24} {host}:{port}"
    answer = "answering" if answers(service) else "NOT answering"
    return f"{service.name:<6} {f'running pid {pid}':<24} {host}:{port}  {answer}"


def cmd_status(cfg: StackConfig) -> int:
    kafka, redis = services(cfg)
    k = cfg.kafka
    print(
        service_line(kafka) + f"  (TLS {k.tls_bootstrap}, controller {k.host}:{k.controller_port})"
    )
    print(service_line(redis))
    for service in (kafka, redis):
        print(f"{service.name} logs: {', '.join(rel(p) for p in service.logs)}")
    jars = "present" if jars_installed(cfg.kafka) else "not fetched"
    print(f"kafka {cfg.kafka.version} jars: {rel(cfg.kafka.libs)} ({jars})")
    print(f"data: {rel(cfg.kafka.data_dir)}, {rel(cfg.redis.data_dir)}")
    print(f"topics: {len(cfg.topics)} configured, {cfg.partitions} partitions by default")
    return 0 if all(owned_pid(s) is not None for s in (kafka, redis)) else 3


def env_settings(cfg: StackConfig, tls: bool = False) -> dict[str, str]:
    """What the application reads to reach the stack; with ``tls``, through the broker's
    ``SASL_SSL`` listener (the same principals), trusting the stack's CA."""
    try:  # the file exists before anything reads it (quietly: stdout is eval'd)
        stack_auth.ensure_credentials(
            cfg.credentials_file, stack_auth.principals(cfg.partners), cfg.redis.address
        )
    except stack_auth.CredentialsError as exc:
        raise StackError(str(exc)) from exc
    kafka = (
        {
            "CONSENT_STREAM_BOOTSTRAP_SERVERS": cfg.kafka.tls_bootstrap,
            "CONSENT_STREAM_SECURITY_PROTOCOL": stack_auth.TLS_PROTOCOL,
            "CONSENT_STREAM_SSL_CA_LOCATION": str(cfg.tls_files.ca),
        }
        if tls
        else {
            "CONSENT_STREAM_BOOTSTRAP_SERVERS": cfg.kafka.bootstrap,
            "CONSENT_STREAM_SECURITY_PROTOCOL": stack_auth.PROTOCOL,
        }
    )
    return {
        **kafka,
        "CONSENT_STREAM_SASL_MECHANISM": stack_auth.MECHANISM,
        # each command takes its own principal from this file (never one for all)
        "CONSENT_STREAM_CREDENTIALS_FILE": str(cfg.credentials_file),
        "CONSENT_STREAM_REDIS_URL": cfg.redis.url,
        "CONSENT_STREAM_PARTITIONS": str(cfg.partitions),
        # a development stack: the built-in subject key is allowed (never in production)
        "CONSENT_STREAM_DEV_MODE": "1",
    }


def cmd_env(cfg: StackConfig, out: TextIO, tls: bool = False) -> None:
    for key, value in env_settings(cfg, tls).items():
        out.write(f"export {key}={shlex.quote(value)}\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stack.py", description="Local Kafka (KRaft) + Redis stack for Consent Stream."
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="stack TOML (default: %(default)s)"
    )
    parser.add_argument(
        "command",
        choices=("install", "up", "down", "status", "env", "reset", "kill-kafka"),
        help="kill-kafka: SIGKILL the broker this stack started (fault tests; `up` restarts it)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="env: the settings of the broker's SASL_SSL listener (the stack's CA) instead",
    )
    return parser.parse_args(argv)


def run(command: str, cfg: StackConfig, tls: bool = False) -> int:
    if command == "install":
        cmd_install(cfg)
    elif command == "up":
        cmd_up(cfg)
    elif command == "down":
        cmd_down(cfg)
    elif command == "status":
        return cmd_status(cfg)
    elif command == "env":
        cmd_env(cfg, sys.stdout, tls=tls)
    elif command == "reset":
        cmd_reset(cfg)
    elif command == "kill-kafka":
        cmd_kill_kafka(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args.command, load_config(args.config.resolve()), tls=args.tls)
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `stack.py status | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
