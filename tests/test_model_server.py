"""The model server's v2 endpoints over a real loopback socket, good input and bad."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient

from optkit import decode_infer_response, encode_infer_request

INFER = "/v2/models/digits-mlp/infer"


async def _json(resp) -> object:  # type: ignore[no-untyped-def]
    assert resp.content_type == "application/json"
    return orjson.loads(await resp.read())


async def test_health_and_server_metadata(model_server: TestClient) -> None:
    """Live, ready and /v2 answer with JSON."""
    for path in ("/v2/health/live", "/v2/health/ready", "/v2"):
        resp = await model_server.get(path)
        assert resp.status == 200, path
        await _json(resp)
    doc = await _json(await model_server.get("/v2"))
    assert "model_repository" in doc["extensions"]


async def test_model_metadata_and_ready(model_server: TestClient) -> None:
    """Model metadata carries inputs/outputs with the batch dimension; versions work too."""
    for path in ("/v2/models/digits-mlp", "/v2/models/digits-mlp/versions/1"):
        doc = await _json(await model_server.get(path))
        assert doc["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
        assert [o["name"] for o in doc["outputs"]] == ["probabilities", "label"]
    assert (await model_server.get("/v2/models/digits-mlp/ready")).status == 200
    assert (await model_server.get("/v2/models/digits-mlp/versions/1/ready")).status == 200


async def test_batch_is_answered_row_for_row(model_server: TestClient, digits: tuple) -> None:
    """A request with n rows gets n predictions, equal to the offline model's."""
    from optkit import load_model

    _, xte, _, _ = digits
    x = xte[:17]
    resp = await model_server.post("/v2/models/digits-mlp/versions/1/infer",
                                   data=encode_infer_request({"pixels": x}, request_id="abc"))
    assert resp.status == 200
    doc = await _json(resp)
    assert doc["id"] == "abc" and doc["model_version"] == "1"
    out = decode_infer_response(orjson.dumps(doc))
    offline = load_model(_repo_dir(model_server) / "digits-mlp" / "1").predict({"pixels": x})
    np.testing.assert_array_equal(out["label"], offline["label"])
    np.testing.assert_allclose(out["probabilities"], offline["probabilities"], rtol=1e-6)


def _repo_dir(client: TestClient):  # type: ignore[no-untyped-def]
    from optkit.service import MODEL_SERVER_KEY

    return client.server.app[MODEL_SERVER_KEY].repository.root


async def test_requested_outputs_only(model_server: TestClient) -> None:
    """Asking for one output returns only that one."""
    body = encode_infer_request({"pixels": np.zeros((2, 64), np.float32)}, outputs=["label"])
    doc = await _json(await model_server.post(INFER, data=body))
    assert [o["name"] for o in doc["outputs"]] == ["label"]
    assert doc["outputs"][0]["shape"] == [2, 1]


@pytest.mark.parametrize("path, body, status, message", [
    (INFER, b"{oops", 400, "malformed JSON"),
    (INFER, orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "INT64",
                                      "data": [0] * 64}]}), 400, "datatype INT64"),
    (INFER, orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 32], "datatype": "FP32",
                                      "data": [0] * 32}]}), 400, "shape"),
    (INFER, orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                      "data": [0] * 63}]}), 400, "63 values"),
    (INFER, orjson.dumps({"inputs": [{"name": "image", "shape": [1, 64], "datatype": "FP32",
                                      "data": [0] * 64}]}), 400, "unexpected input"),
    (INFER, orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                      "data": [0] * 64}], "outputs": [{"name": "logits"}]}),
     400, "unknown output"),
    ("/v2/models/nope/infer", b"{}", 404, "unknown model"),
    ("/v2/models/digits-mlp/versions/9/infer", b"{}", 404, "no version"),
    ("/v2/models/digits-mlp/versions/x1/infer", b"{}", 400, "invalid model version"),
    ("/v2/nothing-here", b"{}", 404, "Not Found"),
])
async def test_bad_input_gets_status_and_json_error(model_server: TestClient, path: str,
                                                     body: bytes, status: int, message: str) -> None:
    """Every kind of bad request gets its status and a JSON error; the server still serves."""
    resp = await model_server.post(path, data=body)
    assert resp.status == status
    assert message in (await _json(resp))["error"]
    ok = await model_server.post(INFER, data=encode_infer_request(
        {"pixels": np.zeros((1, 64), np.float32)}))
    assert ok.status == 200


async def test_oversized_body_is_413_without_reading_it(model_server: TestClient) -> None:
    """A declared body over the bound is refused from its Content-Length alone."""
    resp = await model_server.post(INFER, data=io.BytesIO(b" " * (5 * 1024 * 1024)))
    assert resp.status == 413
    assert "over the 4194304-byte limit" in (await _json(resp))["error"]


