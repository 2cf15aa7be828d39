"""What the day notebooks show about a session: each layer's counters, the batchers' work,
model-load events and timelines, the verdicts in words. They read a :class:`Comparison` (and
its saved trial folders) and compute nothing new: the notebooks call them so they hold no logic.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...bench import load_run
from .._comparison import Comparison
from ..stats import detectable_range

__all__ = ["pool_summary", "batch_summary", "batch_histogram", "layer_summary", "load_events",
           "load_timeline", "during_loads", "explain_load_costs", "headline", "key_figure", "conclusion"]


def pool_summary(cmp: Comparison) -> pd.DataFrame:
    """Connection figures of the gateway per arm: reuse ratio, connections per 1,000 requests."""
    stats = cmp.server_stats
    cols = {"gateway.pool.requests": "upstream_requests",
            "gateway.pool.connections_opened": "connections_opened",
            "gateway.pool.connections_reused": "connections_reused",
            "gateway.pool.retries": "retries",
            "gateway.pool.non_idempotent_retries": "non_idempotent_retries",
            "gateway.retried_answers": "answers_marked_retried",
            "gateway.pool.errors": "errors"}
    have = [c for c in cols if c in stats.columns]
    if not have:
        return pd.DataFrame()
    table = stats.groupby("arm")[have].sum().rename(columns=cols)
    total = table["connections_opened"] + table["connections_reused"]
    table["reuse_ratio"] = (table["connections_reused"] / total.where(total > 0)).round(4)
    table["opened_per_1000_requests"] = (
        1000 * table["connections_opened"] / table["upstream_requests"].where(
            table["upstream_requests"] > 0)).round(1)
    table.index = [f"{arm}: {cmp.a.name if arm == 'A' else cmp.b.name}" for arm in table.index]
    return table


_TIERS = ("model-server", "gateway")


def batch_summary(cmp: Comparison) -> pd.DataFrame:
    """What the batchers did per load, arm and tier, summed over the arm's trials.

    Columns: requests (items batched), batches, mean rows per batch, mean queue delay,
    and the items that never ran (cancelled, expired, rejected) or failed; for the
    gateway also its merged upstream calls and the answers that needed a fallback.
    An arm without batching has no rows here.
    """
    stats = cmp.server_stats
    rows = []
    for (load, arm), group in stats.groupby(["load", "arm"]):
        label = cmp.a.name if arm == "A" else cmp.b.name
        for tier in _TIERS:
            prefix = f"{tier}.batching."
            models = sorted({c[len(prefix):].split(".")[0] for c in group.columns
                             if c.startswith(prefix) and group[c].notna().any()})
            for model in models:
                col = f"{prefix}{model}."

                def total(name: str) -> float:
                    column = col + name
                    return float(group[column].sum()) if column in group else 0.0

                batches = total("batches")
                delay_n = total("queue_delay_s.count")
                row = {"load": load, "arm": f"{arm}: {label}", "tier": tier, "model": model,
                       "requests": int(total("items")), "batches": int(batches),
                       "rows_per_batch": round(total("rows") / batches, 2) if batches else None,
                       "queue_delay_ms": round(1000 * total("queue_delay_s.sum") / delay_n, 3)
                       if delay_n else None,
                       "cancelled": int(total("cancelled")), "expired": int(total("expired")),
                       "rejected": int(total("rejected")), "failed": int(total("failed"))}
                if tier == "gateway":
                    for name in ("merged_calls", "fallback_answers", "unmergeable"):
                        column = f"gateway.{name}"
                        row[name] = int(group[column].sum()) if column in group else 0
                rows.append(row)
    return pd.DataFrame(rows)


def batch_histogram(cmp: Comparison, load: str | None = None) -> pd.DataFrame:
    """Batches by size (rows per batch, bucketed) per arm and tier, summed over trials.

    Returns a tidy frame: arm, tier, rows_le (the bucket's upper bound), batches.
    """
    stats = cmp.server_stats
    if load is not None:
        stats = stats[stats["load"] == load]
    rows = []
    for arm, group in stats.groupby("arm"):
        label = cmp.a.name if arm == "A" else cmp.b.name
        for tier in _TIERS:
            marker = ".batch_rows.le_"
            for column in group.columns:
                if column.startswith(f"{tier}.batching.") and marker in column \
                        and group[column].notna().any():
                    bound = column.split(marker, 1)[1]
                    rows.append({"arm": f"{arm}: {label}", "tier": tier,
                                 "rows_le": float("inf") if bound == "inf" else float(bound),
                                 "batches": int(group[column].sum())})
    out = pd.DataFrame(rows, columns=["arm", "tier", "rows_le", "batches"])
    return out.groupby(["arm", "tier", "rows_le"], as_index=False)["batches"].sum()


def layer_summary(cmp: Comparison, layer: str, *, load: str | None = None) -> pd.DataFrame:
    """A layer's counters per arm and tier, summed over the arm's trials (``/stats`` after each).

    ``layer`` is the statistics section's name (``streaming``, ``loading``, ``pool``...);
    histogram buckets are left out (their ``count`` and ``sum`` stay). An arm whose
    tiers report no such section has no row.
    """
    stats = cmp.server_stats
    if load is not None:
        stats = stats[stats["load"] == load]
    rows = []
    for (load_text, arm), group in stats.groupby(["load", "arm"]):
        label = cmp.a.name if arm == "A" else cmp.b.name
        for tier in _TIERS:
            prefix = f"{tier}.{layer}."
            cols = [c for c in group.columns if c.startswith(prefix) and ".le_" not in c
                    and group[c].notna().any()]
            if not cols:
                continue
            row: dict[str, Any] = {"load": load_text, "arm": f"{arm}: {label}", "tier": tier}
            for c in cols:
                value = pd.to_numeric(group[c], errors="coerce")
                if value.notna().any():
                    row[c[len(prefix):]] = float(value.sum())
            rows.append(row)
    return pd.DataFrame(rows)


def load_events(cmp: Comparison) -> pd.DataFrame:
    """Every model-load event of the session's trials (Thursday's churn), one row each.

    Columns: load, arm, pair, model, action, seconds, status, state. Read from each
    trial's ``trial.json`` in the session's folder.
    """
    rows = []
    for folder in _trial_folders(cmp):
        doc = _trial_doc(folder)
        for ev in doc.get("events") or []:
            rows.append({"load": doc.get("load"), "arm": doc.get("arm"), "pair": doc.get("pair"),
                         "model": ev["model"], "action": ev["action"],
                         "seconds": round(ev["seconds"], 4), "status": ev["status"],
                         "state": ev["state"]})
    return pd.DataFrame(rows, columns=["load", "arm", "pair", "model", "action", "seconds",
                                       "status", "state"])


def load_timeline(cmp: Comparison, *, load: str | None = None,
                  pair: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One pair's requests (send time, latency) and load events, both arms, for a timeline.

    Needs the built-in generator's per-request records (wrk keeps none). Returns
    ``(requests, events)``: requests has arm, t_s, latency_ms; events has arm, start_s,
    end_s, model, action — times in seconds from that trial's first request.
    """
    load = load or cmp.settings.loads[0]
    reqs, evs = [], []
    for folder in _trial_folders(cmp):
        doc = _trial_doc(folder)
        if doc.get("load") != load or doc.get("pair") != pair or not doc.get("valid", True):
            continue
        arm = f"{doc.get('arm')}: {cmp.a.name if doc.get('arm') == 'A' else cmp.b.name}"
        rec = load_run(folder / "bench").records
        if not rec:
            continue
        done = (rec["start_ns"] > 0) & (rec["end_ns"] > 0)
        t0 = int(rec["start_ns"][done].min()) if done.any() else 0
        reqs.append(pd.DataFrame({"arm": arm, "t_s": (rec["start_ns"][done] - t0) / 1e9,
                                  "latency_ms": (rec["end_ns"][done] - rec["scheduled_ns"][done])
                                  / 1e6}))
        for ev in doc.get("events") or []:
            evs.append({"arm": arm, "start_s": (ev["start_ns"] - t0) / 1e9,
                        "end_s": (ev["end_ns"] - t0) / 1e9, "model": ev["model"],
                        "action": ev["action"]})
    requests = pd.concat(reqs, ignore_index=True) if reqs else pd.DataFrame(
        columns=["arm", "t_s", "latency_ms"])
    return requests.sort_values("arm", kind="stable"), pd.DataFrame(
        evs, columns=["arm", "start_s", "end_s", "model", "action"])


