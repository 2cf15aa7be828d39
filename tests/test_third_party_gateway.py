"""optkit's gateway, every layer on, in front of real third-party v2 servers.

MLServer 1.7.1, KServe 0.21.0 and NVIDIA Triton (``nvidia-pytriton``) come from the
package registry into their own virtualenvs (``make third-party``) and serve the same
``digits-sklearn`` artefact. Each is started through its arm file and put behind
optkit's gateway (``ExternalArm.behind_gateway``, ``experiments/integrated.yaml``), then:

- NVIDIA's own client (``tritonclient``) gets correct answers through the gateway, with
  binary tensors and without; 160 one-row requests sent at once (which the gateway merges)
  each get their own row and id back: no cross-talk;
- with no configuration at all (the server's own metadata) and with a signature in
  ``gateway.models``, the bad-request corpus (``tests/bad_requests.py``) gets the same
  error classes as optkit's own model server gives it (where the server's metadata lists no
  inputs and nothing signs the model, what only a signature could judge is the server's own
  answer, passed through).

Heavy (``make external``): each server takes 3-10 s to start.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import joblib
import numpy as np
import pytest
import requests

from bad_requests import CASES, Case
from optkit.lab._arms import ExternalStack, load_arm
from optkit.v2 import (BINARY_HEADER, decode_infer_result, encode_binary_infer_request,
                       encode_infer_request)
from third_party import missing

httpclient = pytest.importorskip("tritonclient.http")

REPO = Path(__file__).resolve().parent.parent
MODEL = "digits-sklearn"
#: server -> (its venv, its arm file, the output its digits model answers with, what its
#: metadata gives the gateway to check requests against, its batch bound)
SERVERS = {
    "mlserver": (".venv-mlserver", "experiments/external/mlserver.yaml", "predict",
                 "passthrough", 256),
    "kserve": (".venv-kserve", "experiments/external/kserve.yaml", "label", "passthrough", 256),
    "triton": (".venv-triton", "experiments/external/triton.yaml", "label", "upstream", 64),
}
INTEGRATED = REPO / "experiments" / "integrated.yaml"
#: corpus cases whose answer is the upstream's to give, not the gateway's (the gateway
#: passes the upstream's own answer through), each with why
UPSTREAM_ANSWERS = {
    "model not loaded": "the model is loaded on the third-party server",
    "model not loaded, bad body": "the model is loaded on the third-party server",
    "model not loaded, generate_stream bad body": "the model is loaded there",
    "unknown version": "which versions exist is the upstream's to say",
    "unknown version, bad body": "which versions exist is the upstream's to say",
    "unknown version metadata": "which versions exist is the upstream's to say",
    "stats of an unknown version": "which versions exist is the upstream's to say (KServe "
                                   "answers 501: no versioning; the gateway says 502, naming it)",
    "repository index malformed JSON": "the repository extension is forwarded as it is",
    "repository index not an object": "the repository extension is forwarded as it is",
    "repository load of an unknown model": "the repository extension is forwarded as it is",
    "unknown model ready": "readiness is the upstream's answer (Triton says 400, not 404)",
}


def _signature(server: str) -> dict[str, Any]:
    _, _, output, _, bound = SERVERS[server]
    return {"gateway": {"models": {MODEL: {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": output, "datatype": "INT64", "shape": [-1, 1]}],
        "max_batch_size": bound}}}}


def _launch(server: str, tmp_path: Path, extra: dict[str, Any] | None = None) -> Any:
    venv, arm_file = SERVERS[server][:2]
    if not (REPO / venv / "bin" / "python").exists():
        pytest.skip(missing(server, f"no {venv} (make third-party)"))
    if not (REPO / "build" / "models" / MODEL).is_dir():
        pytest.skip("no build/models (make models)")
    config = json.loads(json.dumps(load_arm(INTEGRATED).to_dict()))  # the whole stack's layers
    config.update(extra or {})
    return load_arm(REPO / arm_file).behind_gateway(config).launch(log_dir=tmp_path)


@pytest.fixture(scope="module")
def pipeline() -> Any:
    path = REPO / "build" / "models" / MODEL / "1" / "model.joblib"
    if not path.is_file():
        pytest.skip("no build/models (make models)")
    return joblib.load(path)


@pytest.mark.heavy
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_tritonclient_through_the_gateway(server: str, tmp_path: Path, pipeline: Any,
                                          digits: tuple) -> None:
    """Out of the box (no signature): answers equal the pipeline's, binary or JSON, alone or
    merged; every concurrent client gets its own row; the gateway says what it checked them
    against (MLServer and KServe list no inputs: passed through; Triton lists them)."""
    _, xte, _, _ = digits
    _, _, output, source, _ = SERVERS[server]
    with _launch(server, tmp_path) as stack:
        assert isinstance(stack, ExternalStack) and stack.gateway_url == stack.url
        client = httpclient.InferenceServerClient(url=stack.url.removeprefix("http://"),
                                                  concurrency=16)
        try:
            assert client.is_server_ready() and client.is_model_ready(MODEL)
            for binary in (True, False):
                inp = httpclient.InferInput("pixels", [8, 64], "FP32")
                inp.set_data_from_numpy(xte[:8], binary_data=binary)
                got = client.infer(MODEL, [inp], request_id=f"batch-{binary}")
                assert got.get_response()["id"] == f"batch-{binary}"
                assert got.as_numpy(output).ravel().tolist() == pipeline.predict(xte[:8]).tolist()

        finally:
            client.close()
        answers = asyncio.run(_burst(stack.url, xte[:160], output))  # at once: they merge
        want = pipeline.predict(xte[:160]).tolist()
        assert answers == [(f"r{i}", [want[i]]) for i in range(160)]  # no cross-talk
        stats = requests.get(stack.url + "/stats", timeout=10).json()
    assert stats["models"] == {MODEL: source}
    assert stats["passed_through"] == (162 if source == "passthrough" else 0)
    assert stats["merged_calls"] > 0 and stats["not_merged"] == []


@pytest.mark.heavy
@pytest.mark.parametrize("signed", [False, True], ids=["as-is", "signed"])
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_bad_requests_get_the_model_servers_error_classes(server: str, signed: bool,
                                                          tmp_path: Path) -> None:
    """The corpus, aimed at digits-sklearn: the status optkit's model server gives each case.
    Without a signature the gateway cannot know names, datatypes, shapes or the batch bound:
    those requests go upstream and the third-party server's own answer is passed through
    (MLServer and KServe serve a wrong input name; MLServer answers a wrong width 500)."""
    upstream_decides = {"wrong input name", "wrong datatype", "wrong shape",
                        "batch over max_batch_size", "unknown requested output",
                        "generate_stream unknown input", "generate_stream wrong row width",
                        "generate_stream no input", "generate_stream no rows",
                        "generate_stream too many rows"}
    extra = _signature(server) if signed else None
    if SERVERS[server][3] != "passthrough":
        upstream_decides = set()  # its metadata lists the inputs: the gateway judges them all
    problems: list[str] = []
    with _launch(server, tmp_path, extra) as stack, requests.Session() as session:
        for case in CASES:
            if case.name in UPSTREAM_ANSWERS:
                continue
            status, doc = _send(session, stack.url, case)
            if not signed and case.name in upstream_decides:  # passed through: its own answer
                want = _send(session, stack.upstream_url, case)[0]
                if status != want:
                    problems.append(f"{case.name}: {status} {doc!r}, {server} says {want}")
                continue
            if status != case.status:
                problems.append(f"{case.name}: {status} {doc!r}, model server says {case.status}")
            elif not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
                problems.append(f"{case.name}: {status}, body is not JSON with 'error': {doc!r}")
    assert not problems, "\n".join(problems)


async def _burst(url: str, rows: np.ndarray, output: str) -> list[tuple[str, list[int]]]:
    """One request per row, all in flight at once, half binary: (id, labels) each."""
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> tuple[str, list[int]]:
            if i % 2:
                body, headers = encode_infer_request({"pixels": rows[i:i + 1]},
                                                     request_id=f"r{i}"), {}
            else:
                body, head_len = encode_binary_infer_request({"pixels": rows[i:i + 1]},
                                                             request_id=f"r{i}")
                headers = {"Content-Type": "application/octet-stream",
                           BINARY_HEADER: str(head_len)}
            async with session.post(f"{url}/v2/models/{MODEL}/infer", data=body,
                                    headers=headers) as resp:
                raw = await resp.read()
                assert resp.status == 200, raw[:300]
                length = resp.headers.get(BINARY_HEADER)
                result = decode_infer_result(raw, None if length is None else int(length))
                return str(result.id), result.outputs[output].ravel().tolist()

        return list(await asyncio.gather(*(one(i) for i in range(len(rows)))))


def _send(session: requests.Session, base: str, case: Case) -> tuple[int, Any]:
    headers = dict(case.headers)
    if case.body is not None and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    data: Any = case.body
    if case.chunked:
        data = _chunks(case.body or b"")
    path = case.path.replace("/v2/models/digits-mlp", f"/v2/models/{MODEL}")
    resp = session.request(case.method, base + path, data=data, headers=headers, timeout=30)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text[:200]


def _chunks(body: bytes, size: int = 1 << 16) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]
