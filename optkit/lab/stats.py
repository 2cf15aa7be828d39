"""Statistics for validating a gain: paired trials A (before) vs B (after).

The picture: each pair is two trials run back to back (order randomized), so slow drift of the
machine hits both arms alike. A pair collapses to one number, ``d = ln(B/A)``; a session of n
pairs is n such numbers. Under "no change" each d is as likely to be +x as -x, so flipping the
signs of the d's at random draws from the null distribution (sign-flip test -> p-value). A BCa
bootstrap over the pairs gives the effect's confidence interval; Holm's procedure controls the
family-wise error over several metrics; and a change only counts when its whole CI clears a
noise threshold delta measured by an A/A calibration (``decide``)::

                         -delta    0    +delta
                   --------|-------|-------|-------->  d = ln(B/A)
    CI  [===]                                          significant, beyond -delta: regressed*
             [======]                                  significant, overlaps band: within noise
                          [=====]                      not significant: no change detected
                                     [=====]           significant, overlaps band: within noise
                                              [===]    significant, beyond +delta: improved*
    * for a higher-is-better metric (throughput); mirrored when lower is better (latency).

Every function works on plain arrays (or the tidy trial table for ``analyse``) and computes
nothing it does not return. d and delta live on the log scale; ``pct`` turns them into %.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as _st

from .._quantiles import quantiles as _quantiles
from ._signflip import MAX_EXACT, min_pairs_for, noise_quantile, sign_flip_test

__all__ = [
    "DEFAULT_DELTAS",
    "DEFAULT_PAIRS",
    "DEFAULT_QUANTILES",
    "METRICS",
    "EXTRA_METRICS",
    "RETIRED_METRICS",
    "metrics_for_load",
    "MetricVerdict",
    "TukeyFences",
    "Verdict",
    "analyse",
    "bca_interval",
    "calibrate_deltas",
    "decide",
    "detectable_effect",
    "detectable_range",
    "holm",
    "log_ratios",
    "min_pairs_for",
    "pairs_for_power",
    "pct",
    "scaled_delta",
    "percentile_curve",
    "sign_flip_test",
    "tukey_outliers",
    "verdict_table",
]

Verdict = Literal["improved", "regressed", "within noise", "no change detected"]

#: Metric name -> higher_is_better. The columns of the tidy trial table that ``analyse`` reads.
#: Memory has one column per kind of loop, each empty in the other, so a load gets four verdicts:
#: ``mem_per_client_kb`` (closed loop: held ÷ clients) and ``mem_held_mb`` (open loop: peak −
#: idle); see docs/measurement.md, "Memory per client".
METRICS: Mapping[str, bool] = {
    "throughput_rps": True,
    "p50_ms": False,
    "p99_ms": False,
    "mem_per_client_kb": False,
    "mem_held_mb": False,
}

#: Metrics that earlier runs recorded and that are no longer judged, with the reason. Their
#: verdicts in old ``results.json`` files are read but left out of the roll-up.
RETIRED_METRICS: Mapping[str, str] = {
    "mem_per_request_kb": "memory held ÷ requests in flight: a faster arm has fewer in flight, "
                          "so it read as a memory regression (replaced by mem_per_client_kb, "
                          "and mem_held_mb in open loop, 2026-12-06)",
}


def metrics_for_load(metrics: Mapping[str, bool], load: str) -> dict[str, bool]:
    """The metrics that are defined at ``load`` ('closed:32', 'open:2500'): memory per client
    only in a closed loop, memory held only in an open loop; the rest everywhere."""
    skip = "mem_per_client_kb" if load.startswith("open:") else "mem_held_mb"
    return {name: higher for name, higher in metrics.items() if name != skip}

#: Further columns a session may ask to analyse (``CompareSettings.metrics``), all lower-is-better:
#: time to first byte, the worst latency, each tier's peak resident memory in the window, and
#: that peak above the tier's idle RSS (what the load made it hold, without the process itself).
EXTRA_METRICS: Mapping[str, bool] = {
    "ttfb_p99_ms": False, "max_ms": False, "gateway_peak_mb": False, "model_server_peak_mb": False,
    "gateway_grown_mb": False, "model_server_grown_mb": False,
}

#: Default noise thresholds on the log scale (0.02 ~ 2 %). Throughput averages thousands of
#: requests per trial, so trial-to-trial noise is a few % and a 2 % band is the smallest change
#: worth a name. p50/p99 are order statistics (p99 rests on ~1 % of the window's requests) and
#: memory per client is a difference of two RSS readings, so they get 5 %; memory held (an open
#: loop's peak - idle) 10 %, like the per-tier ``*_grown_mb``. These are placeholders:
#: replace them with ``calibrate_deltas`` measured on the machine at hand.
DEFAULT_DELTAS: Mapping[str, float] = {
    "throughput_rps": 0.02,
    "p50_ms": 0.05,
    "p99_ms": 0.05,
    "mem_per_client_kb": 0.05,
    "mem_held_mb": 0.10,
    "ttfb_p99_ms": 0.05,
    "max_ms": 0.10,  # one request's worst case: the noisiest order statistic of all
    "gateway_peak_mb": 0.05,
    "model_server_peak_mb": 0.05,
    "gateway_grown_mb": 0.10,  # a difference of two RSS readings: noisier than either
    "model_server_grown_mb": 0.10,
}

#: Pairs per comparison, fixed in advance. ``min_pairs_for(0.05, 4)`` = 8 is the least with which
#: Holm over 4 metrics can reach 0.05 at all - and only if every pair agrees, so one bad trial
#: sinks it. On the simulator (4 % trial noise, drift, 5 % of trials 20 % slow) the power to call
#: a +10 % throughput change *improved* (default deltas) is ~75 % at 12 pairs, ~85 % at 16,
#: ~90 % at 20 and ~96 % at 24; A/A false positives stay <= ~2 % (0.5 % at 20). 20 pairs (40
#: trials) clear 80 % with margin and are the most the exact sign-flip enumerates by default.
#: With delta calibrated on an A/A session of the same size (~3.7 % for throughput there) power
#: is lower: ~74 % at 20 pairs, ~87 % at 24 (tests/test_stats_simulation.py). Sessions are
#: calibrated, so the default is 24: the pairs that keep power for a true 10 % change >= 80 %.
DEFAULT_PAIRS = 24

#: Quantiles for HDR-style latency curves: 0 .. 0.9999, evenly spaced in log(1/(1-p)).
DEFAULT_QUANTILES: np.ndarray = 1.0 - np.logspace(0.0, -4.0, 81)
DEFAULT_QUANTILES.setflags(write=False)


def log_ratios(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Per-pair log ratio ``d = ln(b/a)``: the effect of B relative to A in one pair.

    Log ratios are symmetric (a doubling is +0.69, a halving -0.69) and add across pairs, which
    is why the mean of d, not the mean of b/a, is the effect we test.

    Args:
        a: arm A's values, one per pair.
        b: arm B's values, same order and length.
    Returns:
        float array of d, one per pair.
    Raises:
        ValueError: lengths differ, or a value is not finite and > 0.
    """
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_.shape != b_.shape or a_.ndim != 1:
        raise ValueError(f"a and b must be 1-d of equal length, got {a_.shape} and {b_.shape}")
    for name, x in (("a", a_), ("b", b_)):
        if not np.all(np.isfinite(x)) or np.any(x <= 0):
            raise ValueError(f"{name} must hold finite positive values, got {x.tolist()}")
    return np.log(b_ / a_)


