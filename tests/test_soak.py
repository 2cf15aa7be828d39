"""The soak report's trend test: a flat noisy series is flat, a leak is not."""

from __future__ import annotations

import numpy as np
import pytest

from optkit.lab._soak import trend


def test_flat_noise_is_flat_and_a_leak_is_not() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(0, 600, 3.0)  # ten minutes, a sample every 3 s
    noise = 100e6 + rng.normal(0, 200e3, t.size)
    flat = trend(t, noise, bound_per_min=64 * 1024)
    assert flat["flat"] and flat["ci95"][0] < flat["slope_per_min"] < flat["ci95"][1]
    leak = trend(t, noise + t / 60 * 1e6, bound_per_min=64 * 1024)  # 1 MB a minute
    assert not leak["flat"] and leak["ci95"][0] > 0
    assert leak["slope_per_min"] == pytest.approx(1e6, rel=0.1)


def test_autocorrelated_noise_widens_the_interval() -> None:
    """Samples seconds apart are autocorrelated: the interval is wider than plain OLS says."""
    from scipy import stats as st

    rng = np.random.default_rng(1)
    t = np.arange(0, 600, 3.0)
    walk = np.cumsum(rng.normal(0, 1.0, t.size))
    got = trend(t, walk, bound_per_min=0.0)
    plain = st.linregress(t / 60, walk)
    assert got["slope_per_min"] == pytest.approx(plain.slope)
    half_plain = st.t.ppf(0.975, t.size - 2) * plain.stderr
    assert (got["ci95"][1] - got["ci95"][0]) / 2 > 1.5 * half_plain


def test_too_few_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        trend(np.arange(3.0), np.zeros(3), bound_per_min=1.0)


def test_a_pool_filling_up_fails_a_slope_test() -> None:
    """The staircase of a pool reaching new peaks (25 -> 28 descriptors in single steps, as a
    10-minute soak once showed) is not flat by slope: why connections are judged apart."""
    t = np.arange(120, 600, 3.0)
    stairs = 25 + (t > 150) + (t > 390) + (t > 400)
    assert not trend(t, stairs.astype(float), bound_per_min=0.1)["flat"]


def test_a_short_run_resolves_only_slopes_above_its_rss_band() -> None:
    """RSS wanders within a band; spread over a short window that band is a steep slope, so
    a 4-minute soak (3.2 measured) is judged at 320 KiB/min, a 30-minute one at 64 KiB/min."""
    from optkit.lab._soak import SoakSettings
    from optkit.lab._soak_report import resolvable_rss_slope

    s = SoakSettings()
    assert resolvable_rss_slope(s, 3.2) == pytest.approx(1024 * 1024 / 3.2)
    assert resolvable_rss_slope(s, 24.0) == 64 * 1024
    assert resolvable_rss_slope(s, 0.0) == float("inf")
