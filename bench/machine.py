"""The machine a benchmark ran on: cores, memory, CPU model, Kafka/Redis/Python versions."""

from __future__ import annotations

import os
import platform
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import confluent_kafka
import redis

__all__ = ["describe_machine"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def _kafka_version() -> str:
    """The broker version the local stack runs (deploy/local/stack.toml, local override)."""
    version = "unknown"
    for name in ("stack.toml", "stack.local.toml"):
        path = REPO_ROOT / "deploy" / "local" / name
        if path.exists():
            kafka = tomllib.loads(path.read_text()).get("kafka", {})
            version = str(kafka.get("version", version))
    return version


def _redis_version(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        info: dict[str, Any] = client.info("server")
        return str(info.get("redis_version", "unknown"))
    finally:
        client.close()


def describe_machine(redis_url: str) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mib": _memory_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kafka": _kafka_version(),
        "kafka_mode": "single node, KRaft, loopback (deploy/local/stack.py)",
        "redis": _redis_version(redis_url),
        "confluent_kafka": metadata.version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "faust": metadata.version("faust-streaming"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
