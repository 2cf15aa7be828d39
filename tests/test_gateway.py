"""The gateway in front of a real model server: correctness, errors, and bounded failure."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from optkit import ConfigError, ServiceConfig, decode_infer_response, encode_infer_request, load_model
from optkit.service import Stack, create_gateway, parse_upstreams

INFER = "/v2/models/digits-mlp/infer"


async def test_accuracy_through_the_gateway(stack: Stack, repository: Path, digits: tuple) -> None:
    """Served predictions equal offline ones, and held-out accuracy through the gateway is >= 0.95."""
    _, xte, _, yte = digits
    offline = load_model(repository / "digits-mlp" / "1").predict({"pixels": xte})
    async with aiohttp.ClientSession() as session:
        labels: list[np.ndarray] = []
        for start in range(0, len(xte), 50):  # batches of rows, answered row for row
            body = encode_infer_request({"pixels": xte[start:start + 50]})
            async with session.post(stack.gateway_url + INFER, data=body) as resp:
                assert resp.status == 200
                out = decode_infer_response(await resp.read())
                labels.append(out["label"].ravel())
                np.testing.assert_allclose(out["probabilities"],
                                           offline["probabilities"][start:start + 50], rtol=1e-5)
    served = np.concatenate(labels)
    np.testing.assert_array_equal(served, offline["label"].ravel())
    assert float((served == yte).mean()) >= 0.95


async def test_sklearn_artifact_through_the_gateway(stack: Stack, digits: tuple) -> None:
    """The scikit-learn adapter serves the joblib artefact with >= 0.95 accuracy."""
    _, xte, _, yte = digits
    async with aiohttp.ClientSession() as session:
        body = encode_infer_request({"pixels": xte[:200]})
        async with session.post(stack.gateway_url + "/v2/models/digits-sklearn/infer",
                                data=body) as resp:
            labels = decode_infer_response(await resp.read())["label"].ravel()
    assert float((labels == yte[:200]).mean()) >= 0.95


async def test_200_concurrent_requests(stack: Stack, digits: tuple, repository: Path) -> None:
    """200 concurrent clients through the gateway each get their own digit's answer."""
    _, xte, _, _ = digits
    expected = load_model(repository / "digits-mlp" / "1").predict(
        {"pixels": xte[:200]})["label"].ravel().tolist()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        async def one(i: int) -> int:
            body = encode_infer_request({"pixels": xte[i:i + 1]}, request_id=str(i))
            async with session.post(stack.gateway_url + INFER, data=body) as resp:
                assert resp.status == 200
                doc = orjson.loads(await resp.read())
                assert doc["id"] == str(i)
                return int(doc["outputs"][1]["data"][0])

        assert await asyncio.gather(*(one(i) for i in range(200))) == expected


@pytest.mark.parametrize("path, body, status", [
    (INFER, b"[", 400),
    (INFER, orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP16",
                                      "data": [0] * 64}]}), 400),
    (INFER, orjson.dumps({"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32",
                                      "data": [0] * 64}]}), 400),
    (INFER, orjson.dumps({"inputs": [{"name": "other", "shape": [1, 64], "datatype": "FP32",
                                      "data": [0] * 64}]}), 400),
    ("/v2/models/no-such/infer", orjson.dumps({"inputs": [{"name": "x", "shape": [1],
                                                           "datatype": "FP32", "data": [1]}]}), 404),
    ("/v2/models/..%2Fx/infer", b"{}", 400),
])
async def test_gateway_bad_input(stack: Stack, path: str, body: bytes, status: int) -> None:
    """Bad input through the gateway gets the same statuses and JSON errors; the stack still serves."""
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.gateway_url + path, data=body) as resp:
            assert resp.status == status
            assert "error" in orjson.loads(await resp.read())
        ok = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
        async with session.post(stack.gateway_url + INFER, data=ok) as resp:
            assert resp.status == 200


