"""The gateway in front of a v2 server that is not optkit's: sparse metadata, signatures, merging.

The upstream here is a small aiohttp server on 127.0.0.1 that behaves the way MLServer
1.7 and KServe 0.21 do by default: its model metadata lists no inputs and states no
batch bound, ``GET /v2`` announces no binary extension, it takes any input name and
answers JSON only, one ``predict`` row per input row of the real ``digits-sklearn``
pipeline from disk. The same checks against MLServer, KServe and Triton themselves are
heavy tests (``tests/test_third_party_gateway.py``).
"""

from __future__ import annotations

from pathlib import Path
import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import joblib
import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from optkit import ServiceConfig, decode_infer_response, encode_infer_request
from optkit.v2 import BINARY_HEADER, encode_binary_infer_request
from optkit.service import create_gateway

MODEL = "digits-sklearn"
INFER = f"/v2/models/{MODEL}/infer"
SIGNATURE = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
             "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
             "max_batch_size": 16}
LAYERS = {"pooling": {"enabled": True}, "streaming": {"enabled": True},
          "batching": {"enabled": True, "max_delay_ms": 5.0, "max_concurrent_batches": 1}}


class Foreign:
    """An MLServer-like upstream: what it was asked, and what it answered."""

    def __init__(self, pipeline: Any, *, batch_major: bool = True) -> None:
        self.pipeline, self.batch_major = pipeline, batch_major
        self.calls: list[int] = []  # rows per infer call

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2", self.server)
        app.router.add_get("/v2/models/{m}", self.metadata)
        app.router.add_post("/v2/models/{m}/infer", self.infer)
        return app

    async def server(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "foreign", "version": "1", "extensions": []})

    async def metadata(self, request: web.Request) -> web.Response:
        if request.match_info["m"] != MODEL:
            return web.json_response({"error": "Model not found"}, status=404)
        return web.json_response({"name": MODEL, "versions": [], "platform": "",
                                  "inputs": [], "outputs": [], "parameters": {}})

    async def infer(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return web.json_response({"error": "JSON only"}, status=400)
        doc = orjson.loads(await request.read())
        (item,) = doc["inputs"]  # any name
        rows = np.asarray(item["data"], np.float32).reshape(item["shape"])
        if rows.ndim != 2 or rows.shape[1] != 64:
            return web.json_response({"error": f"bad shape {item['shape']}"}, status=400)
        self.calls.append(len(rows))
        labels = self.pipeline.predict(rows).astype(np.int64).reshape(-1, 1)
        if not self.batch_major:  # a model that answers one row per call, whatever it gets
            labels = labels[:1]
        return web.json_response({"model_name": MODEL, "id": doc.get("id"), "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": list(labels.shape),
             "data": labels.reshape(-1).tolist()}]})


@pytest.fixture(scope="module")
def pipeline(repository: Path) -> Any:
    return joblib.load(repository / MODEL / "1" / "model.joblib")


@asynccontextmanager
async def _pair(foreign: Foreign, config: dict[str, Any]) -> AsyncIterator[TestClient]:
    upstream = TestServer(foreign.app(), host="127.0.0.1")
    await upstream.start_server()
    gateway = TestClient(TestServer(
        create_gateway(str(upstream.make_url("")).rstrip("/"), ServiceConfig.from_dict(config)),
        host="127.0.0.1"))
    await gateway.start_server()
    try:
        yield gateway
    finally:
        await gateway.close()
        await upstream.close()


def _body(rows: np.ndarray, name: str = "pixels", request_id: str | None = None) -> bytes:
    return encode_infer_request({name: rows.astype(np.float32)}, request_id=request_id)


async def _concurrent(gateway: TestClient, x: np.ndarray, n: int) -> list[tuple[int, dict, Any]]:
    async def one(i: int) -> tuple[int, dict, Any]:
        resp = await gateway.post(INFER, data=_body(x[i:i + 1], request_id=f"r{i}"))
        body = await resp.read()
        return resp.status, dict(resp.headers), body

    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_sparse_upstream_is_served_out_of_the_box(pipeline: Any, digits: tuple) -> None:
    """No configuration: a request the upstream accepts is served, and /stats says it was
    passed through; before this the gateway refused it (the model takes [])."""
    x = digits[1]
    foreign = Foreign(pipeline)
    async with _pair(foreign, {}) as gateway:
        resp = await gateway.post(INFER, data=_body(x[:3], name="anything"))
        assert resp.status == 200, await resp.text()
        got = decode_infer_response(await resp.read())["predict"]
        assert got.ravel().tolist() == pipeline.predict(x[:3]).tolist()
        stats = orjson.loads(await (await gateway.get("/stats")).read())
        assert stats["models"] == {MODEL: "passthrough"} and stats["passed_through"] == 1


async def test_binary_tensors_reach_a_json_only_upstream_as_json(pipeline: Any, digits: tuple) -> None:
    """A client sending binary tensors (tritonclient's default) to an upstream that does not
    announce the extension: the gateway sends it JSON, alone or merged."""
    x = digits[1]
    body, head_len = encode_binary_infer_request({"pixels": x[:2]}, outputs=("predict",))
    headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(head_len)}
    for config in ({}, LAYERS):
        foreign = Foreign(pipeline)
        async with _pair(foreign, config) as gateway:
            resp = await gateway.post(INFER, data=body, headers=headers)
            assert resp.status == 200, await resp.text()
            raw = await resp.read()
            got = decode_infer_response(raw, _length(resp.headers.get(BINARY_HEADER)))
            assert got["predict"].ravel().tolist() == pipeline.predict(x[:2]).tolist()
            assert foreign.calls == [2]


