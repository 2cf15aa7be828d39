"""Validity gates: when a run's figures describe the server, and when they do not.

A run is a measurement of the server only if nothing else got in the way::

    transport errors   connect / reset / timeout / protocol     > max_transport_errors
    HTTP errors        share of requests answered non-2xx       > max_error_rate
    achieved rate      open loop: completed / offered           < min_achieved_fraction
    generator          its CPU (% of one core)                  > max_generator_cpu_percent
                       its loop lag p99, its timetable lag p99  > max_*_lag_p99_ms
    stability          CV of per-window throughput              > max_window_cv

Each failing gate adds a reason. A run with reasons is *invalid*: marked and
kept, never dropped, so whoever reads the trial table decides what to re-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .._exceptions import ConfigError

__all__ = ["ValidityGates", "generator_saturation", "check_validity"]


@dataclass(frozen=True, kw_only=True)
class ValidityGates:
    """Thresholds of the validity gates (the defaults are the DESIGN's)."""

    max_transport_errors: int = 0
    max_error_rate: float = 0.01
    min_achieved_fraction: float = 0.98
    max_generator_cpu_percent: float = 90.0
    max_loop_lag_p99_ms: float = 5.0
    max_schedule_lag_p99_ms: float = 5.0
    max_window_cv: float = 0.10
    min_windows: int = 3
    #: off for runs whose unevenness is the effect under study (model loads stalling a
    #: synchronous server): then only the other gates apply
    check_stability: bool = True
    #: an open-loop run the *server* cannot keep up with is a result, not a broken trial:
    #: with this on, the achieved fraction, requests dropped at the generator's in-flight cap
    #: and window stability are reported but not gated (the generator's own lag gates, errors
    #: and transport failures still are). Dropped requests are not in the latency figures, so
    #: an overloaded arm's p99 is understated: it can only look better than it was.
    allow_overload: bool = False

    def __post_init__(self) -> None:
        for name in ("max_error_rate", "min_achieved_fraction", "max_window_cv"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"gates.{name} must be in [0, 1], got {value!r}")
        for name in ("max_transport_errors", "max_generator_cpu_percent", "max_loop_lag_p99_ms",
                     "max_schedule_lag_p99_ms", "min_windows"):
            if getattr(self, name) < 0:
                raise ConfigError(f"gates.{name} must be >= 0, got {getattr(self, name)!r}")


def generator_saturation(gen: Mapping[str, Any], gates: ValidityGates) -> list[str]:
    """Reasons to believe the generator, not the server, limited the run."""
    reasons = []
    cpu = gen.get("cpu_percent")
    if cpu is not None and cpu > gates.max_generator_cpu_percent:
        reasons.append(f"generator CPU {cpu:.0f}% of a core > {gates.max_generator_cpu_percent:g}%")
    lag = (gen.get("loop_lag_ms") or {}).get("p99")
    if lag is not None and lag > gates.max_loop_lag_p99_ms:
        reasons.append(f"generator loop lag p99 {lag:.1f} ms > {gates.max_loop_lag_p99_ms:g} ms")
    sched = (gen.get("schedule_lag_ms") or {}).get("p99")
    if sched is not None and sched > gates.max_schedule_lag_p99_ms:
        reasons.append(f"generator timetable lag p99 {sched:.1f} ms > "
                       f"{gates.max_schedule_lag_p99_ms:g} ms")
    return reasons


def check_validity(summary: Mapping[str, Any], gates: ValidityGates | None = None) -> list[str]:
    """All the reasons a run's summary fails the gates (empty: valid)."""
    gates = gates or ValidityGates()
    reasons: list[str] = []
    transport = int(summary.get("transport_errors") or 0)
    if transport > gates.max_transport_errors:
        kinds = {k: v for k, v in (summary.get("errors") or {}).items()
                 if k in ("connect", "reset", "timeout", "protocol")}
        reasons.append(f"{transport} transport error(s) {kinds}")
    requests = int(summary.get("requests") or 0)
    http = sum(v for k, v in (summary.get("errors") or {}).items() if k.startswith("http_"))
    if requests and http / requests > gates.max_error_rate:
        reasons.append(f"HTTP errors {100 * http / requests:.1f}% of requests > "
                       f"{100 * gates.max_error_rate:g}%")
    if requests == 0:
        reasons.append("no requests in the measurement window")
    achieved = summary.get("achieved_fraction")
    if summary.get("mode") == "open" and achieved is not None and not gates.allow_overload \
            and achieved < gates.min_achieved_fraction:
        reasons.append(f"achieved {100 * achieved:.1f}% of the offered rate < "
                       f"{100 * gates.min_achieved_fraction:g}%")
    if summary.get("dropped") and not gates.allow_overload:
        reasons.append(f"{summary['dropped']} request(s) dropped at the in-flight cap")
    reasons.extend((summary.get("generator") or {}).get("saturation_reasons") or [])
    windows = summary.get("windows") or {}
    cv = windows.get("cv")
    if gates.check_stability and not gates.allow_overload and cv is not None \
            and len(windows.get("throughput_rps") or ()) >= gates.min_windows \
            and cv > gates.max_window_cv:
        reasons.append(f"unstable: per-window throughput CV {100 * cv:.1f}% > "
                       f"{100 * gates.max_window_cv:g}%")
    return reasons