async def test_gateway_metadata_and_health(stack: Stack) -> None:
    """Health is the gateway's own; model metadata and readiness come from upstream."""
    async with aiohttp.ClientSession() as session:
        for path, status in [("/v2/health/live", 200), ("/v2/health/ready", 200), ("/v2", 200),
                             ("/v2/models/digits-mlp", 200), ("/v2/models/digits-mlp/ready", 200),
                             ("/v2/models/nope", 404), ("/stats", 200), ("/metrics", 200)]:
            async with session.get(stack.gateway_url + path) as resp:
                assert resp.status == status, path
        async with session.post(stack.gateway_url + "/v2/repository/index") as resp:
            assert {e["name"] for e in orjson.loads(await resp.read())} >= {"digits-mlp"}


async def _gateway(upstream: str, **server: float) -> TestClient:
    config = ServiceConfig.from_dict({"server": server}) if server else ServiceConfig()
    client = TestClient(TestServer(create_gateway(upstream, config), host="127.0.0.1"))
    await client.start_server()
    return client


async def test_upstream_down_is_a_fast_502() -> None:
    """With nothing listening upstream, infer is a 502 JSON error within a second, and ready is 503."""
    import socket

    with socket.socket() as sock:  # a port that is surely closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gw = await _gateway(f"http://127.0.0.1:{port}")
    try:
        started = time.monotonic()
        resp = await gw.post(INFER, data=encode_infer_request({"pixels": np.zeros((1, 64), np.float32)}))
        assert resp.status == 502 and "error" in orjson.loads(await resp.read())
        assert time.monotonic() - started < 1.0
        assert (await gw.get("/v2/health/ready")).status == 503
    finally:
        await gw.close()


async def test_slow_upstream_is_a_bounded_504() -> None:
    """An upstream that never answers gives a 504 after the configured timeout, not a hang."""
    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": "m", "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 1]}], "outputs": []})

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v2/models/m", metadata)
    app.router.add_post("/v2/models/m/infer", stall)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    gw = await _gateway(str(upstream.make_url("")), upstream_timeout_s=0.3)
    try:
        started = time.monotonic()
        body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32",
                                         "data": [1]}]})
        resp = await gw.post("/v2/models/m/infer", data=body)
        assert resp.status == 504 and "error" in orjson.loads(await resp.read())
        assert time.monotonic() - started < 2.0
    finally:
        await gw.close()
        await upstream.close()


def test_upstream_list_is_validated() -> None:
    """The --upstream list must hold http(s) URLs."""
    assert parse_upstreams("http://127.0.0.1:1/, http://127.0.0.1:2") == [
        "http://127.0.0.1:1", "http://127.0.0.1:2"]
    for bad in ("", "ftp://x", "127.0.0.1:8000"):
        with pytest.raises(ConfigError):
            parse_upstreams(bad)


async def test_foreign_upstream_content_type_and_a_model_named_ready() -> None:
    """A charset in the upstream's Content-Type passes through; a model named 'ready' is metadata."""
    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["m"], "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 1]}], "outputs": []})

    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=b'{"outputs": []}',
                            headers={"Content-Type": "application/json; charset=utf-8"})

    app = web.Application()
    app.router.add_get("/v2/models/{m}", metadata)
    app.router.add_post("/v2/models/{m}/infer", infer)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    gw = await _gateway(str(upstream.make_url("")))
    try:
        body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32",
                                         "data": [1]}]})
        resp = await gw.post("/v2/models/m/infer", data=body)
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
        meta = await gw.get("/v2/models/ready")
        assert meta.status == 200 and orjson.loads(await meta.read())["name"] == "ready"
    finally:
        await gw.close()
        await upstream.close()


async def test_concurrent_requests_share_one_metadata_fetch(stack: Stack) -> None:
    """A burst of first requests for a model costs one metadata fetch upstream, not one each."""
    gw = await _gateway(stack.model_server_url)
    try:
        async def stats() -> dict:
            async with aiohttp.ClientSession() as s:
                async with s.get(stack.model_server_url + "/stats") as r:
                    return orjson.loads(await r.read())

        before = await stats()
        body = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
        responses = await asyncio.gather(*(gw.post(INFER, data=body) for _ in range(20)))
        assert all(r.status == 200 for r in responses)
        after = await stats()
        # 20 inferences + 1 metadata GET reached the model server (+1 for this /stats call)
        assert after["server"]["accepted"] - before["server"]["accepted"] == 20 + 1 + 1
    finally:
        await gw.close()


