"""CPU accounting from /proc: a process's CPU seconds and the machine's busy share.

On a shared machine the figures of the other steps depend on what else runs; the CPU
time the worker spends per event does much less, and says which resource is the limit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuSnapshot", "cpu_delta", "cpu_snapshot"]

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    at: float  # monotonic seconds
    process_s: float  # user + system CPU seconds of the process (all its threads)
    busy_ticks: int  # machine: every CPU state except idle and iowait
    total_ticks: int


def _process_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _machine_ticks() -> tuple[int, int]:
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def cpu_snapshot(pid: int) -> CpuSnapshot:
    busy, total = _machine_ticks()
    return CpuSnapshot(time.monotonic(), _process_seconds(pid), busy, total)


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot, events: float) -> dict[str, float]:
    """Process CPU per event and as a share of one core; machine busy share (all cores)."""
    wall = max(after.at - before.at, 1e-9)
    used = after.process_s - before.process_s
    ticks = max(after.total_ticks - before.total_ticks, 1)
    return {
        "worker_cpu_ms_per_event": round(used * 1000 / max(events, 1), 3),
        "worker_cpu_share_of_one_core": round(used / wall, 3),
        "machine_busy_share": round((after.busy_ticks - before.busy_ticks) / ticks, 3),
    }
