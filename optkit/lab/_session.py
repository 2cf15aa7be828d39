"""Paired, randomized A/B sessions: run trials, analyse them, write the verdict.

::

    pair 0:  [B][A]      each [ ] = a fresh stack, warm-up (discarded), a measurement window
    pair 1:  [A][B]      the order inside each pair is a coin flip from a recorded seed,
    pair 2:  [B][A]      so slow drift of the machine hits both arms alike
    ...
    per load: d = ln(B/A) per pair -> sign-flip test, BCa CI, Holm, noise band δ -> verdict

The number of pairs is fixed before the first trial (no peeking). A pair with an
invalid trial is kept in the table (``valid=False``) and run again, up to
``max_reruns`` times, so invalid trials are never silently dropped and never
silently used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from .._config import ServiceConfig, load_config
from .._exceptions import ConfigError, LaunchError, OptkitError
from ._churn import ChurnPlan
from ..bench._validity import ValidityGates
from .stats import DEFAULT_DELTAS, DEFAULT_PAIRS, EXTRA_METRICS, METRICS, MetricVerdict, analyse, \
    calibrate_deltas, decide, holm, verdict_table

__all__ = ["CompareSettings", "Comparison", "compare", "calibrate", "parse_load", "load_deltas",
           "QUICK", "STANDARD"]




@dataclass(frozen=True, kw_only=True)
class CompareSettings:
    """How a session runs: pairs, trial timing, loads, workload, seed.

    ``metrics`` names columns analysed besides the four core ones (throughput, p50, p99,
    memory per request), from ``optkit.lab.stats.EXTRA_METRICS``: e.g. ``("ttfb_p99_ms",
    "gateway_peak_mb")`` for the streaming day. They join the same Holm family.
    """

    pairs: int = DEFAULT_PAIRS
    warmup_s: float = 1.0  # wrk counts whole seconds: keep both in whole seconds
    duration_s: float = 2.0  # 24 pairs of 1 + 2 s trials keep a day within ~4 minutes
    loads: tuple[str, ...] = ("closed:32",)
    workload: str = "digits"
    seed: int = 0
    quick: bool = False
    max_reruns: int = 3
    engine: str = "auto"
    metrics: tuple[str, ...] = ()
    #: model loads/reloads against the model server during every trial (Thursday's churn)
    churn: ChurnPlan | None = None
    #: validity gates of every trial (None: the defaults). A churn session switches the
    #: stability gate off: load stalls make throughput uneven across windows by design.
    gates: ValidityGates | None = None

    def __post_init__(self) -> None:
        if isinstance(self.gates, Mapping):
            object.__setattr__(self, "gates", ValidityGates(**self.gates))
        if isinstance(self.churn, Mapping):
            object.__setattr__(self, "churn", ChurnPlan(**self.churn))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        unknown = set(self.metrics) - set(EXTRA_METRICS)
        if unknown:
            raise ConfigError(f"unknown metric(s) {sorted(unknown)}; choose from "
                              f"{sorted(EXTRA_METRICS)}")
        if self.pairs < 2:
            raise ConfigError(f"pairs must be >= 2, got {self.pairs}")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ConfigError("duration_s must be > 0 and warmup_s >= 0")
        if isinstance(self.loads, str) or not self.loads:
            raise ConfigError("loads must be a non-empty sequence like ('closed:32',)")
        for text in self.loads:
            parse_load(text, engine="builtin")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["loads"] = list(self.loads)
        out["metrics"] = list(self.metrics)
        out["churn"] = self.churn.to_dict() if self.churn else None
        return out

    def analysed_metrics(self) -> dict[str, bool]:
        """Metric -> higher_is_better for every column this session's verdicts cover."""
        return {**METRICS, **{m: EXTRA_METRICS[m] for m in self.metrics}}


def parse_load(text: str, *, engine: str = "auto") -> Any:
    """``closed:32`` -> closed loop at 32 connections; ``open:2000`` -> 2,000 req/s offered.

    ``engine="auto"`` uses wrk for closed loops when it is installed, else the built-in
    generator; open loops always use the built-in one (wrk cannot keep a schedule) with
    Poisson arrivals, the realistic model of independent clients.
    """
    from ..bench._load import LoadSpec
    from ..bench._wrk import wrk_available

    spec = LoadSpec.parse(str(text))
    if spec.mode == "open":
        return dataclasses.replace(spec, arrival="poisson", engine="builtin")
    chosen = engine if engine != "auto" else ("wrk" if wrk_available() else "builtin")
    return dataclasses.replace(spec, engine=chosen)


