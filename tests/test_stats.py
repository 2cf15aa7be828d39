"""Known-answer tests for optkit.lab.stats: every function against hand-computable cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from optkit import stats
from optkit.lab._signflip import signed_sums
from optkit.lab.stats import (
    DEFAULT_PAIRS,
    METRICS,
    analyse,
    bca_interval,
    calibrate_deltas,
    decide,
    holm,
    log_ratios,
    min_pairs_for,
    pct,
    percentile_curve,
    sign_flip_test,
    tukey_outliers,
    verdict_table,
)

LN11 = math.log(1.1)


def table(
    a: list[float], b: list[float], *, metric: str = "throughput_rps", **extra
) -> pd.DataFrame:
    """A tidy trial table of len(a) pairs, A first in each pair, all valid."""
    rows = []
    for i, (va, vb) in enumerate(zip(a, b)):
        for pos, (arm, v) in enumerate((("A", va), ("B", vb))):
            rows.append({"pair": i, "position": pos, "arm": arm, "label": arm.lower(),
                         "load": "closed:32", metric: v, "valid": True, "invalid_reasons": ""})
    df = pd.DataFrame(rows)
    for name, (ca, cb) in extra.items():
        df[name] = np.ravel(np.column_stack((ca, cb)))
    return df


def test_all_names_exist():
    """Every name in stats.__all__ is defined."""
    assert all(hasattr(stats, name) for name in stats.__all__)


def test_log_ratios_known_values():
    """d = ln(b/a): a doubling is +ln 2, a halving -ln 2."""
    np.testing.assert_allclose(log_ratios([1, 2, 5], [2, 1, 5]), [math.log(2), -math.log(2), 0])


@pytest.mark.parametrize("a, b", [([1, 2], [1]), ([1, 0], [1, 1]), ([1, -1], [1, 1]),
                                  ([1, np.nan], [1, 1]), ([1, 1], [np.inf, 1])])
def test_log_ratios_rejects_bad_input(a, b):
    """Unequal lengths, zero, negative, NaN and infinite values raise ValueError."""
    with pytest.raises(ValueError):
        log_ratios(a, b)


def test_sign_flip_all_positive_is_the_smallest_p():
    """Five equal positive d: 2/32 two-sided, 1/32 greater, 1 less."""
    assert sign_flip_test([1.0] * 5) == 2 / 32
    assert sign_flip_test([1.0] * 5, alternative="greater") == 1 / 32
    assert sign_flip_test([1.0] * 5, alternative="less") == 1.0


def test_sign_flip_hand_enumerated():
    """d = [3, 1, -1]: |S| >= 3 in 6 of 8 sign vectors, S >= 3 in 3 of 8."""
    assert sign_flip_test([3.0, 1.0, -1.0]) == 6 / 8
    assert sign_flip_test([3.0, 1.0, -1.0], alternative="greater") == 3 / 8


def test_sign_flip_counts_ties():
    """Sums tied with the observed one count as extreme, despite float rounding (17/32)."""
    d = [-0.01, 0.07, -0.01, -0.03, -0.02]  # sums to 0; only it and its mirror give 0
    assert sign_flip_test(d, alternative="greater") == 17 / 32
    assert sign_flip_test(d) == 1.0
    assert sign_flip_test([0.0, 0.0, 0.0]) == 1.0


@pytest.mark.parametrize("n", [2, 3, 6, 9])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_agrees_with_scipy(n, alternative):
    """On tie-free data the exact test equals scipy.stats.permutation_test's sign flips."""
    d = np.random.default_rng(n).normal(0.03, 0.05, n)
    ref = st.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), vectorized=True,
                              permutation_type="samples", n_resamples=np.inf,
                              alternative=alternative).pvalue
    assert sign_flip_test(d, alternative=alternative) == pytest.approx(ref, abs=1e-12)


