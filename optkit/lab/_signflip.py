"""The paired sign-flip permutation test, exact by meeting in the middle (see ``optkit.lab.stats``).

Under "no change" each pair's d = ln(B/A) is as likely to be +x as -x, so the 2^n sign vectors
of n pairs give the exact null distribution of sum(d). Counting them all the plain way builds a
2^n x n matrix; splitting the pairs in two halves, summing each half's 2^(n/2) sign vectors and
searching one sorted half for each sum of the other counts the same thing: a millisecond at
n = 20, well under a second at n = 40 (``MAX_EXACT``, above every pair count the lab uses by
default). ``noise_quantile`` reads the same exact distribution for an A/A calibration, and
``min_pairs_for`` says how many pairs a family of tests needs before any p can pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

__all__ = ["Alternative", "MAX_EXACT", "min_pairs_for", "noise_quantile", "sign_flip_test",
           "signed_sums"]

Alternative = Literal["two-sided", "greater", "less"]

#: Pairs up to which every sign vector is counted (2 x 2^20 half-sums at 40); beyond, a seeded
#: Monte Carlo draw. Above every default: 24 pairs (compare, calibrate, Monday) is exact.
MAX_EXACT = 40


def sign_flip_test(
    d: Sequence[float],
    *,
    alternative: Alternative = "two-sided",
    max_exact: int = MAX_EXACT,
    n_resamples: int = 20000,
    seed: int = 0,
) -> float:
    """p-value of the paired sign-flip permutation test on the mean of d.

    If A and B do not differ, every d is as likely as -d, so the 2^n sign vectors give the
    exact null distribution of sum(d). For n <= ``max_exact`` all of them are counted, meeting
    in the middle (2 x 2^(n/2) half-sums and a sorted search: a millisecond at n = 20, where
    ``scipy.stats.permutation_test`` builds a 2^n x n matrix and takes seconds); beyond,
    ``n_resamples`` random sign vectors are drawn (seeded) and p = (1 + hits)/(1 + n_resamples).
    The observed signs always count, so p >= 1/2^n one-sided and **p >= 2/2^n two-sided**: with
    n pairs no result can be more significant than that (n = 5: 0.0625 > 0.05 even with every
    pair agreeing), see ``min_pairs_for``.

    Args:
        d: per-pair log ratios.
        alternative: "two-sided", "greater" (mean d > 0) or "less".
        max_exact: enumerate exactly up to this many pairs.
        n_resamples: Monte Carlo sign vectors when n > max_exact.
        seed: seed of the Monte Carlo draw.
    Returns:
        the p-value in (0, 1].
    """
    x = np.asarray(d, dtype=float)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"d must be a non-empty 1-d array of finite values, got {x!r}")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    observed = float(x.sum())
    tol = 1e-10 * float(np.abs(x).sum())  # sums in another order differ by rounding only
    if x.size <= max_exact:
        share_ge = _halves(x)
        # The null is symmetric (flip every sign): P(S <= o) = P(S >= -o) and, for a > 0,
        # P(|S| >= a) = 2 P(S >= a).
        if alternative == "greater":
            return float(share_ge(observed))
        if alternative == "less":
            return float(share_ge(-observed))
        return 1.0 if abs(observed) <= tol else float(2.0 * share_ge(abs(observed)))

    def hits(null: np.ndarray) -> int:
        if alternative == "greater":
            return int(np.count_nonzero(null >= observed - tol))
        if alternative == "less":
            return int(np.count_nonzero(null <= observed + tol))
        return int(np.count_nonzero(np.abs(null) >= abs(observed) - tol))

    rng = np.random.default_rng(seed)
    count, done, chunk = 0, 0, max(1, 1_000_000 // x.size)
    while done < n_resamples:
        m = min(chunk, n_resamples - done)
        signs = rng.integers(0, 2, size=(m, x.size)) * 2 - 1
        count += hits(signs @ x)
        done += m
    return (1 + count) / (1 + n_resamples)


def _halves(x: np.ndarray) -> Callable[[float], float]:
    """P(S >= t) under the null for the signed sums S of ``x``, every sign vector counted.

    Meet in the middle: a signed sum is (left half's) + (right half's), so sort the 2^(n/2)
    right sums once and, for each left sum, count the right sums that reach the bar. Sums a
    rounding error below the bar count as reaching it (ties are extreme).
    """
    tol = 1e-10 * float(np.abs(x).sum())
    left, right = signed_sums(x[: x.size // 2]), np.sort(signed_sums(x[x.size // 2:]))
    total = float(left.size) * float(right.size)

    def share_ge(t: float) -> float:
        below = np.searchsorted(right, t - tol - left)
        return 1.0 - float(below.sum(dtype=np.int64)) / total

    return share_ge


def noise_quantile(d: Sequence[float], confidence: float = 0.95) -> float:
    """The ``confidence`` quantile of |mean d| over every sign flip of ``d``, counted exactly.

    What noise alone makes of n A/A pairs: flipping signs at random gives the null
    distribution of the mean, and its |mean| exceeds this value with probability at most
    1 - confidence. Found by bisection on the meet-in-the-middle count (a few hundred counts,
    each over 2^(n/2) sorted half-sums), for n <= ``MAX_EXACT``.
    """
    x = np.asarray(d, dtype=float)
    if x.ndim != 1 or x.size == 0 or x.size > MAX_EXACT or not np.all(np.isfinite(x)):
        raise ValueError(f"d must be 1-d with 1..{MAX_EXACT} finite values, got {x!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    share_ge = _halves(x)
    low, high = 0.0, float(np.abs(x).sum()) * (1 + 1e-9)  # P(|S| >= high) = 0
    for _ in range(200):  # P(|S| >= t) = 2 P(S >= t) for t > 0: bisect for 1 - confidence
        mid = (low + high) / 2
        if 2.0 * share_ge(mid) > 1 - confidence:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(high, 1e-300):
            break
    return high / x.size


def signed_sums(x: np.ndarray) -> np.ndarray:
    """All 2^len(x) values of sum(+-x_i), built by doubling (no 2^n x n sign matrix)."""
    sums = np.zeros(1)
    for v in x:
        sums = np.concatenate((sums + v, sums - v))
    return sums


def min_pairs_for(alpha: float, n_metrics: int) -> int:
    """Least number of pairs with which a two-sided sign-flip test can pass Holm at ``alpha``.

    The smallest achievable p with n pairs is 2/2^n, and Holm compares the smallest p of
    ``n_metrics`` against alpha/n_metrics, so we need 2 * n_metrics / 2^n <= alpha.
    E.g. alpha 0.05: 6 pairs for 1 metric, 8 for 4 metrics.

    Args:
        alpha: family-wise significance level.
        n_metrics: number of metrics tested together.
    Returns:
        the minimum n.
    """
    if not 0 < alpha < 1 or n_metrics < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_metrics >= 1, got {alpha}, {n_metrics}")
    n = 1
    while 2.0 * n_metrics / 2.0**n > alpha:
        n += 1
    return n
