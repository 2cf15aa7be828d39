"""The Ray engine against the built-in one: same open-loop timetable, same server, alternated.

A model server (its own process, the baseline config) serves ``digits-mlp``; each round runs
both engines once, in a seeded random order, back to back, at the same open-loop rate::

    .venv/bin/python benchmarks/ray_vs_builtin.py [--rate 1000] [--rounds 4] [--duration 5]

One local Ray instance is started first and kept for every round (its ~15 s start-up is not
part of a run); each Ray run starts its own ``--actors`` actor processes. Printed: every run,
then per engine the median throughput and p99, the Ray/built-in ratio per round, and the
built-in engine's own round-to-round spread of p99 (the noise band a Ray p99 is read against).
Needs ``pip install 'optkit[ray]'``; ``build/models`` (built if missing).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
from pathlib import Path

from optkit import build_repository
from optkit.bench import LoadSpec, run_bench
from optkit.service import launch_stack


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--arrival", choices=("constant", "poisson"), default="poisson")
    p.add_argument("--repository", default="build/models")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import ray

    repo = Path(args.repository)
    if not (repo / "digits-mlp").is_dir():
        build_repository(repo, models=["digits-mlp"])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20)
    rng = random.Random(args.seed)
    rows: list[dict] = []
    try:
        with launch_stack(None, repository=repo, gateway=False) as stack:
            for r in range(args.rounds):
                order = ["builtin", "ray"]
                rng.shuffle(order)
                for engine in order:
                    load = LoadSpec.open(args.rate, arrival=args.arrival, engine=engine)
                    s = run_bench(stack.model_server_url, load, model="digits-mlp",
                                  warmup_s=args.warmup, duration_s=args.duration,
                                  seed=args.seed + r, ray_actors=args.actors).summary
                    rows.append({"round": r, "engine": engine, **{k: s[k] for k in (
                        "throughput_rps", "achieved_fraction", "p50_ms", "p99_ms", "valid",
                        "requests")}, "cpu": s["generator"]["cpu_percent"]})
                    verdict = "valid" if s["valid"] else "INVALID " + "; ".join(
                        s["invalid_reasons"])
                    print(f"round {r} {engine:<8} {s['throughput_rps']:8.1f} req/s "
                          f"(achieved {100 * s['achieved_fraction']:.2f} %)  p50 "
                          f"{s['p50_ms']:.2f}  p99 {s['p99_ms']:.2f} ms  gen CPU "
                          f"{s['generator']['cpu_percent']:.0f} %  {verdict}", flush=True)
    finally:
        ray.shutdown()
    by = {e: [x for x in rows if x["engine"] == e] for e in ("builtin", "ray")}
    for engine, runs in by.items():
        p99 = [x["p99_ms"] for x in runs]
        print(f"{engine:<8} median {statistics.median(x['throughput_rps'] for x in runs):.1f} "
              f"req/s, p99 median {statistics.median(p99):.2f} ms "
              f"(min {min(p99):.2f}, max {max(p99):.2f})")
    pairs = list(zip(by["builtin"], by["ray"]))
    print("per round, ray / builtin: throughput "
          + ", ".join(f"{r['throughput_rps'] / b['throughput_rps']:.4f}" for b, r in pairs)
          + "; p99 " + ", ".join(f"{r['p99_ms'] / b['p99_ms']:.2f}" for b, r in pairs))
    b99 = [x["p99_ms"] for x in by["builtin"]]
    print(f"built-in p99 round to round: {min(b99):.2f}-{max(b99):.2f} ms "
          f"(max/min {max(b99) / min(b99):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