def test_sign_flip_monte_carlo_counts_the_observed():
    """Past max_exact, p = (1 + hits)/(1 + n_resamples): never below 1/(1 + n_resamples)."""
    assert sign_flip_test([1.0] * 25, max_exact=20, n_resamples=2000) == 1 / 2001
    assert sign_flip_test([1.0] * 25) == 2 / 2**25  # exact up to MAX_EXACT pairs


def test_sign_flip_monte_carlo_approximates_exact_and_is_seeded():
    """The Monte Carlo p is within sampling error of the exact p, and repeatable by seed."""
    d = np.random.default_rng(7).normal(0.01, 0.05, 22)
    exact = sign_flip_test(d, max_exact=22)
    mc = sign_flip_test(d, max_exact=10, n_resamples=20000, seed=3)
    assert mc == pytest.approx(exact, abs=0.01)
    assert mc == sign_flip_test(d, max_exact=10, n_resamples=20000, seed=3)


def test_min_pairs_for_known_values():
    """2*m/2^n <= alpha: 6 pairs for 1 metric, 8 for 4, 10 for 4 at alpha 0.01."""
    assert min_pairs_for(0.05, 1) == 6
    assert min_pairs_for(0.05, 4) == 8
    assert min_pairs_for(0.01, 4) == 10


def test_min_pairs_for_is_the_threshold_of_holm():
    """With min_pairs_for(n) unanimous pairs Holm can pass alpha; with one pair fewer it cannot."""
    n = min_pairs_for(0.05, 4)
    assert holm([sign_flip_test([1.0] * n)] * 4).min() <= 0.05
    assert holm([sign_flip_test([1.0] * (n - 1))] + [1.0] * 3).min() > 0.05
    assert DEFAULT_PAIRS >= min_pairs_for(0.05, len(METRICS))
    with pytest.raises(ValueError):
        min_pairs_for(0.0, 4)


def test_bca_brackets_the_mean_of_a_symmetric_sample_and_matches_scipy():
    """A symmetric sample's BCa CI contains its mean, is near-symmetric, and equals scipy's."""
    d = 0.05 + 0.01 * np.array([-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3])
    low, high = bca_interval(d, n_resamples=4999, seed=1)
    assert low < 0.05 < high
    assert (0.05 - low) == pytest.approx(high - 0.05, rel=0.15)
    ref = st.bootstrap((d,), np.mean, method="BCa", n_resamples=4999,
                       rng=np.random.default_rng(1)).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))


def test_bca_degenerate_data_returns_the_point():
    """All-equal d has no spread: the interval is the point, not NaN (and no warning)."""
    assert bca_interval([0.1, 0.1, 0.1]) == (0.1, 0.1)
    with pytest.raises(ValueError):
        bca_interval([0.1])


def test_holm_known_vector():
    """[.01,.04,.03,.005] -> [.03,.06,.06,.02]: scaled by 4,3,2,1 in sorted order, monotone."""
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_validates():
    """Adjusted p-values never exceed 1; p outside [0, 1] raises."""
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert holm([0.02]).tolist() == [0.02]
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


def test_tukey_known_sample():
    """[1..8, 100]: Q1 3, Q3 7, fences -3 and 13, only 100 flagged; k=3 widens to -9, 19."""
    x = [1, 2, 3, 4, 5, 6, 7, 8, 100]
    mask, low, high = tukey_outliers(x)
    assert (low, high) == (-3.0, 13.0)
    assert mask.tolist() == [False] * 8 + [True]
    assert tukey_outliers(x, k=3)[1:] == (-9.0, 19.0)


def test_pct_known_values():
    """ln 1.1 -> +10 %, 0 -> 0 %, ln 0.5 -> -50 %."""
    np.testing.assert_allclose(pct(np.array([LN11, 0.0, math.log(0.5)])), [10.0, 0.0, -50.0])