def during_loads(cmp: Comparison) -> pd.DataFrame:
    """The steady model's latency while a load was under way against outside loads, per load
    and arm (median over valid trials), and the CPU the loads took.

    Each request of a trial's window counts as *during* when it was scheduled between a load
    event's start and end. Columns: load, arm, share_during (of the window's requests),
    p50/p99 during and outside (ms), p99_ratio (during ÷ outside: 1 is a load nobody
    noticed), loaders_cpu_percent (the model server's helper processes, % of a core) and
    server_cpu_percent. Needs the built-in generator's per-request records.
    """
    rows = []
    for folder in _trial_folders(cmp):
        doc = _trial_doc(folder)
        if not doc.get("valid", True):
            continue
        rec = load_run(folder / "bench")
        if not rec.records:
            continue
        r, summary = rec.records, rec.summary
        ws, we = summary["window_start_ns"], summary["window_end_ns"]
        sched = r["scheduled_ns"]
        keep = (sched >= ws) & (sched < we) & (r["error_code"] == 0)
        sched, lat = sched[keep], (r["end_ns"][keep] - sched[keep]) / 1e6
        during = np.zeros(len(sched), dtype=bool)
        for ev in doc.get("events") or []:
            during |= (sched >= ev["start_ns"]) & (sched < ev["end_ns"])
        use = (doc.get("services") or {}).get("model-server") or {}
        row = {"load": doc.get("load"), "arm": doc.get("arm"),
               "share_during": float(during.mean()) if len(during) else math.nan,
               "loaders_cpu_percent": use.get("children_cpu_percent"),
               "server_cpu_percent": use.get("cpu_percent")}
        for name, part in (("during", lat[during]), ("outside", lat[~during])):
            row[f"p50_{name}_ms"] = float(pd.Series(part).quantile(0.5)) if len(part) else math.nan
            row[f"p99_{name}_ms"] = float(pd.Series(part).quantile(0.99)) if len(part) else math.nan
        row["p99_ratio"] = row["p99_during_ms"] / row["p99_outside_ms"] \
            if row["p99_outside_ms"] > 0 else math.nan
        rows.append(row)
    columns = ["load", "arm", "share_during", "p50_during_ms", "p50_outside_ms", "p99_during_ms",
               "p99_outside_ms", "p99_ratio", "loaders_cpu_percent", "server_cpu_percent"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows).groupby(["load", "arm"], sort=False).median(numeric_only=True)
    return table.reset_index()[columns]


