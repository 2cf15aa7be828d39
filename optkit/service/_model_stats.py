"""Triton's statistics extension: where a tier's time goes, per model and version.

::

    entry ─ body read ─┬─ compute_input ──┬─ queue ──────┬─ compute_infer ─┬─ compute_output ─┐
                       │ decode, validate │ in a batcher │ the model call  │ encode answer    │
                       └──────────────────┴──────────────┴─────────────────┴──────────────────┘
    success: the whole request on this tier, entry to answer built (so it holds the parts,
    plus reading the body and the hand-offs between them)

``GET /v2/models/stats``, ``/v2/models/{m}/stats`` and ``/v2/models/{m}/versions/{v}/stats``
answer ``{"model_stats": [...]}`` in Triton's format (``tritonclient``'s
``get_inference_statistics()`` reads it): per model and version, cumulative
``{"count", "ns"}`` for success, fail, queue, compute_input, compute_infer and
compute_output (every part counted once per successful request, as Triton does:
a request riding a batch gets its batch's model time), ``inference_count`` (rows
inferred), ``execution_count`` (model calls: fewer than requests when batching
merges them), ``last_inference`` (ms since the epoch) and ``batch_stats``, one
entry per batch size actually run, each counting model calls of that size.
cache_hit / cache_miss are always zero: optkit has no response cache.

The hot path pays a few integer additions and a ``perf_counter_ns`` per step; the
records are plain attributes changed only on the serving loop (no locks). With
``--workers N`` every worker keeps its own books, as for ``/stats``: the shared
port answers with the answering worker's own (see ``_workers.py``).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

__all__ = ["ModelStats", "ModelStatsBook"]

_PARTS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


class ModelStats:
    """One model version's cumulative record; changed only by :meth:`ok`, :meth:`failed`
    and :meth:`executed`."""

    __slots__ = ("name", "version", "last_inference_ms", "inference_count", "execution_count",
                 "success_n", "success_ns", "fail_n", "fail_ns", "queue_ns", "input_ns",
                 "infer_ns", "output_ns", "batches")

    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version
        self.last_inference_ms = self.inference_count = self.execution_count = 0
        self.success_n = self.success_ns = self.fail_n = self.fail_ns = 0
        # the parts are counted once per success: their count is success_n
        self.queue_ns = self.input_ns = self.infer_ns = self.output_ns = 0
        #: batch size -> [executions, compute_input ns, compute_infer ns, compute_output ns]
        self.batches: dict[int, list[int]] = {}

    def ok(self, rows: int, total_ns: int, input_ns: int, queue_ns: int, infer_ns: int,
           output_ns: int) -> None:
        """A request answered successfully, with its time split into parts."""
        self.success_n += 1
        self.success_ns += total_ns
        self.input_ns += input_ns
        self.queue_ns += queue_ns
        self.infer_ns += infer_ns
        self.output_ns += output_ns
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def failed(self, total_ns: int) -> None:
        """A request for this model answered with an error, after ``total_ns``."""
        self.fail_n += 1
        self.fail_ns += total_ns
        self.last_inference_ms = time.time_ns() // 1_000_000

    def executed(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model call (or upstream call) over ``batch_size`` rows."""
        self.execution_count += 1
        entry = self.batches.get(batch_size)
        if entry is None:
            entry = self.batches[batch_size] = [0, 0, 0, 0]
        entry[0] += 1
        entry[1] += input_ns
        entry[2] += infer_ns
        entry[3] += output_ns

    def triton(self) -> dict[str, Any]:
        """The record in Triton's ``model_stats`` entry format."""
        n = self.success_n
        return {
            "name": self.name, "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {
                "success": _duration(n, self.success_ns),
                "fail": _duration(self.fail_n, self.fail_ns),
                "queue": _duration(n, self.queue_ns),
                "compute_input": _duration(n, self.input_ns),
                "compute_infer": _duration(n, self.infer_ns),
                "compute_output": _duration(n, self.output_ns),
                "cache_hit": _duration(0, 0), "cache_miss": _duration(0, 0)},
            "batch_stats": [
                {"batch_size": size, "compute_input": _duration(e[0], e[1]),
                 "compute_infer": _duration(e[0], e[2]), "compute_output": _duration(e[0], e[3])}
                for size, e in sorted(self.batches.items())],
        }


class ModelStatsBook:
    """Every model version's :class:`ModelStats`, made on first use.

    Only a model the tier knows gets a record (the caller checks first), so a
    stream of unknown names cannot grow it.
    """

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], ModelStats] = {}

    def model(self, name: str, version: str) -> ModelStats:
        record = self._records.get((name, version))
        if record is None:
            record = self._records[(name, version)] = ModelStats(name, version)
        return record

    def find(self, name: str | None = None, version: str | None = None) -> list[ModelStats]:
        """The records kept, of one model (and version) or all, in name order."""
        return [r for key, r in sorted(self._records.items())
                if (name is None or key[0] == name) and (version is None or key[1] == version)]

    @staticmethod
    def answer(records: Iterable[ModelStats]) -> dict[str, Any]:
        """The statistics extension's answer body."""
        return {"model_stats": [r.triton() for r in records]}