@pytest.mark.parametrize("p, low, high, higher, expected", [
    (0.01, 0.05, 0.10, True, "improved"),
    (0.01, -0.10, -0.05, True, "regressed"),
    (0.01, -0.10, -0.05, False, "improved"),
    (0.01, 0.05, 0.10, False, "regressed"),
    (0.01, 0.01, 0.10, True, "within noise"),
    (0.01, -0.10, -0.02, False, "within noise"),
    (0.20, 0.05, 0.10, True, "no change detected"),
    (0.05, 0.05, 0.10, True, "improved"),
    (0.051, 0.05, 0.10, True, "no change detected"),
    (0.01, 0.03, 0.10, True, "within noise"),
])
def test_decide_truth_table(p, low, high, higher, expected):
    """Significance and the CI's position against ±delta (0.03) pick the verdict."""
    assert decide(p, low, high, 0.03, higher_is_better=higher) == expected


def test_analyse_unanimous_pairs():
    """8 pairs of +10 % throughput and -10 % p50: p 2/256, point CI, both improved."""
    a = [1000.0 + 10 * i for i in range(8)]
    df = table(a, [1.1 * v for v in a], p50_ms=([4.0] * 8, [4.0 / 1.1] * 8))
    tp, p50 = analyse(df, metrics={"throughput_rps": True, "p50_ms": False})
    assert (tp.n_pairs, tp.p_value, tp.p_adjusted) == (8, 2 / 256, 4 / 256)
    assert tp.mean_d == pytest.approx(LN11) and tp.ci_low == pytest.approx(tp.ci_high)
    assert tp.change_pct == pytest.approx(10.0) and tp.verdict == "improved"
    assert p50.mean_d == pytest.approx(-LN11) and p50.verdict == "improved"
    assert not p50.higher_is_better and tp.delta == stats.DEFAULT_DELTAS["throughput_rps"]


def test_analyse_uses_only_pairs_with_both_arms_valid():
    """A pair with one invalid trial is left out of n_pairs."""
    df = table([100.0] * 8, [110.0] * 8)
    df.loc[3, "valid"] = False
    (v,) = analyse(df, metrics={"throughput_rps": True})
    assert v.n_pairs == 7


def test_analyse_skips_missing_or_empty_metrics():
    """Absent columns and all-NaN memory are skipped; the rest is analysed."""
    df = table([100.0] * 8, [110.0] * 8, mem_per_client_kb=([np.nan] * 8, [np.nan] * 8))
    assert [v.metric for v in analyse(df)] == ["throughput_rps"]


def test_analyse_delta_override_and_outliers_reported():
    """A delta above the effect gives 'within noise'; a wild pair is flagged but kept."""
    b = [110.0] * 9 + [300.0]
    rng = np.random.default_rng(0)
    a = list(100.0 * np.exp(rng.normal(0, 0.01, 10)))
    (v,) = analyse(table(a, b), metrics={"throughput_rps": True}, deltas={"throughput_rps": 2.0})
    assert v.verdict == "within noise" and v.delta == 2.0
    assert v.outlier_pairs == (9,) and v.n_pairs == 10


def test_analyse_rejects_mixed_loads_and_bad_tables():
    """Several loads, duplicate arms, or nothing analysable raise ValueError."""
    df = table([100.0] * 8, [110.0] * 8)
    mixed = df.assign(load=["closed:32"] * 8 + ["open:2000"] * 8)
    with pytest.raises(ValueError, match="loads"):
        analyse(mixed)
    dup = df.assign(arm="A")
    with pytest.raises(ValueError, match="more than one"):
        analyse(dup)
    with pytest.raises(ValueError, match="no metric"):
        analyse(df.assign(valid=False))