def bca_interval(
    d: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0
) -> tuple[float, float]:
    """BCa bootstrap confidence interval of the mean of d.

    Resample the pairs with replacement, take the mean each time, and read the interval off
    that distribution, corrected for its bias and skew (Efron's BCa, via
    ``scipy.stats.bootstrap``). Degenerate data (all d equal) has no spread to resample: the
    point is returned as both ends instead of NaN; should BCa still come out undefined, the plain
    percentile bootstrap interval is returned.

    Args:
        d: per-pair log ratios (at least 2).
        confidence: two-sided confidence level.
        n_resamples: bootstrap resamples.
        seed: seed of the resampling.
    Returns:
        (low, high).
    """
    x = np.asarray(d, dtype=float)
    if x.ndim != 1 or x.size < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"d must be 1-d with >= 2 finite values, got {x!r}")
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])

    def interval(method: str) -> tuple[float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _st.DegenerateDataWarning)
            ci = _st.bootstrap(
                (x,), np.mean, method=method, confidence_level=confidence,
                n_resamples=n_resamples, rng=np.random.default_rng(seed),
            ).confidence_interval
        return float(ci.low), float(ci.high)

    low, high = interval("BCa")
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined (bias or skew infinite)
        low, high = interval("percentile")
    return low, high


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values.

    Sort the m p-values; the i-th smallest (from 0) is multiplied by (m - i), a running maximum
    keeps the result monotone, and it is capped at 1. Reject where adjusted p <= alpha: the
    family-wise error stays <= alpha whatever the dependence between the metrics.

    Args:
        pvalues: raw p-values.
    Returns:
        adjusted p-values in the input order.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError(f"p-values must be 1-d in [0, 1], got {p!r}")
    order = np.argsort(p, kind="stable")
    scaled = (p.size - np.arange(p.size)) * p[order]
    out = np.empty_like(p)
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


