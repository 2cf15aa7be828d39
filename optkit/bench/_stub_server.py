"""A stub v2 server with a known service time: the ruler the generator is checked against.

::

    GET  /v2/health/ready            200 (404 when v2=False: "not a v2 server")
    GET  /v2/models/{m}              metadata of the optkit catalog (pixels/x inputs)
    POST /v2/models/{m}/infer        validates shape, sleeps service_ms, answers zeros;
                                     holds hold_kb of touched memory while it sleeps;
                                     every retried_every-th answer says optkit-retried: 1
    POST /stub/stall?ms=200          blocks the server's loop (a GC pause, a sync load)
    GET  /stats                      {"requests": n, "answers": {"retried": k}}

Its answers are right in shape, not in value: it stands in for a model server
when what is measured is the generator. Run it in a thread of the caller
(:class:`StubServer`, for tests) or as a process
(``python -m optkit.bench._stub_server --port 8000 --service-ms 5``).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from typing import Any

import orjson
from aiohttp import web

__all__ = ["CATALOG", "make_app", "StubServer", "main"]

_DIGITS = ([("pixels", 64)], [("probabilities", "FP32", 10), ("label", "INT64", 1)])
CATALOG: dict[str, tuple[list[tuple[str, int]], list[tuple[str, str, int]]]] = {
    **{m: _DIGITS for m in ("digits-mlp", "digits-sklearn", "digits-mlp-s", "digits-mlp-m",
                            "digits-mlp-l", "digits-mlp-xl")},
    "synthetic": ([("x", 16)], [("y", "FP32", 1)]),
    "synthetic-wide": ([("x", 16)], [("y", "FP32", 65536)]),
}


STATE = web.AppKey("stub_state", dict)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}),
                        content_type="application/json")


def make_app(*, service_ms: float = 0.0, v2: bool = True, stall_at_request: int = 0,
             stall_ms: float = 0.0, retried_every: int = 0, hold_kb: int = 0,
             metadata_inputs: bool = True) -> web.Application:
    """The stub's aiohttp app: v2 endpoints with an ``asyncio.sleep(service_ms)`` per infer.

    With ``stall_at_request`` n > 0, the n-th inference request blocks the loop for
    ``stall_ms`` (a stall that lands at a known point of a run). With ``retried_every`` n > 0,
    the n-th, 2n-th, ... inference answers carry ``optkit-retried: 1``, as the gateway marks
    an answer its pool had to resend. With ``hold_kb`` > 0, each inference request holds that
    much written memory while it sleeps: a known memory cost per request in flight. With
    ``metadata_inputs=False`` model metadata lists no inputs, as MLServer's does by default.
    """
    app = web.Application()
    state = app[STATE] = {"requests": 0, "retried": 0}
    cache: dict[tuple[str, int], bytes] = {}

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def metadata(request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in CATALOG:
            return _error(404, f"model {name!r} not found")
        inputs, outputs = CATALOG[name]
        return web.Response(body=orjson.dumps({
            "name": name, "versions": ["1"], "platform": "stub",
            "inputs": [{"name": n, "datatype": "FP32", "shape": [-1, w]} for n, w in inputs]
            if metadata_inputs else [],
            "outputs": [{"name": n, "datatype": d, "shape": [-1, w]} for n, d, w in outputs]}),
            content_type="application/json")

    async def infer(request: web.Request) -> web.Response:
        state["requests"] += 1
        number = state["requests"]
        if number == stall_at_request:
            time.sleep(stall_ms / 1e3)  # the stall: nothing else is served meanwhile
        name = request.match_info["model"]
        if name not in CATALOG:
            return _error(404, f"model {name!r} not found")
        try:
            doc = orjson.loads(await request.read())
            tensor = doc["inputs"][0]
            rows, width = tensor["shape"]
            ok = tensor["name"] == CATALOG[name][0][0][0] and width == CATALOG[name][0][0][1] \
                and len(tensor["data"]) == rows * width
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            ok, rows = False, 0
        if not ok:
            return _error(400, "malformed v2 request for this model")
        held = b"\x01" * (hold_kb * 1024)  # written, so its pages are resident
        if service_ms > 0:
            await asyncio.sleep(service_ms / 1e3)
        del held
        body = cache.get((name, rows))
        if body is None:
            outputs = [{"name": n, "shape": [rows, w], "datatype": d,
                        "data": [0] * (rows * w)} for n, d, w in CATALOG[name][1]]
            body = cache[(name, rows)] = orjson.dumps(
                {"model_name": name, "model_version": "1", "outputs": outputs})
        headers = None
        if retried_every > 0 and number % retried_every == 0:
            state["retried"] += 1
            headers = {"optkit-retried": "1"}
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def stall(request: web.Request) -> web.Response:
        ms = float(request.query.get("ms", "200"))
        asyncio.get_running_loop().call_soon(time.sleep, ms / 1e3)
        return web.json_response({"stall_ms": ms})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": state["requests"],
                                  "answers": {"retried": state["retried"]}})

    app.router.add_post("/stub/stall", stall)
    app.router.add_get("/stats", stats)
    if v2:
        app.router.add_get("/v2/health/ready", ready)
        app.router.add_get("/v2/models/{model}", metadata)
        app.router.add_post("/v2/models/{model}/infer", infer)
    else:
        app.router.add_get("/", ready)
    return app


class StubServer:
    """The stub app served on 127.0.0.1 by a thread with its own event loop."""

    def __init__(self, *, service_ms: float = 0.0, v2: bool = True, port: int = 0,
                 stall_at_request: int = 0, stall_ms: float = 0.0, retried_every: int = 0,
                 hold_kb: int = 0, metadata_inputs: bool = True) -> None:
        self._app = make_app(service_ms=service_ms, v2=v2, stall_at_request=stall_at_request,
                             stall_ms=stall_ms, retried_every=retried_every, hold_kb=hold_kb,
                             metadata_inputs=metadata_inputs)
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def __repr__(self) -> str:
        return f"<StubServer {self.url} [Requests: {self.requests}]>"

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        """Inference requests received so far."""
        return int(self._app[STATE]["requests"])

    @property
    def retried(self) -> int:
        """Answers sent so far with ``optkit-retried: 1``."""
        return int(self._app[STATE]["retried"])

    async def _start(self) -> int:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def start(self) -> "StubServer":
        """Start serving; return self once the port is bound."""
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stall(self, ms: float) -> None:
        """Block the server's event loop for ``ms`` (nothing is served meanwhile)."""
        self._loop.call_soon_threadsafe(time.sleep, ms / 1e3)

    async def _cleanup(self) -> None:
        assert self._runner is not None
        server = self._runner.server
        # Let accepts already under way finish first: on CPython 3.11, a connection whose
        # transport is created after the listening server closed fails an assertion in
        # asyncio's Server._attach and leaks its socket (after a stall this is likely).
        await asyncio.sleep(0.05)
        await self._runner.cleanup()
        await asyncio.sleep(0.02)  # connections accepted while shutting down get handlers
        for handler in list(server.connections if server is not None else ()):
            handler.force_close()
        await asyncio.sleep(0.02)

    def stop(self) -> None:
        """Stop serving (closing every connection) and close the loop."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._cleanup(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "StubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve the stub until killed (or ``--lifetime-s``), stalling on request."""
    parser = argparse.ArgumentParser(prog="python -m optkit.bench._stub_server")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--service-ms", type=float, default=0.0)
    parser.add_argument("--stall-ms", type=float, default=0.0, help="length of each stall")
    parser.add_argument("--stall-every-s", type=float, default=0.0, help="stall period (0: never)")
    parser.add_argument("--lifetime-s", type=float, default=3600.0, help="exit after this long")
    parser.add_argument("--retried-every", type=int, default=0,
                        help="mark every n-th answer optkit-retried: 1 (0: never)")
    parser.add_argument("--hold-kb", type=int, default=0,
                        help="memory each inference request holds while it sleeps")
    parser.add_argument("--no-metadata-inputs", action="store_true",
                        help="model metadata lists no inputs (as MLServer's does by default)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        app = make_app(service_ms=args.service_ms, retried_every=args.retried_every,
                       hold_kb=args.hold_kb, metadata_inputs=not args.no_metadata_inputs)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        print(f"stub v2 server on http://127.0.0.1:{args.port}", flush=True)
        end = time.monotonic() + args.lifetime_s
        while time.monotonic() < end:
            await asyncio.sleep(args.stall_every_s or 1.0)
            if args.stall_every_s and args.stall_ms:
                time.sleep(args.stall_ms / 1e3)  # the stall: the loop is blocked
        await runner.cleanup()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:  # pragma: no cover
        asyncio.run(serve())


if __name__ == "__main__":
    main()
