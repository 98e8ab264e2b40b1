"""docker-compose.yml, validated without Docker: structure, every command against the
CLI's parser, and every port, address and setting against the configuration it must agree
with (settings, Prometheus targets, Kafka listeners, the local stack's Kafka version); its
security (SASL on every listener, the authorizer, one principal per service, passwords
only from the env file) and the Kafka admin script, run against stub Kafka tools.

The file is read as `docker compose` reads it with .env a copy of the env example
(``${VAR:?...}`` interpolated); ``raw_compose`` is the file as written."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from sre_contract import REPO_ROOT

from consumers.partner import default_group_id
from schemas.errors import ConfigurationError
from schemas.policy import load_policy
from schemas.settings import ENV_PREFIX, Secret, Settings
from streams.cli import _principal, build_parser
from streams.gateway import GatewaySettings

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / "deploy" / "docker" / "compose.env.example"
KAFKA_ADMIN = REPO_ROOT / "deploy" / "docker" / "kafka-admin.sh"
GITIGNORE = REPO_ROOT / ".gitignore"
STACK_AUTH = REPO_ROOT / "deploy" / "local" / "stack_auth.py"
DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
STACK_TOML = REPO_ROOT / "deploy" / "local" / "stack.toml"
GRAFANA_DATASOURCES = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
GRAFANA_PROVIDERS = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "dashboards"

SECRET_PREFIX = "SASL_PASSWORD_"  # noqa: S105 (a variable name prefix)
"""SASL_PASSWORD_<NAME>: the password of principal <name> (deploy/docker/kafka-admin.sh)."""
THIRD_PARTY_PRINCIPALS = ("schema-registry", "kafka-exporter")
SCRAM_SERVER_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
# the image's KafkaDockerWrapper: KAFKA_* variables it does not write to server.properties
_IMAGE_OPTS = "VERSION HEAP_OPTS LOG4J_OPTS OPTS JMX_OPTS JVM_PERFORMANCE_OPTS GC_LOG_OPTS"
_IMAGE_LOGS = "LOG4J_ROOT_LOGLEVEL LOG4J_LOGGERS TOOLS_LOG4J_LOGLEVEL JMX_HOSTNAME"
IMAGE_NOT_PROPERTIES = frozenset(f"KAFKA_{n}" for n in f"{_IMAGE_OPTS} {_IMAGE_LOGS}".split(" "))
# compose interpolation: $$ (a literal $), ${VAR}, ${VAR:-default}, ${VAR:?error}, ...
_REFERENCE = re.compile(r"\$\$|\$\{(?P<var>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
_SECRET = re.compile(r"\$\{(?P<var>\w+):\?[^}]+\}")


@functools.cache
def raw_compose() -> dict[str, Any]:
    """docker-compose.yml as written (``${...}`` not interpolated)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            pairs[name.strip()] = value.strip()
    return pairs


