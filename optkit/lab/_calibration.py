"""A/A calibration: run one config against itself and store the noise band per (workload, load).

::

    calibrate(baseline.yaml, loads=("closed:32",), workload="digits")
        = compare(baseline, baseline-again)        A/A pairs at each load
        δ per metric = the 95 % quantile of |mean d| over every sign flip of those pairs
        sd of d per metric                         what a day plans its pairs from
        -> runs/calibration.json, one cell per (workload, load), merged with the cells already
           there (each measured once per machine, with its date, size and config), read back
           by noise_band (optkit.lab._noise)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ._arms import load_arm
from ._comparison import jsonable
from ._noise import cell_key
from ._session import compare
from ._settings import CompareSettings
from .stats import calibrate_deltas

__all__ = ["calibrate"]


def calibrate(config: Any, *, repository: str | Path, settings: CompareSettings | None = None,
              out: str | Path | None = None, progress: bool = True, **overrides: Any
              ) -> dict[str, Any]:
    """A/A session of one config (or external arm: a command or URL service, with or without
    optkit's gateway in front); the noise band of each (workload, load) cell it ran.

    Returns the calibration document (written to ``out`` when given, merged with the cells
    the file already holds; a cell measured again replaces the old one): ``cells`` by
    ``<workload>|<load>``, each with its δ and sd of d per metric, its pairs, date, config and
    A/A verdicts; ``deltas``, the widest δ of each metric over all the cells.
    """
    cfg = load_arm(config)  # an optkit config, or an external arm (a team's own server)
    session = compare(cfg, cfg.replace(name=cfg.name + "-again"), repository=repository,
                      settings=settings, progress=progress, **overrides)
    s = session.settings
    valid = session.trials[session.trials["valid"].astype(bool) & (session.trials["pair"] >= 0)]
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    aa = session.verdict_table()
    cells: dict[str, Any] = {}
    for load in s.loads:
        at = valid[valid["load"] == load]
        found = calibrate_deltas(at, metrics=list(s.analysed_metrics()), seed=s.seed)
        cells[cell_key(s.workload, load)] = {
            "workload": s.workload, "load": load, "config_name": cfg.name,
            "config": cfg.to_dict(), "settings": s.to_dict(), "created": created,
            "n_pairs": int(at["pair"].nunique()), "elapsed_s": session.elapsed_s,
            "deltas": found,
            "aa_verdicts": aa[aa["load"] == load].to_dict(orient="records") if len(aa) else []}
    doc = _merge(_read(out), cells)
    doc["aa_verdicts"] = aa.to_dict(orient="records")
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=jsonable))
    return doc


def _read(out: str | Path | None) -> dict[str, Any]:
    """The calibration already at ``out`` (schema 1 ``per_load`` cells become digits cells)."""
    if out is None or not Path(out).exists():
        return {}
    doc = json.loads(Path(out).read_text())
    cells = dict(doc.get("cells") or {})
    for load, found in (doc.get("per_load") or {}).items():
        cells.setdefault(cell_key("digits", load), {
            "workload": "digits", "load": load, "created": doc.get("created"),
            "config_name": (doc.get("config") or {}).get("name"), "deltas": found,
            "n_pairs": max((r.get("n_pairs") or 0 for r in found.values()), default=0)})
    return {"cells": cells}


def _merge(doc: dict[str, Any], cells: dict[str, Any]) -> dict[str, Any]:
    """``doc``'s cells with ``cells`` put in, and the widest δ per metric over all of them."""
    merged = {**(doc.get("cells") or {}), **cells}
    widest: dict[str, dict[str, Any]] = {}
    for key, cell in merged.items():
        for metric, record in (cell.get("deltas") or {}).items():
            if metric not in widest or record["delta"] > widest[metric]["delta"]:
                widest[metric] = {**record, "load": cell.get("load"), "cell": key}
    return {"schema_version": 2, "cells": merged, "deltas": widest}
