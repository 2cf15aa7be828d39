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
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

if TYPE_CHECKING:
    from ..._config import ServiceConfig

from .._comparison import Comparison
from .._settings import QUICK, STANDARD, CompareSettings
from ..._exceptions import ConfigError
from ._sessions import (batch_histogram, batch_summary, conclusion, headline, key_figure,
                        layer_summary, load_events, load_timeline, pool_summary)

__all__ = ["Day", "DAYS", "project_root", "experiment", "config", "ensure_repository", "day_settings",
           "pool_summary", "batch_summary", "batch_histogram", "layer_summary", "load_events",
           "load_timeline", "headline", "key_figure", "startup_times", "bulk_scoring", "latency_curve", "conclusion",
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
    "wed": Day("wed", "Response streaming", "03-response-streaming.ipynb", "batching", "streaming"),
    "thu": Day("thu", "Async model loading", "04-async-model-loading.ipynb", "streaming",
               "loading"),
    "fri": Day("fri", "Integration", "05-integration.ipynb", "baseline", "integrated"),
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


def config(name: str, *, models: Sequence[str] | None = None,
           root: str | Path | None = None) -> "ServiceConfig":
    """The experiment config ``name``, with ``loading.models`` replaced when ``models`` is given.

    A day whose workload needs models the configs do not load at start-up (Wednesday's
    synthetic-wide) gives both arms the same list: the layers compared stay the only difference.
    """
    from ..._config import LoadingConfig, ServiceConfig

    cfg = ServiceConfig.from_yaml(experiment(name, root))
    if models is None:
        return cfg
    loading = cfg.to_dict()["loading"]
    return cfg.replace(loading=LoadingConfig(**{**loading, "models": list(models)}))


def ensure_repository(path: str | Path, root: str | Path | None = None) -> Path:
    """The model repository at ``path`` (relative to the project), built if missing."""
    from ...models import build_repository

    repo = Path(path)
    if not repo.is_absolute():
        repo = project_root(root) / repo
    build_repository(repo)  # no-op for models already built
    return repo


def day_settings(*, quick: bool, pairs: int, warmup_s: float, duration_s: float,
                 loads: Sequence[str], seed: int, quick_pairs: int = 3,
                 quick_duration_s: float | None = None, **extra: Any) -> CompareSettings:
    """Quick mode takes the QUICK timing and the first load only (CI); otherwise the
    notebook's parameters. ``extra`` sets further fields either way (``workload``,
    ``metrics``, ``engine``, ``churn``, ``gates``). ``quick_duration_s`` lengthens the
    quick window for a day whose effect needs more than QUICK's (Thursday: a ~1 s load
    that stalls the serving loop must fit inside the window, with answers around it, or
    every trial of the stalling arm is invalid: nothing answered in the window).

    ``OPTKIT_QUICK=1`` in the environment forces quick mode: that is how ``make test``
    runs the notebooks under nbmake, which cannot pass papermill parameters.
    """
    if quick or os.environ.get("OPTKIT_QUICK") == "1":  # CI: does the day run end to end?
        # a few pairs (3; a day's secondary session 2): enough for every analysis step to run
        # (a verdict, a CI, Holm), not for a claim: quick verdicts are marked provisional
        return dataclasses.replace(QUICK, pairs=max(2, min(pairs, quick_pairs)),
                                   duration_s=quick_duration_s or QUICK.duration_s,
                                   loads=tuple(loads)[:1], seed=seed, **extra)
    return dataclasses.replace(STANDARD, pairs=pairs, warmup_s=warmup_s, duration_s=duration_s,
                               loads=tuple(loads), seed=seed, **extra)


def startup_times(configs: Sequence[str | Path], *, repository: str | Path, model: str,
                  repeats: int = 3) -> pd.DataFrame:
    """Start-up of a fresh model server per config, ``repeats`` times each, interleaved.

    Columns: config, repeat, port_s, live_s, first_answer_s, ready_s (see
    ``optkit.lab._startup``): how soon it binds, is live, answers ``model``, is ready.
    """
    from ..._config import load_config
    from .._startup import startup_time

    rows = []
    for repeat in range(repeats):
        for config in configs:
            cfg = load_config(config)
            rows.append({"config": cfg.name, "repeat": repeat,
                         **startup_time(cfg, repository=repository, model=model)})
    return pd.DataFrame(rows)


def bulk_scoring(configs: Sequence[Any], *, repository: str | Path, model: str = "synthetic",
                 rows: int = 10_000, repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """Time the events of one ``generate_stream`` request of ``rows`` rows, per config.

    One fresh stack per config (gateway in front), ``repeats`` requests each. Columns:
    config, repeat, events, first_event_s, last_event_s, rows_scored, complete.
    """
    from ..._config import load_config
    from .._bulk import bulk_stream
    from ...service import launch_stack

    out = []
    for config in configs:
        cfg = load_config(config)
        with launch_stack(cfg, repository=repository) as stack:
            for repeat in range(repeats):
                out.append({"config": cfg.name, "repeat": repeat,
                            **bulk_stream(stack.url, model, rows=rows, seed=seed + repeat)})
    return pd.DataFrame(out)


def latency_curve(a: str | Path, b: str | Path, *, repository: str | Path,
                  rates: Sequence[float], step_s: float, quick: bool, seed: int,
                  workload: str = "digits") -> pd.DataFrame:
    """Both arms' p50/p99 against the offered open-loop rate (one fresh stack per arm).

    Quick mode (CI) keeps the two lowest rates and 1 s steps.
    """
    from .._slo import latency_vs_load

    if quick or os.environ.get("OPTKIT_QUICK") == "1":
        rates, step_s = sorted(rates)[:2], 1.0
    return latency_vs_load([a, b], repository=repository, rates=rates, workload=workload,
                           step_s=step_s, warmup_s=0.5, seed=seed)


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


def run_week(days: Sequence[str] | None = None, *, quick: bool = False,
             out: str | Path | None = None, repository: str | Path = "build/models",
             root: str | Path | None = None, progress: bool = True,
             parameters: dict[str, Any] | None = None, reports: bool | None = None) -> pd.DataFrame:
    """Execute the day notebooks with papermill; export each to HTML; return the summary.

    Then, when Friday ran (or ``reports=True``), the three final reports are generated from
    the run folder, and ``index.html`` links everything. Progress: one line per day here,
    and one per trial from inside each notebook (written to this terminal, not the report).
    """
    import papermill as pm

    from .report import run_reports, write_index

    base = project_root(root)
    chosen = list(days or DAYS)
    unknown = [d for d in chosen if d not in DAYS]
    if unknown:
        raise ConfigError(f"unknown day(s) {unknown}; known: {list(DAYS)}")  # exit 2, no traceback
    run_dir = Path(out) if out else base / "runs" / time.strftime("week-%Y%m%d-%H%M%S")
    run_dir = run_dir if run_dir.is_absolute() else base / run_dir
    repo = ensure_repository(repository, base)
    rows = []
    week_started = time.perf_counter()
    for number, key in enumerate(chosen, 1):
        day = DAYS[key]
        day_dir = run_dir / key
        day_dir.mkdir(parents=True, exist_ok=True)
        executed = day_dir / day.notebook
        params = {"quick": quick, "out_dir": str(day_dir), "repository": str(repo),
                  **(parameters or {})}
        if progress:
            print(f"[{time.perf_counter() - week_started:6.0f} s] day {number} of {len(chosen)}: "
                  f"{key} — {day.title} ({day.b} vs {day.a})", flush=True)
        started = time.perf_counter()
        error = ""
        try:
            pm.execute_notebook(str(base / "notebooks" / day.notebook), str(executed),
                                parameters=params, cwd=str(base / "notebooks"),
                                progress_bar=False, kernel_name="python3")
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
                workload = v.get("workload", "digits")
                where = v["load"] if workload == "digits" else f"{workload} {v['load']}"
                row[f"{v['metric']} @ {where}"] = (
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
