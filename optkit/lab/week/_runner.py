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

    optkit week --service ARM.yaml        the team's own server, alone then behind optkit's
      service: papermill notebooks/06-your-service.ipynb -> runs/week-1/service/

A day's notebook ends with ``record_day`` (its ``results.json``, what the runner's summary and
Friday's roll-up read); ``run_week`` executes the notebooks and then the final reports.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..._exceptions import ConfigError
from .._arms import is_arm
from .._comparison import Comparison
from ._days import DAYS, SERVICE_DAY, Day, ensure_repository, project_root
from ._sessions import conclusion
from .report import run_reports, write_index

__all__ = ["record_day", "run_week"]


def record_day(cmp: Comparison | Sequence[Comparison], *, day: str, out_dir: str | Path,
               extra: dict[str, Any] | None = None) -> Path:
    """Save the day's session(s) and ``results.json`` (what Friday's roll-up reads).

    A day may run several sessions (Wednesday: one per workload): the first is saved in
    ``out_dir``, each further one in ``out_dir/<workload>/``; every verdict row says its
    workload, so the roll-up can follow one workload through the week.
    """
    sessions = [cmp] if isinstance(cmp, Comparison) else list(cmp)
    out = Path(out_dir)
    verdicts: list[dict[str, Any]] = []
    means: dict[str, Any] = {}
    for i, session in enumerate(sessions):
        folder = out if i == 0 else out / session.settings.workload
        session.save(folder)
        workload = session.settings.workload
        verdicts += [{"workload": workload, **row}
                     for row in session.verdict_table().to_dict(orient="records")]
        means.update({f"{workload}|{load}|{arm}": row.dropna().to_dict()
                      for (load, arm), row in session.means().iterrows()})
    first = sessions[0]
    doc = {"schema_version": 2, "day": day, "title": DAYS[day].title if day in DAYS else day,
           "a": first.a.name, "b": first.b.name,
           "provisional": any(s.provisional for s in sessions),
           "conclusion": "\n".join(conclusion(s) for s in sessions),
           "sessions": [{"workload": s.settings.workload, "loads": list(s.settings.loads),
                         "path": str(out if i == 0 else out / s.settings.workload),
                         "elapsed_s": s.elapsed_s} for i, s in enumerate(sessions)],
           "verdicts": verdicts, "means": means, **(extra or {})}
    path = out / "results.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path


def _arm_file(option: str, path: str | Path) -> str:
    """The resolved path of an arm file given to ``option``; a ConfigError (exit 2) if it is
    missing or not an arm file."""
    arm_file = Path(path).resolve()
    if not arm_file.is_file():
        raise ConfigError(f"{option} {path}: no such file")
    if not is_arm(arm_file):
        raise ConfigError(f"{option} {path}: not an arm file (kind: command or kind: url; see "
                          f"experiments/external/)")
    return str(arm_file)


