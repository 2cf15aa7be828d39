"""The gate's judgement: a session's verdicts, the gated metrics only, each against its band.

``judge`` is what both the gate (``_gate.run_gate``) and its simulator (``_gate_sim``) call,
so the error rates the simulator reports are those of the code that decides a real gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from ._noise import NoiseBand
from .stats import MetricVerdict, decide, detectable_effect, holm, pct

__all__ = ["GateCheck", "judge"]


@dataclass(frozen=True)
class GateCheck:
    """One gated metric at one load: its change with CI, its allowed band, and the verdict.

    Percentages are of head relative to base; ``band_pct`` is the allowed band (the wider
    of ``declared_pct`` and ``noise_pct``), ``band_source`` says which it was.
    """

    load: str
    metric: str
    higher_is_better: bool
    n_pairs: int
    change_pct: float
    ci_low_pct: float
    ci_high_pct: float
    p_adjusted: float
    band_pct: float
    declared_pct: float
    noise_pct: float
    band_source: str
    mde_pct: float
    verdict: str
    sd_d: float = math.nan
    base_mean: float | None = None
    head_mean: float | None = None

    @property
    def passed(self) -> bool:
        return self.verdict != "regressed"


def judge(verdicts: Mapping[str, Sequence[MetricVerdict]], gate: Mapping[str, float], *,
          bands: Mapping[str, NoiseBand] | None = None,
          means: Mapping[tuple[str, str], Mapping[str, float]] | None = None,
          alpha: float = 0.05) -> list[GateCheck]:
    """The gate's checks from a session's verdicts (per load), one per gated (load, metric).

    Holm runs over the gated family only (the metrics a gate reports but does not gate
    are not its tests); a metric counts as *regressed* when Holm-significant and its whole
    CI beyond its allowed band in the bad direction (``stats.decide``).
    """
    gated = [(load, v) for load, vs in verdicts.items() for v in vs if v.metric in gate]
    if not gated:
        return []
    adjusted = holm([v.p_value for _, v in gated])
    checks = []
    for (load, v), p_adj in zip(gated, adjusted):
        declared = math.log1p(gate[v.metric] / 100.0)
        allowed = max(declared, v.delta)
        band = bands.get(load) if bands else None
        kind = band.sources.get(v.metric, "default") if band else v.delta_source or "default"
        noise_source = ("the lab's default noise band (no A/A calibration of this cell)"
                        if kind == "default" else
                        f"A/A noise band, {kind} ({band.source if band else 'given'})")
        source = f"declared ({gate[v.metric]:g} %)" if declared >= v.delta else noise_source
        mde = detectable_effect(v.sd_d, v.n_pairs, delta=allowed, family_size=len(gated),
                                alpha=alpha) if v.n_pairs >= 2 and math.isfinite(v.sd_d) \
            else math.inf
        row = (means or {}).get((load, "A"), {}), (means or {}).get((load, "B"), {})
        checks.append(GateCheck(
            load=load, metric=v.metric, higher_is_better=v.higher_is_better, n_pairs=v.n_pairs,
            change_pct=v.change_pct, ci_low_pct=v.ci_low_pct, ci_high_pct=v.ci_high_pct,
            p_adjusted=float(p_adj), band_pct=float(pct(allowed)),
            declared_pct=float(gate[v.metric]), noise_pct=float(pct(v.delta)),
            band_source=source, mde_pct=float(pct(mde)) if math.isfinite(mde) else math.inf,
            verdict=decide(float(p_adj), v.ci_low, v.ci_high, allowed,
                           higher_is_better=v.higher_is_better, alpha=alpha),
            sd_d=v.sd_d, base_mean=row[0].get(v.metric), head_mean=row[1].get(v.metric)))
    return checks
