"""Latency quantiles by one method everywhere: the inverted CDF.

The q-quantile is the smallest observed value with at least a fraction q of the values at or
below it, as HdrHistogram and wrk report it::

    sorted:  1  2  3 ... 99 100          q = 0.50 -> 50     (not 50.5)
                                         q = 0.99 -> 99     (not 99.01)

So every figure is a latency that happened, and a run's summary (``p99_ms``), the generator's
own lags and a session's percentile curve agree on the same records. Quantiles are given as
fractions (0.999, not 99.9): ``99.9 / 100`` is 0.9990000000000001 in floating point, which
the inverted CDF can round to the next observation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["METHOD", "quantiles"]

#: numpy's name for the method (``np.quantile(..., method=METHOD)``).
METHOD = "inverted_cdf"


def quantiles(values: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> np.ndarray:
    """The value at each quantile ``q`` (fractions in [0, 1]) of non-empty ``values``.

    Raises:
        ValueError: ``values`` is empty or a ``q`` is outside [0, 1].
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("quantiles of no values")
    return np.quantile(v, np.asarray(q, dtype=np.float64), method=METHOD)
