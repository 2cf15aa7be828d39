"""The noise band δ of a verdict: measured for its (workload, load), read back for n pairs.

::

    runs/calibration.json  (optkit calibrate: A/A pairs of one config, per cell)
      cells: {"digits|closed:32": {"created": ..., "n_pairs": 24, "config": {...},
                                   "deltas": {"throughput_rps": {"delta": 0.031, "sd_d": 0.05,
                                                                 "n_pairs": 24}, ...}}, ...}
          │ noise_band(calibration, workload="digits", load="closed:32", n_pairs=12)
          ▼
      NoiseBand: δ per metric scaled to n pairs (δ·√(n_cal/n)), the A/A sd of d per metric
      (what the pairs are planned from), and where each δ came from:
        measured   the cell was calibrated at this n
        scaled     the cell was calibrated at n_cal pairs and δ scaled to this n
        default    the cell (or the metric) was never measured: stats.DEFAULT_DELTAS

A calibration written before cells existed (``per_load``, schema 1) is read as cells of the
``digits`` workload.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .stats import DEFAULT_DELTAS, METRICS, RETIRED_METRICS, metrics_for_load, scaled_delta

__all__ = ["NoiseBand", "cell_key", "workload_key", "calibration_cells", "noise_band", "load_deltas"]


def workload_key(workload: str | Path) -> str:
    """One spelling per workload: a workload file by its resolved path, a built-in by its name.

    The week's notebooks run in ``notebooks/`` and name ``../experiments/x.yaml``, the CLI and
    scripts run at the root and name ``experiments/x.yaml``: the same file, and so the same
    noise band. A name that is no existing file (``digits``) is kept as it is.
    """
    workload = str(workload)
    if "/" not in workload and not workload.endswith((".yaml", ".yml", ".json")):
        return workload
    path = Path(workload)
    return str(path.resolve()) if path.is_file() else workload


def cell_key(workload: str | Path, load: str) -> str:
    """The calibration's key of a (workload, load) cell: ``digits|closed:32``."""
    return f"{workload_key(workload)}|{load}"


@dataclass(frozen=True)
class NoiseBand:
    """The noise band of one (workload, load) cell at n pairs.

    ``deltas``: metric -> δ (log scale) at ``n_pairs``; ``sd_d``: metric -> the A/A standard
    deviation of d (missing where not measured); ``sources``: metric -> measured, scaled or
    default; ``source``: one line saying where the band came from, for tables and reports.
    """

    workload: str
    load: str
    n_pairs: int | None
    deltas: dict[str, float]
    sd_d: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    n_cal: int | None = None
    created: str | None = None
    source: str = "defaults"

    @property
    def measured(self) -> bool:
        """True when every δ of the band came from an A/A calibration of this cell."""
        return bool(self.sources) and all(s != "default" for s in self.sources.values())


def calibration_cells(calibration: str | Path | Mapping[str, Any] | None
                      ) -> tuple[dict[str, Any], str]:
    """(cell key -> cell record, where it was read from); empty where there is none."""
    if calibration is None:
        return {}, "no calibration"
    if isinstance(calibration, Mapping):
        doc, where = dict(calibration), "given"
    else:
        path = Path(calibration)
        if not path.exists():
            return {}, f"{path} not found"
        doc, where = json.loads(path.read_text()), str(path)
    cells = dict(doc.get("cells") or {})
    for key in list(cells):  # a cell written under another spelling of the same file
        workload, sep, load = key.rpartition("|")
        if sep and workload:
            cells.setdefault(cell_key(workload, load), cells[key])
    for load, found in (doc.get("per_load") or {}).items():  # schema 1: digits only
        cells.setdefault(cell_key("digits", load), {"deltas": found,
                                                    "created": doc.get("created")})
    if doc.get("deltas") is not None:  # the widest band over the cells (or the only one)
        cells["*"] = {"deltas": doc["deltas"], "created": doc.get("created")}
    elif doc and all(k in DEFAULT_DELTAS or k in RETIRED_METRICS for k in doc):  # bare mapping
        cells["*"] = {"deltas": doc}
    return cells, where


def noise_band(calibration: str | Path | Mapping[str, Any] | None, *, load: str | None,
               workload: str = "digits", n_pairs: int | None = None) -> NoiseBand:
    """The band for (workload, load) at ``n_pairs`` from a calibration, else the defaults.

    ``load=None`` reads the calibration's widest band over all its cells (``deltas``).
    """
    cells, where = calibration_cells(calibration)
    cell = cells.get("*") if load is None else cells.get(cell_key(workload, load))
    deltas, sd, sources = dict(DEFAULT_DELTAS), {}, {m: "default" for m in DEFAULT_DELTAS}
    if cell is None:
        reason = where if not cells else f"{where} has no {workload} at {load}"
        return NoiseBand(workload, load or "*", n_pairs, deltas, sd, sources,
                         source=f"defaults ({reason})")
    n_cals = []
    for metric, value in (cell.get("deltas") or {}).items():
        if metric not in deltas:
            continue
        record = value if isinstance(value, Mapping) else {"delta": value}
        n_cal = record.get("n_pairs")
        delta = float(record["delta"])
        deltas[metric] = scaled_delta(delta, n_cal, n_pairs) if n_pairs and n_cal else delta
        sources[metric] = "scaled" if n_pairs and n_cal and n_cal != n_pairs else "measured"
        if record.get("sd_d") is not None and math.isfinite(float(record["sd_d"])):
            sd[metric] = float(record["sd_d"])
        if n_cal:
            n_cals.append(int(n_cal))
    n_cal = min(n_cals) if n_cals else None
    created = cell.get("created")
    scaled = any(s == "scaled" for s in sources.values())
    # a core metric this cell never measured (e.g. mem_per_client_kb in a calibration made
    # before it existed) keeps its default band: say so rather than pass it off as measured
    core = METRICS if load is None else metrics_for_load(METRICS, load)
    unmeasured = [m for m in core if sources.get(m) == "default"]
    text = (f"calibration {where}: {n_cal or '?'} A/A pairs"
            + (f" of {cell['config_name']}" if cell.get("config_name") else "")
            + (f", {str(created)[:10]}" if created else "")
            + (f"; scaled to {n_pairs} pairs" if scaled else "")
            + (f"; default band for {', '.join(unmeasured)} (not in this calibration)"
               if unmeasured else ""))
    return NoiseBand(workload, load or "*", n_pairs, deltas, sd, sources, n_cal=n_cal,
                     created=created, source=text)


def load_deltas(calibration: str | Path | Mapping[str, Any] | None, *, load: str | None = None,
                n_pairs: int | None = None, workload: str = "digits"
                ) -> tuple[dict[str, float], str]:
    """(δ per metric, where it came from) for one cell: :func:`noise_band`'s two essentials."""
    band = noise_band(calibration, load=load, workload=workload, n_pairs=n_pairs)
    return band.deltas, band.source
