"""perf_analyzer's CSV (``perf_analyzer -f FILE``) from one run: optkit's numbers beside a team's.

::

    Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,
    Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,
    p50 latency,p90 latency,p95 latency,p99 latency
    32,13512.4,0,1210,640,13,318,5,22,2187,2906,3152,4301

The columns and their arithmetic are perf_analyzer's (its ``report_writer.cc``): times are
whole microseconds per request (truncated, as its integer division does); ``Request Rate``
replaces ``Concurrency`` for an open loop; the five server columns appear only when the
server answered Triton's statistics (as perf_analyzer leaves them out without
``--include-server-stats`` data), and ``Network+Server Send/Recv`` is what remains of the
client's mean latency after client send, client receive and the server's queue and compute
parts, floored at 0. What optkit measures differently (docs/measurement.md, "perf_analyzer's
CSV"):

- ``Client Send`` is always 0: the generator hands a request to the socket in one write and
  does not time it (perf_analyzer writes 0 here for an ensemble's composing models too).
- ``Client Recv`` is the mean time from the answer's first byte to its last (built-in engine);
  0 under wrk, which records no per-request times.
- ``Inferences/Second`` is answered requests per second times the workload's mean rows per
  request (perf_analyzer's inferences are rows: requests × batch size).
- the latency percentiles are optkit's (from the scheduled send time, so an open loop's
  waiting counts); p95 comes from the records, empty under wrk.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._quantiles import quantiles
from ._records import OK
from ._results import BenchResult
from ._server_stats import StatsPoller, client_mean_ms, tier_means

__all__ = ["PERF_ANALYZER_SERVER_COLUMNS", "perf_analyzer_row", "write_perf_analyzer_csv",
           "perf_analyzer_csv"]

#: the columns perf_analyzer writes only with server statistics, in its order
PERF_ANALYZER_SERVER_COLUMNS = ("Network+Server Send/Recv", "Server Queue",
                                "Server Compute Input", "Server Compute Infer",
                                "Server Compute Output")
_PERCENTILES = (("p50 latency", 0.50), ("p90 latency", 0.90), ("p95 latency", 0.95),
                ("p99 latency", 0.99))


def _us(ms: float | None) -> int | str:
    return "" if ms is None else max(int(ms * 1000.0), 0)


def _rows_per_request(summary: Mapping[str, Any]) -> float:
    rows = ((summary.get("workload") or {}).get("rows") or {})
    values, weights = rows.get("values") or [1], rows.get("weights") or []
    if len(weights) != len(values) or not sum(weights):
        weights = [1] * len(values)
    return float(np.average(values, weights=weights))


def perf_analyzer_row(summary: Mapping[str, Any], records: Mapping[str, np.ndarray],
                      server: Mapping[str, float] | None = None,
                      client_mean_ms: float | None = None) -> dict[str, Any]:
    """One CSV row (column -> value) of a run.

    Args:
        summary, records: the run (``BenchResult.summary`` and ``.records``).
        server: the target's mean ms per request over the window (``tier_means``), or None
            when it keeps no statistics: the server columns are then left out.
        client_mean_ms: the client's mean latency over the span ``server`` covers (default:
            the window's mean).
    """
    closed = summary.get("mode") != "open"
    load = summary.get("load_spec") or {}
    row: dict[str, Any] = {
        "Concurrency" if closed else "Request Rate":
            load.get("concurrency") if closed else load.get("rate"),
        "Inferences/Second": f"{float(summary.get('throughput_rps') or 0.0) * _rows_per_request(summary):g}",
        "Client Send": 0}
    end, first = records.get("end_ns"), records.get("first_byte_ns")
    ok = None
    if end is not None and first is not None and len(end):
        s, e = summary["window_start_ns"], summary["window_end_ns"]
        sched = records["scheduled_ns"]
        ok = (records["error_code"] == OK) & (sched >= s) & (sched < e) & (first > 0)
    recv_ms = float(((end[ok] - first[ok]) / 1e6).mean()) if ok is not None and ok.any() else 0.0
    if server is not None:
        mean = client_mean_ms if client_mean_ms is not None else summary.get("mean_ms")
        parts = [server[f"{p}_ms"] for p in
                 ("queue", "compute_input", "compute_infer", "compute_output")]
        rest = None if mean is None else max(0.0, mean - recv_ms - sum(parts))
        row.update(zip(PERF_ANALYZER_SERVER_COLUMNS, map(_us, [rest, *parts])))
    row["Client Recv"] = _us(recv_ms)
    if ok is not None and ok.any():
        lat = (end[ok] - records["scheduled_ns"][ok]) / 1e6
        row.update(zip([c for c, _ in _PERCENTILES],
                       map(_us, quantiles(lat, [q for _, q in _PERCENTILES]))))
    else:  # wrk: the summary's percentiles, no p95
        row.update({c: _us(summary.get(f"p{round(q * 100)}_ms")) if q != 0.95 else ""
                    for c, q in _PERCENTILES})
    return row


def write_perf_analyzer_csv(path: str | Path, row: Mapping[str, Any]) -> Path:
    """Write one run's row under perf_analyzer's header; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(list(row))
        writer.writerow(list(row.values()))
    return out


def perf_analyzer_csv(result: BenchResult, poller: StatsPoller | None,
                      path: str | Path) -> Path:
    """Write ``result`` as perf_analyzer's CSV, with the server columns when ``poller`` (run
    around it) bracketed its window with two statistics snapshots."""
    summary = result.summary
    span = poller.window(int(summary["window_start_ns"]), int(summary["window_end_ns"])) \
        if poller is not None else None
    server, mean = None, None
    if span is not None:
        (t0, start), (t1, end) = span
        server = tier_means(start, end, summary.get("models") or None)
        mean = client_mean_ms(result.records, t0, t1)[0]
    return write_perf_analyzer_csv(path, perf_analyzer_row(summary, result.records, server,
                                                           client_mean_ms=mean))