class TukeyFences(NamedTuple):
    """Which values lie outside Tukey's fences, and the fences."""

    mask: np.ndarray
    low: float
    high: float


def tukey_outliers(x: Sequence[float], k: float = 1.5) -> TukeyFences:
    """Flag values outside Tukey's fences [Q1 - k*IQR, Q3 + k*IQR] (quartiles: numpy linear).

    Outliers are reported, never dropped: the analysis keeps every valid pair.

    Args:
        x: values.
        k: fence width in IQRs (1.5 = "outlier", 3 = "far out").
    Returns:
        TukeyFences(mask, low, high), mask True where x is outside.
    """
    v = np.asarray(x, dtype=float)
    q1, q3 = np.percentile(v, [25, 75])
    low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    return TukeyFences((v < low) | (v > high), float(low), float(high))


def pct(d: float | np.ndarray) -> float | np.ndarray:
    """A log effect as a % change: 100 * (e^d - 1); d = ln(1.1) -> 10.0."""
    return 100.0 * np.expm1(d)


def decide(
    p_adjusted: float,
    ci_low: float,
    ci_high: float,
    delta: float,
    *,
    higher_is_better: bool,
    alpha: float = 0.05,
) -> Verdict:
    """The verdict of one metric: improved, regressed, within noise or no change detected.

    improved = Holm-significant (p_adjusted <= alpha) and the whole CI of d beyond delta in the
    good direction (> +delta if higher is better, < -delta if lower is); regressed = the mirror;
    within noise = significant but the CI overlaps [-delta, +delta]; else no change detected.
    CI and delta are both on the log scale.
    """
    if delta < 0 or ci_low > ci_high:
        raise ValueError(f"need delta >= 0 and ci_low <= ci_high, got {delta}, {ci_low}, {ci_high}")
    if not p_adjusted <= alpha:
        return "no change detected"
    up, down = ci_low > delta, ci_high < -delta
    if up or down:
        return "improved" if up == higher_is_better else "regressed"
    return "within noise"


def detectable_range(mde_pct: float) -> str:
    """A detectable effect as the two changes it stands for: ``-8.6 % / +9.4 %`` (one log
    distance either way: a 9.4 % rise and an 8.6 % fall are the same |ln(B/A)|)."""
    if not math.isfinite(mde_pct):
        return "no change (too few pairs)"
    down = float(pct(-math.log1p(mde_pct / 100)))
    return f"{down:+.1f} % / {mde_pct:+.1f} %"


def scaled_delta(delta: float, n_cal: int | None, n: int) -> float:
    """The noise band for a session of ``n`` pairs, from one measured at ``n_cal`` pairs.

    The noise of a mean over n pairs shrinks like 1/sqrt(n), so fewer pairs get a wider band,
    delta * sqrt(n_cal / n); more pairs keep the measured one (never narrower than measured).
    """
    if n_cal and n < n_cal:
        return delta * math.sqrt(n_cal / n)
    return delta


