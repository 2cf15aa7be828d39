"""A trial: fresh service processes, a discarded warm-up, one measured window.

::

    launch_stack(config) ─┬─ GET /stats (both tiers)                          before
                          ├─ prepare: probe, one request per model
                          ├─ idle RSS: median of 3 samples 0.1 s apart        before load
                          ├─ sampler thread: CPU, RSS every 0.1 s     ┐
                          ├─ one run_bench: probe, warm-up ─▶ window  │  warm-up discarded,
                          │    (no gap between them; 5 stability      │  window kept
                          │     windows of duration_s / 5)            ┘
                          ├─ GET /stats (both tiers)                          after
                          └─ stop; gates (the run's + "service exited"); manifest


CPU and load RSS come only from samples inside the window. ``TrialResult.stats_row()``
flattens the ``/stats`` taken after the window into one row (``server_stats.csv``).

**Breakdown** (``_breakdown.py``): through the run each tier's ``/v2/models/stats`` (Triton's
statistics extension) is polled (``bench/_server_stats.py``); the snapshots nearest the window's two
ends, differenced, split the client's mean latency into queue, compute_input, compute_infer,
compute_output and the rest (``TrialResult.breakdown``, the trial table's ``*_ms`` breakdown
columns; the two snapshots themselves in ``model_stats``). A server without the extension
gives no breakdown, and no error.

**Memory** (docs/measurement.md, "Memory per client"): in a closed loop,
``mem_per_client_kb`` = Σ over service processes of (median RSS during the window −
idle RSS) ÷ the loop's clients (its concurrency, the same in both arms); in an open loop,
``mem_held_mb`` = Σ (peak RSS in the window − idle RSS), never divided by requests in
flight (a faster arm has fewer in flight, and would look worse per request). Idle RSS is
taken after one request per model (lazy one-time set-up is done) and *before* the warm-up:
allocators keep the pages a load made them take, so an idle RSS after the warm-up already
holds the load's working set and the difference reads ~0. RSS is coarse (pages, allocator
caching), so it is measured the same way for A and B and only differences between arms mean
anything.

A trial that fails a gate is returned with ``valid=False`` and its reasons:
it is marked, never dropped. ``TrialResult.row()`` is one row of the tidy
trial table the statistics read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import orjson

from .._exceptions import BenchError, ConfigError
from ..bench import BenchResult, LoadSpec, ValidityGates, Workload, load_run, prepare, run_bench
from ..bench._server_stats import StatsPoller, poll_interval_s, tier_means
from ..bench._target import http_get_json, parse_target
from ..service import launch_stack
from ._arms import ExternalArm, load_arm
from ._breakdown import BREAKDOWN_COLUMNS, client_mean_ms, combine_tiers
from ._churn import Churn, ChurnPlan
from ._manifest import environment_manifest

__all__ = ["TrialResult", "ROW_COLUMNS", "run_trial", "load_trial", "memory_per_client_kb",
           "memory_held_mb", "ProcessSampler", "flatten_stats"]

ROW_COLUMNS = ("pair", "position", "arm", "label", "load", "transport", "throughput_rps",
               "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mem_per_client_kb",
               "mem_held_mb", "ttfb_p50_ms", "ttfb_p99_ms",
               "gateway_peak_mb", "model_server_peak_mb", "gateway_grown_mb",
               "model_server_grown_mb", "offered_rps", "achieved_fraction", "dropped", "errors",
               "valid", "invalid_reasons", "gateway_cpu_percent", "model_server_cpu_percent",
               "children_cpu_percent", *BREAKDOWN_COLUMNS)


def memory_per_client_kb(idle_rss: Mapping[str, float], load_rss: Mapping[str, float],
                         clients: int) -> float | None:
    """KiB held per closed-loop client: Σ (load − idle) bytes ÷ the loop's clients.

    The divisor is the load's concurrency, the same in both arms of a comparison, so the
    ratio of two arms is the ratio of the memory they held. (``mem_per_request_kb`` divided
    by requests in flight: about the clients in a closed loop, but in an open loop a faster
    arm has fewer in flight for the same memory held, and read worse per request.)

    None when it cannot be measured: no clients, or no net growth over idle (RSS moves in
    pages, so a tiny working set can read as zero or below; clipping such readings to 0 per
    process would bias the sum upward, and a ratio of zeros means nothing).
    """
    if clients <= 0 or not load_rss:
        return None
    grown = sum(load_rss[name] - idle_rss.get(name, load_rss[name]) for name in load_rss)
    if grown <= 0:
        return None
    return grown / clients / 1024.0


def memory_held_mb(services: Mapping[str, Mapping[str, Any]]) -> float | None:
    """MB the load made the service hold: Σ over processes of (peak RSS in the window − idle
    RSS), each floored at a page (as the ``*_grown_mb`` columns). None if none was sampled.

    The open loop's memory figure: arms face the same arrival rate, so what they hold is
    comparable as it is; it is never divided by requests in flight.
    """
    grown = [g for g in map(_grown, services.values()) if g is not None]
    return sum(grown) if grown else None


def _memory(load: LoadSpec, services: Mapping[str, Mapping[str, Any]]
            ) -> tuple[float | None, float | None]:
    """(mem_per_client_kb, mem_held_mb) of a trial: each only for the loop it is defined for."""
    if load.mode == "open":
        return None, memory_held_mb(services)
    idle = {n: u["rss_idle_mb"] * 2**20 for n, u in services.items()
            if u.get("rss_idle_mb") is not None}
    load_rss = {n: u["rss_load_mb"] * 2**20 for n, u in services.items() if u.get("rss_load_mb")}
    return memory_per_client_kb(idle, load_rss, load.concurrency), None


def flatten_stats(doc: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """One flat row of numbers from a server's nested ``/stats`` JSON, keys joined by dots.

    ::

        {"pool": {"requests": 9}, "batching": {"digits": {"batches": 3,
         "size": {"bounds": [1, 8], "counts": [1, 2, 0], "sum": 9.0, "count": 3}}}}
        -> {"pool.requests": 9, "batching.digits.batches": 3,
            "batching.digits.size.count": 3, "batching.digits.size.sum": 9.0,
            "batching.digits.size.mean": 3.0, "batching.digits.size.le_1": 1,
            "batching.digits.size.le_8": 2, "batching.digits.size.le_inf": 0}

    Every number at any depth becomes a column, so a statistic a component adds shows up
    without a change here. A histogram (a dict with ``bounds`` and ``counts`` lists) keeps
    its count, sum and mean (no mean when empty) and one column per bucket (``.le_<bound>``,
    the bucket's own count, not cumulative; ``.le_inf`` above the last bound), so a day's
    figure can draw the distribution from ``server_stats.csv``; lists, strings, None and
    bools (states, not statistics) are left out.
    """
    out: dict[str, float] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            bounds, counts = value.get("bounds"), value.get("counts")
            if isinstance(bounds, list) and isinstance(counts, list):
                count, total = value.get("count"), value.get("sum")
                if _is_number(count) and _is_number(total):
                    out.update({f"{name}.count": count, f"{name}.sum": total})
                    if count:
                        out[f"{name}.mean"] = total / count
                if len(counts) == len(bounds) + 1 and all(map(_is_number, counts)):
                    for bound, n in zip([*bounds, None], counts):  # per bucket, not cumulative
                        out[f"{name}.le_{'inf' if bound is None else f'{bound:g}'}"] = n
            else:
                out.update(flatten_stats(value, f"{name}."))
        elif _is_number(value):
            out[name] = value
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ProcessSampler:
    """A thread that samples CPU time and RSS of named processes at a fixed interval."""

    def __init__(self, pids: Mapping[str, int], interval_s: float = 0.1) -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        # (t_ns, name, cpu_s, rss, children_cpu_s): children are the process's own
        # helpers (the model server's loader processes, MLServer's workers), live ones
        self.samples: list[tuple[int, str, float, int, float]] = []
        self.lost: set[str] = set()

    def __repr__(self) -> str:
        return f"<ProcessSampler [{', '.join(self._procs)} | {len(self.samples)} samples]>"

    def sample(self) -> None:
        """Take one sample of every process now."""
        import psutil

        for name, proc in self._procs.items():
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    rss = proc.memory_info().rss
                    children = proc.children(recursive=True)
            except psutil.Error:
                self.lost.add(name)
                continue
            child_cpu = 0.0
            for child in children:
                with contextlib.suppress(psutil.Error):
                    times = child.cpu_times()
                    child_cpu += times.user + times.system
            self.samples.append((time.monotonic_ns(), name, cpu.user + cpu.system, rss,
                                 child_cpu))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> "ProcessSampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def usage(self, start_ns: int, end_ns: int) -> dict[str, dict[str, float | None]]:
        """Per process within [start, end]: CPU % of a core, median and peak RSS (MiB), and
        ``children_cpu_percent``, the CPU its helper processes used (a child that started or
        ended inside the window counts for the part of it seen; one that lived between two
        samples is missed)."""
        out: dict[str, dict[str, float | None]] = {}
        for name in self._procs:
            rows = [s for s in self.samples if s[1] == name]
            inside = [s for s in rows if start_ns <= s[0] <= end_ns]  # never idle samples
            if len(inside) < 1:
                out[name] = {"cpu_percent": None, "rss_load_mb": None, "rss_peak_mb": None,
                             "children_cpu_percent": None}
                continue
            first, last = inside[0], inside[-1]
            dt = (last[0] - first[0]) / 1e9
            rss = sorted(s[3] for s in inside)
            # children come and go: add up the increases between samples, never a drop
            child_s = sum(max(0.0, b[4] - a[4]) for a, b in zip(inside, inside[1:]))
            out[name] = {"cpu_percent": 100.0 * (last[2] - first[2]) / dt if dt > 0 else None,
                         "rss_load_mb": rss[len(rss) // 2] / 2**20, "rss_peak_mb": rss[-1] / 2**20,
                         "children_cpu_percent": 100.0 * child_s / dt if dt > 0 else None}
        return out


def _stats(url: str | None) -> dict[str, Any] | None:
    if not url:
        return None
    try:
        return http_get_json(parse_target(url), "/stats")  # type: ignore[no-any-return]
    except BenchError as exc:
        return {"error": str(exc)}


@dataclass(frozen=True, kw_only=True)
class TrialResult:
    """One trial: its bench run, what the service processes used, validity, manifest."""

    label: str
    load: str
    bench: BenchResult
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats_before: dict[str, Any] = field(default_factory=dict)
    stats_after: dict[str, Any] = field(default_factory=dict)
    #: closed loop only: KiB held per client (see :func:`memory_per_client_kb`)
    mem_per_client_kb: float | None = None
    #: open loop only: MB held, peak - idle (see :func:`memory_held_mb`)
    mem_held_mb: float | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    valid: bool = True
    invalid_reasons: tuple[str, ...] = ()
    path: Path | None = None
    pair: int | None = None
    position: int | None = None
    arm: str | None = None
    #: model lifecycle events during the run (a ChurnPlan's; see ``_churn``), plain rows
    events: tuple[dict[str, Any], ...] = ()
    #: the client's mean latency split into the servers' parts (``_breakdown.py``), with the
    #: span it covers and each tier's means; None when no tier keeps Triton's statistics
    breakdown: dict[str, Any] | None = None
    #: per tier, the two ``/v2/models/stats`` snapshots the breakdown differences
    model_stats: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.bench.summary
        return (f"<TrialResult {self.label} {self.load} {self.transport} "
                f"[{s.get('throughput_rps', 0):,.0f} req/s,"
                f" p99 {s.get('p99_ms')} ms | {'valid' if self.valid else 'INVALID'}]>")

    @property
    def transport(self) -> str:
        """How the load generator reached the service: "http" (REST) or "grpc" (the v2 gRPC
        service), as its run recorded (runs before 2026-12-06 say it by their target)."""
        s = self.bench.summary
        return str(s.get("transport") or
                   ("grpc" if str(s.get("target", "")).startswith("grpc://") else "http"))

    def row(self, **overrides: Any) -> dict[str, Any]:
        """One row of the tidy trial table (``pair``/``position``/``arm`` may be given)."""
        s = self.bench.summary
        row = {"pair": self.pair, "position": self.position, "arm": self.arm,
               "label": self.label, "load": self.load, "transport": self.transport,
               "throughput_rps": s.get("throughput_rps"), "p50_ms": s.get("p50_ms"),
               "p90_ms": s.get("p90_ms"), "p99_ms": s.get("p99_ms"), "p999_ms": s.get("p999_ms"),
               "max_ms": s.get("max_ms"), "mem_per_client_kb": self.mem_per_client_kb,
               "mem_held_mb": self.mem_held_mb,
               # time to first byte (built-in generator only; wrk cannot see it) and each
               # tier's peak resident memory in the window: what streaming should change
               "ttfb_p50_ms": s.get("ttfb_p50_ms"), "ttfb_p99_ms": s.get("ttfb_p99_ms"),
               "gateway_peak_mb": self.services.get("gateway", {}).get("rss_peak_mb"),
               "model_server_peak_mb": self.services.get("model-server", {}).get("rss_peak_mb"),
               # the peak above the idle process: what the load itself made the tier hold
               "gateway_grown_mb": _grown(self.services.get("gateway")),
               "model_server_grown_mb": _grown(self.services.get("model-server")),
               # open loop: what was offered, the share of it answered in the window, and the
               # requests the generator dropped (a target is judged at the load served)
               "offered_rps": s.get("offered_rps"), "achieved_fraction": s.get("achieved_fraction"),
               "dropped": s.get("dropped"),
               "errors": int(s.get("errors_total") or 0), "valid": self.valid,
               "invalid_reasons": "; ".join(self.invalid_reasons),
               # CPU % of a core in the window: each tier, and the model server's helper
               # processes (its background loaders: what Thursday's loads cost)
               "gateway_cpu_percent": self.services.get("gateway", {}).get("cpu_percent"),
               "model_server_cpu_percent":
                   self.services.get("model-server", {}).get("cpu_percent"),
               "children_cpu_percent":
                   self.services.get("model-server", {}).get("children_cpu_percent"),
               # the breakdown: mean_ms is the client's mean over the span the servers'
               # snapshots cover (the window's mean when there is no breakdown)
               **{c: (self.breakdown or {}).get(c) for c in BREAKDOWN_COLUMNS}}
        if row["mean_ms"] is None:
            row["mean_ms"] = s.get("mean_ms")
        unknown = set(overrides) - set(ROW_COLUMNS)
        if unknown:
            raise ValueError(f"unknown trial-table column(s): {', '.join(sorted(unknown))}")
        row.update(overrides)
        return row

    def stats_row(self) -> dict[str, float]:
        """The servers' ``/stats`` after the trial as one flat row: ``{"gateway.pool.requests":
        ...}`` (see :func:`flatten_stats`); the session writes these rows to
        ``server_stats.csv``."""
        return {f"{tier}.{key}": value for tier, doc in self.stats_after.items() if doc
                for key, value in flatten_stats(doc).items()}

    def to_dict(self) -> dict[str, Any]:
        """Everything but the raw records, JSON-ready (``trial.json``)."""
        return {"schema_version": self.bench.summary.get("schema_version"), "label": self.label,
                "load": self.load, "transport": self.transport, "services": self.services,
                "stats_before": self.stats_before,
                "stats_after": self.stats_after, "mem_per_client_kb": self.mem_per_client_kb,
                "mem_held_mb": self.mem_held_mb,
                "manifest": self.manifest, "valid": self.valid,
                "invalid_reasons": list(self.invalid_reasons), "pair": self.pair,
                "position": self.position, "arm": self.arm, "events": list(self.events),
                "breakdown": self.breakdown, "model_stats": self.model_stats}


def _grown(use: Mapping[str, Any] | None) -> float | None:
    """Peak RSS in the window minus idle RSS (MB), floored at a page: None if not sampled."""
    if not use or use.get("rss_peak_mb") is None or use.get("rss_idle_mb") is None:
        return None
    return max(4096 / 2**20, float(use["rss_peak_mb"]) - float(use["rss_idle_mb"]))


def load_trial(path: str | Path) -> TrialResult:
    """Read a trial folder (``trial.json`` + ``bench/``) back."""
    folder = Path(path)
    try:
        doc = orjson.loads((folder / "trial.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise BenchError(f"{folder} is not a trial folder: {exc}") from None
    doc.pop("schema_version", None)
    doc.pop("transport", None)  # the run's own summary says it
    doc["invalid_reasons"] = tuple(doc.get("invalid_reasons") or ())
    doc["events"] = tuple(doc.get("events") or ())
    # trials recorded before 2026-12-06 hold mem_per_request_kb (÷ requests in flight), never
    # judged now; their services' RSS readings give the memory figures of today's definition
    doc.pop("mem_per_request_kb", None)
    if "mem_per_client_kb" not in doc:
        with contextlib.suppress(BenchError, ConfigError, KeyError, TypeError):
            doc["mem_per_client_kb"], doc["mem_held_mb"] = _memory(
                LoadSpec.parse(str(doc.get("load"))), doc.get("services") or {})
    return TrialResult(bench=load_run(folder / "bench"), path=folder, **doc)


def run_trial(config: Any, *, repository: str | Path, load: LoadSpec,
              workload: Workload | Mapping[str, Any] | str | Path | None = None,
              warmup_s: float = 2.0, duration_s: float = 10.0, seed: int = 0,
              out_dir: str | Path | None = None, cpus: Mapping[str, set[int]] | None = None,
              gateway: bool = True, gates: ValidityGates | None = None,
              label: str | None = None, launcher: Callable[..., ContextManager[Any]] | None = None,
              sample_interval_s: float = 0.1, ready_timeout_s: float = 30.0,
              churn: ChurnPlan | None = None,
              git: Mapping[str, Any] | None = None, transport: str = "http") -> TrialResult:
    """Run one trial of ``config`` under ``load`` on a fresh stack.

    Args:
        config: a ServiceConfig, YAML path, mapping or None (the baseline), or an
            external arm (``optkit.lab._arms``: a command that starts a service, or a URL).
        repository: the model repository the model server serves.
        cpus: pinning for ``model-server``, ``gateway`` and ``bench`` (the generator).
        launcher: a ``launch_stack``-compatible function (tests pass a stub).
        churn: model loads/reloads to run against the model server while the load
            generator runs (warm-up and window); their events land in ``events``.
        git: the session's ``git_state()`` for the manifest (asked of git when not given).

    Returns:
        the :class:`TrialResult`, written to ``out_dir`` when given.
    """
    cfg = load_arm(config)  # an optkit config, or an external arm (command / url)
    cfg, over_grpc = _transport(cfg, transport)
    if over_grpc and load.engine == "wrk":
        raise ConfigError(f"arm {cfg.name!r} is measured over gRPC: engine 'wrk' speaks HTTP "
                          f"only; use engine 'builtin'")
    label = label or cfg.name
    pins = dict(cpus or {})
    bench_cpus = pins.pop("bench", None)
    if isinstance(cfg, ExternalArm) and launcher is None:
        launcher = functools.partial(cfg.launch, log_dir=out_dir)  # service.log in the trial
    launch = launcher or launch_stack
    with launch(cfg, repository=Path(repository), gateway=gateway, cpus=pins or None,
                ready_timeout_s=ready_timeout_s) as stack:
        urls = {"model-server": stack.model_server_url, "gateway": stack.gateway_url}
        before = {name: _stats(url) for name, url in urls.items() if url}
        common = dict(workload=workload, seed=seed, cpus=bench_cpus, gates=gates)
        target = _grpc_front(stack, gateway) if over_grpc and not isinstance(cfg, ExternalArm) \
            else stack.url
        prepare(target, workload, seed=seed)  # one request per model: lazy set-up done
        pollers = {tier: StatsPoller(url, poll_interval_s(duration_s))
                   for tier, url in _stats_tiers(stack).items()}
        sampler = ProcessSampler(stack.pids, sample_interval_s)
        for _ in range(3):  # idle RSS: three quick samples (the stack has just answered)
            time.sleep(min(sample_interval_s, 0.01))
            sampler.sample()
        idle = {name: float(statistics.median(s[3] for s in sampler.samples if s[1] == name))
                for name in stack.pids if name not in sampler.lost}
        churner = Churn(churn, stack.model_server_url) if churn and stack.model_server_url \
            else contextlib.nullcontext()
        with sampler, churner, contextlib.ExitStack() as polling:
            for poller in pollers.values():  # connected before the load's connections
                polling.enter_context(poller)
            # one generator run: the warm-up flows straight into the window (no idle gap,
            # no second probe); five windows so the stability gate (>= 3) always applies
            bench = run_bench(target, load, warmup_s=warmup_s, duration_s=duration_s,
                              window_s=max(0.1, duration_s / 5),
                              out_dir=Path(out_dir) / "bench" if out_dir else None, **common)
        after = {name: _stats(url) for name, url in urls.items() if url}
        ws, we = bench.summary["window_start_ns"], bench.summary["window_end_ns"]
        services = sampler.usage(ws, we)
        lost = set(sampler.lost)
        events = tuple(churner.records()) if isinstance(churner, Churn) else ()
    breakdown, model_stats = _breakdown(bench, pollers)
    for name, use in services.items():
        use["rss_idle_mb"] = idle[name] / 2**20 if name in idle else None
    per_client, held = _memory(load, services)
    reasons = list(bench.invalid_reasons)
    reasons += [f"service {name!r} exited during the trial" for name in sorted(lost)]
    manifest = environment_manifest(
        git=git, config=cfg.to_dict(), seed=seed,
        load=load.to_dict(), warmup_s=warmup_s, duration_s=duration_s, gateway=gateway,
        cpus={k: sorted(v) for k, v in (cpus or {}).items()})
    result = TrialResult(label=label, load=load.label, bench=bench, services=services,
                         stats_before=before, stats_after=after, mem_per_client_kb=per_client,
                         mem_held_mb=held,
                         manifest=manifest, valid=not reasons, invalid_reasons=tuple(reasons),
                         events=events, breakdown=breakdown, model_stats=model_stats)
    if out_dir is not None:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "trial.json").write_bytes(orjson.dumps(
            result.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        result = dataclasses.replace(result, path=folder)
    return result


def _transport(cfg: Any, transport: str) -> tuple[Any, bool]:
    """The arm as it runs and whether its load goes over gRPC. An external arm's url decides
    (a ``grpc://`` url); ``transport="grpc"`` puts an optkit config's load on its front tier's
    v2 gRPC service, turned on (``server.grpc_port: 0``, a free port per tier) if it is not."""
    if transport not in ("http", "grpc"):
        raise ConfigError(f"transport must be 'http' or 'grpc', got {transport!r}")
    if isinstance(cfg, ExternalArm):
        own = getattr(cfg, "transport", "http")
        if transport == "grpc" and own != "grpc":
            raise ConfigError(f"arm {cfg.name!r} is served over HTTP ({cfg.url}): transport "
                              f"'grpc' drives optkit configs over their gRPC port; give the "
                              f"arm a grpc:// url to measure it over gRPC")
        return cfg, own == "grpc"
    if transport == "http":
        return cfg, False
    if cfg.server.grpc_port is None:
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, grpc_port=0))
    return cfg, True


def _grpc_front(stack: Any, gateway: bool) -> str:
    """``grpc://`` target of the tier clients meet: the gateway, else the model server."""
    tier = "gateway" if gateway and "gateway" in stack.services else "model-server"
    target = stack.services[tier].grpc_target
    if not target:
        raise ConfigError(f"the {tier} serves no gRPC port (its log says why)")
    return f"grpc://{target}"


def _stats_tiers(stack: Any) -> dict[str, str]:
    """The URLs whose statistics a trial polls: the gateway's, and the server's behind it (an
    external arm's own URL when nothing is in front of it; its REST side, ``stats_url``, when
    that URL is gRPC). Statistics are read over REST only: a gRPC-only server gives none."""
    gateway = getattr(stack, "gateway_url", None)
    server = (getattr(stack, "model_server_url", None) or getattr(stack, "stats_url", None)
              or getattr(stack, "upstream_url", None) or (None if gateway else stack.url))
    return {tier: url for tier, url in (("gateway", gateway), ("model-server", server))
            if url and not url.startswith("grpc://")}


def _breakdown(bench: BenchResult, pollers: Mapping[str, StatsPoller]
               ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The trial's breakdown and the snapshots it came from (see ``_breakdown.py``)."""
    ws, we = bench.summary.get("window_start_ns"), bench.summary.get("window_end_ns")
    if ws is None or we is None:
        return None, {}
    spans = {tier: p.window(int(ws), int(we)) for tier, p in pollers.items()}
    spans = {tier: span for tier, span in spans.items() if span is not None}
    if not spans:
        return None, {}
    models = bench.summary.get("models") or None
    raw = {tier: {"start_ns": a[0], "end_ns": b[0], "start": a[1], "end": b[1]}
           for tier, (a, b) in spans.items()}
    means = {tier: tier_means(a[1], b[1], models) for tier, (a, b) in spans.items()}
    start = max(a[0] for a, _ in spans.values())
    end = min(b[0] for _, b in spans.values())
    mean, n = client_mean_ms(bench.records, start, end)
    if mean is None and not bench.records:  # wrk: no records, only the window's mean
        mean = bench.summary.get("mean_ms")
    parts = combine_tiers(mean, means)
    if parts is None:
        return None, raw
    return {**parts, "span_ns": [start, end], "client_requests": n,
            "tiers": {tier: m for tier, m in means.items() if m is not None}}, raw
