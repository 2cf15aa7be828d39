"""Throughput at an SLO: the highest offered rate whose p99 stays under a bound.

::

    latency p99
      │                         ╱  fail
      │                      ╱
  SLO ┼ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ●─ ─ ─ ─      the answer: the highest passing rate
      │         ●     ●  ●
      └──────────────────────────── offered rate (open loop, Poisson)
           bisection between 0 and the closed-loop capacity

A step passes when the open-loop run is valid (achieved rate within the gate
of the offered one, no transport errors) and its p99 — taken from the
*scheduled* send times, so queueing shows — is under the SLO. One search runs
on one fresh stack; its uncertainty comes from repeating the search on fresh
stacks, and A vs B searches are paired and randomized like any other trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .._config import load_config
from ..bench import LoadSpec, run_bench
from ..service import launch_stack
from .stats import MetricVerdict, analyse

__all__ = ["SloSearch", "throughput_at_slo", "compare_at_slo", "latency_vs_load"]


@dataclass(frozen=True)
class SloSearch:
    """One search: the rate found and every step it took."""

    label: str
    slo_ms: float
    rate_rps: float
    capacity_rps: float
    steps: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def frame(self) -> pd.DataFrame:
        """The steps as a table (offered rate, achieved, p50, p99, passed)."""
        return pd.DataFrame(list(self.steps))


def throughput_at_slo(config: Any, *, repository: str | Path, slo_ms: float = 10.0,
                      workload: str = "digits", step_s: float = 1.5, warmup_s: float = 0.3,
                      max_steps: int = 7, rel_tolerance: float = 0.03, seed: int = 0) -> SloSearch:
    """Bisect the open-loop rate on one fresh stack of ``config``.

    The upper bound is the closed-loop capacity at 32 connections (measured first);
    the search stops after ``max_steps`` steps or when the bracket is narrower than
    ``rel_tolerance`` of the capacity. Returns 0 req/s if even the lowest rate fails.
    """
    cfg = load_config(config)
    steps: list[dict[str, Any]] = []
    with launch_stack(cfg, repository=repository) as stack:
        cap = run_bench(stack.url, LoadSpec(mode="closed", concurrency=32), workload,
                        warmup_s=warmup_s, duration_s=step_s, seed=seed).throughput_rps
        lo, hi = 0.0, cap
        for i in range(max_steps):
            if hi - lo < rel_tolerance * cap:
                break
            rate = (lo + hi) / 2 if i else 0.5 * cap
            res = run_bench(stack.url, LoadSpec(mode="open", rate=rate, arrival="poisson",
                                                max_in_flight=4096),
                            workload, warmup_s=warmup_s, duration_s=step_s, seed=seed + i)
            p99 = res.summary.get("p99_ms")
            passed = bool(res.valid and p99 is not None and p99 <= slo_ms)
            steps.append({"offered_rps": rate, "achieved_rps": res.throughput_rps,
                          "p50_ms": res.summary.get("p50_ms"), "p99_ms": p99,
                          "valid": res.valid, "passed": passed})
            lo, hi = (rate, hi) if passed else (lo, rate)
    return SloSearch(cfg.name, slo_ms, lo, cap, tuple(steps))


def compare_at_slo(a: Any, b: Any, *, repository: str | Path, pairs: int = 8,
                   slo_ms: float = 10.0, seed: int = 0, delta: float = 0.05,
                   **search: Any) -> tuple[MetricVerdict, pd.DataFrame, pd.DataFrame]:
    """Paired, randomized searches of A and B; the verdict on throughput at the SLO.

    Returns the verdict, the tidy table of searches (one row per search) and every
    search step (label, pair, offered_rps, p50_ms, p99_ms, passed) for the
    latency-vs-load figure.
    """
    rng = np.random.default_rng(seed)
    cfg_a, cfg_b = load_config(a), load_config(b)
    if cfg_a.name == cfg_b.name:
        cfg_b = cfg_b.replace(name=cfg_b.name + "-B")
    rows = []
    steps = []
    for pair in range(pairs):
        order = ["A", "B"] if rng.random() < 0.5 else ["B", "A"]
        for position, arm in enumerate(order):
            found = throughput_at_slo(cfg_a if arm == "A" else cfg_b, repository=repository,
                                      slo_ms=slo_ms, seed=seed * 1000 + pair, **search)
            # A search where no rate met the SLO is that arm's worst result, not a missing
            # one: keep the pair, with half the lowest rate tried as a censored stand-in.
            censored = found.rate_rps <= 0
            tried = [st["offered_rps"] for st in found.steps] or [found.capacity_rps]
            rows.append({"pair": pair, "position": position, "arm": arm, "label": found.label,
                         "load": f"slo:{slo_ms:g}ms",
                         "slo_rps": min(tried) / 2 if censored else found.rate_rps,
                         "censored": censored, "capacity_rps": found.capacity_rps,
                         "valid": True})
            steps.extend({"label": found.label, "pair": pair, **step} for step in found.steps)
    table = pd.DataFrame(rows)
    verdict = analyse(table, metrics={"slo_rps": True}, deltas={"slo_rps": delta}, seed=seed)[0]
    return verdict, table, pd.DataFrame(steps)


def latency_vs_load(configs: Sequence[Any], *, repository: str | Path, rates: Sequence[float],
                    workload: str = "digits", step_s: float = 2.0, warmup_s: float = 0.5,
                    seed: int = 0) -> pd.DataFrame:
    """p50/p99 of each config at each offered open-loop rate: where its curve bends up.

    Each config gets one fresh stack and climbs the rates in order (Poisson arrivals,
    latency from the scheduled send, so queueing shows); the configs run in a seeded
    random order, back to back. A curve, not a verdict: one stack per config, no pairs.

    Returns:
        one row per (label, offered rate): achieved_rps, p50_ms, p99_ms, late_sends,
        errors, valid — the generator's own lateness says when a point is limited by
        the generator rather than the service.
    """
    cfgs = [load_config(c) for c in configs]
    order = np.random.default_rng(seed).permutation(len(cfgs))
    rows = []
    for index in order:
        cfg = cfgs[index]
        with launch_stack(cfg, repository=repository) as stack:
            for i, rate in enumerate(sorted(rates)):
                res = run_bench(stack.url, LoadSpec(mode="open", rate=float(rate),
                                                    arrival="poisson", max_in_flight=4096),
                                workload, warmup_s=warmup_s, duration_s=step_s, seed=seed + i)
                s = res.summary
                rows.append({"label": cfg.name, "offered_rps": float(rate),
                             "achieved_rps": res.throughput_rps, "p50_ms": s.get("p50_ms"),
                             "p99_ms": s.get("p99_ms"), "late_sends": s.get("late_sends"),
                             "errors": s.get("errors_total"), "valid": res.valid})
    return pd.DataFrame(rows)
