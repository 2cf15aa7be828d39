"""The sprint week: one parameterized notebook per day, executed into a run folder.

::

    optkit week --days mon,tue --quick --out runs/week-1
      mon: papermill notebooks/01-connection-pooling.ipynb -> runs/week-1/mon/
      tue: papermill notebooks/02-request-batching.ipynb   -> runs/week-1/tue/
             01-connection-pooling.ipynb   the executed notebook = the day's report
             01-connection-pooling.html    the same with its figures, for reading anywhere
             results.json                  machine-readable verdicts (Friday rolls these up)
             trials/ figures/ trials.csv verdict.json
      ...
      summary table of every day at the end

The helpers below are what the notebooks call, so the notebooks hold no logic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ._compare import QUICK, STANDARD, CompareSettings, Comparison

__all__ = ["Day", "DAYS", "project_root", "experiment", "ensure_repository", "day_settings",
           "pool_summary", "batch_summary", "batch_histogram", "latency_curve", "conclusion",
           "record_day", "run_week", "week_summary"]


@dataclass(frozen=True)
class Day:
    """One day of the sprint: its notebook and the two configs it compares."""

    key: str
    title: str
    notebook: str
    a: str
    b: str


DAYS: dict[str, Day] = {
    "mon": Day("mon", "Connection pooling", "01-connection-pooling.ipynb", "baseline", "pooling"),
    "tue": Day("tue", "Request batching", "02-request-batching.ipynb", "pooling", "batching"),
}


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding ``experiments/`` and ``notebooks/``, searched upward from ``start``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "experiments").is_dir() and (folder / "notebooks").is_dir():
            return folder
    package_root = Path(__file__).resolve().parent.parent
    if (package_root / "experiments").is_dir():
        return package_root
    raise FileNotFoundError(f"no optkit project (experiments/ + notebooks/) above {here}")


def experiment(name: str, root: str | Path | None = None) -> Path:
    """Path of ``experiments/<name>.yaml``."""
    path = project_root(root) / "experiments" / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no experiment config {path}")
    return path


def ensure_repository(path: str | Path, root: str | Path | None = None) -> Path:
    """The model repository at ``path`` (relative to the project), built if missing."""
    from ._models import build_repository

    repo = Path(path)
    if not repo.is_absolute():
        repo = project_root(root) / repo
    build_repository(repo)  # no-op for models already built
    return repo


def day_settings(*, quick: bool, pairs: int, warmup_s: float, duration_s: float,
                 loads: Sequence[str], seed: int) -> CompareSettings:
    """Quick mode takes the QUICK timing and the first load only (CI); otherwise the
    notebook's parameters.

    ``OPTKIT_QUICK=1`` in the environment forces quick mode: that is how ``make test``
    runs the notebooks under nbmake, which cannot pass papermill parameters.
    """
    if quick or os.environ.get("OPTKIT_QUICK") == "1":  # CI: does the day run end to end?
        return dataclasses.replace(QUICK, loads=tuple(loads)[:1], seed=seed)
    return dataclasses.replace(STANDARD, pairs=pairs, warmup_s=warmup_s, duration_s=duration_s,
                               loads=tuple(loads), seed=seed)


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


def latency_curve(a: str | Path, b: str | Path, *, repository: str | Path,
                  rates: Sequence[float], step_s: float, quick: bool, seed: int,
                  workload: str = "digits") -> pd.DataFrame:
    """Both arms' p50/p99 against the offered open-loop rate (one fresh stack per arm).

    Quick mode (CI) keeps the two lowest rates and 1 s steps.
    """
    from ._slo import latency_vs_load

    if quick or os.environ.get("OPTKIT_QUICK") == "1":
        rates, step_s = sorted(rates)[:2], 1.0
    return latency_vs_load([a, b], repository=repository, rates=rates, workload=workload,
                           step_s=step_s, warmup_s=0.5, seed=seed)


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
            parts.append(f"{v.metric} {_WORDS[v.verdict]} ({v.change_pct:+.1f} %, 95 % CI "
                         f"{v.ci_low_pct:+.1f} to {v.ci_high_pct:+.1f} %, Holm p = "
                         f"{v.p_adjusted:.3g}, noise band ±{100 * v.delta:.0f} %)")
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
                 f"noise thresholds from {cmp.deltas_source}.")
    lost = {load: n for load, n in cmp.pairs_lost().items() if n}
    if lost:
        lines.append(f"WARNING: pairs never valid after re-runs, analysed without them: {lost}.")
    if abs(by_arm["A"] - by_arm["B"]) >= 2:
        lines.append("WARNING: invalid trials are lopsided between the arms; re-running them "
                     "may favour the arm that failed - read the verdict with that in mind.")
    if cmp.provisional:
        lines.append("QUICK MODE: few, short trials - these verdicts are provisional.")
    return "\n".join(lines)


def record_day(cmp: Comparison, *, day: str, out_dir: str | Path,
               extra: dict[str, Any] | None = None) -> Path:
    """Save the session and ``results.json`` (what Friday's roll-up reads) into ``out_dir``."""
    out = Path(out_dir)
    cmp.save(out)
    doc = {"schema_version": 1, "day": day, "title": DAYS[day].title if day in DAYS else day,
           "a": cmp.a.name, "b": cmp.b.name, "provisional": cmp.provisional,
           "conclusion": conclusion(cmp),
           "verdicts": cmp.verdict_table().to_dict(orient="records"),
           "means": {f"{load}|{arm}": row.dropna().to_dict()
                     for (load, arm), row in cmp.means().iterrows()},
           **(extra or {})}
    path = out / "results.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path


def run_week(days: Sequence[str] | None = None, *, quick: bool = False,
             out: str | Path | None = None, repository: str | Path = "build/models",
             root: str | Path | None = None, progress: bool = True,
             parameters: dict[str, Any] | None = None) -> pd.DataFrame:
    """Execute the day notebooks with papermill; export each to HTML; return the summary."""
    import papermill as pm

    base = project_root(root)
    chosen = list(days or DAYS)
    unknown = [d for d in chosen if d not in DAYS]
    if unknown:
        raise ValueError(f"unknown day(s) {unknown}; known: {list(DAYS)}")
    run_dir = Path(out) if out else base / "runs" / time.strftime("week-%Y%m%d-%H%M%S")
    run_dir = run_dir if run_dir.is_absolute() else base / run_dir
    repo = ensure_repository(repository, base)
    rows = []
    for key in _bar(chosen, progress):
        day = DAYS[key]
        day_dir = run_dir / key
        day_dir.mkdir(parents=True, exist_ok=True)
        executed = day_dir / day.notebook
        params = {"quick": quick, "out_dir": str(day_dir), "repository": str(repo),
                  **(parameters or {})}
        started = time.perf_counter()
        error = ""
        try:
            pm.execute_notebook(str(base / "notebooks" / day.notebook), str(executed),
                                parameters=params, cwd=str(base / "notebooks"),
                                progress_bar=False, kernel_name="python3")
        except Exception as exc:  # record the failure, go on with the other days
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
        _export_html(executed)
        rows.append(_summary_row(key, day, day_dir, time.perf_counter() - started, error))
    summary = pd.DataFrame(rows)
    summary.to_csv(run_dir / "summary.csv", index=False)
    return summary


def _bar(items: list[str], enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="week", unit="day")


def _export_html(notebook: Path) -> None:
    if not notebook.exists():
        return
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    notebook.with_suffix(".html").write_text(body)


def _summary_row(key: str, day: Day, day_dir: Path, seconds: float, error: str) -> dict[str, Any]:
    row: dict[str, Any] = {"day": key, "title": day.title, "compare": f"{day.b} vs {day.a}",
                           "seconds": round(seconds, 1), "status": "failed" if error else "ok"}
    results = day_dir / "results.json"
    if results.exists():
        doc = json.loads(results.read_text())
        for v in doc.get("verdicts", []):
            if v.get("metric") in ("throughput_rps", "p99_ms"):
                row[f"{v['metric']} @ {v['load']}"] = (
                    f"{v['change_pct']:+.1f} % [{v['ci_low_pct']:+.1f}, {v['ci_high_pct']:+.1f}] "
                    f"{v['verdict']}")
    elif not error:
        row["status"] = "no results.json"
    if error:
        row["error"] = error
    return row


def week_summary(summary: pd.DataFrame) -> str:
    """The end-of-week table as text."""
    return summary.to_string(index=False)
