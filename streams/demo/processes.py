"""The demo's child processes (workers, simulated partners): start, watch, stop by pid.

Each child runs ``consent-stream ...`` in its own session (a Ctrl-C in the terminal reaches
only the demo, which then stops them), logs to its own file, and is stopped with SIGTERM,
then SIGKILL after a timeout, always by the pid it was started with.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from schemas.settings import ENV_PREFIX, Secret, Settings
from streams.demo.latency import Samples

__all__ = ["Child", "Children", "child_env", "command", "free_port", "http_get", "scrape"]

log = logging.getLogger(__name__)

STOP_TIMEOUT_S: Final = 20.0
_PORTS_FROM: Final = 20000  # below Linux's default ephemeral range (32768-60999)
_PORTS_TO: Final = 32000
_EPHEMERAL_RANGE: Final = "/proc/sys/net/ipv4/ip_local_port_range"
_HANDED_OUT: set[int] = set()


def command(*args: str) -> list[str]:
    """``consent-stream ARGS`` of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "consent-stream"
    base = [str(beside)] if beside.exists() else [sys.executable, "-m", "streams"]
    return [*base, *args]


def child_env(settings: Settings) -> dict[str, str]:
    """The caller's environment with the demo's namespace, app id and Redis prefix."""
    env = dict(os.environ)
    env.update(
        {
            f"{ENV_PREFIX}BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            f"{ENV_PREFIX}REDIS_URL": settings.redis_url,
            f"{ENV_PREFIX}PARTITIONS": str(settings.partitions),
            f"{ENV_PREFIX}TOPIC_NAMESPACE": settings.topic_namespace,
            f"{ENV_PREFIX}APP_ID": settings.app_id,
            f"{ENV_PREFIX}REDIS_PREFIX": settings.redis_prefix,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.policy_path is not None:
        env[f"{ENV_PREFIX}POLICY"] = settings.policy_path
    if settings.webhook_secrets:
        env[f"{ENV_PREFIX}WEBHOOK_SECRETS"] = ",".join(
            f"{p}={s.reveal().decode()}" for p, s in sorted(settings.webhook_secrets.items())
        )
    return env


def free_port(rng: random.Random | None = None) -> int:
    """A loopback TCP port free now, outside the kernel's ephemeral range, and not one
    this process handed out before.

    Not one the kernel hands out: between this call and the child's bind, a connection
    of any process on the machine (Kafka clients open many) may take an ephemeral port,
    which once made a worker fail with EADDRINUSE in CI. Not one handed out before: the
    demo draws all its children's ports before the last of them binds, so a port drawn
    twice fails the second child (a fresh clone's first `make run` once failed so: the
    gateway, EADDRINUSE; no log showed who held the port, so that is the likely cause)."""
    low, high = _ephemeral_range()
    draw = rng or random.SystemRandom()
    for _ in range(200):
        port = draw.randrange(_PORTS_FROM, _PORTS_TO)
        if low <= port <= high or port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise OSError(f"no free loopback port in {_PORTS_FROM}-{_PORTS_TO} outside {low}-{high}")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path(_EPHEMERAL_RANGE).read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def http_get(
    port: int, path: str, timeout_s: float = 5.0, token: Secret | None = None
) -> tuple[int, bytes]:
    """(status, body) of ``http://127.0.0.1:PORT/PATH`` (with ``token`` as the bearer
    token); status 0 when nothing answers."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token.reveal().decode()}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def scrape(children: Iterable[Child], token: Secret | None = None, attempts: int = 1) -> Samples:
    """Every child's ``/metrics`` page, parsed (one that does not answer in ``attempts``
    tries, 0.5 s apart, is left out)."""
    pages: list[str] = []
    for child in children:
        for attempt in range(attempts):
            status, body = http_get(child.port, "/metrics", token=token)
            if status == 200:
                pages.append(body.decode("utf-8"))
                break
            if attempt + 1 < attempts:
                time.sleep(0.5)
    return Samples.from_pages(pages)


@dataclass
class Child:
    name: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class Children:
    """The processes this demo started; nothing else is ever signalled."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.items: list[Child] = []
        self.stopping = False

    def start(
        self, name: str, args: Sequence[str], env: Mapping[str, str], log_path: Path, port: int
    ) -> Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        proc = subprocess.Popen(  # noqa: S603 - our own entry point, no shell
            command(*args),
            cwd=self.cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(name, port, log_path, proc, log_file)
        self.items.append(child)
        log.debug("started %s (pid %d), log %s", name, proc.pid, log_path)
        return child

    def dead(self) -> list[Child]:
        """Children that exited while they should be running."""
        return [] if self.stopping else [c for c in self.items if not c.alive]

    def describe_dead(self) -> str | None:
        dead = self.dead()
        if not dead:
            return None
        return "; ".join(
            f"{c.name} (pid {c.pid}) exited with {c.proc.returncode}, see {c.log_path}"
            for c in dead
        )

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every live child, wait, then SIGKILL those still running."""
        self.stopping = True
        for child in self.items:
            if child.alive:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.items:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop: SIGKILL", child.name, child.pid)
                child.proc.kill()
                child.proc.wait(10)
            if child.log_file is not None:
                child.log_file.close()
                child.log_file = None

    def wait_until(
        self, check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2
    ) -> str | None:
        """Poll ``check``; None once it holds, else why not (a child died, or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            died = self.describe_dead()
            if died is not None:
                return f"{died} while waiting for {what}"
            if check():
                return None
            if time.monotonic() >= deadline:
                return f"timed out after {timeout_s:.0f} s waiting for {what}"
            time.sleep(interval_s)