def explain_load_costs(cmp: Comparison) -> list[dict[str, Any]]:
    """A measured reason for each latency regression of a churn session, where the data gives
    one: the arm that loads in the background is slower only *while* a model loads, and as
    fast as the other arm between loads.

    For every (load, metric) among p50/p99 judged *regressed*, :func:`during_loads` is read:
    the reason is given when arm B's percentile outside loads is within the metric's noise
    band δ of arm A's (so the layer costs nothing between loads); it names what B's requests
    met during loads, what A's met (the stall), the share of the window under a load and the
    CPU the loads took. A regression that fails the check gets no reason: the week's summary
    then lists it as unexplained. Returns ``[{"load", "metric", "why"}]``.
    """
    table = cmp.verdict_table()
    regressed = table[(table["verdict"] == "regressed") & table["metric"].isin(["p50_ms", "p99_ms"])]
    if regressed.empty:
        return []
    during = during_loads(cmp)
    out = []
    for r in regressed.itertuples():
        rows = {row.arm: row for row in during[during["load"] == r.load].itertuples()}
        if set(rows) != {"A", "B"}:
            continue
        q = r.metric.split("_")[0]  # p50 / p99
        a, b = rows["A"], rows["B"]
        a_out, b_out = getattr(a, f"{q}_outside_ms"), getattr(b, f"{q}_outside_ms")
        if not (b_out <= a_out * math.exp(float(r.delta))):
            continue
        out.append({"load": r.load, "metric": r.metric, "why": (
            f"only while a model loads: {cmp.b.name}'s {q} {getattr(b, f'{q}_during_ms'):.2f} ms "
            f"during loads, {b_out:.2f} ms between them, as {cmp.a.name} between its stalls "
            f"({a_out:.2f} ms; noise band {100 * math.expm1(float(r.delta)):.0f} %); "
            f"{cmp.a.name}'s requests met the stall itself ({getattr(a, f'{q}_during_ms'):,.0f} ms). "
            f"Loads covered {100 * b.share_during:.0f} % of the window and took "
            f"{b.loaders_cpu_percent:.0f} % of a core at idle priority: on 2 cores the steady "
            "model shares the machine with them")})
    return out