#: Standard mode: the defaults above. Quick mode (CI, nbmake): fewer, shorter trials;
#: its verdicts are marked provisional. Its trials only have to show that every step
#: runs (a half-second window holds thousands of requests), so they are kept short.
STANDARD = CompareSettings()
QUICK = CompareSettings(pairs=8, warmup_s=0.4, duration_s=0.8, quick=True)


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

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "a": self.a.to_dict(), "b": self.b.to_dict(),
            "settings": self.settings.to_dict(),
            "provisional": self.provisional,
            "deltas": self.deltas, "deltas_source": self.deltas_source,
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
        (out / "verdict.json").write_text(json.dumps(self.to_json(), indent=2, default=_jsonable))
        for name, fig in self.figures().items():
            fig.savefig(out / "figures" / f"{name}.png", dpi=110, bbox_inches="tight")
        self.path = out
        return out

    def figures(self) -> dict[str, Any]:
        """The session's figures by name (paired trials, forest plot, latency curves)."""
        from . import plotting

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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)


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


def _analyse_session(trials: pd.DataFrame, settings: CompareSettings, calibration: Any,
                     log: Callable[[str], None] | None) -> dict[str, list[MetricVerdict]]:
    """Verdicts per load, with Holm applied once over every (load, metric) test."""
    per_load: dict[str, list[MetricVerdict]] = {}
    for load_text in settings.loads:
        subset = trials[(trials["load"] == load_text) & (trials["pair"] >= 0)]
        deltas, _ = load_deltas(calibration, load=load_text, n_pairs=settings.pairs)
        try:
            per_load[load_text] = analyse(subset, metrics=settings.analysed_metrics(),
                                          deltas=deltas, seed=settings.seed)
        except ValueError as exc:
            if log:
                log(f"{load_text}: no analysis possible: {exc}")
            per_load[load_text] = []
    flat = [(load, i) for load, vs in per_load.items() for i in range(len(vs))]
    if not flat:
        return per_load
    adjusted = holm([per_load[load][i].p_value for load, i in flat])
    for (load, i), p_adj in zip(flat, adjusted):
        v = per_load[load][i]
        per_load[load][i] = dataclasses.replace(
            v, p_adjusted=float(p_adj),
            verdict=decide(float(p_adj), v.ci_low, v.ci_high, v.delta,
                           higher_is_better=v.higher_is_better))
    return per_load


