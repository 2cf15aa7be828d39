"""Do experiments/tune/mlserver-batching.yaml's parameters reach MLServer's adaptive batcher?

    .venv/bin/python benchmarks/mlserver_batching_knobs.py

Starts the arm (as a tune trial does: parameters rendered into MLSERVER_MODEL_* at start) with
max_batch_time 0.5 s and 4 concurrent clients. A batch is sent when it holds max_batch_size
requests or when max_batch_time has passed: with max_batch_size 4 the 4 clients fill each batch
at once (a few ms), with 32 every batch waits out the 0.5 s, and 1 turns batching off. If the
variables were ignored (a value in model-settings.json wins over them), all three would read
alike. Prints the median and max latency of each setting; exits 1 if they do not differ so.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optkit import lab  # noqa: E402

ARM = REPO / "experiments" / "tune" / "mlserver-batching.yaml"
BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                               "data": [0.0] * 64}]}).encode()


def latencies_ms(arm: lab.ExternalArm, clients: int = 4, rounds: int = 6) -> list[float]:
    """``rounds`` x ``clients`` concurrent requests to a fresh start of ``arm``."""
    with arm.launch() as stack:
        url = f"{stack.url}/v2/models/digits-sklearn/infer"

        def one(_: int) -> float:
            start = time.perf_counter()
            req = urllib.request.Request(url, BODY, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
                resp.read()
            return 1000 * (time.perf_counter() - start)

        with cf.ThreadPoolExecutor(clients) as pool:
            return [ms for _ in range(rounds) for ms in pool.map(one, range(clients))]


def main() -> int:
    arm = lab.load_arm(ARM)
    medians = {}
    for size in (4, 32, 1):
        got = latencies_ms(arm.replace(parameters={"max_batch_size": size,
                                                   "max_batch_time": 0.5}))
        medians[size] = statistics.median(got)
        print(f"max_batch_size {size:>2}, max_batch_time 0.5 s, 4 clients: median "
              f"{medians[size]:.1f} ms, max {max(got):.1f} ms", flush=True)
    ok = medians[32] > 400 and medians[4] < 100 and medians[1] < 100
    print("the knobs reach MLServer's batcher" if ok else "the knobs did NOT take effect")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
