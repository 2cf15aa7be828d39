"""How a session runs: pairs, trial timing, loads, workload, seed; and what a load string means.

::

    CompareSettings(pairs=24, warmup_s=1, duration_s=2, loads=("closed:32", "open:2500"), ...)
        STANDARD = the defaults (a day's session)       QUICK = CI: few short trials, provisional
    parse_load("closed:32") -> LoadSpec(closed, 32 connections, wrk if installed)
    parse_load("open:2000") -> LoadSpec(open, 2,000 req/s, Poisson arrivals, built-in generator)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .._exceptions import ConfigError
from ..bench import LoadSpec, ValidityGates, wrk_available
from ._churn import ChurnPlan
from .stats import DEFAULT_PAIRS, EXTRA_METRICS, METRICS, metrics_for_load

__all__ = ["CompareSettings", "parse_load", "QUICK", "STANDARD"]


@dataclass(frozen=True, kw_only=True)
class CompareSettings:
    """How a session runs: pairs, trial timing, loads, workload, seed.

    ``metrics`` names columns analysed besides the four core ones (throughput, p50, p99, and
    memory: per client in a closed loop, held in an open one), from
    ``optkit.lab.stats.EXTRA_METRICS``: e.g. ``("ttfb_p99_ms",
    "gateway_peak_mb")`` for the streaming day. They join the same Holm family.
    """

    pairs: int = DEFAULT_PAIRS
    warmup_s: float = 1.0  # wrk counts whole seconds: keep both in whole seconds
    duration_s: float = 2.0  # 24 pairs of 1 + 2 s trials keep a day within ~4 minutes
    loads: tuple[str, ...] = ("closed:32",)
    workload: str = "digits"
    seed: int = 0
    quick: bool = False
    max_reruns: int = 3
    engine: str = "auto"
    metrics: tuple[str, ...] = ()
    #: model loads/reloads against the model server during every trial (Thursday's churn)
    churn: ChurnPlan | None = None
    #: validity gates of every trial (None: the defaults). A churn session switches the
    #: stability gate off: load stalls make throughput uneven across windows by design.
    gates: ValidityGates | None = None
    #: how the load reaches an optkit config's stack: "http" (REST) or "grpc" (the front
    #: tier's v2 gRPC service, on a free port per trial); an external arm's url decides its own
    transport: str = "http"

    def __post_init__(self) -> None:
        if isinstance(self.gates, Mapping):
            object.__setattr__(self, "gates", ValidityGates(**self.gates))
        if isinstance(self.churn, Mapping):
            object.__setattr__(self, "churn", ChurnPlan(**self.churn))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        unknown = set(self.metrics) - set(EXTRA_METRICS)
        if unknown:
            raise ConfigError(f"unknown metric(s) {sorted(unknown)}; choose from "
                              f"{sorted(EXTRA_METRICS)}")
        if self.pairs < 2:
            raise ConfigError(f"pairs must be >= 2, got {self.pairs}")
        if self.transport not in ("http", "grpc"):
            raise ConfigError(f"transport must be 'http' or 'grpc', got {self.transport!r}")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ConfigError("duration_s must be > 0 and warmup_s >= 0")
        if isinstance(self.loads, str) or not self.loads:
            raise ConfigError("loads must be a non-empty sequence like ('closed:32',)")
        for text in self.loads:
            parse_load(text, engine="builtin")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["loads"] = list(self.loads)
        out["metrics"] = list(self.metrics)
        out["churn"] = self.churn.to_dict() if self.churn else None
        return out

    def analysed_metrics(self, load: str | None = None) -> dict[str, bool]:
        """Metric -> higher_is_better for every column this session's verdicts cover; at
        ``load``, only those defined there (``stats.metrics_for_load``)."""
        metrics = {**METRICS, **{m: EXTRA_METRICS[m] for m in self.metrics}}
        return metrics if load is None else metrics_for_load(metrics, load)


def parse_load(text: str, *, engine: str = "auto", grpc: bool = False) -> Any:
    """``closed:32`` -> closed loop at 32 connections; ``open:2000`` -> 2,000 req/s offered.

    ``engine="auto"`` uses wrk for closed loops when it is installed, else the built-in
    generator; open loops always use the built-in one (wrk cannot keep a schedule) with
    Poisson arrivals, the realistic model of independent clients. ``grpc``: an arm of the
    session is measured over gRPC, which wrk cannot speak: "auto" is then the built-in
    generator (for both arms, so they are measured alike) and "wrk" a ConfigError.
    """
    spec = LoadSpec.parse(str(text))
    if spec.mode == "open":
        return dataclasses.replace(spec, arrival="poisson", engine="builtin")
    if grpc and engine == "wrk":
        raise ConfigError("engine 'wrk' speaks HTTP only, and an arm of this session is "
                          "measured over gRPC (a grpc:// url): use engine 'builtin' (or 'auto')")
    if grpc and engine == "auto":
        engine = "builtin"
    chosen = engine if engine != "auto" else ("wrk" if wrk_available() else "builtin")
    return dataclasses.replace(spec, engine=chosen)


#: Standard mode: the defaults above. Quick mode (CI, nbmake): fewer, shorter trials;
#: its verdicts are marked provisional. Its trials only have to show that every step
#: runs (a half-second window holds thousands of requests), so they are kept short.
STANDARD = CompareSettings()
QUICK = CompareSettings(pairs=8, warmup_s=0.4, duration_s=0.8, quick=True)
