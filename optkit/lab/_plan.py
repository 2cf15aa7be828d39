"""Pairs chosen in advance, for power: how many a session needs to find the effect it looks for.

::

    calibration cell (workload, load): A/A sd of d per metric, the band δ at n_cal pairs
        │ plan_pairs(settings, calibration, effects={"throughput_rps": 10, "p99_ms": -20})
        ▼
    per metric: the fewest n whose detectable effect (Holm over the session's whole family,
    the band scaled to n, the sd taken at its upper 90 % bound) is within the effect sought
        ▼
    n = the largest of those, and never fewer than the calibration's own pairs, nor than
    ``min_pairs`` (the week: 16), nor than Holm needs to reach alpha at all; at most the
    budget; the table says, for every metric, what that n can and cannot see

Why the bound and the floor: a small A/A calibration often holds none of the rare slow trials
a shared machine produces (a 2 % chance per trial misses all 24 trials of a 12-pair one six
times in ten), so its sd reads low and a plan built on it alone under-delivers; and the
planner's model (a t approximation of the sign-flip test and the CI) is optimistic at few
pairs. On the simulator (tests/test_stats_simulation.py), plans from a 16-pair calibration at
the sd's 80 % bound with no floor found a true 10 % change in 77 % of sessions; at the 90 %
bound and the floor, in 86-90 %. From a 12-pair calibration, sessions planned down to 12 or 14
pairs found it in 82-89 % (95 % lower bounds 73-78 %, and A/A false positives up to 4 / 150),
while a floor of 16 kept 91-93 % (lower bounds >= 82 %): the week calibrates on 12 pairs and
never runs a session below 16 (``week.MIN_SESSION_PAIRS``).

The number is fixed before the first trial: the session never stops early because a p-value
dipped. Where the budget cannot reach an effect, the plan says so before the session runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd
from scipy import stats as _st

from ._noise import noise_band
from ._settings import CompareSettings
from .stats import (detectable_effect, detectable_range, min_pairs_for, pairs_for_power, pct,
                    scaled_delta)

__all__ = ["Plan", "plan_pairs", "sd_upper", "DEFAULT_EFFECTS"]

#: The effects a session plans for, in % (the sign says which way is the change sought): a
#: 10 % throughput change, the sprint's yardstick.
DEFAULT_EFFECTS: Mapping[str, float] = {"throughput_rps": 10.0}


def sd_upper(sd: float, n: int, level: float = 0.90) -> float:
    """The upper ``level`` confidence bound of a standard deviation estimated from n values
    (chi-square): an A/A calibration of 12 pairs reads sd 29 % low one time in ten (16 pairs:
    25 %), and a plan built on that luck would miss its power."""
    if n < 2:
        return math.inf
    return sd * math.sqrt((n - 1) / float(_st.chi2.ppf(1 - level, n - 1)))


@dataclass(frozen=True)
class Plan:
    """A session's pairs, fixed before it runs, and what they can detect.

    ``settings``: the session's settings with ``pairs`` set; ``table``: per (load, metric) the
    band and its source, the calibrated sd of d, the pairs that metric's effect needs, and the
    effect detectable (80 % power) at the chosen pairs; ``reachable``: every effect sought is
    detectable within the budget; ``note``: the plan in one sentence.
    """

    settings: CompareSettings
    table: pd.DataFrame
    reachable: bool
    note: str


def plan_pairs(settings: CompareSettings, calibration: Any, *,
               effects: Mapping[str, float] | None = None, pairs: int | None = None,
               max_pairs: int = 32, min_pairs: int = 0, power: float = 0.80,
               alpha: float = 0.05) -> Plan:
    """Choose the session's pairs from its cells' calibration (or report on ``pairs`` given).

    Args:
        settings: the session (loads, workload, metrics); its ``pairs`` is replaced.
        calibration: the calibration file or mapping (``optkit calibrate``).
        effects: metric -> the change to find, in % (``{"throughput_rps": 10, "p99_ms": -20}``).
        pairs: a fixed number instead of a planned one (the table then says what it can see).
        max_pairs: the budget.
        min_pairs: the fewest pairs a planned session runs (within the budget), however few
            the calibration says would do: below 16 the planner's power is optimistic.
    """
    effects = dict(DEFAULT_EFFECTS if effects is None else effects)
    family = sum(len(settings.analysed_metrics(load)) for load in settings.loads)
    floor = min_pairs_for(alpha, family)
    rows, needed = [], []
    for load in settings.loads:
        band = noise_band(calibration, workload=settings.workload, load=load)
        for metric in settings.analysed_metrics(load):
            sd = band.sd_d.get(metric)
            n_cal = band.n_cal
            effect = effects.get(metric)
            row: dict[str, Any] = {
                "load": load, "metric": metric,
                "effect sought": f"{effect:+.0f} %" if effect is not None else "",
                "band": f"±{100 * band.deltas[metric]:.1f} % at {n_cal or '-'} pairs",
                "band source": band.sources.get(metric, "default"),
                "A/A sd of d": f"{100 * sd:.1f} %" if sd is not None else "not measured"}
            if sd is not None and n_cal:
                plan_sd = sd_upper(sd, n_cal)
                if effect is not None:
                    n = pairs_for_power(plan_sd, math.log1p(effect / 100),
                                        delta=band.deltas[metric], n_cal=n_cal,
                                        family_size=family, alpha=alpha, power=power,
                                        max_pairs=max_pairs)
                    needed.append(n)
                    row["pairs needed"] = str(n) if n is not None else f"> {max_pairs}"
            elif effect is not None:
                row["pairs needed"] = "cannot plan (no calibrated sd)"
            row.setdefault("pairs needed", "")
            row["_sd"], row["_n_cal"], row["_delta"] = sd, n_cal, band.deltas[metric]
            rows.append(row)
    reachable = bool(needed) and all(n is not None for n in needed)
    calibrated = [int(r["_n_cal"]) for r in rows if r["_n_cal"]]
    # never fewer pairs than the calibration measured, nor than the caller's floor
    floor = max([floor, min_pairs, *calibrated])
    chosen = pairs if pairs is not None else min(max_pairs, max(
        [floor, *(n if n is not None else max_pairs for n in needed)])) if needed \
        else settings.pairs
    for row in rows:
        sd, n_cal = row.pop("_sd"), row.pop("_n_cal")
        delta = row.pop("_delta")
        if sd is None or not n_cal:
            row[f"detectable at {chosen} pairs"] = "not measured"
            continue
        mde = detectable_effect(sd_upper(sd, n_cal), chosen,
                                delta=scaled_delta(delta, n_cal, chosen), family_size=family,
                                alpha=alpha, power=power)
        row[f"detectable at {chosen} pairs"] = detectable_range(
            float(pct(mde)) if math.isfinite(mde) else math.inf)
    sought = ", ".join(f"{m} {e:+.0f} %" for m, e in effects.items())
    if pairs is not None:
        note = f"{chosen} pairs, fixed by the caller"
    elif not needed:
        note = (f"{chosen} pairs, as set: the cells are not calibrated, so the pairs could "
                f"not be planned and the bands are the defaults")
    elif reachable:
        note = (f"{chosen} pairs, planned so that {sought} is found with "
                f"{100 * power:.0f} % power after Holm over {family} tests")
    else:
        note = (f"{chosen} pairs (the budget): NOT enough to find {sought} with "
                f"{100 * power:.0f} % power; see 'detectable' for what they can find")
    return Plan(dataclasses.replace(settings, pairs=chosen), pd.DataFrame(rows), reachable,
                note)