async def test_oversized_chunked_body_is_413(model_server: TestClient) -> None:
    """A chunked body with no Content-Length is cut off at the bound, also a 413."""
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(80):
            yield b" " * 65536

    resp = await model_server.post(INFER, data=chunks())
    assert resp.status == 413


async def test_repository_extension(model_server: TestClient) -> None:
    """index lists models with states; unload -> 503 on infer; load -> serves again."""
    index = await _json(await model_server.post("/v2/repository/index"))
    states = {e["name"]: e["state"] for e in index}
    assert states["digits-mlp"] == "READY"
    ready_only = await _json(await model_server.post("/v2/repository/index", data=b'{"ready": true}'))
    assert all(e["state"] == "READY" for e in ready_only)
    body = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
    assert (await model_server.post("/v2/repository/models/digits-mlp/unload")).status == 200
    resp = await model_server.post(INFER, data=body)
    assert resp.status == 503 and "UNAVAILABLE" in (await _json(resp))["error"]
    assert (await model_server.get("/v2/models/digits-mlp/ready")).status == 503
    assert (await model_server.post("/v2/repository/models/digits-mlp/load")).status == 200
    assert (await model_server.post(INFER, data=body)).status == 200


@pytest.mark.parametrize("name", ["..%2F..%2Fetc", "%2Fetc%2Fpasswd", "a..b"])
async def test_load_takes_names_not_paths(model_server: TestClient, name: str) -> None:
    """load/unload never resolve a path from the request."""
    resp = await model_server.post(f"/v2/repository/models/{name}/load",
                                   data=b'{"parameters": {"path": "/etc"}}')
    assert resp.status in (400, 404)
    assert "error" in await _json(resp)


async def test_load_of_unknown_model_is_404(model_server: TestClient) -> None:
    """Loading a name that is not in the repository is a 404 with a JSON error."""
    resp = await model_server.post("/v2/repository/models/resnet50/load")
    assert resp.status == 404


async def test_concurrent_requests_all_correct(model_server: TestClient, digits: tuple) -> None:
    """200 concurrent requests, each a different digit, all answered with the right label."""
    from optkit import load_model

    _, xte, _, _ = digits
    expected = load_model(_repo_dir(model_server) / "digits-mlp" / "1").predict(
        {"pixels": xte[:200]})["label"].ravel()

    async def one(i: int) -> int:
        resp = await model_server.post(INFER, data=encode_infer_request({"pixels": xte[i:i + 1]}))
        assert resp.status == 200
        return int(decode_infer_response(await resp.read())["label"][0, 0])

    labels = await asyncio.gather(*(one(i) for i in range(200)))
    assert labels == expected.tolist()


async def test_stats_and_metrics_count_requests(model_server: TestClient) -> None:
    """/stats counts inference and client errors, every inference request in the books
    (the refused one under its cause); /metrics renders them for Prometheus."""
    await model_server.post(INFER, data=encode_infer_request({"pixels": np.zeros((3, 64), np.float32)}))
    await model_server.post(INFER, data=b"{")
    stats = await _json(await model_server.get("/stats"))
    server = stats["server"]
    assert server["infer_requests"] == 2 and server["infer_rows"] == 3
    assert server["infer_ok"] == 1 and server["infer_refused"] == {"validation": {"400": 1}}
    assert server["client_errors"] == 1
    assert stats["repository"]["ready"] >= 1
    text = await (await model_server.get("/metrics")).text()
    assert "optkit_model_server_server_infer_rows_total 3.0" in text
    assert ('optkit_model_server_server_infer_refused_total{cause="validation",status="400"} 1.0'
            in text)
    # each statistic carries the type declared where it is defined, not one guessed from its name
    assert "# TYPE optkit_model_server_server_in_flight gauge" in text
    assert "# TYPE optkit_model_server_repository_ready gauge" in text
    assert "# TYPE optkit_model_server_repository_loads_total counter" in text


async def test_wrong_method_is_a_json_405_with_allow(model_server: TestClient) -> None:
    """A known path with the wrong method is a JSON 405 naming the allowed methods; counted."""
    resp = await model_server.get(INFER)
    assert resp.status == 405 and "POST" in resp.headers["Allow"]
    assert "error" in orjson.loads(await resp.read())
    resp = await model_server.delete("/v2/nothing-here")
    assert resp.status == 404 and "error" in orjson.loads(await resp.read())
    stats = orjson.loads(await (await model_server.get("/stats")).read())
    assert stats["server"]["client_errors"] >= 2