_SLUG = re.compile(r"-p(\d+)-([AB])-(\d+)$")


def _trial_doc(folder: Path) -> dict[str, Any]:
    """A trial's ``trial.json``, with pair, arm and attempt read from its folder name
    (``<load>-pNN-<arm>-<attempt>``, as the session names it: the trial itself does not know)."""
    doc = json.loads((folder / "trial.json").read_text())
    found = _SLUG.search(folder.name)
    if found:
        doc["pair"], doc["arm"], doc["attempt"] = int(found[1]), found[2], int(found[3])
    return doc


def _trial_folders(cmp: Comparison) -> list[Path]:
    if cmp.path is None:
        raise ValueError("the session was not saved (pass out_dir to compare): no trial folders")
    return sorted(p.parent for p in (Path(cmp.path) / "trials").glob("*/trial.json"))


def headline(cmp: Comparison) -> pd.DataFrame:
    """The verdicts for a person: one row per (load, metric), change and CI as percent with
    one decimal, the Holm p-value in scientific notation, the verdict in words; no index."""
    names = {"throughput_rps": "throughput", "p50_ms": "p50 latency", "p99_ms": "p99 latency",
             "mem_per_client_kb": "memory per client (held ÷ clients)",
             "mem_held_mb": "memory held under load (peak - idle, all tiers)",
             "ttfb_p99_ms": "p99 time to first byte",
             "max_ms": "worst latency", "gateway_peak_mb": "gateway peak memory",
             "model_server_peak_mb": "model-server peak memory",
             "gateway_grown_mb": "gateway memory held under load (peak - idle)",
             "model_server_grown_mb": "model-server memory held under load (peak - idle)"}
    rows = []
    for load, verdicts in cmp.verdicts.items():
        if not verdicts:  # say so in the table a reader looks at first, not by its absence
            rows.append({"workload": cmp.settings.workload, "load": load, "metric": "(all)",
                         "change": "", "95 % CI": "",
                         "verdict": "no verdict: fewer than 2 valid pairs (see the log above)",
                         "p (Holm)": "", "pairs": 0, "noise band": ""})
        band = cmp.bands.get(load)
        for v in verdicts:
            rows.append({"workload": cmp.settings.workload, "load": load,
                         "metric": names.get(v.metric, v.metric),
                         "change": f"{v.change_pct:+.1f} %",
                         "95 % CI": f"{v.ci_low_pct:+.1f} % to {v.ci_high_pct:+.1f} %",
                         "verdict": v.reading(), "p (Holm)": f"{v.p_adjusted:.1e}",
                         "pairs": v.n_pairs,
                         "noise band": f"±{100 * v.delta:.1f} % ({v.delta_source or 'default'})"})
        if band is not None and not band.measured and verdicts:
            rows.append({"workload": cmp.settings.workload, "load": load, "metric": "(note)",
                         "change": "", "95 % CI": "", "verdict": f"noise band: {band.source}",
                         "p (Holm)": "", "pairs": "", "noise band": ""})
    frame = pd.DataFrame(rows)
    return frame.style.hide(axis="index") if not frame.empty else frame  # type: ignore[return-value]


