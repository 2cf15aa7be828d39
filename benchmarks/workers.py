"""One model-server process vs ``--workers 2``, side by side, in alternating rounds.

The model server alone (no gateway) serves ``digits-sklearn`` with request batching on
(``benchmarks/optkit-batching.yaml``); the built-in generator offers a closed loop of
32 connections. Each round runs both arms back to back on fresh servers, in an order
that alternates round by round (1-2, 2-1, ...), and prints req/s, p99 and, for two
workers, how the 32 connections' requests split between them (the parent deals
connections to the workers in turn, 16 each; requests follow their connections)::

    .venv/bin/python benchmarks/workers.py [--rounds 3] [--duration 4] [--repository build/models]

On this machine the generator shares the same 2 cores: read the figures as what a
2-core box does with its client on it, not as per-core scaling.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import urllib.request
from pathlib import Path

from optkit.bench import LoadSpec, run_bench
from optkit.service._launcher import launch_service

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "optkit-batching.yaml"


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
        return json.loads(resp.read())


def one(workers: int, repository: Path, duration_s: float, concurrency: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="optkit-workers-bench-") as tmp:
        wd = Path(tmp)
        svc = launch_service("model-server", ["--repository", str(repository),
                                              "--workers", str(workers)],
                             workdir=wd, config_path=CONFIG, ready_timeout_s=120)
        try:
            result = run_bench(svc.url, LoadSpec(mode="closed", concurrency=concurrency),
                               model="digits-sklearn", warmup_s=1.0, duration_s=duration_s)
            split = []
            table = wd / "model-server.port.workers.json"
            if table.exists():
                split = [_stats(row["url"])["server"]["infer_requests"]
                         for row in json.loads(table.read_text())]
        finally:
            svc.stop(20)
    s = result.summary
    return {"workers": workers, "rps": s["throughput_rps"], "p50_ms": s["p50_ms"],
            "p99_ms": s["p99_ms"], "valid": s["valid"], "split": split,
            "errors": s.get("invalid_reasons") or []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repository", type=Path, default=Path("build/models"))
    args = ap.parse_args()
    rows: list[dict] = []
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        for workers in order:
            row = one(workers, args.repository.resolve(), args.duration, args.concurrency)
            row["round"] = r + 1
            rows.append(row)
            print(f"round {r + 1}  workers {workers}  {row['rps']:8.0f} req/s  "
                  f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                  f"{'valid' if row['valid'] else 'INVALID ' + '; '.join(row['errors'])}"
                  + (f"  split {row['split']}" if row["split"] else ""), flush=True)
    for workers in (1, 2):
        mine = [x for x in rows if x["workers"] == workers]
        print(f"workers {workers}: median {statistics.median(x['rps'] for x in mine):.0f} req/s, "
              f"median p99 {statistics.median(x['p99_ms'] for x in mine):.2f} ms "
              f"over {len(mine)} rounds")


if __name__ == "__main__":
    main()