def compare(a: Any, b: Any, *, repository: str | Path,
            settings: CompareSettings | None = None, calibration: Any = None,
            out_dir: str | Path | None = None, progress: bool = True,
            log: Callable[[str], None] | None = None, **overrides: Any) -> Comparison:
    """Run a paired randomized A/B session and analyse it.

    Args:
        a, b: the two arms: service configs (ServiceConfig, YAML path, mapping, or None =
            baseline) or external arms (``optkit.lab._arms``: ``kind: command`` or ``kind: url``).
        repository: the model repository both arms serve.
        settings: pairs, timing, loads...; ``QUICK`` or ``STANDARD`` or your own. Keyword
            ``overrides`` (``pairs=10``, ``loads=("open:2000",)``) replace single fields.
        calibration: a calibration file or mapping of per-metric δ; defaults otherwise.
        out_dir: if given, every trial's raw data and the session's results go there.
    """
    from ._trial import run_trial

    from ._arms import load_arm, preflight

    cfg_a, cfg_b = load_arm(a), load_arm(b)  # optkit configs or external arms
    if cfg_a.name == cfg_b.name:  # the arms must be told apart in every table and figure
        cfg_b = cfg_b.replace(name=cfg_b.name + "-B")
    settings = dataclasses.replace(settings or STANDARD, **overrides)
    preflight(cfg_a, cfg_b, repository=repository, workload=settings.workload)
    started_arms: set[str] = set()  # arms that ran a trial at least once
    rng = np.random.default_rng(settings.seed)
    out = Path(out_dir) if out_dir else None
    rows: list[dict[str, Any]] = []
    stats_rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[np.ndarray]]] = {}
    started = time.perf_counter()
    plan = [(load, pair) for load in settings.loads for pair in range(settings.pairs)]
    bar = _progress(len(plan) * 2, progress, f"{cfg_a.name} vs {cfg_b.name}")
    invalid_ids = 0
    for load_text, pair in plan:
        load = parse_load(load_text, engine=settings.engine)
        for attempt in range(settings.max_reruns + 1):
            order = ["A", "B"] if rng.random() < 0.5 else ["B", "A"]
            pair_rows = []
            for position, arm in enumerate(order):
                cfg = cfg_a if arm == "A" else cfg_b
                if bar is not None:
                    bar.set_postfix_str(f"({load_text}, pair {pair + 1}, {arm}: {cfg.name})")
                slug = f"{load_text.replace(':', '-')}-p{pair:02d}-{arm}-{attempt}"
                row: dict[str, Any] = {"pair": pair, "position": position, "arm": arm,
                                       "label": cfg.name, "load": load_text, "attempt": attempt}
                try:
                    result = run_trial(cfg, repository=repository, load=load,
                                       workload=settings.workload, warmup_s=settings.warmup_s,
                                       duration_s=settings.duration_s,
                                       seed=settings.seed * 1000 + pair, churn=settings.churn,
                                       gates=settings.gates,
                                       out_dir=out / "trials" / slug if out else None)
                except OptkitError as exc:  # a trial that could not run is an invalid trial
                    if arm not in started_arms:  # ...unless the arm never ran: then none will
                        raise LaunchError(f"arm {arm} ({cfg.name}) could not run its first trial, "
                                        f"so no trial would; stopped before measuring: "
                                        f"{exc}") from exc
                    row.update(valid=False, invalid_reasons=f"trial failed: {exc}"[:500])
                    pair_rows.append(row)
                    if bar is not None:
                        bar.update(1)
                    continue
                started_arms.add(arm)
                row = {**result.row(), **row}
                pair_rows.append(row)
                stats_rows.append({"pair": pair, "arm": arm, "load": load_text,
                                   "attempt": attempt, **result.stats_row()})
                lat = result.bench.latencies_ms
                if len(lat):
                    curves.setdefault(load_text, {}).setdefault(cfg.name, []).append(lat)
                if bar is not None:
                    bar.update(1)
            if all(r["valid"] for r in pair_rows):
                rows.extend(pair_rows)
                break
            # keep the invalid attempt on record, both trials under one pair id (< 0) that
            # analysis skips; which arm failed is kept and reported (see invalid_by_arm)
            invalid_ids += 1
            if bar is not None and attempt < settings.max_reruns:
                bar.total += len(order)  # the pair runs again: the count says so
            for r in pair_rows:
                r["failed_pair"], r["pair"] = pair, -invalid_ids
                rows.append(r)
            if log:
                log(f"pair {pair} at {load_text}: invalid trial, re-running "
                    f"({'; '.join(str(r.get('invalid_reasons')) for r in pair_rows if not r['valid'])})")
    if bar is not None:
        bar.close()
    trials = pd.DataFrame(rows)
    verdicts = _analyse_session(trials, settings, calibration, log)
    deltas, source = load_deltas(calibration, load=settings.loads[0], n_pairs=settings.pairs)
    from .stats import percentile_curve

    curve_out = {load: {label: percentile_curve(np.concatenate(parts))
                        for label, parts in by_label.items()}
                 for load, by_label in curves.items()}
    comparison = Comparison(cfg_a, cfg_b, settings, trials, verdicts, pd.DataFrame(stats_rows),
                            deltas, source, time.perf_counter() - started, curve_out)
    if out is not None:
        comparison.save(out)
    return comparison


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
        path.write_text(json.dumps(doc, indent=2, default=_jsonable))
    return doc


def _progress(total: int, enabled: bool, desc: str) -> Any:
    """A progress bar in a terminal; inside a notebook kernel, lines on the *terminal*.

    In a kernel (papermill under ``optkit week``, nbmake, JupyterLab) ``sys.stderr`` is the
    notebook's stream, so a bar there ends up in the report as pages of red text. The
    kernel process's original stderr is the terminal that started it: progress goes there,
    one line per trial, and the report stays clean. ipykernel >= 6 also captures file
    descriptor 2 into the notebook (so ``sys.__stderr__`` lands in the report too) and keeps a
    copy of the original, which its ``sys.stderr.fileno()`` returns: that copy is the terminal.
    """
    import sys

    if not enabled:
        return None
    if sys.stderr is not sys.__stderr__:
        try:
            terminal = sys.stderr.fileno()  # ipykernel: the original stderr, not the capture
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
            terminal = sys.__stderr__.fileno() if sys.__stderr__ is not None else -1
        return _KernelProgress(total, desc, terminal)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="trial", leave=False)


class _KernelProgress:
    """``trial k of n``, the trial just run, elapsed and estimated remaining time."""

    def __init__(self, total: int, desc: str, fd: int) -> None:
        self.total, self.desc, self.fd = total, desc, fd
        self.done, self.note = 0, ""
        self.started = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.done * max(0, self.total - self.done) if self.done else 0.0
        if self.fd >= 0:
            line = (f"  {self.desc}: trial {self.done} of {self.total} {self.note}"
                    f" | {elapsed:.0f} s elapsed, ~{left:.0f} s left\n")
            try:
                os.write(self.fd, line.encode())
            except OSError:  # no terminal behind the kernel: stay silent
                self.fd = -1

    def set_postfix_str(self, note: str) -> None:
        self.note = note

    def close(self) -> None:
        pass