def test_calibrate_deltas_noise_rule_known_answer():
    """A/A d = [.01, .02, .03, .04]: |mean| over 16 sign flips is .0 .. .025; 95 % quantile .025."""
    b = list(100 * np.exp([0.01, 0.02, 0.03, 0.04]))
    tp = calibrate_deltas(table([100.0] * 4, b), n_resamples=999)["throughput_rps"]
    flips = np.abs(signed_sums(np.array([0.01, 0.02, 0.03, 0.04]))) / 4
    assert tp["rule"] == "noise" and tp["n_pairs"] == 4
    assert tp["delta"] == tp["noise_bound"] == pytest.approx(np.quantile(flips, 0.95))
    assert tp["delta"] == pytest.approx(0.025)
    assert tp["mean_d"] == pytest.approx(0.025)


def test_calibrate_deltas_ci_rule_and_json():
    """rule="ci": delta = max(|low|, |high|) of the A/A BCa CI; the result survives JSON."""
    rng = np.random.default_rng(4)
    a, b = 100 * np.exp(rng.normal(0, 0.04, 12)), 100 * np.exp(rng.normal(0, 0.04, 12))
    out = calibrate_deltas(table(list(a), list(b)), rule="ci", n_resamples=999, seed=2)
    assert list(out) == ["throughput_rps"]
    low, high = bca_interval(np.log(b / a), n_resamples=999, seed=2)
    tp = out["throughput_rps"]
    assert tp["delta"] == max(abs(low), abs(high)) and tp["ci"] == [low, high]
    assert tp["sd_d"] == pytest.approx(np.std(np.log(b / a), ddof=1))
    assert 0 < tp["noise_bound"] < tp["delta"]
    (v,) = analyse(table(list(a), list(b)), deltas=out, n_resamples=999)
    assert v.delta == tp["delta"]
    assert json.loads(json.dumps(out)) == out
    with pytest.raises(ValueError):
        calibrate_deltas(table(list(a), list(b)), rule="max")


def test_calibrate_deltas_monte_carlo_matches_exact():
    """Past max_exact the noise bound from random sign flips is close to the exact one."""
    rng = np.random.default_rng(5)
    df = table(list(100 * np.exp(rng.normal(0, 0.04, 16))), [100.0] * 16)
    exact = calibrate_deltas(df, n_resamples=999)["throughput_rps"]["delta"]
    mc = calibrate_deltas(df, max_exact=8, n_resamples=20000)["throughput_rps"]["delta"]
    assert mc == pytest.approx(exact, rel=0.05)


def test_verdict_table_one_row_per_metric():
    """verdict_table indexes by metric and keeps every MetricVerdict field."""
    df = table([100.0] * 8, [110.0] * 8, p50_ms=([4.0] * 8, [4.0] * 8))
    tab = verdict_table(analyse(df))
    assert tab.index.tolist() == ["throughput_rps", "p50_ms"]
    assert tab.loc["throughput_rps", "verdict"] == "improved"
    assert tab.loc["p50_ms", "verdict"] == "no change detected"
    assert len(tab.columns) == len(stats.MetricVerdict.__dataclass_fields__)  # - metric + reading
    assert tab.loc["p50_ms", "reading"].startswith("no change detected (a change beyond -")


def test_percentile_curve_known_values():
    """Latencies 1..100: median 50 and p99 99 (inverted CDF: observed values); q >= 1 raises."""
    q, lat = percentile_curve(np.arange(1, 101), [0.5, 0.99, 0.995])
    assert lat.tolist() == [50.0, 99.0, 100.0]
    q, lat = percentile_curve(np.arange(1, 101))
    assert q[0] == 0 and q[-1] == pytest.approx(0.9999) and np.all(np.diff(lat) >= 0)
    with pytest.raises(ValueError):
        percentile_curve([1.0, 2.0], [99.0])


