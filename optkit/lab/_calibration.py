"""A/A calibration: run one config against itself and store the noise band δ per metric.

::

    calibrate(baseline.yaml) = compare(baseline, baseline-again)  -> A/A pairs per load
        δ per metric = the 95 % quantile of |mean d| over the sign flips of those pairs
        -> runs/calibration.json, read back by load_deltas (optkit.lab._noise)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .._config import load_config
from ._comparison import jsonable
from ._session import compare
from ._settings import CompareSettings
from .stats import calibrate_deltas

__all__ = ["calibrate"]


def calibrate(config: Any, *, repository: str | Path, settings: CompareSettings | None = None,
              out: str | Path | None = None, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """A/A session of one config; stores the noise threshold δ per metric with its evidence."""
    cfg = load_config(config)
    session = compare(cfg, cfg.replace(name=cfg.name + "-again"), repository=repository,
                      settings=settings, progress=progress, **overrides)
    valid = session.trials[session.trials["valid"]]
    per_load = {load: calibrate_deltas(valid[valid["load"] == load], seed=session.settings.seed)
                for load in session.settings.loads}
    # one δ per metric: the largest over the loads calibrated (the conservative choice)
    deltas: dict[str, dict[str, Any]] = {}
    for load, found in per_load.items():
        for metric, record in found.items():
            if metric not in deltas or record["delta"] > deltas[metric]["delta"]:
                deltas[metric] = {**record, "load": load}
    doc = {"schema_version": 1, "config": cfg.to_dict(), "settings": session.settings.to_dict(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "deltas": deltas,
           "per_load": per_load, "elapsed_s": session.elapsed_s,
           "aa_verdicts": session.verdict_table().to_dict(orient="records")}
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=jsonable))
    return doc
