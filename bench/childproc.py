"""A subprocess the benchmark starts (the worker, the no-op agent), stopped by its own pid.

Its output goes to a log file (read back for error messages); its environment is ours
minus every ``CONSENT_STREAM_*`` setting, plus the ones given.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

from schemas.kafka_security import security_env

__all__ = ["REPO_ROOT", "ChildProcess", "child_env"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def child_env(settings: dict[str, str]) -> dict[str, str]:
    """Our environment without ``CONSENT_STREAM_*`` but the Kafka security settings, plus
    ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_STREAM_")}
    env.update(security_env(os.environ))
    env.update(settings)
    return env


class ChildProcess:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv, self.env, self.log_path = argv, env, log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logfile:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(  # noqa: S603 - our own entry points
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.debug("started pid %d: %s", self._proc.pid, " ".join(self.argv))

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("process not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the pid we started, SIGKILL after ``timeout_s``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s: SIGKILL", proc.pid, timeout_s)
            proc.kill()
            proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
