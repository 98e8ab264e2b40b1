"""Writing the results: JSON, a Markdown table, and the latency-vs-throughput plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final

from ceilings import CEILING_PATHS, NOOP_PATHS, noop_ceiling

__all__ = ["JUST_STARTED", "markdown", "plot", "ratio", "write_json"]

JUST_STARTED: Final = "just after start"
"""The label of a first step at the first rate, measured right after the worker is ready:
a worker that has just recovered 1,000,000 tickets has a transient of its own (first step
at 300/s p99 46-55 ms, the same rate again right after it 16 ms, as without tickets), which
is not the sweep's doing; the steps after it measure the sweep."""

HOPS = (("store", "publish → store"), ("partner", "publish → partner topic"))


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _missing(section: dict[str, Any]) -> str | None:
    if "error" in section:
        return f"not measured: {section['error']}"
    if "skipped" in section:
        return f"not measured: {section['skipped']}"
    return None


def _machine(m: dict[str, Any]) -> list[str]:
    return [
        "| machine | |",
        "|---|---|",
        f"| CPU | {m.get('cores')} cores, {m.get('cpu_model')} |",
        f"| memory | {_num(m.get('memory_mib'))} MiB |",
        f"| Kafka | {m.get('kafka')} ({m.get('kafka_mode')}) |",
        f"| Redis | {m.get('redis')} |",
        f"| Python | {m.get('python')}, faust-streaming {m.get('faust')}, "
        f"confluent-kafka {m.get('confluent_kafka')} (librdkafka {m.get('librdkafka')}) |",
        f"| load average at start | {m.get('load_average_at_start')} |",
    ]


def _throughput(r: dict[str, Any]) -> list[str]:
    raw, pipe = r["raw_kafka"], r["pipeline"]
    ratios = r.get("ratios", {})
    rows = [
        "| step | records/s | pipeline as a share of it |",
        "|---|---:|---:|",
    ]
    raw_text = _missing(raw) or _num(raw.get("end_to_end_records_per_s"))
    pipe_text = _missing(pipe) or _num(pipe.get("rate_events_per_s"))
    rows.append(
        f"| (a) raw confluent-kafka produce → consume, {_num(raw.get('records'))} records "
        f"of {_num(raw.get('mean_record_bytes'))} B | {raw_text} | "
        f"{_pct(ratios.get('pipeline_to_raw_kafka'))} |"
    )

    def noop_row(name: str, what: str) -> str:
        noop = r.get(name, {"skipped": "not measured"})
        rate = noop.get("records_per_s")
        share = ratio(pipe.get("rate_events_per_s"), rate)
        return (
            f"| {what} (concurrency=1), {_num(noop.get('records'))} records, "
            f"{NOOP_ROWS[NOOP_PATHS[name]]} | {_missing(noop) or _num(rate)} | {_pct(share)} |"
        )

    rows += [noop_row(name, "(b) no-op Faust agent") for name in CEILING_PATHS]
    rows.append(
        "| (b) the ceiling: the faster no-op Faust agent | "
        f"{_num(noop_ceiling(r))} | {_pct(ratios.get('pipeline_to_faust_noop'))} |"
    )
    rows += [noop_row(name, "no-op agent") for name in NOOP_PATHS if name not in CEILING_PATHS]
    rounds = ", ".join(_num(r.get("rate_events_per_s")) for r in pipe.get("rounds", []))
    rows.append(
        f"| (c) full pipeline (worker, realistic mix), {_num(pipe.get('events'))} events over "
        f"{_num(pipe.get('subjects'))} subjects, best of rounds [{rounds}] | {pipe_text} | 100 % |"
    )
    if "worker_cpu_ms_per_event" in pipe:
        rows += [
            "",
            f"During (c) the worker used {_share(pipe.get('worker_cpu_share_of_one_core'))} of "
            f"one core ({_num(pipe.get('worker_cpu_ms_per_event'), 2)} ms of CPU per event, "
            f"ledger work included); the whole machine was "
            f"{_share(pipe.get('machine_busy_share'))} busy.",
        ]
    lags = [_lag_bound(r.get("loop_lag_within_s")) for r in pipe.get("rounds", [])]
    if lags:
        rows += [
            "",
            f"The worker's event loop was late by at most {', '.join(lags)} in the rounds "
            "(`consent_event_loop_lag_seconds`, the bucket every sample fitted in).",
        ]
    return rows