@pytest.mark.parametrize("pooled", [False, True])
async def test_pooled_gateway_reuses_upstream_connections(repository: Path, pooled: bool) -> None:
    """Counted at the model server: a pooled gateway opens a handful of connections, the baseline one per request."""
    from optkit.service import ModelServer

    peers: set[int] = set()

    @web.middleware
    async def note_peer(request: web.Request, handler):  # type: ignore[no-untyped-def]
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername")[1])
        return await handler(request)

    config = ServiceConfig.from_dict({"loading": {"models": ["digits-mlp"]},
                                      "pooling": {"enabled": pooled}})
    app = ModelServer(repository, config).make_app()
    app.middlewares.append(note_peer)
    upstream = TestClient(TestServer(app, host="127.0.0.1"))
    await upstream.start_server()
    gw = TestClient(TestServer(create_gateway(str(upstream.make_url("")).rstrip("/"), config),
                               host="127.0.0.1"))
    await gw.start_server()
    try:
        body = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
        for _ in range(30):
            resp = await gw.post(INFER, data=body)
            assert resp.status == 200
        stats = orjson.loads(await (await gw.get("/stats")).read())
    finally:
        await gw.close()
        await upstream.close()
    pool = stats["pool"]
    assert pool["requests"] == 31  # 30 inferences + 1 metadata fetch
    if pooled:
        assert len(peers) <= 2 and pool["connections_opened"] == len(peers)
        assert pool["connections_reused"] >= 29
    else:
        assert len(peers) == 31 and pool["connections_opened"] == 31
        assert pool["connections_reused"] == 0


async def test_every_inference_request_is_in_the_books_under_its_cause() -> None:
    """Each inference request the gateway answers is counted, whatever step refused it:
    the route's name, the metadata (unknown, or its upstream gone), the body, validation,
    the upstream's own refusal, the upstream gone; /stats and /metrics show the cause."""
    meta = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}], "outputs": []}

    async def metadata(request: web.Request) -> web.Response:
        if request.match_info["m"] not in ("m", "busy"):
            return web.json_response({"error": "unknown model"}, status=404)
        return web.json_response({"name": request.match_info["m"], **meta})

    async def infer(request: web.Request) -> web.Response:
        if request.match_info["m"] == "busy":
            return web.json_response({"error": "model busy is LOADING"}, status=503)
        return web.json_response({"model_name": "m", "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]})

    app = web.Application()
    app.router.add_get("/v2/models/{m}", metadata)
    app.router.add_post("/v2/models/{m}/infer", infer)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    gw = await _gateway(str(upstream.make_url("")), max_body_bytes=1024)
    good = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32",
                                     "data": [1]}]})
    try:
        sent = [("/v2/models/m/infer", good, 200),
                ("/v2/models/m/infer", b"[", 400),                  # validation
                ("/v2/models/..%2Fx/infer", good, 400),             # route
                ("/v2/models/nope/infer", good, 404),               # metadata: unknown
                ("/v2/models/m/infer", b" " * 2048, 413),           # body
                ("/v2/models/busy/infer", good, 503)]               # upstream_answer
        for path, body, status in sent:
            resp = await gw.post(path, data=body)
            assert resp.status == status, (path, await resp.text())
        await upstream.close()  # gone: m's metadata is cached, other's is not
        for path, status in [("/v2/models/m/infer", 502), ("/v2/models/other/infer", 502)]:
            resp = await gw.post(path, data=good)
            assert resp.status == status, (path, await resp.text())
        server = orjson.loads(await (await gw.get("/stats")).read())["server"]
        assert server["infer_requests"] == 8 and server["infer_ok"] == 1
        assert server["infer_cancelled"] == 0
        assert server["infer_refused"] == {
            "body": {"413": 1}, "metadata": {"404": 1, "502": 1}, "route": {"400": 1},
            "upstream": {"502": 1}, "upstream_answer": {"503": 1}, "validation": {"400": 1}}
        text = await (await gw.get("/metrics")).text()
        assert ('optkit_gateway_server_infer_refused_total{cause="metadata",status="502"} 1.0'
                in text)
    finally:
        await gw.close()
        await upstream.close()
