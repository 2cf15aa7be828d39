"""The soak's verdict and its report: counts, books, memory and descriptor trends, pools.

::

    the client's counts ── every answer right, none lost ─────────────────────┐
    the gateway's books ── received == sent, each status as the client saw it ─┤
    RSS, other fds ─────── flat after the warm-up (trend: slope CI) ───────────┼─▶ PASS / FAIL
    connections ────────── within their pools' bounds, gone after the load ────┘
                           (optkit.lab._descriptors: a pool filling is no leak)

``soak.json`` keeps the report and every sample, ``soak.md`` the tables, ``soak.png``
the series.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import orjson
from scipy import stats as st

from ._descriptors import judge_pools

__all__ = ["build_report", "write_report", "trend", "resolvable_rss_slope", "TIERS"]

MiB = 2**20
TIERS = ("gateway", "model_server")
#: the connection series: (sample key, what it is)
CONNECTIONS = {"gateway_in": "client connections held by the gateway",
               "gateway_out": "upstream connections in the gateway's pool",
               "model_server_in": "connections held by the model server (the gateway's pool)"}


def trend(t_s: np.ndarray, y: np.ndarray, bound_per_min: float) -> dict[str, Any]:
    """Least-squares slope of ``y`` per minute with a 95 % CI (Newey-West, Bartlett lags).

    ``flat``: the CI includes 0, or its upper end is below ``bound_per_min``.
    """
    t = np.asarray(t_s, np.float64) / 60.0
    y = np.asarray(y, np.float64)
    n = t.size
    if n < 4:
        raise ValueError(f"need at least 4 samples for a slope, got {n}")
    tc = t - t.mean()
    sxx = float(tc @ tc)
    slope = float(tc @ (y - y.mean()) / sxx) if sxx > 0 else 0.0
    resid = y - y.mean() - slope * tc
    u = tc * resid
    lags = int(math.floor(4 * (n / 100.0) ** (2 / 9)))
    s = float(u @ u)
    for lag in range(1, lags + 1):
        s += 2 * (1 - lag / (lags + 1)) * float(u[lag:] @ u[:-lag])
    se = math.sqrt(max(s, 0.0)) / sxx if sxx > 0 else 0.0
    half = float(st.t.ppf(0.975, n - 2)) * se
    lo, hi = slope - half, slope + half
    return {"slope_per_min": slope, "ci95": [lo, hi], "samples": n, "nw_lags": lags,
            "bound_per_min": bound_per_min, "first": float(y[0]), "last": float(y[-1]),
            "min": float(y.min()), "max": float(y.max()),
            "flat": bool(lo <= 0.0 <= hi or hi < bound_per_min)}


def resolvable_rss_slope(s: Any, minutes: float) -> float:
    """The RSS bound (bytes/min) of a run measured over ``minutes``: the larger of
    ``s.rss_bound_per_min`` and the band RSS wanders in spread over those minutes."""
    return max(s.rss_bound_per_min, s.rss_band_bytes / minutes) if minutes > 0 else math.inf


def build_report(soak: Any, samples: list[dict[str, Any]], s: Any, config: str, started: float,
                 books: Mapping[str, Any], bounds: Mapping[str, tuple[int, str]],
                 drain: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict of one soak (``soak``: the client, ``s``: its SoakSettings)."""
    c = soak.counts
    transport = sum(soak.transport.values())
    counts = {"sent": c["sent"], "answered": c["answered"], "correct": c["correct"],
              "errors": c["errors"], "misattributed": c["misattributed"],
              "transport_failures": transport,
              "unaccounted": c["sent"] - c["answered"] - transport,
              "by_status": {str(k): v for k, v in sorted(soak.by_status.items())},
              "by_kind": dict(soak.by_kind), "transport": dict(soak.transport)}
    t = np.array([r["t_s"] for r in samples])
    keep = t >= t[-1] * s.warmup_fraction if t.size else t
    rss_bound = resolvable_rss_slope(s, float(np.ptp(t[keep])) / 60 if keep.sum() >= 2 else 0.0)
    trends: dict[str, Any] = {}
    for tier in TIERS:
        for what, key, bound in (("rss", "rss", rss_bound),
                                 ("other_fds", "other", s.fd_bound_per_min)):
            y = np.array([r[f"{tier}_{key}"] for r in samples])
            trends[f"{tier}_{what}"] = (trend(t[keep], y[keep], bound) if keep.sum() >= 4
                                        else {"flat": False, "error": "too few samples"})
    peaks = {k: max((r[k] for r in samples), default=0) for k in bounds}
    pools = judge_pools(peaks, bounds, drain.get("left", {}))
    for name, pool in pools.items():
        pool["first"] = samples[0][name] if samples else None
        pool["last"] = samples[-1][name] if samples else None
    books = {**books, "agrees": books["received"] == c["sent"]
             and books["by_status"] == counts["by_status"]}
    ok = (c["correct"] == c["sent"] and counts["unaccounted"] == 0 and books["agrees"]
          and all(tr["flat"] for tr in trends.values()) and all(p["ok"] for p in pools.values()))
    return {"ok": ok, "config": config, "started_utc": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "settings": asdict(s), "counts": counts, "books": books, "trends": trends,
            "pools": pools, "drain": dict(drain), "reloads": soak.reloads,
            "final_swap_version": soak.version, "mismatch_samples": soak.mismatch_samples,
            "cpus": os.cpu_count()}