def detectable_effect(sd_d: float, n: int, *, delta: float, family_size: int = 1,
                      alpha: float = 0.05, confidence: float = 0.95,
                      power: float = 0.80) -> float:
    """The smallest true effect (|mean d|, log scale) a session finds with ``power``.

    To be called improved (or regressed) the session's mean d must pass two bars: Holm
    significance, at worst p <= alpha / family_size (the sign-flip test, read here as its t
    approximation: |mean| > t(1 - alpha/2m) se), and a CI clear of the noise band (mean -
    t(confidence) se > delta). With se = sd_d / sqrt(n), a true effect e clears the higher bar
    c in a fraction ``power`` of sessions when e = c + z(power) se. No effect is detectable
    when the sign-flip test cannot reach alpha / family_size at all with n pairs (2/2^n too
    large): then ``inf``.

    Args:
        sd_d: standard deviation of the per-pair log ratio (from the session, or an A/A
            calibration of the same cell).
        n: pairs.
        delta: the noise band at this n (log scale), see ``scaled_delta``.
        family_size: tests under one Holm correction.
    Returns:
        the effect on the log scale (``pct`` turns it into %).
    """
    if n < 2 or sd_d < 0 or delta < 0 or family_size < 1:
        raise ValueError(f"need n >= 2, sd_d >= 0, delta >= 0, family_size >= 1; got "
                         f"{n}, {sd_d}, {delta}, {family_size}")
    if 2.0 / 2.0**n > alpha / family_size:
        return math.inf
    se = sd_d / math.sqrt(n)
    significant = float(_st.t.ppf(1 - alpha / (2 * family_size), n - 1)) * se
    clear = delta + float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return max(significant, clear) + float(_st.norm.ppf(power)) * se


def pairs_for_power(sd_d: float, effect: float, *, delta: float, n_cal: int | None = None,
                    family_size: int = 1, alpha: float = 0.05, power: float = 0.80,
                    max_pairs: int = 64) -> int | None:
    """The fewest pairs with which a true effect of ``effect`` (log scale, e.g. ln 1.1) is
    found with ``power``, the band ``delta`` measured at ``n_cal`` pairs scaled to each n;
    None if ``max_pairs`` do not reach it."""
    for n in range(max(2, min_pairs_for(alpha, family_size)), max_pairs + 1):
        band = scaled_delta(delta, n_cal, n)
        if detectable_effect(sd_d, n, delta=band, family_size=family_size, alpha=alpha,
                             power=power) <= abs(effect):
            return n
    return None


@dataclass(frozen=True)
class MetricVerdict:
    """Everything the analysis found about one metric; d and delta on the log scale.

    ``mde_pct``: the smallest change this session would have found with 80 % power (from its
    own sd of d, n, band and Holm family): what a "no change detected" rules out.
    ``delta_source``: where the band came from (measured, scaled from fewer pairs, default).
    """

    metric: str
    n_pairs: int
    mean_d: float
    ci_low: float
    ci_high: float
    change_pct: float
    ci_low_pct: float
    ci_high_pct: float
    p_value: float
    p_adjusted: float
    delta: float
    verdict: Verdict
    higher_is_better: bool
    outlier_pairs: tuple[int, ...]
    sd_d: float = math.nan
    mde_pct: float = math.nan
    delta_source: str = ""

    def reading(self) -> str:
        """The verdict in words, with what a null rules out: ``no change detected (a change
        beyond ±4.1 % would have been seen)``."""
        if self.verdict == "no change detected":
            if math.isfinite(self.mde_pct):
                return (f"no change detected (a change beyond {detectable_range(self.mde_pct)} "
                        f"would have been seen)")
            return f"no change detected ({self.n_pairs} pairs cannot reach significance here)"
        return self.verdict