def _lag_bound(bound: Any) -> str:
    """A loop-lag bucket bound (seconds) as text; None: beyond every bucket or no sample."""
    return "n/a" if bound is None else f"{bound * 1000:g} ms"


NOOP_ROWS = {
    "librdkafka": "fetched by librdkafka (the worker's record reader)",
    "aiokafka": "fetched by aiokafka (Faust's own fetcher)",
    "direct": "fetched by librdkafka, handed over as messages and acknowledged in batches: "
    "the worker's own path without its work, not a Faust agent's stream (so not (b))",
}


def ratio(a: Any, b: Any) -> float | None:
    """``a / b`` (5 decimals) when both are measured and ``b`` is positive, else None."""
    ok = isinstance(a, int | float) and isinstance(b, int | float) and b > 0
    return round(a / b, 5) if ok else None


def _share(value: Any) -> str:
    return f"{value * 100:.0f} %" if isinstance(value, int | float) else "-"


def _pct(ratio: Any) -> str:
    if not isinstance(ratio, int | float):
        return "-"
    return f"{ratio * 100:.2f} % (1/{1 / ratio:,.0f})" if ratio > 0 else "-"


def _pair(q: dict[str, Any]) -> str:
    return f"{_num(q.get('p50'))} / {_num(q.get('p99'))}"


def _us_per_event(s: dict[str, Any]) -> str:
    ms = s.get("worker_cpu_ms_per_event")
    return _num(ms * 1000) if isinstance(ms, int | float) else "-"


def _ratio(a: Any, b: Any) -> str:
    if not (isinstance(a, int | float) and isinstance(b, int | float)) or b <= 0:
        return "-"
    if math.isnan(a) or math.isnan(b):
        return "-"
    return _num(a / b, 0 if a / b >= 10 else 1)


