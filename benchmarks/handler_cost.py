"""What the model server's infer path costs a request, without the network.

Runs ``ModelServer``'s own guarded ``infer`` handler (the route's handler, as aiohttp calls
it) on a stand-in request carrying one JSON digits row for ``--model``, ``--concurrent`` at a
time so the batcher forms batches of that many rows, for ``--requests`` requests; prints
microseconds per request (best of ``--repeat``),
the model's share included. No sockets and no HTTP parsing: what is left is exactly the
code optkit owns on the hot path (validation, counters, batcher, model call, encoding), so
a change to it shows here in a few seconds, at about +-1 us, where a wrk run on a shared
2-core machine varies by +-7 %.

    .venv/bin/python benchmarks/handler_cost.py --concurrent 10
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from optkit import load_config
from optkit.v2._codec import encode_infer_request
from optkit.service import ModelServer
from optkit.service._runner import install_uvloop

ROOT = Path(__file__).resolve().parents[1]


class _Transport:
    def is_closing(self) -> bool:
        return False


class _Request:
    """What the infer handler reads from an aiohttp request, and nothing else."""

    __slots__ = ("match_info", "content_length", "headers", "transport", "method", "path",
                 "_body")

    def __init__(self, model: str, body: bytes) -> None:
        self.match_info = {"model": model}
        self.content_length = len(body)
        self.headers = {"Content-Type": "application/json"}
        self.transport = _Transport()
        self.method, self.path, self._body = "POST", f"/v2/models/{model}/infer", body

    async def read(self) -> bytes:
        return self._body


async def _measure(args: argparse.Namespace) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    body = encode_infer_request({"pixels": load_digits().data[:1].astype(np.float32)})
    if args.stub_model:  # the framework alone: fixed outputs for any rows, no model call
        import optkit.service._model_server as model_server
        proba, label = np.full((4096, 10), 0.1, np.float32), np.zeros((4096, 1), np.int64)
        model_server._predict = lambda model, inputs: {  # type: ignore[assignment]
            "probabilities": proba[:len(next(iter(inputs.values())))],
            "label": label[:len(next(iter(inputs.values())))]}
    server = ModelServer(args.repository, load_config(args.config))
    app = server.make_app()
    await server.start()
    handler: Any = next(r.handler for r in app.router.routes()
                        if r.method == "POST" and r.resource is not None
                        and r.resource.canonical == "/v2/models/{model}/infer")

    async def one() -> None:
        response = await handler(_Request(args.model, body))
        if response.status != 200:
            raise SystemExit(f"the handler answered {response.status}: {response.body!r}")

    best = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        for _ in range(args.requests // args.concurrent):
            await asyncio.gather(*(one() for _ in range(args.concurrent)))
        best = min(best, (time.perf_counter() - start) / args.requests * 1e6)
    stats = server.statistics().batching.get(args.model)
    rows = f", {stats.rows / stats.batches:.1f} rows a batch" if stats and stats.batches else ""
    print(f"{best:.1f} us a request ({args.concurrent} concurrent{rows}, best of {args.repeat})")
    await server.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "benchmarks" / "optkit-batching.yaml"))
    p.add_argument("--repository", default=str(ROOT / "build" / "models"))
    p.add_argument("--model", default="digits-sklearn")
    p.add_argument("--concurrent", type=int, default=10)
    p.add_argument("--requests", type=int, default=30_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--stub-model", action="store_true",
                   help="replace the model call by fixed outputs: the framework's cost alone")
    args = p.parse_args()
    if args.concurrent < 1 or args.requests < args.concurrent or args.repeat < 1:
        p.error("need --concurrent >= 1, --requests >= --concurrent, --repeat >= 1")
    install_uvloop()
    asyncio.run(_measure(args))


if __name__ == "__main__":
    main()
