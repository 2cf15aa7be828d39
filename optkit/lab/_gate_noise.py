"""The gate's own A/A: the base against itself on this runner, first, for its noise bands.

::

    calibrate_pairs: 12  (gate file)  or  optkit gate --calibrate-pairs 12
        compare(base, base-again)    12 A/A pairs per load, the gate's settings otherwise
        stats.calibrate_deltas       per load: δ and sd of d per metric (as optkit calibrate)
        -> calibration cells         merged over the gate file's calibration, written to
                                     <out>/calibration.json, and the A/B session's bands

A runner that is handed a different CPU each run (a hosted CI runner) has no calibration of
its own to reuse: this measures one in the same minutes as the gate, at the cost of the A/A
session's time. Its table is kept in the summary: what noise alone did on this runner.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

from ._calibration import _merge, _read
from ._comparison import Comparison, jsonable
from ._noise import cell_key
from ._session import compare
from ._settings import CompareSettings
from .stats import calibrate_deltas

__all__ = ["measure_noise"]


def measure_noise(arm: Any, settings: CompareSettings, *, pairs: int,
                  repository: str | Path, calibration: str | Path | None = None,
                  out_dir: str | Path | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Comparison]:
    """(the calibration document with this runner's cells, the A/A session behind it).

    Args:
        arm: the base arm (an external arm or an optkit config): run against itself.
        settings: the gate's session settings; ``pairs`` replaces theirs.
        calibration: a calibration file whose other cells are kept (never written to).
        out_dir: the A/A session's files go to ``<out_dir>/calibration/``, the document to
            ``<out_dir>/calibration.json``.
    """
    aa_settings = dataclasses.replace(settings, pairs=pairs)
    out = Path(out_dir) if out_dir else None
    if log:
        log(f"noise: {pairs} A/A pairs per load of {arm.name} against itself")
    session = compare(arm, arm.replace(name=f"{arm.name}-again"), repository=repository,
                      settings=aa_settings, progress=progress, log=log,
                      out_dir=out / "calibration" if out else None)
    valid = session.trials[session.trials["valid"].astype(bool) & (session.trials["pair"] >= 0)]
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cells: dict[str, Any] = {}
    for load in aa_settings.loads:
        at = valid[valid["load"] == load]
        if at["pair"].nunique() < 2:
            continue  # no band measured: that cell keeps the file's or the defaults
        cells[cell_key(aa_settings.workload, load)] = {
            "workload": aa_settings.workload, "load": load, "config_name": arm.name,
            "config": arm.to_dict(), "settings": aa_settings.to_dict(), "created": created,
            "n_pairs": int(at["pair"].nunique()), "elapsed_s": session.elapsed_s,
            "deltas": calibrate_deltas(at, metrics=list(aa_settings.analysed_metrics()),
                                       seed=aa_settings.seed)}
    doc = _merge(_read(calibration) if calibration and Path(calibration).exists() else {},
                 cells)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "calibration.json").write_text(json.dumps(doc, indent=2, default=jsonable))
    return doc, session
