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

Everything here is a pure function over plain data; ``optkit.bench._server_stats`` takes the
snapshots (``StatsPoller``) and differences one tier's (``tier_means``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..bench._server_stats import PARTS, client_mean_ms, tier_means

__all__ = ["PARTS", "BREAKDOWN_COLUMNS", "tier_means", "combine_tiers", "client_mean_ms",
           "breakdown_table"]

#: the trial table's breakdown columns (ms per request): the client's mean, the parts, the rest
BREAKDOWN_COLUMNS = ("mean_ms", "queue_ms", "compute_input_ms", "compute_infer_ms",
                     "compute_output_ms", "rest_ms")
_INNER, _OUTER = "model-server", "gateway"


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


def breakdown_table(*sessions: Any) -> pd.DataFrame:
    """Per load and arm, the median over valid trials of each breakdown column.

    Args:
        sessions: trial tables (``trials.csv`` read back) or finished sessions (anything
            with ``.trials``: a ``Comparison``); several are stacked, and an arm that appears
            in two of them pools its trials (a day's chain: A vs B, then B vs C).

    Returns:
        index (load, label); columns :data:`BREAKDOWN_COLUMNS` plus ``trials`` (how many had
        a breakdown). An arm whose servers kept no statistics has NaN parts and its client
        mean; a table from before the breakdown existed gives NaN everywhere but the arms.
    """
    frames = [getattr(s, "trials", s) for s in sessions]
    trials = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
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
