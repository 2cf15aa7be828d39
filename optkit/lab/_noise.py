"""The noise band δ of a verdict: read from a calibration for one load and n pairs.

::

    runs/calibration.json  (optkit calibrate: A/A pairs of one config)
      per_load: {"closed:32": {"throughput_rps": {"delta": 0.031, "n_pairs": 24}, ...}}
          │ load_deltas(calibration, load="closed:32", n_pairs=12)
          ▼
      δ per metric, widened by √(n_cal/n) for a session with fewer pairs; the documented
      defaults (stats.DEFAULT_DELTAS) where nothing was measured, and the source says so
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from .stats import DEFAULT_DELTAS

__all__ = ["load_deltas"]


def load_deltas(calibration: str | Path | Mapping[str, Any] | None, *, load: str | None = None,
                n_pairs: int | None = None) -> tuple[dict[str, float], str]:
    """Noise thresholds δ for one load: from a calibration (``optkit calibrate``), else defaults.

    A calibration holds δ per load (``per_load``); a load it did not measure gets the
    defaults. The noise δ of a mean over n pairs shrinks like 1/√n, so a session with
    fewer pairs than the calibration gets δ·√(n_cal/n) (never narrower than measured).
    """
    if calibration is None:
        return dict(DEFAULT_DELTAS), "defaults (no calibration)"
    if isinstance(calibration, Mapping):
        doc, source = dict(calibration), "given"
    else:
        path = Path(calibration)
        if not path.exists():
            return dict(DEFAULT_DELTAS), f"defaults ({path} not found)"
        doc, source = json.loads(path.read_text()), str(path)
    per_load = doc.get("per_load") or {}
    if load is not None and per_load:
        if load not in per_load:
            return dict(DEFAULT_DELTAS), f"defaults (calibration {source} has no {load})"
        found = per_load[load]
    else:
        found = doc.get("deltas", doc)
    deltas = dict(DEFAULT_DELTAS)
    scaled = False
    for key, value in found.items():
        if key not in deltas:
            continue
        delta = float(value["delta"] if isinstance(value, Mapping) else value)
        n_cal = value.get("n_pairs") if isinstance(value, Mapping) else None
        if n_pairs and n_cal and n_pairs < n_cal:
            delta *= math.sqrt(n_cal / n_pairs)
            scaled = True
        deltas[key] = delta
    return deltas, f"calibration {source}" + (" (scaled by √(n_cal/n))" if scaled else "")
