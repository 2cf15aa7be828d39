"""The ``ray`` engine: the built-in generator, split over N Ray actors, merged into one run.

::

    run_bench(engine="ray")
      ├─ ray.init: a local instance for this run (no dashboard, usage stats off, a bounded
      │            object store), or ``address`` (a cluster this machine is a node of)
      ├─ N actors, pinned to this node      each one process: _worker.run_job(shard job)
      │    ready? ── agreed start = now + 1 s (wall clock) ── run ──▶ (raw records, self-report)
      ├─ merge_shards  (raw records, one timetable)  ──▶ summarize, as the built-in engine
      └─ kill the actors; shut down what we started

The split and the merge are :mod:`._shards`; each actor runs exactly the code the
built-in engine's worker process runs (:func:`._worker.run_job`). Actors are pinned to
the driver's node even on a cluster: ``optkit bench`` only loads loopback targets, and
127.0.0.1 on another node is another machine. Ray is an optional extra: importing this
module does not import it, and the engine says how to install it when it is missing.

What Ray itself listens on is Ray's: 2.60 refuses a loopback node address
(``_node_ip_address="127.0.0.1"`` is replaced by the machine's address) and its GCS, raylet
and workers listen on all interfaces, guarded by its token authentication (on by default
in 2.60: it says so at start-up). The dashboard, which would serve HTTP, is not started.
The generators' own traffic goes to the loopback target only.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .._exceptions import BenchError
from ._generator import GeneratorJob
from ._shards import merge_shards, split_job
from ._worker import run_job

__all__ = ["run_on_ray", "ray_available", "require_ray", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'optkit[ray]'"
_START_LEAD_S = 1.0  # actors are up; this covers the run calls' dispatch and connecting
_READY_TIMEOUT_S = 60.0  # a cold actor start on a loaded 2-core machine takes seconds
_OBJECT_STORE_BYTES = 256 * 2**20  # the records of 5M requests fit; bounded, not 30 % of RAM


def ray_available() -> bool:
    """True when Ray can be imported (the ``optkit[ray]`` extra is installed)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


class GeneratorActor:
    """One generator process as a Ray actor (wrapped by ``ray.remote`` at run time)."""

    def ready(self) -> int:
        """The actor's process id, once it is up."""
        return os.getpid()

    def run(self, job: GeneratorJob) -> dict[str, Any]:
        """Run one shard; a generator that could not run is an ``error``, not a crash."""
        try:
            arrays, gen = run_job(job)
        except BenchError as exc:
            return {"error": str(exc)}
        return {"arrays": arrays, "gen": gen, "pid": os.getpid()}


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`BenchError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise BenchError(f"engine 'ray' needs Ray, which is not installed: "
                         f"{INSTALL_HINT}") from None
    return ray


def _connect(ray: Any, actors: int, address: str | None) -> bool:
    """Join or start Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        if address.startswith("ray://"):
            raise BenchError("engine 'ray' needs to run on a node of the cluster (its actors hit "
                             "a loopback target); Ray Client addresses (ray://) are not supported")
        ray.init(address=address, log_to_driver=False)
        return True
    # Ray sends usage statistics by default; a load test on loopback sends nothing anywhere.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=actors, include_dashboard=False,
             object_store_memory=_OBJECT_STORE_BYTES, log_to_driver=False)
    return True


def run_on_ray(job: GeneratorJob, *, actors: int = 2, address: str | None = None,
               budget_s: float = 60.0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run ``job`` as ``actors`` shards on Ray; return its merged records and report.

    Args:
        job: the whole run's job, as the built-in engine would run it in one process.
        actors: generator processes (each a Ray actor with one CPU).
        address: an existing Ray cluster (``auto`` or ``host:port``); None starts a local
            instance for this run and stops it after.
        budget_s: the run's whole time budget once the actors are up; overrun, they are killed.

    Raises:
        BenchError: Ray is missing, an actor could not start or failed, or the budget ran out.
    """
    ray = require_ray()
    jobs = split_job(job, actors)  # refuse a bad split before starting anything
    try:
        started = _connect(ray, actors, address)
    except BenchError:
        raise
    except Exception as exc:  # Ray raises several kinds (ConnectionError, RuntimeError, ...)
        where = f"join the Ray cluster at {address!r}" if address else "start a local Ray instance"
        raise BenchError(f"could not {where}: {exc}") from None
    handles: list[Any] = []
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor_cls = ray.remote(num_cpus=1, max_restarts=0)(GeneratorActor)
        handles = [actor_cls.options(scheduling_strategy=here).remote() for _ in jobs]
        try:
            ray.get([h.ready.remote() for h in handles], timeout=_READY_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise BenchError(f"{actors} Ray actor(s) not up within {_READY_TIMEOUT_S:.0f} s "
                             f"(does this node have {actors} free CPUs?)") from None
        start = time.time_ns() + int(_START_LEAD_S * 1e9)
        jobs = split_job(job, actors, start_unix_ns=start)
        try:
            results = ray.get([h.run.remote(j) for h, j in zip(handles, jobs)],
                              timeout=_START_LEAD_S + budget_s)
        except ray.exceptions.GetTimeoutError:
            raise BenchError(f"the Ray generators overran their {budget_s:.0f} s budget; "
                             f"killed them") from None
        except ray.exceptions.RayError as exc:
            raise BenchError(f"a Ray generator actor failed: {exc}") from None
    finally:
        for handle in handles:
            ray.kill(handle)
        if started:
            ray.shutdown()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise BenchError(errors[0])
    arrays, gen = merge_shards([(r["arrays"], r["gen"]) for r in results])
    gen["pids"] = [r["pid"] for r in results]
    return arrays, gen
