"""The yardstick: a bare batching v2 server for digits-sklearn that checks nothing.

::

    POST /v2/models/digits-sklearn/infer ─ orjson.loads, inputs[0] as float32 [n, 64] (no checks)
      └─ waiting rows ──▶ one predict_proba per loop turn over all that came while the model ran
    answer: probabilities FP32 [n, 10] and label INT64 [n, 1] (optkit's outputs), orjson

The limit of this machine for the model server's job minus everything it does beyond the
model (validation, metadata, statistics, the error contract): issue 28 puts optkit's model
server at >= 0.95x of it. Loopback only. ``--workers N``: N listening sockets on the port
(SO_REUSEPORT: the kernel spreads connections over them), all bound before N processes are
forked (before numpy and the model load), one socket each, so none is missed by connections
made early; SIGTERM to the process group stops them all.
"""
import argparse
import asyncio
import os
import signal
import socket
from pathlib import Path

ARTEFACT = Path(__file__).resolve().parent.parent / "build/models/digits-sklearn/1/model.joblib"
MODEL = "digits-sklearn"


def app(artefact: Path):  # imports after the fork, in each worker
    import joblib
    import numpy as np
    import orjson
    from aiohttp import web

    pipeline, waiting = joblib.load(artefact), []

    def drive() -> None:  # the model is busy for one call; what arrived meanwhile is next
        batch = waiting[:]
        waiting.clear()
        proba = pipeline.predict_proba(np.concatenate([x for x, _ in batch])).astype(np.float32)
        start = 0
        for x, future in batch:
            future.set_result(proba[start:start + len(x)])
            start += len(x)

    async def infer(request: web.Request) -> web.Response:
        tensor = orjson.loads(await request.read())["inputs"][0]
        future = asyncio.get_running_loop().create_future()
        waiting.append((np.asarray(tensor["data"], np.float32).reshape(tensor["shape"]), future))
        if len(waiting) == 1:  # runs after every handler already woken this turn has queued
            asyncio.get_running_loop().call_soon(drive)
        proba = await future
        n = len(proba)
        label = pipeline.classes_[proba.argmax(axis=1)].astype(np.int64)
        return web.Response(content_type="application/json", body=orjson.dumps(
            {"model_name": MODEL, "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [n, 10], "data": proba.ravel()},
                {"name": "label", "datatype": "INT64", "shape": [n, 1], "data": label}]},
            option=orjson.OPT_SERIALIZE_NUMPY))

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"name": MODEL, "ready": True, "live": True})

    application = web.Application()
    application.add_routes([web.post(f"/v2/models/{MODEL}/infer", infer),
                            *(web.get(p, ok) for p in ("/v2/health/ready", "/v2/health/live",
                                                       f"/v2/models/{MODEL}",
                                                       f"/v2/models/{MODEL}/ready"))])
    return application


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--artefact", type=Path, default=ARTEFACT)
    args = p.parse_args()
    socks = [socket.socket() for _ in range(args.workers)]
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", args.port))
        sock.listen(1024)
    mine, children = socks[0], []
    for sock in socks[1:]:
        children.append(os.fork())
        if children[-1] == 0:
            mine, children = sock, []
            break
    for sock in socks:
        if sock is not mine:
            sock.close()
    try:  # the event loop optkit's model server runs on
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    from aiohttp import web

    web.run_app(app(args.artefact), sock=mine, access_log=None, print=None)
    for pid in children:  # the first process stopped (SIGTERM, Ctrl-C): so do the others
        os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
