"""One run split across N generator processes, and their raw records merged back into one.

::

    GeneratorJob ──split_job(n)──▶ shard 0: timetable rows 0, n, 2n, ...   ─┐ each its own
                                   shard 1: timetable rows 1, n+1, ...     │ process (a Ray
                                   ...                                     │ actor), the same
                                   shard n-1                               ─┘ Generator
    (arrays, gen) × n ──merge_shards──▶ (arrays, gen) of one run ──▶ summarize (as built-in)

Why split the timetable by row rather than give each process ``rate / n``: the shards
together send exactly the requests of the one-process run, at the same offsets (the
seeded Poisson timetable included) and with the same bodies in the same order, so the
two engines differ only in who sends. A closed loop splits its connections instead.

Why merge raw records, never figures: a percentile of the union is not any mean of the
shards' percentiles. Each shard's times are moved onto shard 0's window (every process
agreed on one wall-clock start, but on a cluster their monotonic clocks differ), then the
rows are concatenated in timetable order and :func:`~._results.summarize` computes every
figure from them, as for one process. The generators' self-checks (CPU, loop lag) are
kept per shard and gated on the worst shard, since each is one process on one core.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .._exceptions import ConfigError
from ._generator import GeneratorJob

__all__ = ["split_job", "merge_shards"]

#: record columns that hold a monotonic time (0 = never happened)
_TIME_COLUMNS = ("scheduled_ns", "start_ns", "first_byte_ns", "end_ns")
_MAX_ERROR_SAMPLES = 5


def _share(total: int, shard: int, shards: int) -> int:
    """How many of ``total`` items fall to ``shard``: those with index ≡ shard (mod shards)."""
    return total // shards + (1 if shard < total % shards else 0)


def split_job(job: GeneratorJob, shards: int, *, start_unix_ns: int = 0) -> list[GeneratorJob]:
    """``shards`` jobs that together offer exactly ``job``'s load.

    Open loop: shard i sends timetable rows i, i + shards, ... on its share of the
    connections and of the in-flight cap. Closed loop: shard i runs its share of the
    connections. Each shard's body list is rotated so that its k-th request carries the
    body the one-process run gives request i + k·shards.

    Raises:
        ConfigError: fewer than 1 shard, or more shards than connections (or in-flight slots).
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"need an integer number of generators >= 1, got {shards!r}")
    load = job.load
    counts = ({"connections": load.connections, "max_in_flight": load.max_in_flight}
              if load.mode == "open" else {"concurrency": load.concurrency})
    for name, value in counts.items():
        if shards > value:
            raise ConfigError(f"{shards} generators cannot share {name} {value}: each needs "
                              f"at least one (raise {name} or use fewer generators)")
    jobs = []
    for i in range(shards):
        pool = len(job.requests)
        order = [(i + k * shards) % pool for k in range(pool)]
        jobs.append(dataclasses.replace(
            job, load=dataclasses.replace(load, **{k: _share(v, i, shards)
                                                   for k, v in counts.items()}),
            requests=tuple(job.requests[j] for j in order),
            models=tuple(job.models[j % len(job.models)] for j in order),
            max_requests=max(1, _share(job.max_requests, i, shards)),
            shard=i, shards=shards, start_unix_ns=start_unix_ns))
    return jobs


def _worst(parts: Sequence[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Per quantile, the worst shard's value of a self-check (not a merged percentile)."""
    values = [p[key] for p in parts if p.get(key)]
    if not values:
        return None
    return {q: max(float(v[q]) for v in values) for q in values[0]}


def merge_shards(parts: Sequence[tuple[dict[str, np.ndarray], dict[str, Any]]]
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The raw records and generator report of one run, from its shards' (see module doc)."""
    if not parts:
        raise ConfigError("no shard results to merge")
    gens = [gen for _, gen in parts]
    base = int(gens[0]["window_start_ns"])
    columns: dict[str, list[np.ndarray]] = {name: [] for name in parts[0][0]}
    for arrays, gen in parts:
        shift = base - int(gen["window_start_ns"])
        for name, values in arrays.items():
            if name in _TIME_COLUMNS:
                values = np.where(values != 0, values + shift, 0).astype(values.dtype)
            columns[name].append(values)
    merged = {name: np.concatenate(chunks) for name, chunks in columns.items()}
    order = np.argsort(merged["scheduled_ns"], kind="stable")
    merged = {name: values[order] for name, values in merged.items()}
    wall = max(int(g["window_end_ns"]) - int(g["window_start_ns"]) for g in gens)
    cpu_s = [float(g["cpu_s"]) for g in gens]
    cpu_pct = [float(g["cpu_percent"]) for g in gens]
    samples = [s for g in gens for s in g.get("error_samples") or []][:_MAX_ERROR_SAMPLES]
    gen = {
        "t0_ns": base - (int(gens[0]["window_start_ns"]) - int(gens[0]["t0_ns"])),
        "window_start_ns": base, "window_end_ns": base + wall,
        "cpu_s": sum(cpu_s),
        # the gate is per process (one core each): the busiest shard's share of its core
        "cpu_percent": max(cpu_pct), "cpu_percent_total": sum(cpu_pct),
        "loop_lag_ms": _worst(gens, "loop_lag_ms"),
        "schedule_lag_ms": _worst(gens, "schedule_lag_ms"),
        "connections": sum(int(g["connections"]) for g in gens),
        "reconnects": sum(int(g["reconnects"]) for g in gens),
        "connect_failures": sum(int(g["connect_failures"]) for g in gens),
        "unsent_at_end": sum(int(g["unsent_at_end"]) for g in gens),
        "stopped_by_max_requests": any(g["stopped_by_max_requests"] for g in gens),
        "error_samples": samples,
        "event_loop": gens[0].get("event_loop"),
        "precise_timer": all(g.get("precise_timer") for g in gens),
        "start_late_ms": max(float(g.get("start_late_ms") or 0.0) for g in gens),
        # how far apart the shards' windows really began (one machine: one monotonic clock)
        "window_start_spread_ms": (max(int(g["window_start_ns"]) for g in gens)
                                   - min(int(g["window_start_ns"]) for g in gens)) / 1e6,
        "processes": len(gens),
        # each shard's own report, its window start as it was before the shift
        "shards": [dict(g) for g in gens],
    }
    return merged, gen
