"""The week's days, in one place: each day's notebook and the two configs it compares, where
the project's experiments live, and how a day's session is set (standard or quick).

::

    DAYS["tue"] = Day("tue", "Request batching", "02-request-batching.ipynb", a="pooling", b="batching")
    SERVICE_DAY: 06-your-service.ipynb, a team's server alone vs behind optkit's gateway
    experiment("batching") -> <project>/experiments/batching.yaml      (days are cumulative:
    config("batching", models=[...]) -> its ServiceConfig               each b is the next a)
    day_settings(quick=..., pairs=..., loads=...) -> CompareSettings    (OPTKIT_QUICK=1: CI mode)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..._config import LoadingConfig, ServiceConfig
from ...bench import ValidityGates
from ...models import build_repository
from .._calibration import calibrate
from .._noise import calibration_cells, cell_key
from .._plan import Plan, plan_pairs
from .._settings import QUICK, STANDARD, CompareSettings, parse_load

__all__ = ["Day", "DAYS", "SERVICE_DAY", "project_root", "experiment", "config", "ensure_repository",
           "day_settings", "plan_day", "CALIBRATION_PAIRS", "MIN_SESSION_PAIRS", "PROCEDURE",
           "procedure"]

#: A/A pairs measured per (workload, load) cell the first time a day judges it on a machine
#: (a cell measured with more, such as an older file's 16, is kept: cells are keyed by procedure)
CALIBRATION_PAIRS = 12
#: the fewest pairs a day's planned session runs: on the simulator, plans from a 12-pair
#: calibration keep 80 % power at a true 10 % change only from 16 pairs (``_plan``'s docstring)
MIN_SESSION_PAIRS = 16
#: what a trial does, as far as its noise goes: a cell measured another way is measured again
PROCEDURE = ("warmup_s", "duration_s", "engine", "churn", "gates")


def procedure(settings: CompareSettings | Mapping[str, Any], load: str) -> dict[str, Any]:
    """What a session's trials at ``load`` do, as far as their noise goes: warm-up, window,
    the engine that runs the load, churn, and the gates as they act on that load (wrk keeps
    no windows, so no stability gate; a closed loop has no achieved rate or timetable). Two
    sessions that differ only in a gate that cannot act on the load measure it alike."""
    doc = settings.to_dict() if isinstance(settings, CompareSettings) else dict(settings)
    spec = parse_load(load, engine=doc.get("engine") or "auto")
    gates = dataclasses.asdict(ValidityGates(**(doc.get("gates") or {})))
    if spec.mode == "closed":
        gates["check_stability"] = gates["check_stability"] and not gates["allow_overload"]
        for name in ("min_achieved_fraction", "max_schedule_lag_p99_ms", "allow_overload"):
            gates.pop(name)
    if spec.engine == "wrk" or not gates.get("check_stability", True):
        for name in ("check_stability", "max_window_cv", "min_windows"):
            gates.pop(name, None)
    out = {"warmup_s": doc.get("warmup_s"), "duration_s": doc.get("duration_s"),
           "engine": spec.engine, "churn": doc.get("churn"), "gates": gates}
    return json.loads(json.dumps(out, sort_keys=True, default=str))


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

#: Not a day of the week: a team's own server alone, then behind optkit's gateway layer by
#: layer (``optkit week --service ARM.yaml``; its chain of sessions: ``_service.py``)
SERVICE_DAY = Day("service", "Your service behind optkit's gateway", "06-your-service.ipynb",
                  "service alone", "service + gateway")


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
           root: str | Path | None = None) -> ServiceConfig:
    """The experiment config ``name``, with ``loading.models`` replaced when ``models`` is given.

    A day whose workload needs models the configs do not load at start-up (Wednesday's
    synthetic-wide) gives both arms the same list: the layers compared stay the only difference.
    """
    cfg = ServiceConfig.from_yaml(experiment(name, root))
    if models is None:
        return cfg
    loading = cfg.to_dict()["loading"]
    return cfg.replace(loading=LoadingConfig(**{**loading, "models": list(models)}))


def ensure_repository(path: str | Path, root: str | Path | None = None) -> Path:
    """The model repository at ``path``, built if missing.

    A relative ``path`` is read from ``root`` (the project, as ``optkit week`` passes it) or,
    without one, from the current folder, as a notebook's ``"../build/models"`` means it: from
    ``notebooks/``. (Read from the project instead, that default named a folder beside the
    project, where each fresh clone built the models again.)
    """
    repo = Path(path)
    if not repo.is_absolute():
        repo = (Path(root) if root is not None else Path.cwd()) / repo
    repo = repo.resolve()
    build_repository(repo)  # no-op for models already built
    return repo


def day_settings(*, quick: bool, pairs: int, warmup_s: float, duration_s: float,
                 loads: Sequence[str], seed: int, quick_pairs: int = 2,
                 quick_duration_s: float | None = None, quick_warmup_s: float | None = None,
                 **extra: Any) -> CompareSettings:
    """Quick mode takes the QUICK timing and the first load only (CI); otherwise the
    notebook's parameters. ``extra`` sets further fields either way (``workload``,
    ``metrics``, ``engine``, ``churn``, ``gates``). ``quick_duration_s`` lengthens the
    quick window for a day whose effect needs more than QUICK's (Thursday: a ~1 s load
    that stalls the serving loop must fit inside the window, with answers around it, or
    every trial of the stalling arm is invalid: nothing answered in the window).
    ``quick_warmup_s`` shortens the quick warm-up for a day that runs many sessions (notebook
    06: four, each trial a fresh service and gateway, where QUICK's 0.4 s adds up).

    ``OPTKIT_QUICK=1`` in the environment forces quick mode: that is how ``make test``
    runs the notebooks under nbmake, which cannot pass papermill parameters.
    """
    if quick or os.environ.get("OPTKIT_QUICK") == "1":  # CI: does the day run end to end?
        # two pairs (the fewest analysis takes): enough for every analysis step to run
        # (a verdict, a CI, Holm), not for a claim: quick verdicts are marked provisional
        return dataclasses.replace(QUICK, pairs=max(2, min(pairs, quick_pairs)),
                                   duration_s=quick_duration_s or QUICK.duration_s,
                                   warmup_s=QUICK.warmup_s if quick_warmup_s is None
                                   else quick_warmup_s,
                                   loads=tuple(loads)[:1], seed=seed, **extra)
    return dataclasses.replace(STANDARD, pairs=pairs, warmup_s=warmup_s, duration_s=duration_s,
                               loads=tuple(loads), seed=seed, **extra)


def plan_day(settings: CompareSettings, arm: Any, *, repository: str | Path,
             calibration: str | Path | None, effects: Mapping[str, float] | None = None,
             calibration_pairs: int = CALIBRATION_PAIRS, progress: bool = True) -> Plan:
    """Fix a day's pairs before its session: measure the noise of every cell it judges that
    the calibration lacks, then plan the pairs for power within the budget ``settings.pairs``.

    A cell (workload, load) never calibrated on this machine, or measured with another
    trial procedure (warm-up, window, engine, gates, churn: :data:`PROCEDURE`), is measured
    now: an A/A session of ``arm`` (the day's starting config) with the day's own settings (workload, churn,
    gates, timing) and ``calibration_pairs`` pairs, stored in ``calibration`` for every later
    day and week. The session's pairs are never fewer than :data:`MIN_SESSION_PAIRS` (nor than
    the cell's own pairs), at most the budget. Quick mode (CI) measures nothing and keeps its
    few pairs: provisional.
    """
    if settings.quick:
        return Plan(settings, plan_pairs(settings, calibration, effects=effects,
                                         pairs=settings.pairs).table, False,
                    f"quick mode: {settings.pairs} pairs, not planned; verdicts provisional")
    if calibration is not None:
        cells, _ = calibration_cells(calibration)
        for load in settings.loads:
            cell = cells.get(cell_key(settings.workload, load))
            measured_as = cell.get("settings") if cell is not None else None
            if cell is None or (measured_as is not None
                                and procedure(measured_as, load) != procedure(settings, load)):
                calibrate(arm, repository=repository, out=calibration, progress=progress,
                          settings=dataclasses.replace(settings, loads=(load,),
                                                       pairs=calibration_pairs))
    return plan_pairs(settings, calibration, effects=effects, max_pairs=settings.pairs,
                      min_pairs=MIN_SESSION_PAIRS)
