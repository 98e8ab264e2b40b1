"""The no-op agent's latency alone and beside the pipeline's load (a probe beside ``make bench``).

(d) sets the pipeline's p99 beside the no-op Faust agent's at the same offered rate, each
measured on its own. This probe asks how much of the difference is the machine: for each
rate, two rounds of

1. the no-op agent alone, a light probe of ``--probe-rate`` events/s for 15 s;
2. the pipeline (one worker, the bench's publisher and observer) at the rate for 15 s,
   with the same light probe of the no-op agent running beside it from its 2nd to its
   13th second;

and prints one JSON line per round: the pipeline's publish -> store p50/p99 and the
machine's busy share, the no-op agent's p50/p99 alone and beside the pipeline.

    make stack && eval "$(python3 deploy/local/stack.py env)"
    .venv/bin/python bench/noop_beside.py --rates 1000,3000
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from latency import Observer, Planned, run_step
from noop_latency import NoopLatency
from run import running_worker
from workerproc import WorkerProcess
from workload import Workload

from schemas.policy import Policy, load_policy
from schemas.settings import Settings

STEP_S = 15.0
ROUNDS = 2


def _events(first: int, rate: float, seconds: float) -> list[Any]:
    return list(Workload(1, seed=first).one_per_subject(first, int(rate * seconds)))


def _noop(
    agent: NoopLatency,
    worker: WorkerProcess,
    policy: Policy,
    rate: float,
    seconds: float,
    first: int,
) -> dict[str, Any]:
    step = Planned("probe", rate, seconds).step()
    figures: dict[str, Any] = agent.run_step(
        worker.settings, policy, step, _events(first, rate, seconds), 60.0
    )
    return figures["latency_ms"]  # type: ignore[no-any-return]


def _round(
    agent: NoopLatency,
    worker: WorkerProcess,
    observer: Observer,
    policy: Policy,
    rate: float,
    probe_rate: float,
    first: int,
) -> dict[str, Any]:
    alone = _noop(agent, worker, policy, probe_rate, STEP_S, first)
    beside: dict[str, Any] = {}

    def probe() -> None:
        time.sleep(2.0)
        beside.update(_noop(agent, worker, policy, probe_rate, STEP_S - 4.0, first + 50_000))

    thread = threading.Thread(target=probe)
    thread.start()
    step = Planned("pipeline", rate, STEP_S).step()
    pipeline = run_step(worker, policy, observer, step, _events(first + 100_000, rate, STEP_S), 120)
    thread.join()
    store = pipeline["observed_ms"]["store"]
    return {
        "rate": rate,
        "pipeline_achieved": pipeline["achieved_events_per_s"],
        "pipeline_store_p50_ms": store.get("p50"),
        "pipeline_store_p99_ms": store.get("p99"),
        "machine_busy": pipeline.get("machine_busy_share"),
        "noop_alone_p50_ms": round(alone["p50"], 1),
        "noop_alone_p99_ms": round(alone["p99"], 1),
        "noop_beside_p50_ms": round(beside["p50"], 1),
        "noop_beside_p99_ms": round(beside["p99"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="1000,3000", help="pipeline rates, events/s")
    parser.add_argument("--probe-rate", type=float, default=100.0, help="no-op probe, events/s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings, policy = Settings.from_env().as_principal("admin"), load_policy()
    first = 7_000_000
    with (
        tempfile.TemporaryDirectory() as work,
        running_worker(settings, policy, Path(work), 120) as worker,
        NoopLatency(settings, Path(work)) as agent,
    ):
        observer = Observer(worker, policy)
        observer.start()
        try:
            warm = Planned("warm-up", 50, 3).step()
            run_step(worker, policy, observer, warm, _events(1, 50, 3), 60)
            _noop(agent, worker, policy, 50, 3, 1_000)
            for rate in (float(r) for r in args.rates.split(",")):
                for _ in range(ROUNDS):
                    row = _round(agent, worker, observer, policy, rate, args.probe_rate, first)
                    print(json.dumps(row), flush=True)
                    first += 200_000
        finally:
            observer.stop()


if __name__ == "__main__":
    main()