def interpolate(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        var, op, arg = match.group("var", "op", "arg")
        present = env.get(var, "") != "" if op and op.startswith(":") else var in env
        if op and op.endswith("?") and not present:
            pytest.fail(f"compose would stop: {var} is missing a value ({arg})")
        if op and op.endswith("-") and not present:
            return str(arg)
        if op and op.endswith("+"):
            return str(arg) if present else ""
        return env.get(var, "")

    return _REFERENCE.sub(one, value)


def _interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolated(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolated(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


@functools.cache
def _compose_with_example() -> dict[str, Any]:
    result: dict[str, Any] = _interpolated(raw_compose(), env_example())
    return result


def compose() -> dict[str, Any]:
    """docker-compose.yml as compose reads it with .env a copy of the env example."""
    return _compose_with_example()


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def raw_services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = raw_compose()["services"]
    return result


def strings(node: Any) -> Iterator[str]:
    """Every string of a YAML tree, keys included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def references(node: Any) -> list[tuple[str, str]]:
    """(variable, operator) of every ``${...}`` in ``node``."""
    return [
        (m.group("var"), m.group("op") or "")
        for text in strings(node)
        for m in _REFERENCE.finditer(text)
        if m.group("var")
    ]


def secret_var(value: str) -> str:
    """The variable of a value that is exactly one ``${VAR:?...}`` (fails otherwise)."""
    match = _SECRET.fullmatch(value)
    assert match, f"not a required reference to the env file: {value!r}"
    return match.group("var")


def password_var(principal: str) -> str:
    return SECRET_PREFIX + principal.upper().replace("-", "_")


def principal_of(var: str) -> str:
    return var.removeprefix(SECRET_PREFIX).lower().replace("_", "-")


def stack_auth() -> Any:
    spec = importlib.util.spec_from_file_location("stack_auth", STACK_AUTH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("stack_auth", module)
    spec.loader.exec_module(module)
    return module


def depends(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: "service_started" for name in depends_on}
    return {name: spec.get("condition", "service_started") for name, spec in depends_on.items()}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def exact_options(parser: argparse.ArgumentParser, subcommand: str) -> set[str]:
    """The option strings of ``subcommand`` as spelt (argparse also takes abbreviations)."""
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(commands.choices[subcommand]._option_string_actions)


def cli_args(service: dict[str, Any]) -> argparse.Namespace:
    command = service["command"]
    assert isinstance(command, list) and command[0] == "consent-stream", command
    parser = build_parser()
    try:
        args = parser.parse_args(command[1:])
    except SystemExit:
        pytest.fail(f"consent-stream does not accept {command[1:]}")
    spelt = {word for word in command[2:] if word.startswith("--")}
    assert spelt <= exact_options(parser, args.command), command
    return args


def consent_services(subcommand: str) -> dict[str, argparse.Namespace]:
    found = {}
    for name, service in services().items():
        command = service.get("command")
        if isinstance(command, list) and command[:1] == ["consent-stream"]:
            args = cli_args(service)
            if args.command == subcommand:
                found[name] = args
    return found


def settings_of(service: dict[str, Any]) -> Settings:
    return Settings.from_env(env_of(service))


def scrape_targets(job: str) -> set[str]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (scrape,) = [c for c in config["scrape_configs"] if c["job_name"] == job]
    return {t for static in scrape["static_configs"] for t in static["targets"]}


def kafka_env() -> dict[str, str]:
    return env_of(services()["kafka"])


def listeners(value: str) -> dict[str, str]:
    """``NAME://host:port,...`` -> {NAME: host:port}."""
    return dict(item.split("://", 1) for item in value.split(","))


def property_name(variable: str) -> str:
    """The apache/kafka image's KafkaDockerWrapper: KAFKA_ dropped, lower case, "_" -> ".",
    "___" -> "-", "__" -> "_"."""
    name = variable.replace("KAFKA_", "").lower().replace("_", ".")
    return name.replace("...", "-").replace("..", "_")


def broker_properties() -> dict[str, str]:
    """server.properties as the image writes it from the kafka service's variables."""
    return {
        property_name(key): value
        for key, value in kafka_env().items()
        if key.startswith("KAFKA_") and key not in IMAGE_NOT_PROPERTIES
    }


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts and volumes: source -> container path (``:ro`` dropped)."""
    return {v.split(":")[0]: v.split(":")[1] for v in service.get("volumes", [])}


def fingerprint(settings: Any) -> Any:
    """``settings`` as plain values that compare equal when the settings are the same
    (secrets revealed, nested dataclasses and mappings taken apart)."""
    if isinstance(settings, Secret):
        return settings.reveal()
    if is_dataclass(settings) and not isinstance(settings, type):
        return {f.name: fingerprint(getattr(settings, f.name)) for f in fields(settings)}
    if isinstance(settings, Mapping):
        return {k: fingerprint(v) for k, v in settings.items()}
    return settings


_SASL_LOGIN = {ENV_PREFIX + "SASL_USERNAME": "someone", ENV_PREFIX + "SASL_PASSWORD": "pw" * 8}


def is_setting(var: str) -> bool:
    """Setting the variable (to some value unlike its default) changes ``Settings`` or,
    for the gateway's own, ``GatewaySettings``."""
    base = {ENV_PREFIX + "SUBJECT_KEY": "base-subject-key-0123456789"}
    if var in _SASL_LOGIN:  # the principal and its password go together
        base.update(_SASL_LOGIN)
    if var.startswith(ENV_PREFIX + "KAFKA_"):
        return bool(Settings.from_env({**base, var: "7"}).kafka_extra)
    both = (Settings.from_env, GatewaySettings.from_env)
    default = [fingerprint(read(base)) for read in both]
    # an int, a flag, a secret of the minimum length, a security protocol, a SASL mechanism,
    # a gateway caller
    for value in ("7", "1", "7" * 16, "SASL_SSL", "PLAIN", f"c={'7' * 16}:s"):
        try:
            if [fingerprint(read({**base, var: value})) for read in both] != default:
                return True
        except ConfigurationError:
            continue
    return False


def test_is_setting_tells_a_setting_from_a_made_up_variable() -> None:
    assert is_setting(ENV_PREFIX + "PARTITIONS") and is_setting(ENV_PREFIX + "SUBJECT_KEY")
    assert is_setting(ENV_PREFIX + "GATEWAY_TOKENS") and is_setting(ENV_PREFIX + "GATEWAY_BIND")
    assert not is_setting(ENV_PREFIX + "NO_SUCH_SETTING")
    assert not is_setting(ENV_PREFIX + "GATEWAY_NO_SUCH_SETTING")


def dockerfile_env() -> dict[str, str]:
    pairs = re.findall(r"^ENV\s+(\w+)=(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    return dict(pairs)


# -- structure ---------------------------------------------------------------------------


def test_the_services_of_the_system_are_there() -> None:
    expected = {
        "kafka",
        "schema-registry",
        "redis",
        "prometheus",
        "grafana",
        "kafka-exporter",
        "worker-1",
        "worker-2",
    }
    assert expected <= set(services())


def test_every_service_has_an_image_and_its_dependencies_exist() -> None:
    all_services = services()
    volumes = set(compose().get("volumes") or {})
    for name, service in all_services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            assert (REPO_ROOT / service["build"]["context"]).is_dir(), name
            assert (REPO_ROOT / service["build"]["dockerfile"]).resolve() == DOCKERFILE, name
        depends = service.get("depends_on") or []
        for target in depends:
            assert target in all_services, f"{name} depends on unknown {target}"
            if isinstance(depends, dict) and depends[target].get("condition") == (
                "service_healthy"
            ):
                assert "healthcheck" in all_services[target], f"{target} has no healthcheck"
        for source in mounts(service):
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"


def test_the_image_is_python_3_11_slim_with_the_package_installed() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install ." in text
    (cmd,) = re.findall(r"^CMD (.+)$", text, re.M)
    command = yaml.safe_load(cmd)
    assert command[0] == "consent-stream"
    assert build_parser().parse_args(command[1:]).command == "worker"


# -- commands ----------------------------------------------------------------------------


def test_every_consent_stream_command_is_accepted_by_the_cli() -> None:
    commands = [
        s for s in services().values() if (s.get("command") or [None])[0] == "consent-stream"
    ]
    assert len(commands) >= 7
    for service in commands:
        cli_args(service)


def test_two_workers_and_one_simulated_partner_per_policy_partner() -> None:
    assert set(consent_services("worker")) == {"worker-1", "worker-2"}
    partners = consent_services("partner")
    assert sorted(a.name for a in partners.values()) == sorted(load_policy().partners)
    for args in partners.values():
        assert args.metrics_port is not None
        assert args.state_dir.startswith("/var/lib/consent-stream/")


# -- settings ----------------------------------------------------------------------------


def used_env_vars() -> set[str]:
    used = {v for s in services().values() for v in env_of(s) if v.startswith(ENV_PREFIX)}
    return used | {v for v in dockerfile_env() if v.startswith(ENV_PREFIX)}


def test_every_consent_stream_variable_is_a_real_setting() -> None:
    used = used_env_vars()
    assert len(used) >= 6
    unknown = sorted(v for v in used if not is_setting(v))
    assert unknown == [], f"not read by schemas/settings.py: {unknown}"
    for name, service in services().items():
        env = env_of(service)
        if any(v.startswith(ENV_PREFIX) for v in env):  # a consent-stream service
            settings_of(service)  # the values parse (ConfigurationError otherwise)
        assert not any(v.startswith(ENV_PREFIX + "KAFKA_") for v in env), name


def test_the_worker_binds_where_compose_says() -> None:
    from streams.app import create_app

    for name in ("worker-1", "worker-2"):
        app = create_app(settings_of(services()[name]))
        assert app.conf.web_bind == env_of(services()[name])["CONSENT_STREAM_HTTP_BIND"]


def test_workers_and_partners_share_kafka_registry_and_topics() -> None:
    consent = [services()[n] for n in [*consent_services("worker"), *consent_services("partner")]]
    seen = {
        (s.bootstrap_servers, s.schema_registry_url, s.topic_namespace, s.partitions)
        for s in map(settings_of, consent)
    }
    assert seen == {("kafka:9092", "http://schema-registry:8081", "", 6)}
    workers = [settings_of(services()[n]) for n in consent_services("worker")]
    assert len({(w.app_id, w.redis_url, w.redis_prefix) for w in workers}) == 1


# -- ports and addresses ----------------------------------------------------------------


def test_prometheus_scrapes_each_worker_on_its_http_port() -> None:
    targets = set()
    for name in consent_services("worker"):
        port = settings_of(services()[name]).http_port
        targets.add(f"{name}:{port}")
        health = " ".join(services()[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in health, name
    assert scrape_targets("consent-stream-worker") == targets


def test_the_gateway_is_reachable_scraped_and_takes_the_sample_events() -> None:
    (name,) = consent_services("gateway")
    service = services()[name]
    gateway = GatewaySettings.from_env(env_of(service))
    assert gateway.bind == "0.0.0.0"  # noqa: S104 (its container, behind the port mapping)
    assert f"{gateway.port}:{gateway.port}" in service["ports"]
    health = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{gateway.port}/healthz" in health
    assert scrape_targets("consent-stream-gateway") == {f"{name}:{gateway.port}"}
    assert depends(service) == {
        "acl-sync": "service_completed_successfully",
        "worker-1": "service_healthy",  # the worker creates the topics
    }
    samples = REPO_ROOT / "examples" / "sample-events.jsonl"
    sources = {json.loads(line)["source"] for line in samples.read_text().splitlines() if line}
    (caller,) = gateway.callers.values()
    assert caller.sources == sources
    raw = env_of(raw_services()[name])[ENV_PREFIX + "GATEWAY_TOKENS"]
    assert "${GATEWAY_TOKEN_PLATFORM:?" in raw  # the token comes from the env file


def test_prometheus_scrapes_each_partner_on_its_metrics_port() -> None:
    partners = consent_services("partner")
    expected = {f"{name}:{args.metrics_port}" for name, args in partners.items()}
    assert scrape_targets("consent-stream-partner") == expected


def test_the_bootstrap_servers_are_an_advertised_kafka_listener() -> None:
    env = kafka_env()
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(env["KAFKA_LISTENERS"])
    protocols = listeners(env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].replace(":", "://"))
    consent = [*consent_services("worker"), *consent_services("partner")]
    for name in consent:
        settings = settings_of(services()[name])
        servers = settings.bootstrap_servers
        (listener,) = [n for n, hp in advertised.items() if hp == servers]
        assert bound[listener].rsplit(":", 1)[1] == servers.rsplit(":", 1)[1]
        assert protocols[listener] == settings.security_protocol == "SASL_PLAINTEXT", name
    assert "kafka" in services() and env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    registry = env_of(services()["schema-registry"])
    store = registry["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"]
    scheme, address = store.split("://", 1)
    (listener,) = [n for n, hp in advertised.items() if hp == address]
    assert scheme == registry["SCHEMA_REGISTRY_KAFKASTORE_SECURITY_PROTOCOL"] == protocols[listener]
    assert "--kafka.server=kafka:9092" in services()["kafka-exporter"]["command"]
    assert scrape_targets("kafka-exporter") == {"kafka-exporter:9308"}


def test_redis_and_the_schema_registry_are_where_the_settings_point() -> None:
    redis = services()["redis"]
    assert redis["command"][3:6] == ["--appendonly", "yes", "--appendfsync"]  # after "start"
    registry = env_of(services()["schema-registry"])
    for name in consent_services("worker"):
        settings = settings_of(services()[name])
        url = urlsplit(settings.redis_url)
        assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379)
        assert "--port" not in redis["command"]
        assert settings.schema_registry_url is not None
        registry_url = urlsplit(settings.schema_registry_url)
        assert registry_url.hostname == "schema-registry"
        assert registry["SCHEMA_REGISTRY_LISTENERS"].endswith(f":{registry_url.port}")


def test_the_lag_alert_watches_the_groups_compose_runs() -> None:
    rules = (RULES_DIR / "consent-stream.rules.yml").read_text(encoding="utf-8")
    (regex,) = set(re.findall(r'consumergroup=~"([^"]+)"', rules))
    pattern = re.compile(regex.replace("\\\\", "\\"))
    for name in consent_services("worker"):
        assert pattern.fullmatch(settings_of(services()[name]).app_id), name
    for args in consent_services("partner").values():
        assert pattern.fullmatch(default_group_id(args.name)), args.name
    assert not pattern.fullmatch("someone-else")


# -- versions and mounts ----------------------------------------------------------------


def test_the_kafka_image_is_the_local_stack_version() -> None:
    stack = tomllib.loads(STACK_TOML.read_text(encoding="utf-8"))
    image = services()["kafka"]["image"]
    repo, tag = image.rsplit(":", 1)
    assert repo == "apache/kafka"
    assert tag.split(".")[:2] == stack["kafka"]["version"].split(".")[:2]


def test_prometheus_loads_the_rules_and_the_config_it_is_given() -> None:
    prometheus = services()["prometheus"]
    mounted = mounts(prometheus)
    rules_target = mounted["./deploy/prometheus/rules"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    for pattern in config["rule_files"]:
        directory, glob = pattern.rsplit("/", 1)
        assert directory == rules_target
        assert sorted(p.name for p in RULES_DIR.glob(glob)) == ["consent-stream.rules.yml"]
    config_target = mounted["./deploy/prometheus/prometheus.yml"]
    assert f"--config.file={config_target}" in prometheus["command"]


def test_grafana_gets_the_provisioning_and_the_dashboards() -> None:
    grafana = mounts(services()["grafana"])
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((GRAFANA_PROVIDERS / "consent-stream.yml").read_text())
    (provider,) = providers["providers"]
    assert grafana["./deploy/grafana/dashboards"] == provider["options"]["path"]
    datasources = yaml.safe_load((GRAFANA_DATASOURCES / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert urlsplit(source["url"]).hostname == "prometheus"
    assert "prometheus" in services()
    home = env_of(services()["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(provider["options"]["path"])
    assert (REPO_ROOT / "deploy" / "grafana" / "dashboards" / Path(home).name).is_file()


# -- security: listeners, authorizer ----------------------------------------------------


def test_every_listener_takes_sasl_the_principals_scram_sha_512() -> None:
    props = broker_properties()
    protocols = dict(i.split(":") for i in props["listener.security.protocol.map"].split(","))
    bound = listeners(props["listeners"])
    advertised = listeners(props["advertised.listeners"])
    assert set(bound) == set(protocols) and set(advertised) < set(bound)
    admin_password = env_example()[password_var("admin")]
    for listener in bound:
        assert protocols[listener].startswith("SASL_"), listener
        prefix = f"listener.name.{listener.lower()}."
        mechanisms = props[prefix + "sasl.enabled.mechanisms"].split(",")
        assert set(mechanisms) <= {"SCRAM-SHA-512", "PLAIN"}, listener
        for mechanism in mechanisms:  # a server JAAS config for each, on its listener
            jaas = props[f"{prefix}{mechanism.lower()}.sasl.jaas.config"]
            if mechanism == "SCRAM-SHA-512":
                assert jaas == SCRAM_SERVER_JAAS, listener  # credentials: the metadata's
                continue
            # PLAIN knows admin alone (its static users), with admin's password
            assert re.findall(r'\buser_([\w-]+)="([^"]*)"', jaas) == [("admin", admin_password)]
            assert re.search(r'\busername="admin" password="([^"]*)"', jaas)
            assert f'password="{admin_password}"' in jaas
        if listener in advertised:  # a client listener: the principals' mechanism
            assert "SCRAM-SHA-512" in mechanisms, listener
    controller = props["controller.listener.names"]
    assert controller not in advertised
    assert props["sasl.mechanism.controller.protocol"] in props[
        f"listener.name.{controller.lower()}.sasl.enabled.mechanisms"
    ].split(",")
    inter = props["inter.broker.listener.name"]
    assert props["sasl.mechanism.inter.broker.protocol"] in props[
        f"listener.name.{inter.lower()}.sasl.enabled.mechanisms"
    ].split(",")
    # the host's listener is the published one, and takes SCRAM-SHA-512 only
    (published,) = services()["kafka"]["ports"]
    host_port, container_port = published.split(":")
    (external,) = [n for n, hp in advertised.items() if hp == f"localhost:{host_port}"]
    assert bound[external].rsplit(":", 1)[1] == container_port
    assert props[f"listener.name.{external.lower()}.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"


def test_the_listener_names_do_not_trip_the_images_jaas_file_check() -> None:
    """The image's configure script exits unless KAFKA_OPTS names a JAAS file when the
    advertised listeners match ``SASL_.*://``; the JAAS configs are listener properties."""
    env = kafka_env()
    assert not re.search(r"SASL_.*://", env["KAFKA_ADVERTISED_LISTENERS"])
    assert "KAFKA_OPTS" not in env
    assert property_name("KAFKA_LISTENER_NAME_INTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG") == (
        "listener.name.internal.scram-sha-512.sasl.jaas.config"
    )
    # the kafka container's other variables are not broker properties
    assert {k for k in env if not k.startswith("KAFKA_")} == {"CLUSTER_ID", "SASL_PASSWORD_ADMIN"}


def test_the_authorizer_refuses_what_no_acl_allows_admin_the_only_super_user() -> None:
    props = broker_properties()
    assert props["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    local = stack_auth().security_properties("127.0.0.1", 19092, 19093, "pw")
    for key in ("authorizer.class.name", "allow.everyone.if.no.acl.found", "super.users"):
        assert props[key] == local[key], key  # as the local stack


# -- security: principals and their passwords --------------------------------------------


def consent_stream_services() -> dict[str, argparse.Namespace]:
    return {
        name: cli_args(service)
        for name, service in services().items()
        if (service.get("command") or [None])[0] == "consent-stream"
    }


def test_every_consent_stream_service_logs_in_as_its_own_principal() -> None:
    found = consent_stream_services()
    assert {_principal(args) for args in found.values()} == {
        "admin", "worker", "publisher", "gateway",
        *(f"partner-{p}" for p in load_policy().partners),
    }  # fmt: skip
    for name, args in found.items():
        principal = _principal(args)  # the one the CLI picks from a credentials file
        settings = settings_of(services()[name])
        assert settings.security_protocol == "SASL_PLAINTEXT", name
        assert settings.sasl_mechanism == "SCRAM-SHA-512", name
        assert settings.sasl_username == principal, name
        assert settings.credentials_file is None, name  # a deployment names its principal
        raw = env_of(raw_services()[name])[ENV_PREFIX + "SASL_PASSWORD"]
        assert secret_var(raw) == password_var(principal), name
        assert settings.sasl_password is not None
        assert settings.sasl_password.reveal().decode() == env_example()[password_var(principal)]


def test_schema_registry_and_kafka_exporter_log_in_as_their_own_principals() -> None:
    registry = env_of(services()["schema-registry"])
    assert registry["SCHEMA_REGISTRY_KAFKASTORE_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert registry["SCHEMA_REGISTRY_KAFKASTORE_SASL_MECHANISM"] == "SCRAM-SHA-512"
    jaas = re.fullmatch(
        r"org\.apache\.kafka\.common\.security\.scram\.ScramLoginModule required "
        r'username="([^"]+)" password="([^"]+)";',
        registry["SCHEMA_REGISTRY_KAFKASTORE_SASL_JAAS_CONFIG"],
    )
    assert jaas and jaas.groups() == (
        "schema-registry",
        env_example()[password_var("schema-registry")],
    )
    command = services()["kafka-exporter"]["command"]
    flags = dict(f.split("=", 1) if "=" in f else (f, "") for f in command)
    assert "--sasl.enabled" in flags and flags["--sasl.mechanism"] == "scram-sha512"
    assert flags["--sasl.username"] == "kafka-exporter"
    assert flags["--sasl.password"] == env_example()[password_var("kafka-exporter")]
    raw = {f.split("=", 1)[0]: f for f in raw_services()["kafka-exporter"]["command"]}
    assert secret_var(raw["--sasl.password"].split("=", 1)[1]) == password_var("kafka-exporter")


def test_kafka_init_gives_every_principal_of_the_system_a_credential() -> None:
    init = env_of(raw_services()["kafka-init"])
    secrets_ = {var: value for var, value in init.items() if var.startswith(SECRET_PREFIX)}
    assert all(secret_var(value) == var for var, value in secrets_.items())
    expected = [*stack_auth().principals(load_policy().partners), *THIRD_PARTY_PRINCIPALS]
    assert sorted(map(principal_of, secrets_)) == sorted(expected)
    assert all(password_var(principal_of(var)) == var for var in secrets_)  # names round-trip


def test_no_service_gets_another_principals_password() -> None:
    raw = raw_services()
    consent = consent_stream_services()
    for name, service in raw.items():
        used = {var for var, _ in references(service) if var.startswith(SECRET_PREFIX)}
        if name == "kafka-init":
            continue  # it sets every credential
        if name in consent:
            expected = {password_var(_principal(consent[name]))}
        elif name == "kafka":
            expected = {password_var("admin")}  # its JAAS and its healthcheck
        elif name in THIRD_PARTY_PRINCIPALS:
            expected = {password_var(name)}
        else:
            expected = set()
        assert used == expected, name


def test_no_password_is_written_in_the_compose_file() -> None:
    """Every password, in an environment value, a JAAS string or a flag, is a required
    ``${VAR:?...}`` reference to the env file; nothing falls back to a default."""
    secret_spots = [
        re.compile(r'\b(?:password|user_[\w-]+)="([^"]*)"'),  # JAAS
        re.compile(r"^--[\w.-]*password=(.*)$"),  # flags
    ]
    checked = 0
    for service in raw_services().values():
        for key, value in env_of(service).items():
            if "PASSWORD" in key or "SECRET" in key or key.endswith("_KEY"):
                secret_var(value)
                checked += 1
        for text in strings(service):
            for spot in secret_spots:
                for value in spot.findall(text):
                    secret_var(value)
                    checked += 1
    assert checked >= 20
    assert all(op == ":?" for _, op in references(raw_compose()))
    text = COMPOSE.read_text(encoding="utf-8")
    for value in env_example().values():
        assert value not in text


def test_the_env_example_lists_every_variable_compose_needs() -> None:
    needed = {var for var, _ in references(raw_compose())}
    example = env_example()
    assert needed == set(example)
    for var, value in example.items():
        assert value.startswith("change-me"), f"{var}: the example holds placeholders only"
    assert len(set(example.values())) == len(example)
    assert "/.env" in GITIGNORE.read_text(encoding="utf-8").splitlines()
    assert "token_urlsafe" in ENV_EXAMPLE.read_text(encoding="utf-8")


# -- start-up order: credentials, then ACLs, then the service ---------------------------


def test_acl_sync_runs_before_workers_and_partners_start() -> None:
    all_services = services()
    sync, init = all_services["acl-sync"], all_services["kafka-init"]
    args = cli_args(sync)
    assert (args.command, args.acl_command, args.dry_run) == ("acl", "sync", False)
    assert settings_of(sync).sasl_username == "admin"
    # the ACLs it derives are those of the namespace and app id the workers run with
    for name in consent_services("worker"):
        worker = settings_of(all_services[name])
        assert (worker.app_id, worker.topic_namespace) == (
            settings_of(sync).app_id,
            settings_of(sync).topic_namespace,
        )
    assert depends(sync) == {"kafka-init": "service_completed_successfully"}
    assert depends(init) == {"kafka": "service_healthy"}
    starters = [*consent_services("worker"), *consent_services("partner")]
    starters += [*consent_services("publish")]
    assert len(starters) >= 7
    for name in starters:
        assert depends(all_services[name]).get("acl-sync") == "service_completed_successfully"
        assert "kafka" not in depends(all_services[name]), name  # only through the jobs
    for name in THIRD_PARTY_PRINCIPALS:
        assert depends(all_services[name]) == {"kafka-init": "service_completed_successfully"}
    waited_for = {
        target
        for service in all_services.values()
        for target, condition in depends(service).items()
        if condition == "service_completed_successfully"
    }
    assert waited_for == {"kafka-init", "acl-sync"}
    for name in waited_for:  # one-shot: a restart policy would never let it complete
        assert all_services[name]["restart"] == "no", name


def test_kafka_init_and_the_healthcheck_run_the_admin_script_in_the_kafka_image() -> None:
    kafka, init = services()["kafka"], services()["kafka-init"]
    assert init["image"] == kafka["image"]
    for service in (kafka, init):
        assert mounts(service)["./deploy/docker/kafka-admin.sh"] == (
            "/opt/consent-stream/kafka-admin.sh"
        )
    assert init["command"] == ["bash", "/opt/consent-stream/kafka-admin.sh", "init"]
    assert kafka["healthcheck"]["test"] == [
        "CMD", "bash", "/opt/consent-stream/kafka-admin.sh", "healthcheck"
    ]  # fmt: skip
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(KAFKA_ADMIN)], check=True)


# -- the admin script, against stub Kafka tools ------------------------------------------

_STUB = r"""#!/usr/bin/env bash
tool=$(basename "$0")
config=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --command-config ]] && config=${args[i+1]}
done
{
  echo "$tool $*"
  echo "config-mode $(stat -c %a "$config")"
  sed 's/^/config /' "$config"
} >>"$STUB_LOG"
if [[ $tool == kafka-configs.sh && " $* " == *" --alter "* ]]; then
  for ((i = 0; i < ${#args[@]}; i++)); do
    [[ ${args[i]} == --entity-name ]] && echo "${args[i+1]}" >>"$STUB_USERS"
  done
fi
if [[ $tool == kafka-configs.sh && " $* " == *" --describe "* ]]; then
  while read -r user; do
    echo "SCRAM credential configs for user-principal '$user' are SCRAM-SHA-512=iterations=8192"
  done <"$STUB_USERS"
fi
exit "${STUB_EXIT:-0}"
"""


def run_admin(
    tmp_path: Path, mode: str, passwords: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # each run its own calls
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("kafka-configs.sh", "kafka-acls.sh", "kafka-broker-api-versions.sh"):
        (tools / tool).write_text(_STUB)
        (tools / tool).chmod(0o755)
    log, users = tmp_path / "calls.log", tmp_path / "users"
    users.touch()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TMPDIR": str(tmp_path),
        "ADMIN_KAFKA_BIN": str(tools),
        "STUB_LOG": str(log),
        "STUB_USERS": str(users),
        **passwords,
    }
    done = subprocess.run(
        [bash, str(KAFKA_ADMIN), mode], env=env, capture_output=True, text=True, timeout=60
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("tmp.")] == []  # removed
    return done, (log.read_text().splitlines() if log.exists() else [])


def generated_passwords() -> dict[str, str]:
    """kafka-init's variables, each with a generated password (as the docs say to)."""
    init = env_of(raw_services()["kafka-init"])
    return {var: secrets.token_urlsafe(32) for var in init if var.startswith(SECRET_PREFIX)}


def test_kafka_init_sets_every_credential_and_the_third_party_acls(tmp_path: Path) -> None:
    passwords = generated_passwords()
    done, calls = run_admin(tmp_path, "init", passwords)
    assert done.returncode == 0, done.stderr
    alters = [c for c in calls if c.startswith("kafka-configs.sh") and "--alter" in c]
    assert len(alters) == len(passwords)
    for var, password in passwords.items():
        (call,) = [c for c in alters if f"--entity-name {principal_of(var)} " in c]
        assert call.startswith("kafka-configs.sh --bootstrap-server kafka:9092 --command-config ")
        assert call.endswith(
            f"--alter --entity-type users --entity-name {principal_of(var)} "
            f"--add-config SCRAM-SHA-512=[iterations=8192,password={password}]"
        )
    assert any("kafka-configs.sh" in c and "--describe --entity-type users" in c for c in calls)
    acls = [c.split(" --command-config ")[1].split(" ", 1)[1] for c in calls if "kafka-acls" in c]
    assert acls == [
        "--add --allow-principal User:schema-registry --topic _schemas --operation Read "
        "--operation Write --operation Describe --operation DescribeConfigs --operation Create",
        "--add --allow-principal User:schema-registry --resource-pattern-type prefixed "
        "--group schema-registry --operation Read --operation Describe",
        "--add --allow-principal User:kafka-exporter --topic * --group * --operation Describe",
    ]
    # every call logged in as admin with SASL/PLAIN, from an owner-only file removed after
    admin = passwords[password_var("admin")]
    assert set(c for c in calls if c.startswith("config ")) == {
        "config security.protocol=SASL_PLAINTEXT",
        "config sasl.mechanism=PLAIN",
        "config sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
        f'required username="admin" password="{admin}";',
    }
    assert set(c for c in calls if c.startswith("config-mode")) == {"config-mode 600"}
    assert f"{len(passwords)} principals" in done.stdout


def test_kafka_init_refuses_placeholders_and_unsafe_passwords(tmp_path: Path) -> None:
    example = env_example()
    placeholders = {var: example[var] for var in generated_passwords()}
    done, calls = run_admin(tmp_path, "init", placeholders)
    assert done.returncode == 1 and calls == []
    assert "placeholder" in done.stderr and "token_urlsafe" in done.stderr
    for bad in ('quote"in-the-password-0123', "short", "comma,in-the-password-0123", ""):
        passwords = {**generated_passwords(), password_var("worker"): bad}
        done, calls = run_admin(tmp_path, "init", passwords)
        assert done.returncode == 1 and calls == [], bad
        assert "SASL_PASSWORD_WORKER" in done.stderr
    passwords = generated_passwords()
    del passwords[password_var("admin")]
    done, calls = run_admin(tmp_path, "init", passwords)
    assert done.returncode == 1 and "SASL_PASSWORD_ADMIN is not set" in done.stderr


def test_kafka_init_fails_when_the_broker_refuses(tmp_path: Path) -> None:
    done, calls = run_admin(tmp_path, "init", {**generated_passwords(), "STUB_EXIT": "1"})
    assert done.returncode != 0
    assert len([c for c in calls if c.startswith("kafka-configs.sh")]) == 1  # stops at once


def test_the_healthcheck_is_an_authenticated_request_as_admin(tmp_path: Path) -> None:
    admin = secrets.token_urlsafe(32)
    done, calls = run_admin(tmp_path, "healthcheck", {password_var("admin"): admin})
    assert done.returncode == 0, done.stderr
    assert calls[0].startswith("kafka-broker-api-versions.sh --bootstrap-server kafka:9092 ")
    assert f'password="{admin}";' in calls[-1] and "config-mode 600" in calls
    done, calls = run_admin(tmp_path, "healthcheck", {})
    assert done.returncode == 1 and calls == []