def write_report(out: Path, report: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    """``soak.json``, ``soak.md`` and ``soak.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_bytes(orjson.dumps({**report, "samples": samples},
                                                 option=orjson.OPT_INDENT_2))
    c, b = report["counts"], report["books"]
    lines = [f"# Soak: {report['settings']['minutes']:g} min, config `{report['config']}`, "
             f"started {report['started_utc']}", "",
             f"**{'PASS' if report['ok'] else 'FAIL'}**: sent {c['sent']}, answered "
             f"{c['answered']}, correct {c['correct']}, errors {c['errors']} "
             f"(by status {c['by_status']}), transport failures {c['transport_failures']}, "
             f"misattributed {c['misattributed']}, unaccounted {c['unaccounted']}; "
             f"reloads {len(report['reloads'])} (final soak-swap version "
             f"{report['final_swap_version']}).", "",
             f"Gateway's books: received {b['received']}, by status {b['by_status']}, "
             f"refused {b['refused'] or 'none'}, cancelled {b['cancelled']}: "
             f"{'agree with the client' if b['agrees'] else 'DO NOT AGREE with the client'}.",
             "", "| series | first | last | slope / min | 95 % CI | bound / min | flat |",
             "|---|---|---|---|---|---|---|"]
    for name, tr in report["trends"].items():
        if "slope_per_min" not in tr:
            lines.append(f"| {name} | | | | | | {tr.get('error')} |")
            continue
        scale, unit = (MiB, " MiB") if name.endswith("rss") else (1, "")
        lo, hi = tr["ci95"]
        lines.append(f"| {name} | {tr['first'] / scale:.2f}{unit} | {tr['last'] / scale:.2f}{unit} "
                     f"| {tr['slope_per_min'] / scale:+.4f} "
                     f"| [{lo / scale:+.4f}, {hi / scale:+.4f}] "
                     f"| {tr['bound_per_min'] / scale:.4f} | {'yes' if tr['flat'] else 'NO'} |")
    st = report["settings"]
    lines += ["", f"Slopes after the first {st['warmup_fraction']:.0%} of the run (warm-up, its "
              f"first {st['prime_s']:g} s at most sent closed-loop at the concurrency cap to "
              "fill the pools); CI: least squares with Newey-West standard errors. RSS bound: "
              f"the larger of {st['rss_bound_per_min'] / 1024:g} KiB/min and the "
              f"{st['rss_band_bytes'] / MiB:g} MiB band RSS wanders in, spread over the measured "
              "minutes (what a run this long can resolve). `other_fds`: the open descriptors "
              "that are not TCP connections (loop, pipes, files, listening socket); "
              "connections are pools, judged against their bounds below.", "",
              "| connections | first | peak | last | bound | left after the load | ok |",
              "|---|---|---|---|---|---|---|"]
    for name, p in report["pools"].items():
        lines.append(f"| {name} | {p['first']} | {p['peak']} | {p['last']} | {p['bound']} "
                     f"| {p['left_after_load']} | {'yes' if p['ok'] else 'NO'} |")
    d = report["drain"]
    lines += [""] + [f"- `{name}` ({CONNECTIONS.get(name, name)}): bound {p['bound']}, "
                     f"{p['why']}." for name, p in report["pools"].items()]
    drained = not any(d["left"].values())
    lines += ["", (f"After the load the pools sat idle and every connection closed within "
                   f"{d['seconds']} s (bound {d['bound_s']} s: twice the pool's keep-alive, "
                   f"plus slack)" if drained else
                   f"After the load {d['left']} connections were still open after "
                   f"{d['seconds']} s (bound {d['bound_s']} s): a connection that never "
                   f"closes is a leak") + f"; descriptors then: {d['fds']}. ![](soak.png)", ""]
    (out / "soak.md").write_text("\n".join(lines))
    _plot(out / "soak.png", samples)


def _plot(path: Path, samples: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not samples:
        return
    t = np.array([r["t_s"] for r in samples]) / 60
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for tier in TIERS:
        ax1.plot(t, np.array([r[f"{tier}_rss"] for r in samples]) / MiB, label=tier)
        line, = ax2.plot(t, [r[f"{tier}_fds"] for r in samples], label=f"{tier}: all")
        ax2.plot(t, [r[f"{tier}_other"] for r in samples], linestyle="--",
                 color=line.get_color(), label=f"{tier}: not connections")
    ax1.set_ylabel("RSS (MiB)")
    ax2.set_ylabel("open fds")
    ax2.set_xlabel("minutes")
    ax1.legend()
    ax2.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
