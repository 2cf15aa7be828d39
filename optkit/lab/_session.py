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
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .._exceptions import LaunchError, OptkitError
from ._arms import load_arm, preflight
from ._comparison import Comparison
from ._manifest import git_state
from ._noise import NoiseBand, noise_band
from ._progress import progress_bar
from ._settings import STANDARD, CompareSettings, parse_load
from ._trial import run_trial
from .stats import MetricVerdict, analyse, decide, detectable_effect, holm, pct, percentile_curve

__all__ = ["compare"]


def _analyse_session(trials: pd.DataFrame, settings: CompareSettings, calibration: Any,
                     log: Callable[[str], None] | None
                     ) -> tuple[dict[str, list[MetricVerdict]], dict[str, NoiseBand]]:
    """Verdicts per load, with Holm applied once over every (load, metric) test, each judged
    against its cell's noise band at the pairs it kept; and those bands."""
    per_load: dict[str, list[MetricVerdict]] = {}
    bands: dict[str, NoiseBand] = {}
    for load_text in settings.loads:
        subset = trials[(trials["load"] == load_text) & (trials["pair"] >= 0)]
        kept = int(subset.groupby("pair")["valid"].all().sum()) if len(subset) else 0
        band = noise_band(calibration, workload=settings.workload, load=load_text,
                          n_pairs=max(2, kept))
        bands[load_text] = band
        try:
            per_load[load_text] = analyse(subset, metrics=settings.analysed_metrics(load_text),
                                          deltas=band.deltas, sources=band.sources,
                                          seed=settings.seed)
        except ValueError as exc:
            if log:
                log(f"{load_text}: no analysis possible: {exc}")
            per_load[load_text] = []
    flat = [(load, i) for load, vs in per_load.items() for i in range(len(vs))]
    if not flat:
        return per_load, bands
    adjusted = holm([per_load[load][i].p_value for load, i in flat])
    for (load, i), p_adj in zip(flat, adjusted):
        v = per_load[load][i]
        mde = detectable_effect(v.sd_d, v.n_pairs, delta=v.delta, family_size=len(flat))
        per_load[load][i] = dataclasses.replace(
            v, p_adjusted=float(p_adj),
            mde_pct=float(pct(mde)) if math.isfinite(mde) else math.inf,
            verdict=decide(float(p_adj), v.ci_low, v.ci_high, v.delta,
                           higher_is_better=v.higher_is_better))
    return per_load, bands


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
    cfg_a, cfg_b = load_arm(a), load_arm(b)  # optkit configs or external arms
    if cfg_a.name == cfg_b.name:  # the arms must be told apart in every table and figure
        cfg_b = cfg_b.replace(name=cfg_b.name + "-B")
    settings = dataclasses.replace(settings or STANDARD, **overrides)
    preflight(cfg_a, cfg_b, repository=repository, workload=settings.workload)
    # an arm over gRPC (a grpc:// url): the built-in generator for both arms, wrk refused now
    grpc = settings.transport == "grpc" or any(getattr(cfg, "transport", "http") == "grpc"
                                               for cfg in (cfg_a, cfg_b))
    for load_text in settings.loads:
        parse_load(load_text, engine=settings.engine, grpc=grpc)
    started_arms: set[str] = set()  # arms that ran a trial at least once
    rng = np.random.default_rng(settings.seed)
    out = Path(out_dir) if out_dir else None
    rows: list[dict[str, Any]] = []
    stats_rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[np.ndarray]]] = {}
    started = time.perf_counter()
    git = git_state()  # once: every trial of the session records the same code state
    plan = [(load, pair) for load in settings.loads for pair in range(settings.pairs)]
    bar = progress_bar(len(plan) * 2, progress, f"{cfg_a.name} vs {cfg_b.name}")
    invalid_ids = 0
    for load_text, pair in plan:
        load = parse_load(load_text, engine=settings.engine, grpc=grpc)
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
                                       gates=settings.gates, git=git,
                                       transport=settings.transport,
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
    verdicts, bands = _analyse_session(trials, settings, calibration, log)
    first = bands[settings.loads[0]]
    curve_out = {load: {label: percentile_curve(np.concatenate(parts))
                        for label, parts in by_label.items()}
                 for load, by_label in curves.items()}
    comparison = Comparison(cfg_a, cfg_b, settings, trials, verdicts, pd.DataFrame(stats_rows),
                            first.deltas, first.source, time.perf_counter() - started, curve_out,
                            bands=bands)
    if out is not None:
        comparison.save(out)
    return comparison
