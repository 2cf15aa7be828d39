"""Result files: raw per-request records plus the summary computed from them.

A run folder, written once and never changed::

    run/
    ├── summary.json   schema_version, load, target, figures, generator, windows, validity
    │                  (fields are only ever added within a version: readers use .get)
    └── records.npz    the raw records (see ``_records``), compressed; absent for wrk

Figures come from the raw data by numpy: percentiles use the *inverted CDF*
(the smallest observed latency with at least q% of requests at or below it,
as HdrHistogram and wrk report), so every figure is a latency that happened;
``optkit._quantiles`` is the one place that method is named, so percentile
curves (``stats.percentile_curve``) agree with these figures.
Latency is ``end - scheduled`` (coordinated-omission safe); ``service`` is
``end - start`` (what the server plus network took once the request left).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import orjson

from .._exceptions import BenchError
from .._quantiles import quantiles
from ._records import COLUMNS, DROPPED, ERROR_KINDS, HTTP, OK, TRANSPORT_ERRORS
from ._validity import ValidityGates, check_validity, generator_saturation

__all__ = ["SCHEMA_VERSION", "BenchResult", "summarize", "percentiles_ms", "write_run",
           "load_run", "format_summary"]

SCHEMA_VERSION = 1
_QS = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p999": 0.999}


def percentiles_ms(values_ms: np.ndarray) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max/mean of latencies in ms (None when there are none)."""
    if len(values_ms) == 0:
        return {k: None for k in (*_QS, "max", "mean", "min")}
    qs = quantiles(values_ms, list(_QS.values()))
    out: dict[str, float | None] = {k: float(q) for k, q in zip(_QS, qs)}
    out.update(max=float(values_ms.max()), mean=float(values_ms.mean()),
               min=float(values_ms.min()))
    return out


