"""A finished A/B session: every trial, a verdict per load and metric, tables, figures, files.

::

    Comparison
      trials          one row per trial (valid or not, re-runs kept under negative pair ids)
      verdicts        load -> [MetricVerdict]   (Holm over every test of the session)
      verdict_table() means() figures()         what a notebook shows
      breakdown()     per load and arm, where a request's time goes (``_breakdown.py``)
      save(dir)       trials.csv, server_stats.csv, verdict.json, figures/*.png
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._config import ServiceConfig
from . import plotting
from ._breakdown import breakdown_table
from ._noise import NoiseBand
from ._settings import CompareSettings
from .stats import MetricVerdict, verdict_table

__all__ = ["Comparison", "jsonable"]


@dataclass
class Comparison:
    """A finished A/B session: every trial, and a verdict per load and metric."""

    a: ServiceConfig
    b: ServiceConfig
    settings: CompareSettings
    trials: pd.DataFrame
    verdicts: dict[str, list[MetricVerdict]]
    server_stats: pd.DataFrame
    deltas: dict[str, float]
    deltas_source: str
    elapsed_s: float
    latency_curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    #: load -> the noise band its verdicts were judged against (and where it came from)
    bands: dict[str, NoiseBand] = field(default_factory=dict)
    path: Path | None = None

    @property
    def provisional(self) -> bool:
        """Quick-mode verdicts are provisional: too few/short trials to stand on."""
        return self.settings.quick

    def verdict_table(self) -> pd.DataFrame:
        frames = []
        for load, verdicts in self.verdicts.items():
            table = verdict_table(verdicts).reset_index()
            table.insert(0, "load", load)
            frames.append(table)
        out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if self.provisional and len(out):
            out["verdict"] = out["verdict"] + " (provisional)"
        return out

    def verdict(self, metric: str = "throughput_rps", load: str | None = None) -> MetricVerdict:
        load = load or next(iter(self.verdicts))
        for v in self.verdicts[load]:
            if v.metric == metric:
                return v
        raise KeyError(f"no verdict for {metric!r} at {load!r}")

    def invalid_by_arm(self) -> dict[str, int]:
        """Invalid trials per arm: lopsided counts mean one arm's failures were re-run away."""
        bad = self.trials[~self.trials["valid"].astype(bool)]
        return {arm: int((bad["arm"] == arm).sum()) for arm in ("A", "B")}

    def independent_trials(self) -> dict[str, bool]:
        """Per arm: False for a fixed-URL arm, whose trials all hit one long-lived process."""
        return {arm: bool(getattr(cfg, "independent", True))
                for arm, cfg in (("A", self.a), ("B", self.b))}

    def pairs_lost(self) -> dict[str, int]:
        """Per load, pairs planned but never valid within ``max_reruns`` (n shrank by these)."""
        ok = self.trials[self.trials["pair"] >= 0]
        return {load: self.settings.pairs - int(ok[ok["load"] == load]["pair"].nunique())
                for load in self.settings.loads}

    def means(self) -> pd.DataFrame:
        """Mean of each metric per load and arm, over valid trials."""
        valid = self.trials[self.trials["valid"].astype(bool) & (self.trials["pair"] >= 0)]
        cols = [c for c in self.settings.analysed_metrics() if c in valid.columns]
        return valid.groupby(["load", "arm"])[cols].mean()

    def breakdown(self) -> pd.DataFrame:
        """Per load and arm, the median over valid trials of the mean request time split into
        queue, decode + validate, model, encode and the rest (``breakdown_table``); draw it
        with ``plotting.breakdown_bars``."""
        return breakdown_table(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "a": self.a.to_dict(), "b": self.b.to_dict(),
            "settings": self.settings.to_dict(),
            "provisional": self.provisional,
            "deltas": self.deltas, "deltas_source": self.deltas_source,
            "bands": {load: {"source": band.source, "deltas": band.deltas,
                             "sources": band.sources, "n_cal": band.n_cal,
                             "created": band.created} for load, band in self.bands.items()},
            "elapsed_s": self.elapsed_s,
            "independent_trials": self.independent_trials(),
            "trials": {"total": int(len(self.trials)),
                       "invalid": int((~self.trials["valid"].astype(bool)).sum()),
                       "invalid_by_arm": self.invalid_by_arm(),
                       "pairs_lost": self.pairs_lost()},
            "verdicts": {load: [dataclasses.asdict(v) for v in vs]
                         for load, vs in self.verdicts.items()},
            "means": {f"{load}|{arm}": row.dropna().to_dict()
                      for (load, arm), row in self.means().iterrows()},
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write ``trials.csv``, ``server_stats.csv``, ``verdict.json`` and the figures."""
        out = Path(out_dir)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        self.trials.to_csv(out / "trials.csv", index=False)
        self.server_stats.to_csv(out / "server_stats.csv", index=False)
        (out / "verdict.json").write_text(json.dumps(self.to_json(), indent=2, default=jsonable))
        for name, fig in self.figures().items():
            fig.savefig(out / "figures" / f"{name}.png", dpi=110, bbox_inches="tight")
        self.path = out
        return out

    def figures(self) -> dict[str, Any]:
        """The session's figures by name (paired trials, forest plot, latency curves)."""
        figs: dict[str, Any] = {}
        for load, verdicts in self.verdicts.items():
            slug = load.replace(":", "-")
            trials = self.trials[self.trials["load"] == load]
            for metric in ("throughput_rps", "p99_ms"):
                if metric in trials and trials[metric].notna().any():
                    figs[f"paired-{metric}-{slug}"] = plotting.paired_trials(trials, metric)
            if verdicts:
                figs[f"effects-{slug}"] = plotting.effect_forest(verdicts)
            curves = self.latency_curves.get(load)
            if curves:
                figs[f"latency-{slug}"] = plotting.latency_percentiles(curves)
        return figs


def jsonable(obj: Any) -> Any:
    """``json.dumps``'s ``default``: numpy scalars as Python numbers, tuples and sets as lists."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)
