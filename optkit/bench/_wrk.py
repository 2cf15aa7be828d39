"""The wrk engine: closed-loop throughput from a C load generator, as a cross-check.

::

    bodies.txt (PATH<TAB>BODY per line) ──▶ wrk -s v2.lua -c N -d S URL -- bodies.txt
                                              └─ done(): "OPTKIT_JSON {...}" ──▶ summary

wrk runs twice: a warm-up run (discarded) and the measured run. wrk counts whole
seconds; a warm-up that is not one is ended by SIGINT at its time (its figures are
not read), so a 0.5 s warm-up costs 0.5 s, not 1. It keeps no
per-request records, so a wrk result has a summary only (no ``records.npz``, no
per-window throughput). Its CPU comes from ``wait4``'s resource usage of the
measured run. wrk 4 has no arrival schedule, so it only runs the closed loop.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import orjson

from .._exceptions import BenchError
from ._load import LoadSpec
from ._target import Target
from ._validity import ValidityGates, check_validity, generator_saturation
from ._workload import BodyPool

__all__ = ["wrk_available", "run_wrk"]


def wrk_available() -> str | None:
    """Path of the wrk binary, or None when it is not installed."""
    return shutil.which("wrk")


def _wait_bounded(proc: subprocess.Popen[bytes], limit_s: float) -> tuple[int, float]:
    """Reap ``proc`` within ``limit_s`` (else kill it); return exit code and its CPU seconds."""
    deadline = time.monotonic() + limit_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise BenchError(f"wrk did not finish within {limit_s:.0f} s; killed it")
        time.sleep(0.02)


def _warm_up(binary: str, url: str, script: Path, bodies: Path, load: LoadSpec,
             seconds: float, timeout_s: float, threads: int) -> None:
    """A discarded warm-up of ``seconds`` (a fraction of one too): wrk for the whole second
    above, interrupted when the time is up."""
    whole = max(1, math.ceil(seconds))
    if whole == seconds:
        _wrk_once(binary, url, script, bodies, load, seconds, timeout_s, threads)
        return
    threads = max(1, min(threads, load.concurrency))
    cmd = [binary, f"-t{threads}", f"-c{load.concurrency}", f"-d{whole}s",
           f"--timeout={max(1, round(timeout_s))}s", "-s", str(script), url, "--", str(bodies)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # wrk stops its threads and prints (unread)
    try:
        code, _ = _wait_bounded(proc, timeout_s + 10)
        err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    finally:
        if proc.stderr:
            proc.stderr.close()
    if code not in (0, -signal.SIGINT):
        raise BenchError(f"wrk warm-up failed (exit {code}): {err.strip()[-400:]}")


def _wrk_once(binary: str, url: str, script: Path, bodies: Path, load: LoadSpec,
              seconds: float, timeout_s: float, threads: int) -> tuple[dict[str, Any], float, float]:
    threads = max(1, min(threads, load.concurrency))
    cmd = [binary, f"-t{threads}", f"-c{load.concurrency}", f"-d{max(1, round(seconds))}s",
           f"--timeout={max(1, round(timeout_s))}s", "-s", str(script), url, "--", str(bodies)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        code, cpu_s = _wait_bounded(proc, seconds + timeout_s + 10)
        out = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
    finally:
        if proc.stdout:
            proc.stdout.close()
    wall = time.monotonic() - start
    line = next((ln for ln in out.splitlines() if ln.startswith("OPTKIT_JSON ")), None)
    if code != 0 or line is None:
        raise BenchError(f"wrk failed (exit {code}): {out.strip()[-400:]}")
    return orjson.loads(line[len("OPTKIT_JSON "):]), cpu_s, wall


def run_wrk(target: Target, pool: BodyPool, load: LoadSpec, *, meta: Mapping[str, Any],
            warmup_s: float, duration_s: float, timeout_s: float = 5.0, threads: int = 1,
            gates: ValidityGates | None = None) -> dict[str, Any]:
    """Run wrk (warm-up, then the window) and return a summary in the run schema."""
    binary = wrk_available()
    if binary is None:
        raise BenchError("engine 'wrk' needs the wrk binary on PATH")
    if load.mode != "closed":
        raise BenchError("engine 'wrk' only runs the closed loop")
    script = Path(str(resources.files("optkit.bench") / "v2.lua"))
    host = f"[{target.host}]" if ":" in target.host else target.host
    url = f"http://{host}:{target.port}"
    with tempfile.TemporaryDirectory(prefix="optkit-wrk-") as tmp:
        bodies = Path(tmp) / "bodies.txt"
        with bodies.open("wb") as f:
            for model, body in zip(pool.models, pool.bodies):
                f.write(target.infer_path(pool.model_names[model]).encode() + b"\t" + body + b"\n")
        if warmup_s > 0:
            _warm_up(binary, url, script, bodies, load, warmup_s, timeout_s, threads)
        ws = time.monotonic_ns()
        doc, cpu_s, wall = _wrk_once(binary, url, script, bodies, load, duration_s,
                                     timeout_s, threads)
        we = time.monotonic_ns()
    seconds = doc["duration_us"] / 1e6
    e = doc["errors"]
    errors = {k: v for k, v in {"connect": e["connect"], "reset": e["read"] + e["write"],
                                "timeout": e["timeout"], "http_non2xx": e["status"]}.items() if v}
    ok = doc["requests"] - e["status"]
    lat = {k: v / 1e3 for k, v in doc["latency_us"].items()}
    throughput = ok / seconds if seconds else 0.0
    gen = {"cpu_s": cpu_s, "cpu_percent": 100.0 * cpu_s / max(wall, 1e-9),
           "loop_lag_ms": None, "schedule_lag_ms": None, "connections": load.concurrency,
           "threads": max(1, min(threads, load.concurrency)), "wrk": doc}
    gen["saturation_reasons"] = generator_saturation(gen, gates or ValidityGates())
    gen["saturated"] = bool(gen["saturation_reasons"])
    summary: dict[str, Any] = {
        **meta, "window_start_ns": ws, "window_end_ns": we,
        "requests": doc["requests"], "completed": ok, "throughput_rps": throughput,
        "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"],
        "p999_ms": lat["p999"], "max_ms": lat["max"], "mean_ms": lat["mean"], "min_ms": lat["min"],
        "service_p50_ms": lat["p50"], "service_p99_ms": lat["p99"], "service_mean_ms": lat["mean"],
        "ttfb_p50_ms": None, "ttfb_p99_ms": None,
        "errors": errors, "errors_total": sum(errors.values()),
        "retried": None,  # wrk's Lua response() hook could read headers, but costs per request
        "transport_errors": sum(v for k, v in errors.items() if not k.startswith("http_")),
        "late_sends": 0, "late_threshold_ms": None, "dropped": 0,
        "mean_in_flight": throughput * lat["mean"] / 1e3,
        "generator": gen, "windows": {"window_s": None, "throughput_rps": [], "cv": None},
        "per_model": {},
    }
    reasons = check_validity(summary, gates)
    summary.update(valid=not reasons, invalid_reasons=reasons)
    return summary
