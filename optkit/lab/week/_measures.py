"""What a day measures beside its A/B session: start-up, bulk scoring, latency against load.

::

    startup_times([streaming, loading])    fresh model servers: port, live, first answer, ready
    bulk_scoring([batching, streaming])    one generate_stream of 10,000 rows: first and last event
    latency_curve(pooling, batching)       p50/p99 against the offered open-loop rate, per arm
    slo_table([baseline, integrated])      the highest open-loop rate whose p99 meets the SLO
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..._config import load_config
from ...service import launch_stack
from .._bulk import bulk_stream
from .._slo import latency_vs_load, throughput_at_slo
from .._startup import startup_time

from ._days import experiment

__all__ = ["startup_times", "bulk_scoring", "latency_curve", "slo_table"]


def startup_times(configs: Sequence[str | Path], *, repository: str | Path, model: str,
                  repeats: int = 3) -> pd.DataFrame:
    """Start-up of a fresh model server per config, ``repeats`` times each, interleaved.

    Columns: config, repeat, port_s, live_s, first_answer_s, ready_s (see
    ``optkit.lab._startup``): how soon it binds, is live, answers ``model``, is ready.
    """
    rows = []
    for repeat in range(repeats):
        for config in configs:
            cfg = load_config(config)
            rows.append({"config": cfg.name, "repeat": repeat,
                         **startup_time(cfg, repository=repository, model=model)})
    return pd.DataFrame(rows)


def bulk_scoring(configs: Sequence[Any], *, repository: str | Path, model: str = "synthetic",
                 rows: int = 10_000, repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """Time the events of one ``generate_stream`` request of ``rows`` rows, per config.

    One fresh stack per config (gateway in front), ``repeats`` requests each. Columns:
    config, repeat, events, first_event_s, last_event_s, rows_scored, complete.
    """
    out = []
    for config in configs:
        cfg = load_config(config)
        with launch_stack(cfg, repository=repository) as stack:
            for repeat in range(repeats):
                out.append({"config": cfg.name, "repeat": repeat,
                            **bulk_stream(stack.url, model, rows=rows, seed=seed + repeat)})
    return pd.DataFrame(out)


def latency_curve(a: str | Path, b: str | Path, *, repository: str | Path,
                  rates: Sequence[float], step_s: float, quick: bool, seed: int,
                  workload: str = "digits") -> pd.DataFrame:
    """Both arms' p50/p99 against the offered open-loop rate (one fresh stack per arm).

    Quick mode (CI) keeps the two lowest rates and 1 s steps.
    """
    if quick or os.environ.get("OPTKIT_QUICK") == "1":
        rates, step_s = sorted(rates)[:2], 1.0
    return latency_vs_load([a, b], repository=repository, rates=rates, workload=workload,
                           step_s=step_s, warmup_s=0.5, seed=seed)


def slo_table(names: Sequence[str], *, repository: str | Path, slo_ms: float, quick: bool,
              seed: int, step_s: float = 1.0, warmup_s: float = 0.3,
              max_steps: int = 4) -> pd.DataFrame:
    """Per experiment: the highest open-loop rate whose p99 stays within ``slo_ms`` (one
    bisection each, a fresh stack), and the closed-loop capacity the search starts from.

    Columns: config, rps_at_slo, closed_32_capacity_rps. Quick mode (CI, or ``OPTKIT_QUICK=1``)
    takes one step.
    """
    rows = []
    for name in names:
        found = throughput_at_slo(experiment(name), repository=repository, slo_ms=slo_ms,
                                  step_s=step_s, warmup_s=warmup_s,
                                  max_steps=1 if quick or os.environ.get("OPTKIT_QUICK") == "1"
                                  else max_steps, seed=seed)
        rows.append({"config": found.label, "rps_at_slo": round(found.rate_rps),
                     "closed_32_capacity_rps": round(found.capacity_rps)})
    return pd.DataFrame(rows, columns=["config", "rps_at_slo", "closed_32_capacity_rps"])
