"""docker-compose.yml, validated without Docker: structure, every command against the
CLI's parser, and every port, address and setting against the configuration it must agree
with (settings, Prometheus targets, Kafka listeners, the local stack's Kafka version)."""

from __future__ import annotations

import argparse
import re
import tomllib
from dataclasses import fields
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
from streams.cli import build_parser

COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
STACK_TOML = REPO_ROOT / "deploy" / "local" / "stack.toml"
GRAFANA_DATASOURCES = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
GRAFANA_PROVIDERS = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "dashboards"



def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


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


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts and volumes: source -> container path (``:ro`` dropped)."""
    return {v.split(":")[0]: v.split(":")[1] for v in service.get("volumes", [])}


def fingerprint(settings: Settings) -> dict[str, Any]:
    return {
        f.name: (v.reveal() if isinstance(v, Secret) else v)
        for f in fields(settings)
        for v in [getattr(settings, f.name)]
    }


def is_setting(var: str) -> bool:
    """Setting the variable (to some value unlike its default) changes ``Settings``."""
    base = {ENV_PREFIX + "SUBJECT_KEY": "base-subject-key-0123456789"}
    if var.startswith(ENV_PREFIX + "KAFKA_"):
        return bool(Settings.from_env({**base, var: "7"}).kafka_extra)
    default = fingerprint(Settings.from_env(base))
    for value in ("7", "1", "7" * 16):  # an int, a flag, a secret of the minimum length
        try:
            if fingerprint(Settings.from_env({**base, var: value})) != default:
                return True
        except ConfigurationError:
            continue
    return False


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
        servers = settings_of(services()[name]).bootstrap_servers
        (listener,) = [n for n, hp in advertised.items() if hp == servers]
        assert bound[listener].rsplit(":", 1)[1] == servers.rsplit(":", 1)[1]
        assert protocols[listener] == "PLAINTEXT"
    assert "kafka" in services() and env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    registry = env_of(services()["schema-registry"])
    store = registry["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"]
    assert store.split("://", 1)[1] in advertised.values()
    assert "--kafka.server=kafka:9092" in services()["kafka-exporter"]["command"]
    assert scrape_targets("kafka-exporter") == {"kafka-exporter:9308"}


def test_redis_and_the_schema_registry_are_where_the_settings_point() -> None:
    redis = services()["redis"]
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]
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
