"""The week's roll-up, Friday's target table, the final reports and the run's index page.

::

    runs/week-X/
      mon/ tue/ wed/ thu/ fri/     each day: <notebook>.ipynb + .html, results.json, trials/ ...
      reports/                     sprint-summary, performance-report, deployment-guide
                                   (.ipynb executed by papermill, .html, .md)
      summary.csv                  one row per day (status, seconds, headline verdicts)
      index.html                   links every report, with the summary table

Everything here reads what the days *recorded* (``results.json``, ``trials.csv``,
``verdict.json``): the roll-up never re-runs a trial, and every number it shows
can be traced to a trial folder.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

from .._comparison import Comparison
from ..stats import RETIRED_METRICS
from ._days import DAYS, SERVICE_DAY, project_root
from ._summary import summary_rows

__all__ = ["rollup", "waterfall_steps", "week_waterfall", "summary_waterfall", "arm_interval",
           "target_table", "SEED_TARGETS", "write_index", "REPORTS", "run_reports",
           "day_folders", "environment_of", "environment_table", "day_overview",
           "validity_table", "calibration_table", "day_figures", "recorded", "recorded_table",
           "verdicts_shown", "next_steps", "md_table", "md_list"]

#: The three final reports: notebook under ``notebooks/reports/`` -> output name.
REPORTS = {"sprint-summary": "sprint-summary.ipynb",
           "performance-report": "performance-report.ipynb",
           "deployment-guide": "deployment-guide.ipynb"}


def day_folders(run_dir: str | Path) -> dict[str, Path]:
    """The run's day folders that hold a ``results.json``, in the week's order."""
    run = Path(run_dir)
    return {d: run / d for d in DAYS if (run / d / "results.json").exists()}


def rollup(run_dir: str | Path) -> pd.DataFrame:
    """Every verdict of the week, one row per (day, workload, load, metric), from results.json.

    Columns: day, title, a, b, workload, load, metric, change_pct, ci_low_pct, ci_high_pct,
    p_adjusted, verdict, n_pairs, provisional, source (the day's folder). Verdicts on a metric
    no longer judged (``stats.RETIRED_METRICS``: memory ÷ requests in flight, in runs before
    2026-12-06) are left out: they would call a faster arm a memory regression.
    """
    rows = []
    for day, folder in day_folders(run_dir).items():
        doc = json.loads((folder / "results.json").read_text())
        for v in doc.get("verdicts", []):
            if v.get("metric") in RETIRED_METRICS:
                continue
            rows.append({"day": day, "title": doc.get("title", day), "a": doc.get("a"),
                         "b": doc.get("b"), "workload": v.get("workload", "digits"),
                         "load": v["load"], "metric": v["metric"],
                         "change_pct": v["change_pct"], "ci_low_pct": v["ci_low_pct"],
                         "ci_high_pct": v["ci_high_pct"], "p_adjusted": v["p_adjusted"],
                         "verdict": v["verdict"], "n_pairs": v["n_pairs"],
                         "provisional": bool(doc.get("provisional")), "source": str(folder)})
    columns = ["day", "title", "a", "b", "workload", "load", "metric", "change_pct",
               "ci_low_pct", "ci_high_pct", "p_adjusted", "verdict", "n_pairs", "provisional",
               "source"]
    return pd.DataFrame(rows, columns=columns)


def waterfall_steps(table: pd.DataFrame, *, metric: str = "throughput_rps",
                    load: str = "closed:32", workload: str = "digits") -> pd.DataFrame:
    """Each day's gain on ``metric`` against the day before, chained, then Friday's direct verdict.

    Rows Mon..Thu: the day's own verdict (change and CI against the previous day's config)
    and ``cumulative_pct``, the chained estimate prod(1 + change) - 1 (the CIs of a chain do
    not multiply, so only each step and Friday's direct measurement carry one). A day that
    did not measure this load/metric/workload is kept with ``measured=False``; the Friday
    row is the integrated configuration measured against the baseline in one session.
    """
    sel = table[(table["metric"] == metric) & (table["load"] == load)
                & (table["workload"] == workload)]
    rows, level = [], 1.0
    for day in DAYS:
        found = sel[sel["day"] == day]
        if found.empty:
            if day in set(table["day"]):
                rows.append({"day": day, "measured": False, "change_pct": np.nan,
                             "ci_low_pct": np.nan, "ci_high_pct": np.nan, "verdict": "not measured",
                             "cumulative_pct": 100 * (level - 1) if day != "fri" else np.nan})
            continue
        v = found.iloc[0]
        if day != "fri":
            level *= 1 + v["change_pct"] / 100
        rows.append({"day": day, "measured": True, "change_pct": v["change_pct"],
                     "ci_low_pct": v["ci_low_pct"], "ci_high_pct": v["ci_high_pct"],
                     "verdict": v["verdict"],
                     "cumulative_pct": 100 * (level - 1) if day != "fri" else v["change_pct"]})
    return pd.DataFrame(rows, columns=["day", "measured", "change_pct", "ci_low_pct",
                                       "ci_high_pct", "verdict", "cumulative_pct"])


def week_waterfall(friday: Comparison, *, out_dir: str | Path, week_dir: str | Path | None = None,
                   metric: str = "throughput_rps", load: str = "closed:32",
                   workload: str = "digits") -> pd.DataFrame:
    """Friday's waterfall: Monday..Thursday chained from the week's recorded verdicts (the run
    folder is ``week_dir``, by default the parent of Friday's ``out_dir``), then Friday's own
    session (all layers against the baseline, measured directly) as the last step."""
    run = Path(week_dir) if week_dir else Path(out_dir).resolve().parent
    table = rollup(run)
    steps = waterfall_steps(table[table["day"] != "fri"], metric=metric, load=load,
                            workload=workload)
    v = friday.verdict(metric, load)
    steps.loc[len(steps)] = {"day": "fri", "measured": True, "change_pct": v.change_pct,
                             "ci_low_pct": v.ci_low_pct, "ci_high_pct": v.ci_high_pct,
                             "verdict": v.verdict, "cumulative_pct": v.change_pct}
    return steps


def summary_waterfall(run_dir: str | Path, *, metric: str = "throughput_rps",
                      load: str = "closed:32") -> pd.DataFrame:
    """The waterfall Friday recorded, or (Friday absent) the chain of the days that ran."""
    steps = recorded_table(run_dir, "fri", "waterfall")
    return steps if not steps.empty else waterfall_steps(rollup(run_dir), metric=metric, load=load)


def arm_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and a Student-t confidence interval of one arm's per-trial values: (mean, lo, hi, n)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return (mean, math.nan, math.nan, n)
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return (mean, mean - half, mean + half, n)


#: The sprint's targets: (what, metric, load, arm's bound or gain, direction).
SEED_TARGETS: tuple[dict[str, Any], ...] = (
    {"target": "throughput >= 2,500 req/s (all layers, closed:32)", "metric": "throughput_rps",
     "load": "closed:32", "kind": "level", "bound": 2500.0, "better": "higher"},
    {"target": "p99 < 10 ms at 2,500 req/s open loop (all layers)", "metric": "p99_ms",
     "load": "open:2500", "kind": "level", "bound": 10.0, "better": "lower"},
    # the seed's "KB per request" at a fixed concurrency: memory held ÷ the 32 clients (each has
    # one request at a time), the same divisor in both arms (docs/measurement.md)
    {"target": "memory < 50 KB per client (all layers, closed:32)", "metric": "mem_per_client_kb",
     "load": "closed:32", "kind": "level", "bound": 50.0, "better": "lower"},
    {"target": "throughput gain >= +50 % vs baseline, CI lower bound > +35 % (closed:32)",
     "metric": "throughput_rps", "load": "closed:32", "kind": "gain", "bound": 50.0,
     "floor": 35.0, "better": "higher"},
)


def target_table(cmp: Comparison, targets: Sequence[dict[str, Any]] = SEED_TARGETS) -> pd.DataFrame:
    """Each seed target, its measured value with a 95 % CI, and met / not met / not measured.

    A level target is met when the whole CI of the integrated arm (B) is on the right side
    of the bound (mean alone is not enough); a gain target is met when the verdict's mean
    change reaches ``bound`` and its CI's lower end clears ``floor``. The baseline's value
    (A) is shown beside it. An open-loop target is judged at the load actually served: it
    counts only when arm B answered at least ``SERVED`` of the offered rate in every valid
    trial, and no more than 1 % of what it was offered was dropped (a dropped request never
    got an answer: past 1 % the p99 of what was offered is no latency at all); otherwise the
    table says what was served.
    """
    valid = cmp.trials[cmp.trials["valid"].astype(bool) & (cmp.trials["pair"] >= 0)]
    rows = []
    for t in targets:
        row: dict[str, Any] = {"target": t["target"]}
        at = valid[valid["load"] == t["load"]]
        if at.empty or t["metric"] not in at:
            rows.append({**row, "measured": "not measured", "ci": "", "baseline": "",
                         "status": "not measured"})
            continue
        if t["kind"] == "gain":
            v = next((v for v in cmp.verdicts.get(t["load"], []) if v.metric == t["metric"]), None)
            if v is None:
                rows.append({**row, "measured": "no verdict", "ci": "", "baseline": "",
                             "status": "not measured"})
                continue
            met = v.change_pct >= t["bound"] and v.ci_low_pct > t["floor"]
            rows.append({**row, "measured": f"{v.change_pct:+.1f} %",
                         "ci": f"[{v.ci_low_pct:+.1f}, {v.ci_high_pct:+.1f}] %",
                         "baseline": "", "status": "met" if met else "not met"})
            continue
        served = (_served(at[at["arm"] == "B"], cmp.settings.duration_s)
                  if t["load"].startswith("open:") else None)
        if served is not None:
            rows.append({**row, "measured": served, "ci": "", "baseline": "",
                         "status": "not met (load not served)"})
            continue
        b = arm_interval(at[at["arm"] == "B"][t["metric"]])
        a = arm_interval(at[at["arm"] == "A"][t["metric"]])
        bound = t["bound"]
        if t["better"] == "higher":
            met = b[1] >= bound
        else:
            met = b[2] < bound
        unit = {"throughput_rps": "req/s", "p99_ms": "ms", "mem_per_client_kb": "KB",
                "mem_held_mb": "MB"}[t["metric"]]
        rows.append({**row, "measured": f"{b[0]:,.1f} {unit}",
                     "ci": f"[{b[1]:,.1f}, {b[2]:,.1f}]" if b[3] >= 2 else "(1 trial)",
                     "baseline": f"{a[0]:,.1f} {unit}" if a[3] else "",
                     "status": "met" if met else "not met"})
    return pd.DataFrame(rows, columns=["target", "measured", "ci", "baseline", "status"])


#: the share of an open loop's offered rate an arm must answer for a target to be judged there
SERVED = 0.98


def _served(trials: pd.DataFrame, duration_s: float) -> str | None:
    """None when every trial of an open-loop arm answered >= SERVED of what was offered and
    dropped at most 1 % of it; else what was served, in words."""
    if "achieved_fraction" not in trials or trials["achieved_fraction"].isna().all():
        return "achieved rate not recorded"
    worst = float(trials["achieved_fraction"].min())
    offered = float(trials["offered_rps"].median())
    dropped = float((trials["dropped"].fillna(0) / (trials["offered_rps"] * duration_s)).max())
    if worst < SERVED:
        return (f"served {100 * worst:.1f} % of {offered:,.0f} req/s offered in its worst trial "
                f"(needs >= {100 * SERVED:.0f} %)")
    if dropped > 0.01:
        return (f"dropped {100 * dropped:.1f} % of {offered:,.0f} req/s offered in its worst "
                f"trial (at most 1 %)")
    return None


def environment_of(run_dir: str | Path) -> dict[str, Any]:
    """The environment manifest of the run's first recorded trial (machine, versions, settings)."""
    for folder in day_folders(run_dir).values():
        for trial in sorted((folder / "trials").glob("*/trial.json")):
            doc = json.loads(trial.read_text())
            manifest = dict(doc.get("manifest") or {})
            manifest.pop("config", None)
            return manifest
    return {}


def environment_table(run_dir: str | Path, *, width: int = 200) -> pd.DataFrame:
    """The environment manifest as key/value rows, each value cut to ``width`` characters."""
    return pd.DataFrame([{"key": key, "value": str(value)[:width]}
                         for key, value in environment_of(run_dir).items()],
                        columns=["key", "value"])


def _relative(path: str, run: Path) -> str:
    """``path`` relative to the run folder where it lies inside it."""
    return str(Path(path).relative_to(run)) if path.startswith(str(run)) else path


def write_index(run_dir: str | Path, summary: pd.DataFrame | None = None) -> Path:
    """``index.html``: every day's report and the final reports, linked, with the summary table."""
    run = Path(run_dir)
    items = []
    for key, day in {**DAYS, SERVICE_DAY.key: SERVICE_DAY}.items():
        report = run / key / Path(day.notebook).with_suffix(".html").name
        if report.exists():
            items.append(f'<li><a href="{key}/{report.name}">{html.escape(day.title)}</a> '
                         f'({key}: {html.escape(day.b)} vs {html.escape(day.a)})</li>')
        elif (run / key).exists():
            items.append(f"<li>{html.escape(day.title)} ({key}): no report (the day failed)</li>")
    finals = []
    for name in REPORTS:
        for suffix in (".html", ".md"):
            path = run / "reports" / f"{name}{suffix}"
            if path.exists():
                finals.append(f'<a href="reports/{path.name}">{path.name}</a>')
    # a row per day and load, one column per headline metric: the wide summary.csv (a
    # column per metric and load, 14 today) ran off a laptop's screen; the scroll box is
    # the fallback should a table still outgrow it
    table = ('<div class="scroll">' + summary_rows(summary).to_html(index=False, border=0)
             + "</div>") if summary is not None and not summary.empty else "<p>(no summary)</p>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>optkit week: {html.escape(run.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:90%}}td,th{{padding:.3em .6em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}}.scroll{{overflow-x:auto}}</style></head><body>
<h1>optkit sprint week — {html.escape(run.name)}</h1>
<p>Generated {time.strftime("%Y-%m-%d %H:%M:%S %Z")}. Every figure below was measured in this run.</p>
<h2>Daily reports</h2><ul>{''.join(items) or '<li>none</li>'}</ul>
<h2>Final reports</h2><p>{' · '.join(finals) or 'not generated'}</p>
<h2>Summary</h2><p>Each day's headline verdicts, a row per load (full table: <a href="summary.csv">summary.csv</a>).</p>{table}
</body></html>
"""
    path = run / "index.html"
    path.write_text(page)
    return path


def run_reports(run_dir: str | Path, *, root: str | Path | None = None,
                names: Sequence[str] | None = None) -> dict[str, str]:
    """Execute the report notebooks over a run folder; HTML and Markdown (code hidden) beside them.

    Returns name -> "ok" or the error; a report that fails is recorded, the others still run.
    """
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter, MarkdownExporter

    from ._kernel import papermill_kernel

    base = project_root(root)
    run = Path(run_dir).resolve()
    out = run / "reports"
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    for name in names or REPORTS:
        executed = out / f"{name}.ipynb"
        try:
            pm.execute_notebook(str(base / "notebooks" / "reports" / REPORTS[name]), str(executed),
                                parameters={"run_dir": str(run)},
                                cwd=str(base / "notebooks" / "reports"), progress_bar=False,
                                **papermill_kernel())
            status[name] = "ok"
        except Exception as exc:  # keep going: one broken report must not hide the others
            status[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
        if executed.exists():
            nb = nbformat.read(executed, as_version=4)
            body, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                                   exclude_output_prompt=True).from_notebook_node(nb)
            (out / f"{name}.html").write_text(body)
            md, resources = MarkdownExporter(exclude_input=True).from_notebook_node(
                nb, resources={"output_files_dir": f"{name}_files"})
            (out / f"{name}.md").write_text(md)
            for file_name, data in (resources.get("outputs") or {}).items():
                target = out / file_name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    return status


def recorded(run_dir: str | Path, day: str) -> dict[str, Any]:
    """A day's ``results.json`` as recorded (empty if the day did not run)."""
    path = Path(run_dir) / day / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def recorded_table(run_dir: str | Path, day: str, key: str) -> pd.DataFrame:
    """One table a day recorded in its ``results.json`` (Friday's ``targets``, ``waterfall``,
    ``slo``), as a frame; empty if the day or the table is absent."""
    return pd.DataFrame(recorded(run_dir, day).get(key) or [])


def verdicts_shown(run_dir: str | Path) -> pd.DataFrame:
    """Every verdict of the week as the performance report prints it: changes and CIs as signed
    percentages, Holm p in scientific notation, each source folder relative to the run."""
    run = Path(run_dir).resolve()
    cols = ["day", "b", "a", "workload", "load", "metric", "change_pct", "ci_low_pct",
            "ci_high_pct", "p_adjusted", "verdict", "n_pairs", "provisional", "source"]
    shown = rollup(run)[cols].copy()
    for col in ("change_pct", "ci_low_pct", "ci_high_pct"):
        shown[col] = shown[col].map("{:+.1f} %".format)
    shown["p_adjusted"] = shown["p_adjusted"].map("{:.1e}".format)
    shown["source"] = shown["source"].map(lambda path: _relative(path, run))
    return shown


_HEADLINE = {"throughput_rps": "throughput", "p99_ms": "p99", "mem_per_client_kb": "memory/client",
             "mem_held_mb": "memory held",
             "ttfb_p99_ms": "p99 TTFB", "gateway_peak_mb": "gateway peak memory",
             "max_ms": "worst latency", "gateway_grown_mb": "gateway memory held"}


def day_overview(table: pd.DataFrame) -> pd.DataFrame:
    """One row per day and workload/load: what it compared and its verdicts in short words."""
    rows = []
    for (day, workload, load), group in table.groupby(["day", "workload", "load"], sort=False):
        first = group.iloc[0]
        parts = [f"{_HEADLINE.get(r.metric, r.metric)} {r.change_pct:+.1f} % "
                 f"[{r.ci_low_pct:+.1f}, {r.ci_high_pct:+.1f}] {r.verdict}"
                 for r in group.itertuples() if r.metric in _HEADLINE]
        rows.append({"day": day, "change": f"{first['b']} vs {first['a']}", "workload": workload,
                     "load": load, "verdicts": "; ".join(parts),
                     "provisional": bool(first["provisional"])})
    return pd.DataFrame(rows)


def validity_table(run_dir: str | Path, *, relative: bool = False) -> pd.DataFrame:
    """Per day and session: trials run, invalid (by arm), pairs lost, noise source, seconds,
    and the session's folder (relative to the run folder with ``relative=True``)."""
    run = Path(run_dir).resolve()
    rows = []
    for day, folder in day_folders(run_dir).items():
        doc = json.loads((folder / "results.json").read_text())
        for session in doc.get("sessions") or [{"workload": "digits", "path": str(folder)}]:
            verdict = Path(session["path"]) / "verdict.json"
            if not verdict.exists():
                continue
            v = json.loads(verdict.read_text())
            trials = v.get("trials", {})
            rows.append({"day": day, "workload": session.get("workload"),
                         "trials": trials.get("total"), "invalid": trials.get("invalid"),
                         "invalid_A": (trials.get("invalid_by_arm") or {}).get("A"),
                         "invalid_B": (trials.get("invalid_by_arm") or {}).get("B"),
                         "pairs_lost": sum((trials.get("pairs_lost") or {}).values()),
                         "noise_thresholds": v.get("deltas_source"),
                         "seconds": round(float(v.get("elapsed_s") or 0), 1),
                         "folder": _relative(session["path"], run) if relative
                         else session["path"]})
    return pd.DataFrame(rows)


def calibration_table(path: str | Path) -> pd.DataFrame:
    """The machine's noise thresholds δ per metric from ``optkit calibrate`` (A/A trials)."""
    p = Path(path)
    if not p.exists():
        return pd.DataFrame(columns=["metric", "delta_pct", "n_pairs", "load"])
    doc = json.loads(p.read_text())
    return pd.DataFrame([{"metric": m, "delta_pct": round(100 * r["delta"], 2),
                          "n_pairs": r.get("n_pairs"), "load": r.get("load")}
                         for m, r in (doc.get("deltas") or {}).items()])


def day_figures(run_dir: str | Path) -> dict[str, list[Path]]:
    """Each day's saved figures (PNG), by day."""
    return {day: sorted(folder.glob("**/figures/*.png"))
            for day, folder in day_folders(run_dir).items()}


def next_steps(run_dir: str | Path) -> list[str]:
    """What to do next, generated from what the week recorded: unmet targets, regressions,
    days that bought nothing. Never written by hand."""
    out = []
    fri = recorded(run_dir, "fri")
    for t in fri.get("targets") or []:
        if t.get("status") == "not met":
            out.append(f"Target not met: {t['target']} (measured {t['measured']} {t['ci']}).")
        elif t.get("status") == "not measured":
            out.append(f"Target not measured: {t['target']}.")
    table = rollup(run_dir)
    explained = {(day, e.get("workload", "digits"), e["load"], e["metric"]): e["why"]
                 for day in table["day"].unique()
                 for e in recorded(run_dir, day).get("explained") or []}
    for r in table[table["verdict"] == "regressed"].itertuples():
        why = explained.get((r.day, r.workload, r.load, r.metric))
        if why:  # a reason the day measured (e.g. week.explain_load_costs), not a note by hand
            out.append(f"{r.day}: {r.metric} regressed {r.change_pct:+.1f} % at {r.load} "
                       f"({r.workload}) with {r.b}, explained: {why}.")
        else:
            out.append(f"{r.day}: {r.metric} regressed {r.change_pct:+.1f} % at {r.load} "
                       f"({r.workload}) with {r.b}: find out why before relying on it there.")
    for day, group in table[table["metric"] == "throughput_rps"].groupby("day"):
        if day != "fri" and not (group["verdict"] == "improved").any():
            out.append(f"{day}: no throughput gain detected ({', '.join(sorted(set(group['load'])))}): "
                       "keep the layer only for what else it buys (memory, latency, availability).")
    if any(table["provisional"]) if not table.empty else False:
        out.append("Some verdicts are provisional (quick mode): re-run the week in standard mode.")
    return out or ["Every target met and no regression recorded."]


def md_table(frame: pd.DataFrame, *, floats: str = "{:,.1f}", empty: str = "*(none)*") -> str:
    """A pipe table (GitHub Markdown) of ``frame`` without its index: the reports display
    tables this way so the HTML report and its Markdown twin read the same. An empty or
    missing frame is the sentence ``empty``."""
    if frame is None or frame.empty:
        return empty

    def cell(value: Any) -> str:
        if isinstance(value, float):
            text = "" if math.isnan(value) else floats.format(value)
        else:
            text = str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def md_list(lines: Iterable[str]) -> str:
    """A Markdown bullet list, one line per item."""
    return "\n".join(f"- {line}" for line in lines)
