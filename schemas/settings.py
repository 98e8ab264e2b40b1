"""Typed settings, read once at the entry point from the environment, passed down.

The librdkafka configuration dicts are built here and only here. Secrets are held in
``Secret`` so they never appear in logs or reprs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from schemas.errors import ConfigurationError
from schemas.kafka_security import (
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    env_choice,
    kafka_security,
    read_credentials,
)
from schemas.redis_settings import RedisSentinel, sentinel_from_env
from schemas.secrets import MIN_TOKEN_CHARS, Secret, parse_named_secrets
from schemas.store_login import StoreLogin, store_role_of, with_login
from schemas.subject_keys import SubjectKeys, subject_keys_from_env
from schemas.topics import TopicNames, record_limits

__all__ = [
    "ENV_PREFIX",
    "MIN_TOKEN_CHARS",
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "Secret",
    "Settings",
    "SubjectKeys",
    "env_int",
    "parse_tokens",
    "read_credentials",
]

ENV_PREFIX: Final = "CONSENT_STREAM_"
_LIBRDKAFKA_BATCH_BYTES: Final = 1_000_000
"""librdkafka's default ``batch.size``."""


def parse_tokens(text: str, what: str = ENV_PREFIX + "HTTP_TOKENS") -> dict[str, Secret]:
    """``name=token,name=token`` (commas or newlines) -> {name: token}; a clear error for a
    missing name, a short token or a name given twice (never showing a token)."""
    return parse_named_secrets(text, what)


def _dev_mode(env: Mapping[str, str]) -> bool:
    return env.get(ENV_PREFIX + "DEV_MODE", "").strip().lower() in ("1", "true", "yes", "on")


