"""A smoke run: start the stack, check one real prediction, benchmark it briefly."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from ..bench import LoadSpec, format_summary, run_bench, wrk_available
from ..models import digits_split
from ..service import launch_stack
from ..v2 import decode_infer_response, encode_infer_request

__all__ = ["run_smoke"]


def run_smoke(repository: str | Path, *, duration_s: float = 5.0, config: str | None = None,
              concurrency: int = 32) -> int:
    """Launch ``config`` (baseline by default), infer one held-out digit, then a closed-loop run.

    Returns 0 when the stack served the digit correctly and the run had no errors.
    """
    _, xte, _, yte = digits_split()
    started = time.perf_counter()
    with launch_stack(config, repository=repository) as stack:
        print(f"stack up in {time.perf_counter() - started:.1f} s: {stack}")
        req = urllib.request.Request(
            f"{stack.url}/v2/models/digits-mlp/infer", method="POST",
            data=encode_infer_request({"pixels": xte[:1]}),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            label = int(decode_infer_response(resp.read())["label"][0, 0])
        print(f"held-out digit: true {yte[0]}, served {label}")
        engine = "wrk" if wrk_available() else "builtin"
        load = LoadSpec(mode="closed", concurrency=concurrency, engine=engine)
        result = run_bench(stack.url, load, "digits", warmup_s=1.0, duration_s=duration_s)
        print(f"closed loop, {concurrency} connections, {engine}, {duration_s:.0f} s, "
              f"through the gateway ({stack.config.name}):")
        print(format_summary(result.summary))
        errors = int(result.summary.get("errors_total") or 0)
    return 0 if label == yte[0] and errors == 0 else 1
