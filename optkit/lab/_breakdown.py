"""Where a request's time goes: the servers' statistics differenced over a trial's window.

::

    client mean latency (end - scheduled, requests answered between the two snapshots)
    ├─ queue            Σ tiers' queue ns        ┐  Triton's statistics extension, each
    ├─ compute_input    Σ tiers' decode/validate │  tier's ``/v2/models/stats`` at the
    ├─ compute_infer    the model (innermost)    │  window's start and end, differenced:
    ├─ compute_output   Σ tiers' encoding        ┘  cumulative ns ÷ successful requests
    └─ rest             client mean − the four: network, HTTP framework, reading the body,
                        hand-offs inside a server, the client itself

Each part is Triton's per-request convention (perf_analyzer's too): a tier's cumulative
nanoseconds of that part divided by its successful requests, so a request riding a batch
carries its batch's whole model time. With optkit's gateway in front of a model server,
the gateway's parts are per client request and the model server's per upstream call (one
call carries a whole batch of client requests); queue, decode and encode add up over both
tiers, and the model is the model server's ``compute_infer`` (the gateway's compute_infer is
its upstream call, which holds the model server's whole time and the hop). When only the
gateway keeps statistics (a third-party server behind it), ``compute_infer`` is that upstream
call. A tier that answers no statistics (404, not Triton's format, unreachable) adds nothing;
with no tier answering, the trial has no breakdown, which is not an error.

Everything here is a pure function over plain data; :mod:`._stats_poller` takes the snapshots.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

__all__ = ["PARTS", "BREAKDOWN_COLUMNS", "tier_means", "combine_tiers", "client_mean_ms",
           "breakdown_table"]

#: Triton's parts of a request's time on one tier, in the order a request meets them
PARTS = ("queue", "compute_input", "compute_infer", "compute_output")
#: the trial table's breakdown columns (ms per request): the client's mean, the parts, the rest
BREAKDOWN_COLUMNS = ("mean_ms", "queue_ms", "compute_input_ms", "compute_infer_ms",
                     "compute_output_ms", "rest_ms")
_INNER, _OUTER = "model-server", "gateway"


def _totals(doc: Any, models: Iterable[str] | None) -> dict[str, int] | None:
    """Σ over a ``{"model_stats": [...]}`` answer's entries (of ``models`` if given):
    success count and ns, and each part's ns. None when it is not Triton's format."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("model_stats"), list):
        return None
    wanted = set(models) if models is not None else None
    out = {"success_n": 0, "success_ns": 0, **{part: 0 for part in PARTS}}
    try:
        for entry in doc["model_stats"]:
            if wanted is not None and entry.get("name") not in wanted:
                continue
            stats = entry["inference_stats"]
            out["success_n"] += int(stats["success"]["count"])  # uint64 may come as a string
            out["success_ns"] += int(stats["success"]["ns"])
            for part in PARTS:
                out[part] += int(stats[part]["ns"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return out


def tier_means(start: Mapping[str, Any], end: Mapping[str, Any],
               models: Iterable[str] | None = None) -> dict[str, float] | None:
    """One tier's mean ms per successful request between two snapshots.

    Args:
        start, end: worker id -> that worker's statistics answer (one process: one entry,
            any id). Only workers in both snapshots count: a mean over some workers' requests
            is still a mean per request.
        models: the models to add up (None: every model listed).

    Returns:
        ``{"requests", "server_ms", "queue_ms", "compute_input_ms", "compute_infer_ms",
        "compute_output_ms"}`` (``server_ms``: the tier's whole time, Triton's success), or
        None when no request succeeded in between or an answer is not Triton's format.
    """
    names = list(models) if models is not None else None
    delta = {"success_n": 0, "success_ns": 0, **{part: 0 for part in PARTS}}
    for worker in set(start) & set(end):
        a, b = _totals(start[worker], names), _totals(end[worker], names)
        if a is None or b is None:
            return None
        for key in delta:
            delta[key] += b[key] - a[key]
    n = delta["success_n"]
    if n <= 0 or any(v < 0 for v in delta.values()):  # none, or a worker restarted
        return None
    out = {"requests": float(n), "server_ms": delta["success_ns"] / n / 1e6}
    out.update({f"{part}_ms": delta[part] / n / 1e6 for part in PARTS})
    return out


def combine_tiers(mean_ms: float | None,
                  tiers: Mapping[str, Mapping[str, float] | None]) -> dict[str, float] | None:
    """The breakdown of the client's ``mean_ms`` from the tiers' :func:`tier_means`.

    ``tiers`` holds ``"gateway"`` and/or ``"model-server"`` (None: no statistics there).
    Returns the :data:`BREAKDOWN_COLUMNS` as a dict, or None without a client mean or
    without any tier's statistics.
    """
    outer, inner = tiers.get(_OUTER), tiers.get(_INNER)
    if mean_ms is None or not math.isfinite(mean_ms) or (outer is None and inner is None):
        return None
    present = [t for t in (outer, inner) if t is not None]
    out = {"mean_ms": float(mean_ms)}
    for part in ("queue", "compute_input", "compute_output"):
        out[f"{part}_ms"] = sum(t[f"{part}_ms"] for t in present)
    # the model is the innermost tier's; a gateway's compute_infer is its upstream call
    out["compute_infer_ms"] = (inner or outer)["compute_infer_ms"]  # type: ignore[index]
    out["rest_ms"] = out["mean_ms"] - sum(out[f"{p}_ms"] for p in PARTS)
    return {column: out[column] for column in BREAKDOWN_COLUMNS}


def client_mean_ms(records: Mapping[str, np.ndarray], start_ns: int, end_ns: int,
                   ok_code: int = 0) -> tuple[float | None, int]:
    """Mean latency (end − scheduled, ms) of the successful requests answered within
    [start_ns, end_ns], and how many: the client's side of the same span the servers'
    snapshots cover (their counters move when a request is answered)."""
    if not records or "end_ns" not in records:
        return None, 0
    end, sched = records["end_ns"], records["scheduled_ns"]
    sel = (records["error_code"] == ok_code) & (end >= start_ns) & (end <= end_ns)
    n = int(sel.sum())
    if n == 0:
        return None, 0
    return float((end[sel] - sched[sel]).mean() / 1e6), n


def breakdown_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per load and arm, the median over valid trials of each breakdown column.

    ``trials`` is a trial table (``Comparison.trials``, ``trials.csv``; several sessions'
    tables concatenated are fine: an arm that appears in two sessions pools its trials).
    Index (load, label); columns :data:`BREAKDOWN_COLUMNS` plus ``trials`` (how many had a
    breakdown). An arm whose servers kept no statistics has NaN parts and its client mean;
    a table from before the breakdown existed gives NaN everywhere but the arms.
    """
    if not len(trials):
        return pd.DataFrame(columns=[*BREAKDOWN_COLUMNS, "trials"])
    df = trials.copy()
    if "valid" in df:
        df = df[df["valid"].astype(bool)]
    if "pair" in df:
        df = df[df["pair"] >= 0]
    for column in BREAKDOWN_COLUMNS:
        if column not in df:
            df[column] = np.nan
        df[column] = pd.to_numeric(df[column], errors="coerce")
    groups = df.groupby(["load", "label"], sort=False)
    table = groups[list(BREAKDOWN_COLUMNS)].median()
    table["trials"] = groups["queue_ms"].count()
    return table