def _metrics_token(env: Mapping[str, str]) -> Secret | None:
    raw = env.get(ENV_PREFIX + "METRICS_TOKEN", "").strip()
    if not raw:
        return None
    if len(raw) < MIN_TOKEN_CHARS:
        raise ConfigurationError(
            f"{ENV_PREFIX}METRICS_TOKEN is shorter than {MIN_TOKEN_CHARS} characters"
        )
    return Secret(raw)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{ENV_PREFIX}{name} must be an integer, not {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{ENV_PREFIX}{name} must be positive")
    return value


env_int = _int
"""``env_int(env, "NAME", default)``: the positive integer ``CONSENT_STREAM_NAME``, or
``default`` when unset; a ``ConfigurationError`` naming the variable otherwise."""


def _insync(env: Mapping[str, str]) -> int | None:
    """``CONSENT_STREAM_MIN_INSYNC_REPLICAS`` (at most the replication factor), or None."""
    if not env.get(ENV_PREFIX + "MIN_INSYNC_REPLICAS"):
        return None
    value = _int(env, "MIN_INSYNC_REPLICAS", 1)
    factor = _int(env, "REPLICATION_FACTOR", _DEFAULT.replication_factor)
    if value > factor:
        raise ConfigurationError(
            f"{ENV_PREFIX}MIN_INSYNC_REPLICAS={value} is more than the replication factor "
            f"({factor}): no write could ever count"
        )
    return value


def _instance_id(env: Mapping[str, str]) -> str | None:
    """``CONSENT_STREAM_GROUP_INSTANCE_ID``: what Kafka accepts as a ``group.instance.id``
    (letters, digits, ``.``, ``_``, ``-``; at most 249), or None when unset."""
    raw = env.get(ENV_PREFIX + "GROUP_INSTANCE_ID", "")
    if not raw:
        return None
    if len(raw) > 249 or raw in (".", "..") or not _INSTANCE_ID.fullmatch(raw):
        raise ConfigurationError(
            f"{ENV_PREFIX}GROUP_INSTANCE_ID={raw!r}: use 1-249 letters, digits, '.', '_' "
            "or '-' (one name per worker, e.g. its host name)"
        )
    return raw


_INSTANCE_ID: Final = re.compile(r"[A-Za-z0-9._-]+")

FETCH_CLIENTS: Final = ("librdkafka", "aiokafka")
"""What may fetch the worker's records (``CONSENT_STREAM_FETCH_CLIENT``)."""


@dataclass(frozen=True)
class Settings:
    """Everything a process needs to reach Kafka, the registry and Redis."""

    bootstrap_servers: str = "127.0.0.1:19092"
    redis_url: str = field(default="redis://127.0.0.1:16379/0", repr=False)
    """May hold the store user's password (``consumers.store.acl``): never in a repr."""
    redis_sentinel: RedisSentinel | None = None
    """Sentinels that know the store's primary (``schemas.redis_settings``); then the URL
    gives only the database, user and password."""
    redis_min_replicas: int = 0
    """Replicas that must have a worker's store write before it counts (``WAIT``)."""
    schema_registry_url: str | None = None
    policy_path: str | None = None
    partitions: int = 3
    replication_factor: int = 1
    min_insync_replicas: int | None = None
    """``min.insync.replicas`` of the service's topics (``CONSENT_STREAM_MIN_INSYNC_REPLICAS``,
    1 to the replication factor): with ``acks=all`` a write counts once this many replicas
    have it. None: ``insync_replicas`` derives it."""
    max_record_bytes: int = 1_048_576
    client_id: str = "consent-stream"
    http_port: int = 6066
    http_bind: str = "127.0.0.1"
    http_tokens: Mapping[str, Secret] = field(default_factory=dict)
    """Bearer tokens of the worker's personal-data endpoints, by caller name."""
    metrics_token: Secret | None = None
    """With one, ``/metrics`` needs it too."""
    data_dir: str = ".stack/worker"
    topic_namespace: str = ""
    app_id: str = "consent-stream"
    redis_prefix: str = "cs"
    subject_keys: SubjectKeys = field(default_factory=SubjectKeys.development)
    """The HMAC keys of pseudonymous refs, store keys and digests: the current one
    (``CONSENT_STREAM_SUBJECT_KEY``, id ``CONSENT_STREAM_SUBJECT_KEY_ID``) and those still
    accepted during a rotation (``CONSENT_STREAM_SUBJECT_KEYS_ACCEPTED``). ``from_env``
    refuses to go on without a key outside development."""
    dev_mode: bool = False
    """``CONSENT_STREAM_DEV_MODE=1`` (the local stack and the tests): the built-in
    development subject key may be used."""
    group_session_timeout_s: int = 20
    """How long the group waits for a worker that stopped answering (SIGKILL, a machine
    gone) before its partitions go to the others: they stall that long
    (``CONSENT_STREAM_GROUP_SESSION_TIMEOUT_S``; at least the broker's
    ``group.min.session.timeout.ms``, 6 s by default; heartbeats every 3 s, or every third
    of it when that is shorter). 20 s is 20 times the longest hold of the worker's event
    loop ``make bench`` saw (docs/benchmarks.md); Faust's own default is 60 s."""
    group_instance_id: str | None = None
    """This worker's lasting name in its group (``CONSENT_STREAM_GROUP_INSTANCE_ID``, Kafka
    static membership): restarted within the session timeout, it gets its partitions back
    at once, where a new member waits for the dead one's session to expire. Unique per
    worker: a second worker with a running one's name takes its place, and then stops
    (the worker's URL tells them apart, docs/operations.md). A named worker does not leave
    the group when it stops, so one stopped for good stalls its partitions for the
    session timeout. None: a new member on every start."""
    settled_ticket_grace_s: int = 86_400
    """How long the worker keeps a settled, answered ledger ticket (the request status
    stays in Redis and on consent.requests.v1)."""
    kafka_extra: Mapping[str, str] = field(default_factory=dict)
    security_protocol: str = "PLAINTEXT"
    """``SASL_PLAINTEXT`` (the local stack), ``SASL_SSL`` (a real cluster), ``PLAINTEXT``."""
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str | None = None
    """The Kafka principal this process authenticates as."""
    sasl_password: Secret | None = None
    ssl_ca_location: str | None = None
    """CA certificate(s) of the brokers' TLS listener (``SASL_SSL``/``SSL``)."""
    credentials: Mapping[str, Secret] = field(default_factory=dict)
    """A credentials file's principals (the local stack's): each command takes its own
    (``as_principal``) unless ``CONSENT_STREAM_SASL_USERNAME`` names one."""
    credentials_file: str | None = None
    store_login: StoreLogin | None = field(default=None, repr=False)
    """The same file's consent store users (``schemas.store_login``): each command logs in
    to the local stack's Redis with the role it needs (``as_principal``)."""
    webhook_secrets: Mapping[str, Secret] = field(default_factory=dict)
    """Per-partner HMAC secrets of webhook delivery (``CONSENT_STREAM_WEBHOOK_SECRETS``,
    ``partner=secret,...``, 16+ characters each): the bridge signs with them, and a
    partner's callback (``POST /v1/acks``) is verified with them (docs/webhooks.md)."""
    webhook_concurrency: int = 8
    """Instructions the webhook bridge has in flight at once, per partner."""
    webhook_timeout_s: int = 10
    """Timeout of one webhook request (connect + answer), seconds."""
    fetch_client: str = "librdkafka"
    """What fetches the worker's records (``CONSENT_STREAM_FETCH_CLIENT``): ``librdkafka``
    (``streams.faust_glue.record_reader``), or ``aiokafka``, Faust's own fetcher."""
    failpoint: str = ""
    """Tests only: where the worker stops for a crash test (``streams.failpoint``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return env.get(ENV_PREFIX + name) or default

        extra = {
            key[len(ENV_PREFIX + "KAFKA_") :].lower().replace("_", "."): value
            for key, value in env.items()
            if key.startswith(ENV_PREFIX + "KAFKA_")
        }
        return cls(
            bootstrap_servers=get("BOOTSTRAP_SERVERS", _DEFAULT.bootstrap_servers),
            redis_url=get("REDIS_URL", _DEFAULT.redis_url),
            redis_sentinel=sentinel_from_env(env, ENV_PREFIX),
            redis_min_replicas=_int(env, "REDIS_MIN_REPLICAS", _DEFAULT.redis_min_replicas),
            schema_registry_url=env.get(ENV_PREFIX + "SCHEMA_REGISTRY_URL") or None,
            policy_path=env.get(ENV_PREFIX + "POLICY") or None,
            partitions=_int(env, "PARTITIONS", _DEFAULT.partitions),
            replication_factor=_int(env, "REPLICATION_FACTOR", _DEFAULT.replication_factor),
            min_insync_replicas=_insync(env),
            max_record_bytes=_int(env, "MAX_RECORD_BYTES", _DEFAULT.max_record_bytes),
            client_id=get("CLIENT_ID", _DEFAULT.client_id),
            http_port=_int(env, "HTTP_PORT", _DEFAULT.http_port),
            http_bind=get("HTTP_BIND", _DEFAULT.http_bind),
            http_tokens=parse_tokens(env.get(ENV_PREFIX + "HTTP_TOKENS", "")),
            metrics_token=_metrics_token(env),
            data_dir=get("DATA_DIR", _DEFAULT.data_dir),
            topic_namespace=get("TOPIC_NAMESPACE", ""),
            app_id=get("APP_ID", _DEFAULT.app_id),
            redis_prefix=get("REDIS_PREFIX", _DEFAULT.redis_prefix),
            subject_keys=subject_keys_from_env(env, ENV_PREFIX, _dev_mode(env)),
            dev_mode=_dev_mode(env),
            group_session_timeout_s=_int(
                env, "GROUP_SESSION_TIMEOUT_S", _DEFAULT.group_session_timeout_s
            ),
            group_instance_id=_instance_id(env),
            settled_ticket_grace_s=_int(
                env, "SETTLED_TICKET_GRACE_S", _DEFAULT.settled_ticket_grace_s
            ),
            kafka_extra=extra,
            webhook_secrets=parse_named_secrets(
                env.get(ENV_PREFIX + "WEBHOOK_SECRETS", ""),
                ENV_PREFIX + "WEBHOOK_SECRETS",
                name="partner",
                value="secret",
            ),
            webhook_concurrency=_int(env, "WEBHOOK_CONCURRENCY", _DEFAULT.webhook_concurrency),
            webhook_timeout_s=_int(env, "WEBHOOK_TIMEOUT_S", _DEFAULT.webhook_timeout_s),
            fetch_client=env_choice(
                env, "FETCH_CLIENT", FETCH_CLIENTS, _DEFAULT.fetch_client, str.lower
            ),
            failpoint=get("FAILPOINT", ""),
            **kafka_security(env),
        )

    def webhook_secret(self, partner: str) -> Secret:
        """The signing secret of ``partner``'s webhook; a clear error when there is none."""
        secret = self.webhook_secrets.get(partner)
        if secret is None:
            raise ConfigurationError(
                f"no webhook secret for partner {partner!r}: set "
                f"{ENV_PREFIX}WEBHOOK_SECRETS={partner}=<16+ characters>"
            )
        return secret

    def as_principal(self, name: str, store_role: str | None = None) -> Settings:
        """These settings authenticated as ``name`` from the credentials file; unchanged
        when a principal is configured explicitly (``CONSENT_STREAM_SASL_USERNAME``) or
        there is no credentials file. The file's consent store users log in to its Redis
        as ``store_role`` (by default the role of ``name``: ``store_role_of``) unless the
        URL names a user already."""
        if not self.credentials:
            return self
        password = self.credentials.get(name)
        if password is None:
            raise ConfigurationError(
                f"no Kafka principal {name!r} in {self.credentials_file} "
                f"(it has: {', '.join(sorted(self.credentials))})"
            )
        url = self.redis_url
        if self.store_login is not None and self.redis_sentinel is None:
            url = with_login(url, self.store_login, store_role or store_role_of(name))
        return replace(self, sasl_username=name, sasl_password=password, redis_url=url)

    @property
    def listener(self) -> str:
        """``SASL_PLAINTEXT://host:port`` of the bootstrap servers, for messages."""
        return f"{self.security_protocol}://{self.bootstrap_servers}"

    @property
    def insync_replicas(self) -> int:
        """``min_insync_replicas``, or 2 with 3 replicas or more (one broker may be down
        and every write is still on two), else 1."""
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return 2 if self.replication_factor >= 3 else 1

    @property
    def ticket_grace_ms(self) -> int:
        return self.settled_ticket_grace_s * 1000

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_namespace)

    def _common(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            **self._security(),
            **self.kafka_extra,
        }

    def _security(self) -> dict[str, Any]:
        config: dict[str, Any] = {"security.protocol": self.security_protocol}
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        if not self.security_protocol.startswith("SASL_"):
            return config
        if self.sasl_username is None or self.sasl_password is None:
            raise ConfigurationError(
                f"{ENV_PREFIX}SECURITY_PROTOCOL={self.security_protocol} needs a principal: "
                f"{ENV_PREFIX}SASL_USERNAME and {ENV_PREFIX}SASL_PASSWORD, or "
                f"{ENV_PREFIX}CREDENTIALS_FILE (make env sets it)"
            )
        return {
            **config,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.reveal().decode(),
        }

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka producer: idempotent, acks=all, ordered per partition. A topic's
        ``max.message.bytes`` bounds a whole record batch, so batches are no larger than
        the topics take (librdkafka's default of 1,000,000 unless ``max_record_bytes`` is
        set lower); a single larger record still goes alone."""
        largest = record_limits(self.max_record_bytes)[0]
        return {
            **self._common(),
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": largest,
            "batch.size": min(_LIBRDKAFKA_BATCH_BYTES, largest),
            **overrides,
        }

    def consumer_config(self, group_id: str, **overrides: Any) -> dict[str, Any]:
        """librdkafka consumer: manual commits after effects, start from the beginning."""
        return {
            **self._common(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "isolation.level": "read_committed",
            **overrides,
        }

    def fetch_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka consumer of the worker's fetches (``streams.faust_glue.record_reader``):
        assigned partition by partition by the worker, never commits (Faust does), answers a
        fetch as soon as a record is there, prefetches at most 4 MiB (its one consumer queue)."""
        return self.consumer_config(
            self.app_id,
            **{
                "client.id": f"{self.client_id}-fetch",
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": 500,
                "fetch.min.bytes": 1,
                "queued.max.messages.kbytes": 4096,
                **overrides,
            },
        )

    def admin_config(self) -> dict[str, Any]:
        return self._common()

    def schema_registry(self) -> Any | None:
        """A Schema Registry client when a URL is configured (``mock://`` works), else None."""
        if not self.schema_registry_url:
            return None
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return SchemaRegistryClient.new_client({"url": self.schema_registry_url})


_DEFAULT = Settings()
