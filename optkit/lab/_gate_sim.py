"""How often a gate cries wolf, and how often it catches a real regression: on the simulator.

::

    simulate_trials(pairs, effect)  per load     the machine, its drift and bad trials
        -> analyse (the session's statistics)    the gate's noise bands
        -> judge (the gate's own code)           failed?
    x sessions at effect 0 (A/A), -5 %, -10 % throughput (latencies move inversely)
        -> the rate at which the gate failed, with its exact 95 % interval

At effect 0 that rate is the false-alarm rate per gate (the whole gated family, every load);
at -5 % and -10 % it is the gate's power. The live gate reports it at its own pairs, bands
and the trial noise it measured (sd of d of throughput / √2), so a reviewer sees what a pass
rules out on that runner.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd
from scipy import stats as _st

from ._gate_judge import GateCheck, judge
from ._gate_spec import GateSpec
from ._simulate import simulate_trials
from .stats import analyse

__all__ = ["gate_error_rates", "DEFAULT_CV"]

#: trial-to-trial noise of throughput (log sd) when nothing was measured: the simulator's own
DEFAULT_CV = 0.04


def _noise_cv(checks: Sequence[GateCheck]) -> float:
    """The trial noise a session showed: its throughput's sd of d / √2 (median over loads)."""
    sds = sorted(c.sd_d for c in checks
                 if c.metric == "throughput_rps" and math.isfinite(c.sd_d) and c.sd_d > 0)
    if not sds:
        return DEFAULT_CV
    return min(0.5, max(0.002, sds[len(sds) // 2] / math.sqrt(2)))


def gate_error_rates(spec: GateSpec, checks: Sequence[GateCheck] = (), *, sessions: int = 200,
                     effects: Sequence[float] = (0.0, -0.05, -0.10), cv: float | None = None,
                     n_resamples: int = 499, seed: int = 0) -> pd.DataFrame:
    """Per true throughput change: how often the gate fails, over ``sessions`` simulated gates.

    Args:
        spec: the gate (pairs, loads, gated metrics and declared regressions).
        checks: a live gate's checks: their noise bands and measured noise are used (else
            the lab's default bands and ``DEFAULT_CV``).
        effects: true relative changes of head's throughput (-0.10 = 10 % slower).
        cv: trial noise (log sd of throughput); default from ``checks``.
    Returns:
        one row per effect: effect_pct, sessions, failed, rate, ci_low, ci_high, cv, pairs.
    """
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    settings = spec.settings
    noise = {(c.load, c.metric): math.log1p(c.noise_pct / 100.0) for c in checks}
    cv = _noise_cv(checks) if cv is None else cv
    rows: list[dict[str, Any]] = []
    for k, effect in enumerate(effects):
        failed = 0
        for s in range(sessions):
            verdicts = {}
            for i, load in enumerate(settings.loads):
                trials = simulate_trials(settings.pairs, effect=effect, cv=cv, load=load,
                                         seed=seed + 1_000_003 * k + 1_009 * s + i)
                deltas = {m: d for (at, m), d in noise.items() if at == load}
                verdicts[load] = analyse(trials, metrics=settings.analysed_metrics(),
                                         deltas=deltas, n_resamples=n_resamples, seed=s)
            failed += any(not c.passed for c in judge(verdicts, spec.gate, alpha=spec.alpha))
        ci = _st.binomtest(failed, sessions).proportion_ci(confidence_level=0.95,
                                                           method="exact")
        rows.append({"effect_pct": 100.0 * effect, "sessions": sessions, "failed": failed,
                     "rate": failed / sessions, "ci_low": float(ci.low),
                     "ci_high": float(ci.high), "cv": cv, "pairs": settings.pairs,
                     "loads": len(settings.loads)})
    return pd.DataFrame(rows)