def _length(raw: str | None) -> int | None:
    return None if raw is None else int(raw)


async def test_sparse_upstream_merges_concurrent_requests_row_for_row(
        pipeline: Any, digits: tuple) -> None:
    """Every layer on: 24 concurrent one-row requests ride merged JSON calls (the upstream
    announces no binary extension), and each client gets its own row and id back."""
    x = digits[1]
    foreign = Foreign(pipeline)
    async with _pair(foreign, LAYERS) as gateway:
        answers = await _concurrent(gateway, x, 24)
        want = pipeline.predict(x[:24])
        for i, (status, _, body) in enumerate(answers):
            assert status == 200
            doc = orjson.loads(body)
            assert doc["id"] == f"r{i}" and doc["outputs"][0]["data"] == [int(want[i])]
        stats = orjson.loads(await (await gateway.get("/stats")).read())
        assert stats["merged_calls"] >= 1 and max(foreign.calls) > 1
        assert sum(foreign.calls) == 24 and len(foreign.calls) < 24


async def test_answers_that_do_not_line_up_are_sent_again_alone(
        pipeline: Any, digits: tuple) -> None:
    """An upstream that is not batch-major (one answer row per call): the merged answer
    cannot be cut row for row, so its items go again one by one and get the upstream's
    own answers; the model is then never merged again, and /stats names it."""
    x = digits[1]
    foreign = Foreign(pipeline, batch_major=False)
    async with _pair(foreign, LAYERS) as gateway:
        answers = await _concurrent(gateway, x, 12)
        want = pipeline.predict(x[:12])
        assert [s for s, _, _ in answers] == [200] * 12
        assert [orjson.loads(b)["outputs"][0]["data"] for _, _, b in answers] == \
            [[int(v)] for v in want]
        stats = orjson.loads(await (await gateway.get("/stats")).read())
        assert stats["not_merged"] == [MODEL]
        calls_before = len(foreign.calls)
        await _concurrent(gateway, x, 8)
        assert foreign.calls[calls_before:] == [1] * 8  # alone from now on


async def test_a_signature_adds_validation_and_complete_metadata(
        pipeline: Any, digits: tuple) -> None:
    """gateway.models signs the model: a wrong input is a 400 at the gateway (never sent
    upstream), the metadata its clients see lists the inputs, and merging keeps to its bound."""
    x = digits[1]
    foreign = Foreign(pipeline)
    async with _pair(foreign, {**LAYERS, "gateway": {"models": {MODEL: SIGNATURE}}}) as gateway:
        meta = orjson.loads(await (await gateway.get(f"/v2/models/{MODEL}")).read())
        assert meta["inputs"] == SIGNATURE["inputs"] and meta["outputs"] == SIGNATURE["outputs"]
        assert meta["parameters"]["max_batch_size"] == 16
        for body, needle in ((_body(x[:1], name="image"), "unexpected input(s) ['image']"),
                             (_body(x[:1, :32]), "shape [1, 32] given"),
                             (_body(x[:17]), "batch size 17 outside 1..16")):
            resp = await gateway.post(INFER, data=body)
            assert resp.status == 400 and needle in orjson.loads(await resp.read())["error"]
        assert foreign.calls == []
        answers = await _concurrent(gateway, x, 40)
        assert all(status == 200 for status, _, _ in answers)
        assert max(foreign.calls) <= 16 and sum(foreign.calls) == 40
        stats = orjson.loads(await (await gateway.get("/stats")).read())
        assert stats["models"] == {MODEL: "config"} and stats["passed_through"] == 0


async def test_signature_max_batch_size_zero_never_merges(pipeline: Any, digits: tuple) -> None:
    x = digits[1]
    foreign = Foreign(pipeline)
    signature = {**SIGNATURE, "max_batch_size": 0}
    async with _pair(foreign, {**LAYERS, "gateway": {"models": {MODEL: signature}}}) as gateway:
        answers = await _concurrent(gateway, x, 10)
        assert all(status == 200 for status, _, _ in answers)
        assert foreign.calls == [1] * 10


async def test_bad_requests_get_the_same_answer_without_a_signature(pipeline: Any) -> None:
    """What the codec can check without a signature is still refused at the gateway, with
    the model server's messages: malformed JSON, data that does not fill its shape, an
    unknown datatype."""
    foreign = Foreign(pipeline)
    async with _pair(foreign, LAYERS) as gateway:
        for body in (b"{", orjson.dumps({"inputs": [{"name": "p", "datatype": "FP32",
                                                     "shape": [1, 64], "data": [1.0]}]}),
                     orjson.dumps({"inputs": [{"name": "p", "datatype": "FP33",
                                               "shape": [1], "data": [1]}]})):
            resp = await gateway.post(INFER, data=body)
            assert resp.status == 400 and orjson.loads(await resp.read())["error"]
        assert foreign.calls == []


@pytest.mark.parametrize("path", ["/v2", "/v2/"])
async def test_server_metadata_with_and_without_the_slash(pipeline: Any, path: str) -> None:
    async with _pair(Foreign(pipeline), {}) as gateway:
        resp = await gateway.get(path)
        assert resp.status == 200 and orjson.loads(await resp.read())["name"] == "optkit-gateway"
        trace = await gateway.request("TRACE", path)
        assert trace.status == 405 and "GET" in trace.headers["Allow"]