def _paired(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per pair with both arms valid: columns (metric, 'A'|'B') indexed by pair."""
    need = {"pair", "arm", "valid"}
    if missing := need - set(trials.columns):
        raise ValueError(f"trial table lacks columns {sorted(missing)}")
    if "load" in trials.columns and trials["load"].nunique() > 1:
        raise ValueError(
            f"trials mix loads {sorted(trials['load'].unique())}: filter to one load first"
        )
    if trials.duplicated(["pair", "arm"]).any():
        raise ValueError("a pair has more than one trial for the same arm")
    valid = trials.groupby("pair")["valid"].agg(lambda v: bool(v.all()) and len(v) == 2)
    kept = trials[trials["pair"].isin(valid.index[valid])]
    if set(kept["arm"]) - {"A", "B"}:
        raise ValueError(f"arm must be 'A' or 'B', got {sorted(set(kept['arm']))}")
    return kept.pivot(index="pair", columns="arm")


def _metric_d(wide: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(pair ids, d) of the pairs where both arms have the metric; None if < 2 such pairs."""
    if metric not in wide.columns.get_level_values(0):
        return None
    ab = wide[metric][["A", "B"]].astype(float).dropna()
    ab = ab[(ab > 0).all(axis=1)]  # a ratio needs two positive readings (memory may be None/0)
    if len(ab) < 2:
        return None
    return ab.index.to_numpy(dtype=int), log_ratios(ab["A"].to_numpy(), ab["B"].to_numpy())


def analyse(
    trials: pd.DataFrame,
    *,
    metrics: Mapping[str, bool] | None = None,
    deltas: Mapping[str, float | Mapping[str, float]] | None = None,
    confidence: float = 0.95,
    alpha: float = 0.05,
    n_resamples: int = 9999,
    seed: int = 0,
    family_size: int | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[MetricVerdict]:
    """Verdicts for each metric of one A/B session (one load) in the tidy trial table.

    Only pairs whose two trials are both valid are used; a metric is skipped when its column is
    missing or has fewer than 2 pairs with both values. Per metric: d = ln(B/A), sign-flip
    p-value, BCa CI of mean d, Tukey outliers of d (reported by pair id, kept); then Holm over
    the metrics analysed and ``decide`` against delta.

    Args:
        trials: tidy trial table (pair, arm, valid, metric columns, optionally load).
        metrics: metric -> higher_is_better; default ``METRICS``.
        deltas: per-metric delta overriding ``DEFAULT_DELTAS``: a float, or a record with a
            "delta" key, so ``calibrate_deltas``'s output can be passed as it is.
        confidence: CI level; alpha: family-wise significance level.
        n_resamples: bootstrap resamples (and Monte Carlo sign vectors past MAX_EXACT pairs).
        seed: seed of the resampling.
        family_size: tests in the Holm family the verdicts will face, for each metric's
            detectable effect (default: the metrics analysed here; a session over several
            loads passes its whole family).
        sources: metric -> where its delta came from, recorded in each verdict.
    Returns:
        one MetricVerdict per analysed metric, in the order of ``metrics``.
    Raises:
        ValueError: several loads, malformed table, or no metric could be analysed.
    """
    metrics = METRICS if metrics is None else metrics
    delta_of = {**DEFAULT_DELTAS, **{
        k: v["delta"] if isinstance(v, Mapping) else v for k, v in (deltas or {}).items()}}
    wide = _paired(trials)
    rows = []
    for name, higher in metrics.items():
        got = _metric_d(wide, name)
        if got is None:
            continue
        if name not in delta_of:
            raise ValueError(f"no delta for metric {name!r}: pass deltas={{{name!r}: ...}}")
        pairs, d = got
        p = sign_flip_test(d, n_resamples=n_resamples, seed=seed)
        lo, hi = bca_interval(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
        flagged = tuple(int(i) for i in pairs[tukey_outliers(d).mask])
        rows.append((name, higher, d, p, lo, hi, flagged))
    if not rows:
        raise ValueError("no metric has 2 or more valid pairs to analyse")
    adjusted = holm([r[3] for r in rows])
    family = family_size or len(rows)
    out = []
    for (name, higher, d, p, lo, hi, flagged), p_adj in zip(rows, adjusted):
        mean, delta = float(d.mean()), float(delta_of[name])
        sd = float(d.std(ddof=1))
        mde = detectable_effect(sd, int(d.size), delta=delta, family_size=family, alpha=alpha,
                                confidence=confidence)
        out.append(MetricVerdict(
            metric=name, n_pairs=int(d.size), mean_d=mean, ci_low=lo, ci_high=hi,
            change_pct=float(pct(mean)), ci_low_pct=float(pct(lo)), ci_high_pct=float(pct(hi)),
            p_value=float(p), p_adjusted=float(p_adj), delta=delta,
            verdict=decide(float(p_adj), lo, hi, delta, higher_is_better=higher, alpha=alpha),
            higher_is_better=higher, outlier_pairs=flagged, sd_d=sd,
            mde_pct=float(pct(mde)) if math.isfinite(mde) else math.inf,
            delta_source=sources.get(name, "default") if sources else "",
        ))
    return out


def calibrate_deltas(
    aa_trials: pd.DataFrame,
    *,
    metrics: Iterable[str] | None = None,
    rule: Literal["noise", "ci"] = "noise",
    confidence: float = 0.95,
    max_exact: int = MAX_EXACT,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, dict]:
    """Noise thresholds from an A/A session: how big an effect noise alone produces here.

    Both arms ran the same configuration, so the A/A d's are pure noise. Flipping their signs
    at random (as in ``sign_flip_test``) gives the means that noise alone produces with n pairs.

    - rule "noise" (default): delta = the ``confidence`` quantile of |mean d| over those sign
      flips - an effect noise alone exceeds only 5 % of the time at this n. It is the critical
      value of the sign-flip test, measured on this machine.
    - rule "ci": delta = max(|CI low|, |CI high|) of the A/A BCa CI of mean d - the largest A/A
      effect the data allow, so it also covers a systematic bias between the arms' harness. It
      is stricter (about |mean d| + the noise bound): on the simulator at 20 pairs it makes delta
      ~5.4 % instead of ~3.6 % and a +10 % change is called improved half as often.

    Both scale like sd_d / sqrt(n): calibrate with the n you will compare with. Both numbers are
    returned whichever rule is chosen, so the evidence can be stored as JSON.

    Args:
        aa_trials: tidy trial table where both arms ran the same configuration (one load).
        metrics: metric names; default the keys of ``METRICS``. Unusable metrics are skipped.
        rule: "noise" or "ci", see above.
        confidence: quantile of the noise bound and level of the CI.
        max_exact, n_resamples, seed: exact enumeration limit, resamples (bootstrap, and sign
            flips past max_exact), seed.
    Returns:
        metric -> {"delta", "rule", "noise_bound", "ci": [low, high], "mean_d", "sd_d",
        "n_pairs", "confidence"}, plain floats/ints/str.
    """
    if rule not in ("noise", "ci"):
        raise ValueError(f"rule must be 'noise' or 'ci', got {rule!r}")
    wide = _paired(aa_trials)
    out: dict[str, dict] = {}
    for name in METRICS if metrics is None else metrics:
        got = _metric_d(wide, name)
        if got is None:
            continue
        d = got[1]
        if d.size <= max_exact:
            noise = noise_quantile(d, confidence)
        else:
            signs = np.random.default_rng(seed).integers(0, 2, size=(n_resamples, d.size)) * 2 - 1
            noise = float(np.quantile(np.abs(signs @ d) / d.size, confidence))
        lo, hi = bca_interval(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
        out[name] = {
            "delta": noise if rule == "noise" else max(abs(lo), abs(hi)), "rule": rule,
            "noise_bound": noise, "ci": [lo, hi], "mean_d": float(d.mean()),
            "sd_d": float(d.std(ddof=1)), "n_pairs": int(d.size), "confidence": confidence,
        }
    return out


def verdict_table(verdicts: Iterable[MetricVerdict]) -> pd.DataFrame:
    """The verdicts as a DataFrame indexed by metric, for display (one row per metric)."""
    rows = [{**asdict(v), "reading": v.reading()} for v in verdicts]
    columns = [*MetricVerdict.__dataclass_fields__, "reading"]
    return pd.DataFrame(rows, columns=columns).set_index("metric")


def percentile_curve(
    latencies: Sequence[float], quantiles: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An HDR-style percentile curve: latency at each quantile, by the inverted CDF.

    Quantiles are fractions (0.99 = p99). Each point is an observed latency, computed exactly as
    a run's summary computes ``p50_ms``/``p99_ms`` (``optkit._quantiles``), so the curve's p99
    is the summary's p99 on the same records. Beyond 1 - 1/len(latencies) a quantile is just
    the largest sample: read the far tail only with enough requests.

    Args:
        latencies: raw per-request latencies (ms).
        quantiles: fractions in [0, 1); default ``DEFAULT_QUANTILES`` (0 .. 0.9999).
    Returns:
        (quantiles, latencies at those quantiles), ready for ``plotting.latency_percentiles``.
    """
    lat = np.asarray(latencies, dtype=float)
    q = np.asarray(DEFAULT_QUANTILES if quantiles is None else quantiles, dtype=float)
    if lat.size == 0 or not np.all(np.isfinite(lat)):
        raise ValueError("latencies must be non-empty and finite")
    if np.any((q < 0) | (q >= 1)):
        raise ValueError(f"quantiles must be fractions in [0, 1), got {q.tolist()}")
    return q, _quantiles(lat, q)
