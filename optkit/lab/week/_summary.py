"""What a week found and where its reports are, told where a person looks.

::

    summary_rows(summary)        a row per day and load: what it compared, its two headline
                                 verdicts (the table of index.html, narrow enough for a laptop)
    week_summary(summary, run)   the last screen of ``optkit week``: those rows, the seed
                                 targets as Friday measured them, the paths of the reports
    latest_report("mon")         the line each day notebook opens with: where that day's
                                 latest executed report is, or how to make one

``summary`` is what ``run_week`` returns (and writes to ``summary.csv``): one row per day, a
column per headline verdict (``throughput_rps @ closed:32``, ...), one per (metric, load)
met over the week. Read as it is, that is 14 columns today: too wide for a screen.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ._days import DAYS, project_root

__all__ = ["summary_rows", "week_summary", "latest_report", "HEADLINE_METRICS"]

#: the summary's headline metrics, as its column names spell them -> the heading shown
HEADLINE_METRICS = {"throughput_rps": "throughput", "p99_ms": "p99"}
SUMMARY_COLUMNS = ["day", "compares", "time", "status", "at", *HEADLINE_METRICS.values()]


def summary_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The week's summary a row per day and load (``at``: the workload and load of the
    verdicts), each headline metric in a column of its own; a day's name, comparison, time
    and status on its first row only. A failed day or report keeps one row with its error."""
    rows: list[dict[str, Any]] = []
    for day in summary.to_dict(orient="records"):
        where: dict[str, dict[str, str]] = {}
        for column, value in day.items():
            metric, sep, at = str(column).partition(" @ ")
            if sep and metric in HEADLINE_METRICS and _present(value):
                where.setdefault(at, {})[HEADLINE_METRICS[metric]] = str(value)
        status = str(day.get("status", ""))
        if _present(day.get("error")):
            status = f"{status}: {day['error']}"
        head = {"day": day.get("day", ""), "compares": _text(day.get("compare")),
                "time": _seconds(day.get("seconds")), "status": status}
        blank = dict.fromkeys(head, "")
        for i, (at, verdicts) in enumerate(where.items() or [("", {})]):
            rows.append({**dict.fromkeys(SUMMARY_COLUMNS, ""), **(head if i == 0 else blank),
                         "at": at, **verdicts})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def week_summary(summary: pd.DataFrame, run_dir: str | Path | None = None) -> str:
    """The end of ``optkit week``, one screen: a line per day and load with its headline
    verdicts (the CIs are in the reports), the seed targets as Friday measured them, and
    where the reports are.

    ``run_dir`` defaults to the folder ``run_week`` recorded in ``summary.attrs``.
    """
    run = Path(run_dir or summary.attrs.get("run_dir") or ".")
    table = summary_rows(summary)
    failures = [(r["day"], r["status"]) for r in table.to_dict(orient="records")
                if r["status"] not in ("", "ok")]
    shown = pd.DataFrame({"day": table["day"], "compares": table["compares"],
                          "time": table["time"], "at": table["at"],
                          **{h: table[h].map(lambda v: _CI.sub("", v))
                             for h in HEADLINE_METRICS.values()}})
    lines = _aligned(shown)
    lines += [f"{day}: {status if len(status) <= 200 else status[:197] + '...'}"
              for day, status in failures]
    targets = _targets(run)
    if targets:
        lines += ["", "Seed targets (Friday, every layer on, against the baseline):"]
        for t in targets:
            measured = " ".join(str(t.get(k) or "") for k in ("measured", "ci")).strip()
            baseline = f" (baseline {t['baseline']})" if t.get("baseline") else ""
            lines.append(f"  {t.get('status', ''):<8} {t.get('target', '')}: "
                         f"{measured}{baseline}")
    elif (run / "fri").exists():
        lines += ["", "Seed targets: not recorded (Friday did not finish; see its report)."]
    lines += ["", f"Run folder: {_shown(run)}/"]
    index = run / "index.html"
    if index.exists():
        lines.append(f"Reports:    {_shown(index)}  (open it in a browser: it links them all)")
    return "\n".join(lines)


#: a confidence interval in a verdict's text, `` [+44.1, +73.9]``
_CI = re.compile(r"\s*\[[^\]]*\]")


def _aligned(frame: pd.DataFrame) -> list[str]:
    """``frame`` as left-aligned text columns, the header first."""
    widths = {c: max([len(str(c)), *(len(str(v)) for v in frame[c])]) for c in frame.columns}
    rows = [dict(zip(frame.columns, frame.columns)), *frame.to_dict(orient="records")]
    return ["  ".join(str(row[c]).ljust(widths[c]) for c in frame.columns).rstrip()
            for row in rows]


def latest_report(day: str, *, out_dir: str | Path | None = None,
                  root: str | Path | None = None) -> Any:
    """One line (Markdown) for the top of a day's notebook: where the day's latest executed
    report is, or how to make one.

    A report is the executed copy ``optkit week`` writes, ``runs/<run>/<day>/<notebook>``
    (with its ``.html``); the latest is the newest under the project's ``runs/``. While
    ``optkit week`` executes the notebook itself (``out_dir`` holds the copy papermill is
    writing), the line says that this is the report, and links the run's index. Links are
    relative to the working directory: the notebook's, in JupyterLab and under papermill.
    """
    from IPython.display import Markdown

    if day not in DAYS:
        raise KeyError(f"unknown day {day!r}; known: {list(DAYS)}")
    info = DAYS[day]
    name = f"{info.title} ({day})"
    if out_dir is not None and _being_executed(Path(out_dir) / info.notebook):
        run = Path(out_dir).resolve().parent
        return Markdown(f"This is the executed report of {name} in the run `{run.name}`; "
                        f"every report of the run is linked from [index.html](../index.html).")
    base = project_root(root)
    found = sorted((p for p in (base / "runs").glob(f"*/{day}/{info.notebook}") if p.is_file()),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        return Markdown(f"No executed report of {name} yet: `make week` (or `.venv/bin/optkit "
                        f"week --days {day}`) writes one to `runs/week-<date>/{day}/`.")
    latest = found[-1]
    html_report = latest.with_suffix(".html")
    report = html_report if html_report.exists() else latest
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(latest.stat().st_mtime))
    kind = "quick run, provisional" if _provisional(latest.parent) else "standard run"
    index = latest.parent.parent / "index.html"
    week_link = f"; its week: [index.html]({_link(index)})" if index.exists() else ""
    return Markdown(f"Latest executed report of {name}: [{report.relative_to(base)}]"
                    f"({_link(report)}) ({when}, {kind}){week_link}.")


def _being_executed(path: Path) -> bool:
    """Whether ``path`` is a notebook papermill is executing now (started, not ended)."""
    try:
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
    except (OSError, ValueError):
        return False
    return bool(meta.get("start_time")) and not meta.get("end_time")


def _provisional(day_dir: Path) -> bool:
    try:
        return bool(json.loads((day_dir / "results.json").read_text()).get("provisional"))
    except (OSError, ValueError):
        return False


def _targets(run: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((run / "fri" / "results.json").read_text()).get("targets") or [])
    except (OSError, ValueError):
        return []


def _link(path: Path) -> str:
    return Path(os.path.relpath(path.resolve(), Path.cwd().resolve())).as_posix()


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies under it, else absolute."""
    full, here = path.resolve(), Path.cwd().resolve()
    return str(full.relative_to(here)) if full.is_relative_to(here) else str(full)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) \
        and str(value) != ""


def _text(value: Any) -> str:
    return str(value) if _present(value) else ""


def _seconds(value: Any) -> str:
    return f"{float(value):.0f} s" if _present(value) else ""
