"""Simulated paired trials with a known truth, to test the validation method without servers.

The picture: one machine whose speed wanders during a session (a slow linear drift plus a
random walk), trials that each see that speed times their own noise, and now and then a bad
trial (a noisy neighbour: -20 % for the whole trial). Arm B multiplies the true throughput by
``1 + effect``; latencies move inversely (closed loop: latency ~ concurrency / throughput) with
their own, heavier-tailed noise for p99. The output is the tidy trial table that ``analyse``
reads, so the method is tested on exactly what it sees in production.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["simulate_trials"]


def simulate_trials(
    n_pairs: int,
    *,
    effect: float = 0.0,
    cv: float = 0.04,
    drift: float = 0.05,
    walk: float = 0.01,
    p50_effect: float | None = None,
    p99_effect: float | None = None,
    mem_effect: float = 0.0,
    latency_cv: float = 0.05,
    tail_cv: float = 0.10,
    outlier_prob: float = 0.05,
    outlier_size: float = -0.20,
    invalid_prob: float = 0.0,
    throughput_rps: float = 1000.0,
    p50_ms: float = 4.0,
    mem_per_client_kb: float = 64.0,
    mem_held_mb: float = 8.0,
    load: str = "closed:32",
    labels: tuple[str, str] = ("A", "B"),
    seed: int = 0,
) -> pd.DataFrame:
    """Simulate a session of ``n_pairs`` interleaved A/B pairs with known true effects.

    Machine speed at trial t (0 .. 2n-1) is exp(-drift * t/(2n-1) + random walk(step ``walk``)),
    i.e. a slow slide of ``drift`` over the session plus wandering. Each trial multiplies it by
    lognormal noise of sd ``cv`` and, with probability ``outlier_prob``, by 1 + ``outlier_size``.
    The order of A and B inside each pair is a seeded coin flip.

    Args:
        n_pairs: number of pairs (2 trials each).
        effect: true relative change of B's throughput (0.10 = +10 %).
        cv: trial-to-trial noise of throughput (log sd).
        drift: total relative slow-down of the machine across the session.
        walk: sd of the per-trial random-walk step of the machine's speed.
        p50_effect, p99_effect: true relative change of B's p50/p99; default 1/(1+effect) - 1.
        mem_effect: true relative change of B's memory (per client, or held in open loop).
        latency_cv: own noise of p50 (log sd); tail_cv: scale of p99's t(3) noise.
        outlier_prob, outlier_size: chance and size of a bad trial.
        invalid_prob: chance that a trial is marked invalid (to exercise pair exclusion).
        throughput_rps, p50_ms, mem_per_client_kb, mem_held_mb: arm A's true values (memory
            per client fills a closed loop's rows, memory held an open loop's; the other is NaN,
            as in real trial rows).
        load: the ``load`` column; labels: the ``label`` of arms A and B.
        seed: seed of everything random.
    Returns:
        the tidy trial table, one row per trial in run order.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if effect <= -1 or cv < 0 or walk < 0 or not 0 <= outlier_prob <= 1:
        raise ValueError("need effect > -1, cv >= 0, walk >= 0, 0 <= outlier_prob <= 1")
    rng = np.random.default_rng(seed)
    n = 2 * n_pairs
    b_first = rng.random(n_pairs) < 0.5
    is_b = np.column_stack((b_first, ~b_first)).ravel()
    t = np.arange(n) / max(n - 1, 1)
    log_speed = -drift * t + np.cumsum(rng.normal(0.0, walk, n)) + rng.normal(0.0, cv, n)
    log_speed += np.where(rng.random(n) < outlier_prob, np.log1p(outlier_size), 0.0)

    inverse = 1.0 / (1.0 + effect) - 1.0
    e50 = inverse if p50_effect is None else p50_effect
    e99 = inverse if p99_effect is None else p99_effect
    log_thr = np.log(throughput_rps) + log_speed + is_b * np.log1p(effect)
    log_p50 = np.log(p50_ms) - log_speed + is_b * np.log1p(e50) + rng.normal(0, latency_cv, n)
    tail = np.clip(tail_cv * rng.standard_t(3, n), -1.0, 1.0)  # clipped so p99 stays > p50
    log_p99 = np.log(4 * p50_ms) - log_speed + is_b * np.log1p(e99) + tail
    p50, p99 = np.exp(log_p50), np.exp(log_p99)
    p999 = p99 * 1.5 * np.exp(np.abs(rng.normal(0, tail_cv, n)))
    mem = (1 + is_b * mem_effect) * np.exp(rng.normal(0, 0.02, n))
    is_open = str(load).startswith("open:")
    invalid = rng.random(n) < invalid_prob
    return pd.DataFrame({
        "pair": np.repeat(np.arange(n_pairs), 2),
        "position": np.tile([0, 1], n_pairs),
        "arm": np.where(is_b, "B", "A"),
        "label": np.where(is_b, labels[1], labels[0]),
        "load": load,
        "throughput_rps": np.exp(log_thr),
        "p50_ms": p50,
        "p90_ms": np.sqrt(p50 * p99),
        "p99_ms": p99,
        "p999_ms": p999,
        "max_ms": p999 * 1.3,
        "mem_per_client_kb": np.nan * mem if is_open else mem_per_client_kb * mem,
        "mem_held_mb": mem_held_mb * mem if is_open else np.nan * mem,
        "errors": 0,
        "valid": ~invalid,
        "invalid_reasons": np.where(invalid, "simulated: unstable windows", ""),
    })
