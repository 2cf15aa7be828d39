"""The validation method tested on simulated sessions with a known truth (optkit.lab._simulate).

Each simulated session is DEFAULT_PAIRS interleaved pairs with 4 % trial noise, drift, a random
walk and 5 % of trials 20 % slow, analysed by ``stats.analyse`` - once with the default deltas
and once, as real sessions run, with deltas measured by ``stats.calibrate_deltas`` on a
simulated A/A calibration session of the same size (a fresh one per session, so the luck of
the calibration is part of the rate). Rates are asserted through their exact (Clopper-Pearson)
95 % binomial interval, so the claim holds beyond the luck of this seed; the runs are seeded,
so the test is deterministic. docs/method.md ("The method is tested") quotes these figures.

The week as run (the last test) goes through the lab's own planner and session analysis: each
day's cells calibrated on 12 simulated A/A pairs (``week.CALIBRATION_PAIRS``), its pairs planned
within its budget and never below 16 (``week.MIN_SESSION_PAIRS``), its verdicts judged with
Holm over its whole family.
"""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from optkit.lab._simulate import simulate_trials
from optkit.lab.stats import DEFAULT_PAIRS, METRICS, analyse, calibrate_deltas

N_AA = 400  # A/A sessions
N_POWER = 300  # sessions with a true +10 % throughput change
N_RESAMPLES = 999  # bootstrap resamples per CI: enough for a rate, 10x faster than the default
CALIBRATED_PAIRS = 24  # the fewest pairs (in steps of 4) at which a calibrated delta keeps 80 %


@functools.lru_cache(maxsize=None)
def calibrated_deltas(session: int, n_pairs: int) -> Mapping[str, dict]:
    """delta per metric from a simulated A/A calibration session, as ``optkit calibrate`` does.

    Sign flips are drawn (``max_exact=0``, N_RESAMPLES of them) instead of enumerating all
    2^20: the same noise quantile within Monte Carlo error (exact enumeration gives 0/400 and
    223/300 where this gives 0/400 and 221/300), and the file runs three times faster.
    """
    aa = simulate_trials(n_pairs, seed=200_000 + session)
    return calibrate_deltas(aa, n_resamples=N_RESAMPLES, max_exact=0, seed=session)


def _deltas(session: int, n_pairs: int, calibrated: bool) -> Mapping[str, dict] | None:
    return calibrated_deltas(session, n_pairs) if calibrated else None


def false_positive_rate(n_sessions: int = N_AA, n_pairs: int = DEFAULT_PAIRS, *,
                        calibrated: bool = False) -> tuple[int, int]:
    """(sessions where any metric was called improved or regressed, sessions) under A/A."""
    hits = 0
    for s in range(n_sessions):
        verdicts = analyse(simulate_trials(n_pairs, seed=s), n_resamples=N_RESAMPLES, seed=s,
                           deltas=_deltas(s, n_pairs, calibrated))
        hits += any(v.verdict in ("improved", "regressed") for v in verdicts)
    return hits, n_sessions


def power(n_sessions: int = N_POWER, n_pairs: int = DEFAULT_PAIRS, *,
          calibrated: bool = False) -> tuple[int, int]:
    """(sessions where throughput was called improved, sessions) for a true +10 % change."""
    hits = 0
    for s in range(n_sessions):
        trials = simulate_trials(n_pairs, effect=0.10, seed=100_000 + s)
        verdicts = analyse(trials, n_resamples=N_RESAMPLES, seed=s,  # Holm over all 4 metrics
                           deltas=_deltas(s, n_pairs, calibrated))
        tp = next(v for v in verdicts if v.metric == "throughput_rps")
        hits += tp.verdict == "improved"
    return hits, n_sessions