def key_figure(figures: dict[str, Any]) -> Any:
    """The day's key figure: the first effects forest of ``Comparison.figures()``; where the
    session reached no verdict there is none, and a line says so instead of the cell failing."""
    for name, figure in figures.items():
        if name.startswith("effects-"):
            return figure
    from IPython.display import Markdown

    return Markdown("*No effects figure: the session reached no verdict (see the headline).*")


_WORDS = {"improved": "improved", "regressed": "regressed",
          "within noise": "changed, but within the noise band",
          "no change detected": "showed no change we can detect"}


def conclusion(cmp: Comparison) -> str:
    """The session's result in words, generated from the verdicts (never written by hand)."""
    lines = []
    head = f"{cmp.b.name} vs {cmp.a.name}"
    for load, verdicts in cmp.verdicts.items():
        if not verdicts:
            lines.append(f"{head} at {load}: not enough valid pairs for a verdict.")
            continue
        n = verdicts[0].n_pairs
        parts = []
        for v in verdicts:
            beyond = (f"; a change beyond {detectable_range(v.mde_pct)} would have been seen"
                      if v.verdict == "no change detected" and math.isfinite(v.mde_pct) else "")
            parts.append(f"{v.metric} {_WORDS[v.verdict]} ({v.change_pct:+.1f} %, 95 % CI "
                         f"{v.ci_low_pct:+.1f} to {v.ci_high_pct:+.1f} %, Holm p = "
                         f"{v.p_adjusted:.3g}, noise band ±{100 * v.delta:.1f} % "
                         f"{v.delta_source or 'default'}{beyond})")
        lines.append(f"{head} at {load}, {n} valid pairs: " + "; ".join(parts) + ".")
    means = cmp.means()
    if "throughput_rps" in means:
        for load in cmp.verdicts:
            try:
                a, b = means.loc[(load, "A"), "throughput_rps"], means.loc[(load, "B"), "throughput_rps"]
                lines.append(f"Mean throughput at {load}: {a:,.0f} req/s ({cmp.a.name}) -> "
                             f"{b:,.0f} req/s ({cmp.b.name}).")
            except KeyError:
                pass
    by_arm = cmp.invalid_by_arm()
    invalid = sum(by_arm.values())
    lines.append(f"{len(cmp.trials)} trials in {cmp.elapsed_s:.0f} s, {invalid} invalid "
                 f"(A {by_arm['A']}, B {by_arm['B']}; kept on record, their pairs re-run); "
                 f"noise bands: " + "; ".join(f"{load}: {band.source}"
                                              for load, band in cmp.bands.items())
                 + ("" if cmp.bands else f"{cmp.deltas_source}") + ".")
    lost = {load: n for load, n in cmp.pairs_lost().items() if n}
    if lost:
        lines.append(f"WARNING: pairs never valid after re-runs, analysed without them: {lost}.")
    if abs(by_arm["A"] - by_arm["B"]) >= 2:
        lines.append("WARNING: invalid trials are lopsided between the arms; re-running them "
                     "may favour the arm that failed - read the verdict with that in mind.")
    if cmp.provisional:
        lines.append("QUICK MODE: few, short trials - these verdicts are provisional.")
    return "\n".join(lines)
