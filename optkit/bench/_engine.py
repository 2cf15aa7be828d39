"""``run_bench``: one bounded run against a loopback v2 target, from any caller.

::

    caller (script, CLI, Jupyter kernel with a running loop)
      │ run_bench(...)                         synchronous, no event loop needed
      ├─ parse_target / probe / check_infer    fail fast with a clear BenchError
      ├─ Workload.build                        bodies encoded before the run
      ├─ engine builtin: python -m optkit.bench._worker  (its own process and CPU;
      │                  HTTP/1.1, or gRPC for a grpc:// target: ``_grpc_client``)
      │  engine ray:     the same generator split over N Ray actors, merged (``_ray``)
      │  engine wrk:     wrk -s v2.lua (closed loop; builtin if wrk is absent)
      └─ summarize -> BenchResult  (written to out_dir when given)

Everything is bounded: the window ends, stragglers get ``timeout_s``, and the
parent kills a generator that overruns its whole budget.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from .._exceptions import BenchError, ConfigError
from ._client import encode_request
from ._generator import GeneratorJob
from ._load import LoadSpec
from ._results import SCHEMA_VERSION, BenchResult, summarize, write_run
from ._target import Target, check_infer, parse_target, probe
from ._validity import ValidityGates
from ._workload import BodyPool, InputSpec, Workload
from ._wrk import run_wrk, wrk_available

__all__ = ["run_bench", "prepare"]

_STARTUP_S = 15.0  # interpreter start, imports, connecting


def _spawn(job: GeneratorJob) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    limit = _STARTUP_S + job.warmup_s + job.duration_s + job.timeout_s + job.connect_timeout_s
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory(prefix="optkit-bench-") as tmp:
        job_file = Path(tmp) / "job.pkl"
        job_file.write_bytes(pickle.dumps(job))
        proc = subprocess.Popen([sys.executable, "-m", "optkit.bench._worker", str(job_file), tmp],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        try:
            _, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError(f"the generator process overran its {limit:.0f} s budget; "
                             f"killed it") from None
        if (Path(tmp) / "error.json").exists():
            raise BenchError(orjson.loads((Path(tmp) / "error.json").read_bytes())["error"])
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace").strip()[-1500:]
            raise BenchError(f"the generator process failed (exit {proc.returncode}):\n{tail}")
        with np.load(Path(tmp) / "raw.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        gen = orjson.loads((Path(tmp) / "gen.json").read_bytes())
    return arrays, gen


def prepare(target: str, workload: Workload | Mapping[str, Any] | str | Path | None, *,
            model: str | None = None, batch_size: int | None = None, seed: int = 0,
            probe_timeout_s: float = 2.0, inputs: Sequence[InputSpec] | None = None,
            body: str | Path | None = None) -> tuple[Target, Workload, BodyPool]:
    """Check the target and the workload, and deal the body pool.

    ``inputs`` (or the workload's own ``inputs:``) replace each model's v2 metadata, so a
    server whose metadata lists no inputs (MLServer's default) can still be measured.
    ``body`` names a JSON file sent as-is on every request to the first model (a service
    with its own tensor names, parameters or extra fields); metadata is then not read.
    """
    tgt = parse_target(target)
    wl = Workload.resolve(workload)
    if model or batch_size is not None or inputs:
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        wl = wl.replace(models=[model] if model else None, rows=batch_size, inputs=inputs)
    need_inputs = not wl.inputs and body is None
    if tgt.transport == "grpc":
        from ._grpc_client import grpc_probe

        signatures = grpc_probe(tgt.grpc_target, wl.models, timeout_s=probe_timeout_s,
                                need_inputs=need_inputs)
    else:
        signatures = probe(tgt, wl.models, timeout_s=probe_timeout_s, need_inputs=need_inputs)
    pool = _body_file_pool(body, wl.models[0]) if body is not None else wl.build(signatures,
                                                                                  seed=seed)
    for index, name in enumerate(pool.model_names):
        first = next((b for b, m in zip(pool.bodies, pool.models) if m == index), None)
        if first is None:
            continue
        if tgt.transport == "grpc":
            from ._grpc_client import grpc_check_infer, grpc_request

            grpc_check_infer(tgt.grpc_target, grpc_request(name, first),
                             timeout_s=max(probe_timeout_s, 5.0))
        else:
            check_infer(tgt, name, first, timeout_s=max(probe_timeout_s, 5.0))
    return tgt, wl, pool


def _body_file_pool(path: str | Path, model: str, max_bytes: int = 16 * 2**20) -> BodyPool:
    """A pool of one body read from ``path``: JSON, at most ``max_bytes``; rows from its shape."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BenchError(f"cannot read body file {path}: {exc}") from None
    if len(raw) > max_bytes:
        raise BenchError(f"body file {path} is {len(raw)} bytes, more than {max_bytes}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BenchError(f"body file {path} is not JSON: {exc}") from None
    try:
        rows = int(doc["inputs"][0]["shape"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        rows = 1  # not a v2 tensor list: count each request as one row
    return BodyPool((model,), (orjson.dumps(doc),), (0,), (max(rows, 1),))


def _requests(tgt: Target, pool: BodyPool) -> tuple[bytes, ...]:
    """The pool's bodies as the generator sends them: HTTP/1.1 requests, or serialized
    ``ModelInferRequest`` messages for a gRPC target."""
    if tgt.transport == "grpc":
        from ._grpc_client import grpc_request

        return tuple(grpc_request(pool.model_names[m], body)
                     for m, body in zip(pool.models, pool.bodies))
    return tuple(encode_request("POST", tgt.infer_path(pool.model_names[m]), tgt.host_header,
                                body) for m, body in zip(pool.models, pool.bodies))


def run_bench(target: str, load: LoadSpec,
              workload: Workload | Mapping[str, Any] | str | Path | None = None, *,
              model: str | None = None, batch_size: int | None = None,
              warmup_s: float = 1.0, duration_s: float = 5.0, seed: int = 0,
              out_dir: str | Path | None = None, timeout_s: float = 5.0,
              late_threshold_ms: float = 1.0, max_requests: int = 5_000_000,
              window_s: float = 1.0, gates: ValidityGates | None = None,
              cpus: set[int] | None = None, wrk_threads: int = 1,
              probe_timeout_s: float = 2.0, ray_actors: int = 2,
              ray_address: str | None = None, inputs: Sequence[InputSpec] | None = None,
              body: str | Path | None = None) -> BenchResult:
    """Offer ``load`` to a loopback v2 ``target`` and measure it.

    Args:
        target: base URL, e.g. ``http://127.0.0.1:8000``, or ``grpc://127.0.0.1:8001`` for
            the v2 gRPC service (engine builtin or ray; loopback only).
        load: closed or open loop (see :class:`LoadSpec`).
        workload: a :class:`Workload`, a mapping, a built-in name or a YAML path
            (default ``digits``); ``model``/``batch_size`` override its models/rows.
        warmup_s, duration_s: discarded warm-up, then the measurement window.
        seed: seeds the bodies and the Poisson timetable.
        out_dir: where to write ``summary.json`` and ``records.npz``.
        timeout_s: a request still unanswered after this is a timeout error.
        late_threshold_ms: a send starting later than this after its schedule is late.
        max_requests: hard cap on requests (rows) in one run.
        window_s: width of the throughput windows used for the stability gate.
        cpus: CPUs to pin the generator process to.
        ray_actors, ray_address: engine ``ray``: generator processes, and an existing Ray
            cluster to run them on (None: a local instance for this run).
        inputs: input specs used instead of the models' v2 metadata (see :func:`prepare`).
        body: a JSON file sent as-is on every request (see :func:`prepare`).

    Returns:
        the :class:`BenchResult` (with ``path`` when written).

    Raises:
        BenchError: the target is not loopback, not reachable, not v2, lacks a
            model, rejects the workload's bodies, or the generator failed.
    """
    if not duration_s > 0 or warmup_s < 0 or not timeout_s > 0:
        raise ConfigError("need duration_s > 0, warmup_s >= 0 and timeout_s > 0")
    if load.engine == "ray":
        from ._ray import require_ray

        require_ray()  # before probing anything: say at once what to install
    tgt, wl, pool = prepare(target, workload, model=model, batch_size=batch_size, seed=seed,
                            probe_timeout_s=probe_timeout_s, inputs=inputs, body=body)
    engine = load.engine
    if tgt.transport == "grpc" and engine == "wrk":
        raise ConfigError("engine 'wrk' speaks HTTP only; a grpc:// target needs engine "
                          "'builtin' (or 'ray')")
    if engine == "wrk" and wrk_available() is None:
        engine = "builtin"  # documented fallback; the summary says what happened
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "engine": engine, "engine_requested": load.engine,
        "mode": load.mode, "load": load.label, "load_spec": load.to_dict(), "target": tgt.url,
        "transport": tgt.transport,
        "models": list(pool.model_names), "workload": wl.to_dict(), "seed": seed,
        "warmup_s": warmup_s, "duration_s": duration_s, "timeout_s": timeout_s,
        "rate": load.rate if load.mode == "open" else None, "pool_size": len(pool),
    }
    if engine == "ray":
        meta["ray"] = {"actors": ray_actors, "address": ray_address or "local"}
    if engine == "wrk":
        meta["duration_s"] = float(max(1, round(duration_s)))
        summary = run_wrk(tgt, pool, load, meta=meta, warmup_s=warmup_s,
                          duration_s=duration_s, timeout_s=timeout_s, threads=wrk_threads,
                          gates=gates)
        result = BenchResult(summary, {})
    else:
        job = GeneratorJob(
            host=tgt.host, port=tgt.port, transport=tgt.transport,
            requests=_requests(tgt, pool),
            models=pool.models, load=load, warmup_s=warmup_s, duration_s=duration_s,
            seed=seed, timeout_s=timeout_s, max_requests=max_requests,
            connect_timeout_s=probe_timeout_s, cpus=tuple(sorted(cpus or ())))
        if engine == "ray":
            from ._ray import run_on_ray

            arrays, gen = run_on_ray(job, actors=ray_actors, address=ray_address,
                                     budget_s=_STARTUP_S + warmup_s + duration_s + timeout_s
                                     + probe_timeout_s)
        else:
            arrays, gen = _spawn(job)
        summary = summarize(arrays, gen, meta=meta, late_threshold_ms=late_threshold_ms,
                            window_s=window_s, gates=gates)
        result = BenchResult(summary, arrays)
    return write_run(out_dir, result) if out_dir is not None else result