def interval(k: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95 % interval of a binomial rate k/n."""
    ci = st.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return ci.low, ci.high


def test_simulator_writes_the_tidy_schema():
    """One row per trial, both arms in every pair, order randomized, values positive."""
    df = simulate_trials(50, seed=1)
    assert list(df.columns) == [
        "pair", "position", "arm", "label", "load", "throughput_rps", "p50_ms", "p90_ms",
        "p99_ms", "p999_ms", "max_ms", "mem_per_client_kb", "mem_held_mb", "errors", "valid",
        "invalid_reasons"]
    assert len(df) == 100 and (df.groupby("pair")["arm"].agg("".join).isin(["AB", "BA"])).all()
    assert 10 < (df[df.position == 0].arm == "B").sum() < 40
    assert (df[["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]].diff(axis=1).iloc[:, 1:] > 0
            ).all().all()
    assert simulate_trials(5, seed=3).equals(simulate_trials(5, seed=3))


def test_simulator_truth_is_recovered_over_many_pairs():
    """Over 2000 pairs mean ln(B/A) of throughput is ln 1.1 and of p50 is -ln 1.1."""
    df = simulate_trials(2000, effect=0.10, outlier_prob=0.0, seed=2)
    wide = df.pivot(index="pair", columns="arm")
    for metric, truth in (("throughput_rps", np.log(1.1)), ("p50_ms", -np.log(1.1))):
        d = np.log(wide[metric]["B"] / wide[metric]["A"])
        assert d.mean() == pytest.approx(truth, abs=0.01)
    assert simulate_trials(200, invalid_prob=0.5, seed=0)["valid"].mean() == pytest.approx(
        0.5, abs=0.1)


def test_aa_false_positive_rate_at_most_5_percent():
    """A/A at 20 pairs: the 95 % upper bound of P(any metric improved/regressed) <= 5 %."""
    assert set(METRICS) == {"throughput_rps", "p50_ms", "p99_ms", "mem_per_client_kb",
                            "mem_held_mb"}
    k, n = false_positive_rate(n_pairs=20)
    assert interval(k, n)[1] <= 0.05


def test_power_for_a_10_percent_throughput_gain_at_least_80_percent():
    """+10 % throughput at cv 4 % with drift, 20 pairs: the 95 % lower bound of P(improved) >= 80 %."""
    k, n = power(n_pairs=20)
    assert interval(k, n)[0] >= 0.80


def test_calibrated_deltas_are_wider_than_the_default_for_throughput():
    """On this simulator the A/A noise band for throughput is ~3.7 %, above the 2 % default."""
    found = [calibrated_deltas(s, 20)["throughput_rps"]["delta"] for s in range(50)]
    assert 0.03 < float(np.median(found)) < 0.045


def test_aa_false_positive_rate_with_a_calibrated_delta_at_most_5_percent():
    """A/A at 20 pairs, delta from an A/A calibration: 95 % upper bound of any call <= 5 %."""
    k, n = false_positive_rate(n_pairs=20, calibrated=True)
    assert interval(k, n)[1] <= 0.05


@pytest.mark.xfail(raises=AssertionError, strict=True,
                   reason="a calibrated delta (~3.7 %) at 20 pairs gives ~74 % power, not 80 %")
def test_power_with_a_calibrated_delta_at_20_pairs_at_least_80_percent():
    """+10 % at 20 pairs with a calibrated delta: the 95 % lower bound of P(improved) (why 24 is the default)."""
    k, n = power(n_pairs=20, calibrated=True)
    assert interval(k, n)[0] >= 0.80


def test_power_with_a_calibrated_delta_at_default_pairs_at_least_80_percent():
    """+10 % at DEFAULT_PAIRS (24), delta calibrated on as many A/A pairs: 95 % lower bound >= 80 %."""
    assert DEFAULT_PAIRS == CALIBRATED_PAIRS
    k, n = power(n_pairs=DEFAULT_PAIRS, calibrated=True)
    assert interval(k, n)[0] >= 0.80


# -- the week as run: pairs planned from a 12-pair calibration, each day's budget and family --

#: (day, loads in its Holm family, extra metrics analysed, the notebook's pair budget)
WEEK_AS_RUN = (("mon", 1, (), 16), ("tue", 2, (), 16), ("thu", 1, ("max_ms",), 16))
#: this VM when no other job runs: per-trial noise ~3 %, a slow trial in 50 (A/A sd of d
#: ~6 % on the simulator; the machine's own calibration read 5.1 % at closed:32, 2026-12-05)
QUIET = {"cv": 0.03, "outlier_prob": 0.02}
N_WEEK = 150  # planned sessions per day and kind (power, A/A)


def planned_session(loads: int, extra: tuple[str, ...], budget: int, effect: float, seed: int,
                    noise: Mapping[str, float]) -> tuple[bool, list]:
    """One day as ``optkit week`` runs it: each cell calibrated on simulated A/A pairs
    (``plan_day``'s 12), pairs planned for +10 % throughput within the budget and never below
    ``plan_day``'s floor of 16, then the
    session analysed by the lab's own session analysis (bands per cell, Holm over every test
    of every load). Returns (the plan said it reaches 80 % power, the verdicts, first load's
    throughput first). The true effect is on the first load's throughput only."""
    from optkit.lab import CompareSettings, plan_pairs
    from optkit.lab._session import _analyse_session
    from optkit.lab.week import CALIBRATION_PAIRS, MIN_SESSION_PAIRS

    names = [f"closed:{32 >> i}" for i in range(loads)]
    metrics = list({**METRICS, **{m: False for m in extra}})
    cells = {}
    for i, load in enumerate(names):
        aa = simulate_trials(CALIBRATION_PAIRS, load=load, seed=500_000 + 10 * seed + i, **noise)
        cells[f"digits|{load}"] = {"deltas": calibrate_deltas(
            aa, metrics=metrics, n_resamples=N_RESAMPLES, seed=seed)}
    settings = CompareSettings(pairs=budget, loads=tuple(names), metrics=extra, seed=seed)
    plan = plan_pairs(settings, {"cells": cells}, max_pairs=budget, min_pairs=MIN_SESSION_PAIRS)
    trials = pd.concat([simulate_trials(plan.settings.pairs, effect=effect if i == 0 else 0.0,
                                        load=load, seed=900_000 + 10 * seed + i, **noise)
                        for i, load in enumerate(names)], ignore_index=True)
    verdicts, _ = _analyse_session(trials, plan.settings, {"cells": cells}, None)
    return plan.reachable, [v for load in names for v in verdicts[load]]


@pytest.mark.parametrize("day, loads, extra, budget", WEEK_AS_RUN, ids=[d[0] for d in WEEK_AS_RUN])
def test_the_week_as_run_keeps_its_false_positives_and_its_power(day, loads, extra, budget):
    """At each day's own settings (12-pair calibration, planned pairs from 16, the day's
    budget and Holm family): A/A calls anything in <= 5 % of sessions (95 % upper bound), and
    where the plan says its pairs reach a 10 % change, the change is called improved in >= 80 %
    of sessions (95 % lower bound); on this machine's quiet noise over a third of plans reach
    it (Tuesday, two loads: 56 / 150, against 64 / 150 from a 16-pair calibration)."""
    reached = found = false = 0
    for s in range(N_WEEK):
        ok, verdicts = planned_session(loads, extra, budget, 0.10, s, QUIET)
        if ok:
            reached += 1
            found += verdicts[0].metric == "throughput_rps" and verdicts[0].verdict == "improved"
        _, aa = planned_session(loads, extra, budget, 0.0, 50_000 + s, QUIET)
        false += any(v.verdict in ("improved", "regressed") for v in aa)
    assert interval(false, N_WEEK)[1] <= 0.05, (false, N_WEEK)
    assert reached >= N_WEEK / 3 and interval(found, reached)[0] >= 0.80, (found, reached)
