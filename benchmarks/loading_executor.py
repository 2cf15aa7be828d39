"""Threads or processes for background loads: what a load does to the serving loop.

A model server (its own process) serves ``digits-mlp``; this script sends it one
request at a time (a closed loop of 1) while ``synthetic-slow`` is reloaded
(a ``load_cost_s`` of pure-Python CPU work holding the GIL, as unpickling does).
It reports the latencies of the requests answered while the load ran, and
before it, for each ``loading`` configuration::

    .venv/bin/python benchmarks/loading_executor.py [--cost 1.0] [--loads 3]

Measured on the 2-core VM (cost 1.0 s, 3 loads each; ms, requests answered
during the loads, median / p99 / max of their latencies)::

    arm       idle p50  answered/load    p50     p99     max
    sync          0.48            0.7   0.63    1.15    0.80
    thread        0.50          186.3   1.08   22.99   28.37
    process       0.45         2210.0   0.49    0.78   11.59

A load in a thread holds the GIL in 5 ms switch-interval slices, so each time the
loop wakes it may wait that long for the GIL: p99 x30. A process leaves the GIL alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from optkit import build_repository
from optkit.service import launch_stack

BODY = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                               "data": [0.0] * 64}]}).encode()


def _post(url: str, body: bytes = b"{}", timeout: float = 30.0) -> int:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()
        return int(resp.status)


def measure(repo: Path, loading: dict, cost: float, loads: int) -> dict[str, float]:
    config = {"loading": {**loading, "models": ["digits-mlp", "synthetic-slow"],
                          "parameters": {"synthetic-slow": {"load_cost_s": cost}}}}
    with launch_stack(config, repository=repo, gateway=False, ready_timeout_s=60) as stack:
        url = stack.model_server_url
        for _ in range(50):  # warm the path
            _post(url + "/v2/models/digits-mlp/infer", BODY)
        idle: list[float] = []
        during: list[float] = []
        for _ in range(loads):
            done = threading.Event()

            def load() -> None:
                _post(url + "/v2/repository/models/synthetic-slow/load")
                done.set()

            for _ in range(100):  # before: the idle baseline
                s = time.perf_counter()
                _post(url + "/v2/models/digits-mlp/infer", BODY)
                idle.append(time.perf_counter() - s)
            worker = threading.Thread(target=load)
            worker.start()
            while not done.is_set():
                s = time.perf_counter()
                _post(url + "/v2/models/digits-mlp/infer", BODY)
                if not done.is_set():
                    during.append(time.perf_counter() - s)
            worker.join()
    q = statistics.quantiles(during, n=100) if len(during) > 1 else [float("nan")] * 99
    return {"idle_p50_ms": 1e3 * statistics.median(idle), "answered": len(during) / loads,
            "p50_ms": 1e3 * statistics.median(during) if during else float("nan"),
            "p99_ms": 1e3 * q[98], "max_ms": 1e3 * max(during, default=float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost", type=float, default=1.0)
    parser.add_argument("--loads", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        build_repository(repo, models=["digits-mlp", "synthetic-slow"])
        arms = {"sync": {"mode": "sync"},
                "thread": {"mode": "background", "executor": "thread"},
                "process": {"mode": "background", "executor": "process"}}
        print(f"load cost {args.cost} s, {args.loads} loads per arm; ms")
        print(f"{'arm':8} {'idle p50':>9} {'answered/load':>14} {'p50':>8} {'p99':>8} {'max':>8}")
        for name, loading in arms.items():
            r = measure(repo, loading, args.cost, args.loads)
            print(f"{name:8} {r['idle_p50_ms']:9.2f} {r['answered']:14.1f} {r['p50_ms']:8.2f} "
                  f"{r['p99_ms']:8.2f} {r['max_ms']:8.2f}")


if __name__ == "__main__":
    main()