def _brute_force_p(d: np.ndarray, alternative: str) -> float:
    """Every one of the 2^n sign vectors, summed in chunks: the reference for the exact test."""
    n, hits, tol = d.size, 0, 1e-10 * float(np.abs(d).sum())
    observed = float(d.sum())
    bits = np.arange(n, dtype=np.int64)
    for start in range(0, 2**n, 2**16):
        codes = np.arange(start, min(start + 2**16, 2**n), dtype=np.int64)
        signs = 1.0 - 2.0 * ((codes[:, None] >> bits) & 1)
        sums = signs @ d
        if alternative == "greater":
            hits += int(np.count_nonzero(sums >= observed - tol))
        elif alternative == "less":
            hits += int(np.count_nonzero(sums <= observed + tol))
        else:
            hits += int(np.count_nonzero(np.abs(sums) >= abs(observed) - tol))
    return hits / 2**n


@pytest.mark.parametrize("alternative", ["two-sided"])  # one-sided: the same count, at n <= 9
def test_sign_flip_is_exact_at_the_default_pairs(alternative):
    """At 24 pairs (compare's default) the test counts every sign vector: it equals a brute
    force over all 2^24 of them (it drew 9,999 at random before)."""
    d = np.random.default_rng(24).normal(0.01, 0.05, stats.DEFAULT_PAIRS)
    from optkit.lab._signflip import MAX_EXACT

    assert stats.DEFAULT_PAIRS <= MAX_EXACT
    assert sign_flip_test(d, alternative=alternative) == pytest.approx(
        _brute_force_p(d, alternative), abs=1e-12)


@pytest.mark.heavy  # scipy enumerates 2^24 permutations: ~80 s here (make heavy)
def test_sign_flip_agrees_with_scipy_at_the_default_pairs():
    """The known answer at 24 pairs from scipy.stats.permutation_test itself."""
    d = np.random.default_rng(24).normal(0.01, 0.05, stats.DEFAULT_PAIRS)
    ref = st.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), vectorized=True,
                              permutation_type="samples", n_resamples=np.inf,
                              batch=2**16).pvalue
    assert sign_flip_test(d) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("n", [3, 8, 13, 16])
def test_noise_quantile_is_the_quantile_of_every_sign_flip(n):
    """The calibration's band equals the quantile read off all 2^n signed means (up to the
    rounding tolerance the count allows ties: 1e-10 of the sum)."""
    from optkit.lab._signflip import noise_quantile, signed_sums

    d = np.random.default_rng(n).normal(0.0, 0.05, n)
    means = np.abs(signed_sums(d)) / n
    lower = np.quantile(means, 0.95, method="lower")
    higher = np.quantile(means, 0.95, method="higher")
    assert lower * (1 - 1e-9) <= noise_quantile(d) <= higher * (1 + 1e-9)


def test_memory_is_judged_per_client_in_a_closed_loop_and_as_held_in_an_open_one():
    """One memory verdict per load: per client (closed loop) or held (open loop), never both."""
    from optkit.lab._simulate import simulate_trials
    from optkit.lab.stats import METRICS, RETIRED_METRICS, metrics_for_load

    for load, metric in (("closed:32", "mem_per_client_kb"), ("open:2500", "mem_held_mb")):
        trials = simulate_trials(12, load=load, mem_effect=-0.3, seed=1)
        verdicts = analyse(trials, metrics=metrics_for_load(METRICS, load))
        assert [v.metric for v in verdicts] == ["throughput_rps", "p50_ms", "p99_ms", metric]
        assert verdicts[-1].verdict == "improved"
    assert not set(RETIRED_METRICS) & set(METRICS)  # ÷ requests in flight is never judged


def test_a_faster_arm_holding_the_same_memory_is_no_memory_regression():
    """Closed:32, B 3x faster with 10x fewer requests in flight, same memory held: no change."""
    rng = np.random.default_rng(4)
    held_kb = 6 * 1024 * np.exp(rng.normal(0, 0.01, (2, 12)))  # both arms hold ~6 MiB
    df = table([1000.0] * 12, [3000.0] * 12,
               mem_per_client_kb=(list(held_kb[0] / 32), list(held_kb[1] / 32)))
    mem = {v.metric: v for v in analyse(df)}["mem_per_client_kb"]
    assert mem.verdict in ("within noise", "no change detected")
