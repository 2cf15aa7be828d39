"""The generator's own process: ``python -m optkit.bench._worker JOB_FILE OUT_DIR``.

The parent pickles a :class:`GeneratorJob` (bodies already encoded); this
process pins itself to ``job.cpus`` if given, runs the generator on uvloop
(when installed), and leaves ``raw.npz`` and ``gen.json`` in ``OUT_DIR`` (or
``error.json`` when it could not run). Its CPU is its own, so the generator's
self-measurement is not mixed with the caller's (a notebook, a trial runner).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import orjson

from .._exceptions import BenchError
from ._generator import Generator, GeneratorJob

__all__ = ["main", "run_job"]


async def _run(job: GeneratorJob) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    return await Generator(job).run()


def run_job(job: GeneratorJob) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Run one job in this process on a fresh (uv)loop: this process or a Ray actor's.

    Raises:
        BenchError: the generator could not run (no connections).
    """
    if job.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(job.cpus))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run  # type: ignore[assignment]
    return runner(_run(job))


def main(argv: list[str] | None = None) -> int:
    """Run one job; exit 0 with results, 2 with ``error.json``."""
    job_file, out_dir = (argv if argv is not None else sys.argv[1:])[:2]
    out = Path(out_dir)
    job: GeneratorJob = pickle.loads(Path(job_file).read_bytes())
    try:
        arrays, stats = run_job(job)
    except BenchError as exc:
        (out / "error.json").write_bytes(orjson.dumps({"error": str(exc)}))
        return 2
    np.savez(out / "raw.npz", **arrays)
    (out / "gen.json").write_bytes(orjson.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