def _windows(end_ns: np.ndarray, ws: int, we: int, window_s: float) -> dict[str, Any]:
    width = int(window_s * 1e9)
    n = int((we - ws) // width) if width > 0 else 0
    if n < 1:
        return {"window_s": window_s, "throughput_rps": [], "cv": None}
    counts = np.bincount(((end_ns - ws) // width).astype(np.int64), minlength=n)[:n]
    rps = counts / window_s
    cv = float(rps.std(ddof=1) / rps.mean()) if n >= 2 and rps.mean() > 0 else None
    return {"window_s": window_s, "throughput_rps": rps.round(1).tolist(), "cv": cv}


def summarize(records: Mapping[str, np.ndarray], gen: Mapping[str, Any], *,
              meta: Mapping[str, Any], late_threshold_ms: float = 1.0, window_s: float = 1.0,
              gates: ValidityGates | None = None) -> dict[str, Any]:
    """Compute a run's figures from its raw records and the generator's self-report."""
    gates = gates or ValidityGates()
    ws, we = int(gen["window_start_ns"]), int(gen["window_end_ns"])
    duration = (we - ws) / 1e9
    sched, start, end = records["scheduled_ns"], records["start_ns"], records["end_ns"]
    err, model, status = records["error_code"], records["model"], records["status"]
    in_win = (sched >= ws) & (sched < we)
    ok = err == OK
    sel = in_win & ok
    lat = (end[sel] - sched[sel]) / 1e6
    svc = (end[sel] - start[sel]) / 1e6
    ttfb = (records["first_byte_ns"][sel] - start[sel]) / 1e6
    done_in_win = ok & (end >= ws) & (end < we)
    throughput = float(done_in_win.sum() / duration)
    requests = int((in_win & (model >= 0)).sum())
    errors: dict[str, int] = {}
    for code in np.unique(err[in_win]).tolist():
        if code == OK:
            continue
        if code == HTTP:
            codes, counts = np.unique(status[in_win & (err == HTTP)], return_counts=True)
            errors.update({f"http_{c}": int(n) for c, n in zip(codes.tolist(), counts.tolist())})
        else:
            errors[ERROR_KINDS[code]] = int((in_win & (err == code)).sum())
    sent = in_win & (start > 0)
    late = int((sent & (start - sched > late_threshold_ms * 1e6)).sum())
    mean_svc_s = float(svc.mean() / 1e3) if len(svc) else 0.0
    summary: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **meta,
                               "window_start_ns": ws, "window_end_ns": we}
    summary.update(requests=requests, completed=int(sel.sum()), throughput_rps=throughput)
    if meta.get("mode") == "open":
        offered = requests / duration
        summary.update(offered_rps=offered,
                       achieved_fraction=throughput / offered if offered else None)
    p = percentiles_ms(lat)
    summary.update({f"{k}_ms": v for k, v in p.items()})
    s, t = percentiles_ms(svc), percentiles_ms(ttfb)
    summary.update(service_p50_ms=s["p50"], service_p99_ms=s["p99"], service_mean_ms=s["mean"],
                   ttfb_p50_ms=t["p50"], ttfb_p99_ms=t["p99"])
    # answers the gateway's pool sent upstream twice (optkit-retried: 1); None: not recorded
    resent = records.get("retried")
    summary.update(errors=errors, errors_total=sum(errors.values()) - errors.get("dropped", 0),
                   retried=None if resent is None else int((in_win & (resent != 0)).sum()),
                   transport_errors=sum(errors.get(ERROR_KINDS[c], 0) for c in TRANSPORT_ERRORS),
                   late_sends=late, late_threshold_ms=late_threshold_ms,
                   dropped=int((in_win & (err == DROPPED)).sum()),
                   mean_in_flight=throughput * mean_svc_s)
    generator = dict(gen)
    generator["saturation_reasons"] = generator_saturation(gen, gates)
    generator["saturated"] = bool(generator["saturation_reasons"])
    summary["generator"] = generator
    summary["windows"] = _windows(end[done_in_win], ws, we, window_s)
    names = list(meta.get("models") or [])
    per_model = {}
    for i, name in enumerate(names):
        m = sel & (model == i)
        q = percentiles_ms((end[m] - sched[m]) / 1e6)
        per_model[name] = {"requests": int((in_win & (model == i)).sum()), "ok": int(m.sum()),
                           "p50_ms": q["p50"], "p99_ms": q["p99"]}
    summary["per_model"] = per_model
    reasons = check_validity(summary, gates)
    summary.update(valid=not reasons, invalid_reasons=reasons)
    return summary


@dataclass(frozen=True, eq=False)
class BenchResult:
    """One run: its summary, its raw records (empty for wrk) and where it lives."""

    summary: dict[str, Any]
    records: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    def __repr__(self) -> str:
        s = self.summary
        p99 = s.get("p99_ms")
        return (f"<BenchResult {s.get('load')} [{s.get('throughput_rps', 0):,.0f} req/s, "
                f"p99 {p99 if p99 is None else round(p99, 2)} ms | "
                f"{'valid' if s.get('valid') else 'INVALID'}]>")

    @property
    def valid(self) -> bool:
        """True when every validity gate passed."""
        return bool(self.summary.get("valid"))

    @property
    def invalid_reasons(self) -> list[str]:
        """Why the run is invalid (empty when valid)."""
        return list(self.summary.get("invalid_reasons") or [])

    @property
    def throughput_rps(self) -> float:
        """Successful responses completed in the window, per second."""
        return float(self.summary.get("throughput_rps") or 0.0)

    def _window(self) -> np.ndarray:
        if not self.records:
            return np.zeros(0, dtype=bool)
        s = self.records["scheduled_ns"]
        mask = (s >= self.summary["window_start_ns"]) & (s < self.summary["window_end_ns"])
        return mask & (self.records["error_code"] == OK)

    @property
    def latencies_ms(self) -> np.ndarray:
        """Latency (end - scheduled) of each successful request in the window, ms."""
        m = self._window()
        if not m.any():
            return np.zeros(0)
        return (self.records["end_ns"][m] - self.records["scheduled_ns"][m]) / 1e6

    @property
    def service_ms(self) -> np.ndarray:
        """Service time (end - start) of each successful request in the window, ms."""
        m = self._window()
        if not m.any():
            return np.zeros(0)
        return (self.records["end_ns"][m] - self.records["start_ns"][m]) / 1e6

    def frame(self) -> Any:
        """The raw records as a pandas DataFrame (with a ``model_name`` column)."""
        import pandas as pd

        df = pd.DataFrame(self.records)
        names = list(self.summary.get("models") or [])
        if len(df):
            df["model_name"] = [names[i] if 0 <= i < len(names) else "" for i in df["model"]]
            df["latency_ms"] = (df["end_ns"] - df["scheduled_ns"]) / 1e6
        return df


def write_run(out_dir: str | Path, result: BenchResult) -> BenchResult:
    """Write ``summary.json`` (and ``records.npz`` if any); return the result with its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if result.records:
        np.savez_compressed(out / "records.npz", **result.records)
    (out / "summary.json").write_bytes(
        orjson.dumps(result.summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return BenchResult(result.summary, result.records, out)


def load_run(path: str | Path) -> BenchResult:
    """Read a run folder back into a :class:`BenchResult`."""
    folder = Path(path)
    try:
        summary = orjson.loads((folder / "summary.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise BenchError(f"{folder} is not a bench run folder: {exc}") from None
    version = summary.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BenchError(f"{folder}: schema_version {version!r} is not readable by this optkit "
                         f"(reads <= {SCHEMA_VERSION})")
    records: dict[str, np.ndarray] = {}
    if (folder / "records.npz").exists():
        with np.load(folder / "records.npz") as npz:
            records = {name: npz[name].astype(dt) for name, dt in COLUMNS.items() if name in npz}
    return BenchResult(summary, records, folder)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _retried(count: int | None) -> str:
    if count is None:
        return "n/a (not recorded: wrk does not read response headers)"
    return f"{count} (answers marked optkit-retried: the gateway's pool sent them twice)"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The run's figures as a few aligned lines for a terminal."""
    s = summary
    gen = s.get("generator") or {}
    errors = s.get("errors") or {}
    lines = [
        f"optkit bench  {s.get('load')}  {', '.join(s.get('models') or [])}  "
        f"[{s.get('engine')}]  {s.get('duration_s')} s window after {s.get('warmup_s')} s warm-up",
        f"  throughput   {s.get('throughput_rps', 0):,.1f} req/s"
        + (f"  (offered {s['offered_rps']:,.1f}, achieved {100 * s['achieved_fraction']:.1f}%)"
           if s.get("achieved_fraction") is not None else ""),
        f"  latency ms   p50 {_ms(s.get('p50_ms'))}  p90 {_ms(s.get('p90_ms'))}  "
        f"p99 {_ms(s.get('p99_ms'))}  p99.9 {_ms(s.get('p999_ms'))}  max {_ms(s.get('max_ms'))}"
        + ("   (from scheduled send)" if s.get("mode") == "open" else ""),
        f"  errors       {', '.join(f'{k}: {v}' for k, v in errors.items()) or 'none'}",
        f"  retried      {_retried(s.get('retried'))}",
        (f"  late sends   {s.get('late_sends', 0)} (> {s.get('late_threshold_ms') or 0:g} ms)"
         f"   dropped {s.get('dropped', 0)}" if s.get("mode") == "open"
         else "  late sends   n/a (closed loop: each send waits for a response)"),
        f"  generator    CPU {gen.get('cpu_percent', 0):.0f}% of a core"
        + (f", loop lag p99 {gen['loop_lag_ms']['p99']:.2f} ms" if gen.get("loop_lag_ms") else "")
        + ("  SATURATED" if gen.get("saturated") else ""),
    ]
    windows = s.get("windows") or {}
    if windows.get("cv") is not None:
        lines.append(f"  stability    {len(windows['throughput_rps'])} x {windows['window_s']:g} s "
                     f"windows, throughput CV {100 * windows['cv']:.1f}%")
    reasons = s.get("invalid_reasons") or []
    lines.append("  valid        yes" if s.get("valid") else
                 "  valid        NO: " + "; ".join(reasons))
    return "\n".join(lines)