def run_week(days: Sequence[str] | None = None, *, quick: bool = False,
             out: str | Path | None = None, repository: str | Path = "build/models",
             root: str | Path | None = None, progress: bool = True,
             parameters: dict[str, Any] | None = None, reports: bool | None = None,
             service: str | Path | None = None,
             fronted: str | Path | None = None) -> pd.DataFrame:
    """Execute the day notebooks with papermill; export each to HTML; return the summary.

    Then, when Friday ran (or ``reports=True``), the three final reports are generated from
    the run folder, and ``index.html`` links everything. Progress: one line per day here,
    and one per trial from inside each notebook (written to this terminal, not the report).

    ``service`` (an arm file: the team's server as a command or a URL) runs notebook 06 on it
    into ``<run>/service/``, after the ``days`` given (none unless named); quick mode then
    measures that service too, briefly. ``fronted`` (an arm file, with ``service`` only) is
    the setting of that server to put behind the gateway (notebook 06's ``fronted_service``;
    default: the service arm's ``fronted:`` key, else the service itself).
    """
    import papermill as pm  # imported here: a notebook kernel that records its day needs none of it

    from ._kernel import papermill_kernel

    base = project_root(root)
    chosen = list(days or ([] if service is not None else DAYS))
    unknown = [d for d in chosen if d not in DAYS]
    if unknown:
        raise ConfigError(f"unknown day(s) {unknown}; known: {list(DAYS)}")  # exit 2, no traceback
    plan: list[tuple[Day, dict[str, Any]]] = [(DAYS[key], {}) for key in chosen]
    if service is not None:
        own: dict[str, Any] = {"service": _arm_file("--service", service),
                               "quick_service": None}
        if fronted is not None:
            own["fronted_service"] = _arm_file("--fronted", fronted)
        plan.append((SERVICE_DAY, own))
    elif fronted is not None:
        raise ConfigError("--fronted names the setting behind the gateway of --service: give "
                          "--service too")
    run_dir = Path(out) if out else base / "runs" / time.strftime("week-%Y%m%d-%H%M%S")
    run_dir = run_dir if run_dir.is_absolute() else base / run_dir
    repo = ensure_repository(repository, base)
    rows = []
    week_started = time.perf_counter()
    for number, (day, own) in enumerate(plan, 1):
        key = day.key
        day_dir = run_dir / key
        day_dir.mkdir(parents=True, exist_ok=True)
        executed = day_dir / day.notebook
        params = {"quick": quick, "out_dir": str(day_dir), "repository": str(repo),
                  **(parameters or {}), **own}
        if progress:
            print(f"[{time.perf_counter() - week_started:6.0f} s] day {number} of {len(plan)}: "
                  f"{key} — {day.title} ({day.b} vs {day.a})", flush=True)
        started = time.perf_counter()
        error = ""
        try:
            pm.execute_notebook(str(base / "notebooks" / day.notebook), str(executed),
                                parameters=params, cwd=str(base / "notebooks"),
                                progress_bar=False, **papermill_kernel())
        except Exception as exc:  # record the failure, go on with the other days
            # a failed cell: its exception, not papermill's banner, says what went wrong
            cause = (f"{exc.ename}: {exc.evalue}" if hasattr(exc, "ename")  # type: ignore
                     else str(exc))
            error = f"{type(exc).__name__}: {cause[:300]}"
        _export_html(executed)
        rows.append(_summary_row(key, day, day_dir, time.perf_counter() - started, error))
        if progress:
            print(f"[{time.perf_counter() - week_started:6.0f} s] {key}: {rows[-1]['status']} "
                  f"in {rows[-1]['seconds']:.0f} s", flush=True)
    summary = pd.DataFrame(rows)
    summary.to_csv(run_dir / "summary.csv", index=False)
    if reports if reports is not None else "fri" in chosen:
        if progress:
            print(f"[{time.perf_counter() - week_started:6.0f} s] final reports", flush=True)
        for name, status in run_reports(run_dir, root=base).items():
            if status != "ok":
                summary.loc[len(summary)] = {"day": f"report:{name}", "status": "failed",
                                             "error": status}
    write_index(run_dir, summary)
    summary.attrs["run_dir"] = str(run_dir)  # where week_summary says the reports are
    return summary


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
                workload = v.get("workload", "digits")
                where = v["load"] if workload == "digits" else f"{workload} {v['load']}"
                if v.get("step"):  # the service day: each step's throughput, the target's both
                    if v["metric"] != "throughput_rps" and v["step"] != "target":
                        continue
                    where = f"{v['load']} ({v['step']})"
                row[f"{v['metric']} @ {where}"] = (
                    f"{v['change_pct']:+.1f} % [{v['ci_low_pct']:+.1f}, {v['ci_high_pct']:+.1f}] "
                    f"{v['verdict']}")
    elif not error:
        row["status"] = "no results.json"
    if error:
        row["error"] = error
    return row
