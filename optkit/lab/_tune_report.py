"""What a tuning study found, as tables: history, best-so-far curve, Pareto front, importances.

::

    study (Optuna, in DIR/study.db) ──history()──▶ one row per candidate: its settings, what the
                                                   trial measured, feasible or why not
        ├─ best_curve()   the best goodput at the SLO after each candidate
        ├─ pareto()       the candidates no other beats on both throughput and the SLO's latency
        └─ importances()  how much of the goodput's variance each knob explains (fANOVA)

The goodput of a candidate is its throughput when its trial was valid and its latency met the
SLO, else 0: what the search maximizes. Every table is derived from the study's stored trials,
so a resumed or interrupted study gives the same tables as one that ran straight through.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pandas as pd

__all__ = ["history", "best_curve", "pareto", "importances", "MIN_IMPORTANCE_CANDIDATES"]

#: fewer measured candidates than this and importances are not computed: a forest of trees fit
#: to three points says which knob happened to move, not which one matters
MIN_IMPORTANCE_CANDIDATES = 5

#: what each candidate's row holds besides its settings (``user_attrs`` of the Optuna trial)
MEASURES = ("throughput_rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "errors", "valid",
            "feasible", "goodput_rps", "reason", "source", "duration_s", "trial_dir")


def history(study: Any, keys: tuple[str, ...]) -> pd.DataFrame:
    """One row per candidate in the order they ran: ``candidate`` (the study's trial number),
    ``state``, the settings (one column per key of the space), the measures, and
    ``best_goodput_rps`` (the best so far, the row included)."""
    rows = []
    for t in study.trials:
        row: dict[str, Any] = {"candidate": t.number, "state": t.state.name}
        row.update({key: t.params.get(key) for key in keys})
        row.update({m: t.user_attrs.get(m) for m in MEASURES})
        if row["reason"] is None and t.state.name in ("RUNNING", "FAIL"):
            row["reason"] = "not measured: interrupted (Ctrl-C) while it ran"
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["candidate", "state", *keys, *MEASURES])
    goodput = pd.to_numeric(frame["goodput_rps"], errors="coerce").fillna(0.0)
    frame["best_goodput_rps"] = goodput.cummax()
    return frame


def best_curve(hist: pd.DataFrame) -> pd.DataFrame:
    """The best goodput at the SLO after each candidate, and which candidate held it."""
    best, holder, rows = 0.0, None, []
    for row in hist.itertuples(index=False):
        g = float(row.goodput_rps or 0.0)
        if bool(row.feasible) and g > best:
            best, holder = g, int(row.candidate)
        rows.append({"candidate": int(row.candidate), "goodput_rps": g,
                     "best_goodput_rps": best, "best_candidate": holder})
    return pd.DataFrame(rows, columns=["candidate", "goodput_rps", "best_goodput_rps",
                                       "best_candidate"])


def pareto(hist: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The valid candidates that no other valid one beats on both throughput (higher) and
    ``metric`` (lower), sorted by ``metric``: the trade-off the SLO picks a point of."""
    valid = hist[hist["valid"].astype("boolean").fillna(False).astype(bool)
                 & hist[metric].notna() & hist["throughput_rps"].notna()]
    keep = []
    for i, row in valid.iterrows():
        dominated = ((valid["throughput_rps"] >= row["throughput_rps"])
                     & (valid[metric] <= row[metric])
                     & ((valid["throughput_rps"] > row["throughput_rps"])
                        | (valid[metric] < row[metric]))).any()
        if not dominated:
            keep.append(i)
    return valid.loc[keep].sort_values(metric).reset_index(drop=True)


def importances(study: Any, *, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """Each knob's share of the goodput's variance (Optuna's fANOVA evaluator), and a note.

    Only candidates that were measured count (a run cut short by Ctrl-C leaves one that was
    not). Fewer than :data:`MIN_IMPORTANCE_CANDIDATES`, or goodputs that are all equal (every
    candidate infeasible, say), give an empty table and a note saying why.
    """
    import optuna

    measured = [t for t in study.trials if t.state.name == "COMPLETE"]
    empty = pd.DataFrame(columns=["parameter", "importance"])
    if len(measured) < MIN_IMPORTANCE_CANDIDATES:
        return empty, (f"importances need at least {MIN_IMPORTANCE_CANDIDATES} measured "
                       f"candidates, the study has {len(measured)}")
    goodputs = {float(t.user_attrs.get("goodput_rps") or 0.0) for t in measured}
    if len(goodputs) < 2:
        return empty, "every measured candidate has the same goodput: nothing to attribute"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's own notes on the evaluator
            scores = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed),
                target=lambda t: float(t.user_attrs.get("goodput_rps") or 0.0))
    except (RuntimeError, ValueError) as exc:  # e.g. a knob that never varied
        return empty, f"importances could not be computed: {exc}"
    frame = pd.DataFrame({"parameter": list(scores), "importance": list(scores.values())})
    frame = frame[frame["importance"].map(lambda v: math.isfinite(v))]
    return (frame.sort_values("importance", ascending=False).reset_index(drop=True),
            f"fANOVA over {len(measured)} measured candidates (target: goodput at the SLO)")