LATENCY_HEADER = [
    "| offered ev/s (publisher's own rate) | achieved ev/s pipeline / no-op | "
    "store p50 / p99 | partner topic p50 / p99 | no-op p50 / p99 | "
    "p99 ÷ no-op's: store / partner topic | "
    "taken by the agent p50 / p99 | events per batch | worker CPU µs/event | "
    "no-op CPU µs/event |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def _offered(s: dict[str, Any]) -> str:
    sent = s.get("publisher_events_per_s")
    sent_text = f"; sent {_num(sent)}" if sent is not None else ""
    return f"{_num(s.get('offered_events_per_s'))} ({s.get('label', '')}{sent_text})"


def _latency_row(s: dict[str, Any]) -> str:
    missing = _missing(s)
    if missing:
        return f"| {_offered(s)} | {missing} | | | | | | | | |"
    obs = s["observed_ms"]
    noop = s.get("noop") or {"skipped": "not asked for"}
    noop_missing = _missing(noop)
    noop_q = noop.get("latency_ms", {})
    mark = " (saturated)" if s.get("saturated") else ""
    cells = [
        _offered(s),
        f"{_num(s.get('achieved_events_per_s'))}{mark} / {_num(noop.get('achieved_events_per_s'))}",
        _pair(obs["store"]),
        _pair(obs["partner"]),
        noop_missing or _pair(noop_q),
        f"{_ratio(obs['store'].get('p99'), noop_q.get('p99'))} / "
        f"{_ratio(obs['partner'].get('p99'), noop_q.get('p99'))}",
        _pair(s.get("histogram_ms", {}).get("worker", {})),
        _num(s.get("events_per_batch"), 1),
        _us_per_event(s),
        _us_per_event(noop),
    ]
    return "| " + " | ".join(cells) + " |"


def _latency(steps: Any) -> list[str]:
    if isinstance(steps, dict):
        return [_missing(steps) or "not measured"]
    return [
        *LATENCY_HEADER,
        *(_latency_row(s) for s in steps),
        "",
        "Latency observed by a consumer (pipeline) or by the no-op agent itself, wall clock "
        "minus `cs_published_at`; the no-op agent gets the same events at the same rate first. "
        "Taken by the agent: the worker's `consent_publish_to_worker_seconds` (from its "
        "buckets), measured where the no-op agent measures, so store minus it is what the "
        "processing adds. Events per batch: the events agent's mean batch over the step "
        "(`consent_batch_records`). CPU: the process's own time over the step, per event "
        "offered. p95, "
        "max, the worker's other histograms and the machine's busy share are in latest.json.",
    ]


def _memory(r: dict[str, Any]) -> list[str]:
    red, rss, reb = r["redis_memory"], r["worker_rss"], r["rebuild"]
    red_text = _missing(red) or (
        f"{_num(red.get('bytes_per_subject'))} B/subject (used_memory delta over "
        f"{_num(red.get('subjects'))} subjects); MEMORY USAGE sample "
        f"{_num(red.get('memory_usage_sample_bytes_per_key'))} B/key"
    )
    rss_text = _missing(rss) or (
        f"{_num(rss.get('rss_before_mib'), 1)} MiB → "
        f"{_num(rss.get('rss_after_first_round_mib'), 1)} MiB → "
        f"{_num(rss.get('rss_after_mib'), 1)} MiB with {_num(rss.get('events_processed'))} "
        f"subjects in the table, in two equal rounds: "
        f"{_num(rss.get('rss_first_round_per_subject_bytes'))} B/subject over the first "
        f"(with what the worker allocates once under load), "
        f"{_num(rss.get('rss_per_subject_bytes'))} B/subject over the second (which "
        f"may reuse memory the first freed)"
    )
    reb_text = _missing(reb) or (
        f"{_num(reb.get('elapsed_s'), 1)} s for {_num(reb.get('applied'))} states "
        f"({_num(reb.get('seconds_per_100k_subjects'), 1)} s per 100k, "
        f"{_num(reb.get('states_per_s'))} states/s)"
    )
    return [
        "| measure | result |",
        "|---|---|",
        f"| (e) Redis memory per subject | {red_text} |",
        f"| (e) worker RSS | {rss_text} |",
        f"| (f) rebuild Redis from consent.state.v1 | {reb_text} |",
    ]


def _sweep_runs(sw: dict[str, Any]) -> str:
    """How long the sweep held the event loop during (g)'s steps (its own histogram)."""
    runs = sw.get("sweep_runs")
    if not runs:
        return "The worker's sweep histogram showed no run during the steps."
    longest = sw.get("sweep_longest_within_ms")
    bound = "longer than 1 s" if longest is None else f"at most {longest:g} ms"
    return (
        f"During the steps the sweep ran {_num(runs)} times and held the event loop "
        f"{_num(sw.get('sweep_mean_ms'), 3)} ms on average, each run {bound} "
        "(`consent_ledger_sweep_seconds`)."
    )


def _sweep(r: dict[str, Any]) -> list[str]:
    """(g): start-up with the held tickets, then latency at fixed rates beside (d)'s."""
    sw = r.get("sweep", {})
    missing = _missing(sw)
    if missing:
        return [f"(g) {missing}"]
    plain = {s.get("label"): s for s in r.get("latency", []) if isinstance(s, dict)}
    lines = [
        f"(g) {_num(sw.get('tickets'))} open tickets (3-year retention holds, "
        f"{_num(sw.get('ticket_bytes'))} B each) written in {_num(sw.get('write_s'), 1)} s; "
        f"the worker recovered and indexed them and was ready in "
        f"{_num(sw.get('worker_ready_s'), 1)} s (RSS {_num(sw.get('worker_rss_mib'), 1)} MiB, "
        f"`consent_ledger_tickets` {_num(sw.get('tickets_indexed'))}); the sweep runs every 5 s.",
        "",
        _sweep_runs(sw),
        "",
        f"The worker's event loop was late by at most "
        f"{_lag_bound(sw.get('loop_lag_start_within_s'))} from its start to ready (the "
        f"tickets' recovery and indexing) and {_lag_bound(sw.get('loop_lag_steps_within_s'))}"
        " during the steps (`consent_event_loop_lag_seconds`).",
        "",
        "| offered ev/s | achieved ev/s | store p50 / p99 with tickets | "
        "store p50 / p99 without (d) | partner topic p99 with / without |",
        "|---:|---:|---:|---:|---:|",
    ]
    for step in sw.get("latency", []):
        base = plain.get(step.get("label"), {})
        o, b = step.get("observed_ms", {}), base.get("observed_ms", {})
        offered = _num(step.get("offered_events_per_s"))
        if str(step.get("label", "")).endswith(JUST_STARTED):
            offered = f"{offered}, {JUST_STARTED}"
        lines.append(
            f"| {offered} | "
            f"{_num(step.get('achieved_events_per_s'))} | "
            f"{_num(o.get('store', {}).get('p50'))} / {_num(o.get('store', {}).get('p99'))} | "
            f"{_num(b.get('store', {}).get('p50'))} / {_num(b.get('store', {}).get('p99'))} | "
            f"{_num(o.get('partner', {}).get('p99'))} / {_num(b.get('partner', {}).get('p99'))} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Benchmark results ({results.get('started_at', '')})", ""]
    lines += [*_machine(results["machine"]), ""]
    lines += ["## Throughput", "", *_throughput(results), ""]
    lines += ["## Latency per hop (ms)", "", *_latency(results["latency"]), ""]
    lines += ["## Memory and rebuild", "", *_memory(results), ""]
    lines += ["## Ledger sweep with a long history", "", *_sweep(results), ""]
    lines += [f"Total run time: {_num(results.get('elapsed_s'))} s.", ""]
    return "\n".join(lines)


def _line(
    ax: Any,
    rows: list[tuple[dict[str, Any], dict[str, Any]]],
    q: str,
    style: str,
    label: str,
    **kwargs: Any,
) -> None:
    """One quantile ``q`` against the achieved rate, for (step, quantiles) rows."""
    pts = [(s.get("achieved_events_per_s", math.nan), qs.get(q, math.nan)) for s, qs in rows]
    pts = [(x, y) for x, y in pts if not (math.isnan(x) or math.isnan(y))]
    if pts:
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, style, label=label, **kwargs)


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency (p50/p95/p99, observed) against achieved throughput, one panel per hop; the
    no-op agent's p99 (the framework's own) on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results["latency"] if isinstance(results["latency"], list) else []
    steps = sorted(
        (s for s in steps if "observed_ms" in s), key=lambda s: s["offered_events_per_s"]
    )
    peak = results["pipeline"].get("rate_events_per_s")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=120, sharey=True)
    for ax, (hop, title) in zip(axes, HOPS, strict=True):
        for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            _line(ax, [(s, s["observed_ms"][hop]) for s in steps], q, style, q)
        noop = [
            (s["noop"], s["noop"]["latency_ms"]) for s in steps if "latency_ms" in s.get("noop", {})
        ]
        _line(ax, noop, "p99", "x-.", "no-op agent p99", color="grey")
        for s in steps:
            if s.get("saturated"):
                ax.annotate(
                    f"offered {s['offered_events_per_s']:.0f}/s\n(saturated)",
                    (s["achieved_events_per_s"], s["observed_ms"][hop].get("p50", math.nan)),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(-30, -28),
                )
        if isinstance(peak, int | float):
            ax.axvline(peak, color="grey", linestyle="-.", label=f"(c) backlog drain {peak:.0f}/s")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("achieved throughput (events/s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("latency (ms), observed by a consumer")
    m = results["machine"]
    fig.suptitle(
        f"Consent Stream worker: latency vs throughput ({m.get('cores')} cores, "
        f"Kafka {m.get('kafka')}, realistic event mix)"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
