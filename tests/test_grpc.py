"""Both tiers over gRPC (``optkit/service/_grpc.py``): tritonclient.grpc, and REST's answers.

One stack (``experiments/integrated.yaml``, every layer on, plus ``server.grpc_port: 0``)
serves every test: real processes on 127.0.0.1, the models of ``tests/conftest.py``.
The bad-request corpus of ``tests/bad_requests.py`` is sent over REST and over gRPC to
each tier: every case gRPC can express gets the same message, with the REST status
mapped to its gRPC code.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
import yaml
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from optkit import (DeadlineExceeded, ModelNotFound, ModelNotReady, ProtocolError, QueueFull,
                    ServerConfig, UpstreamTimeout)
from optkit.service import GrpcFront, Stack, launch_stack
from optkit.service._grpc import STATUS_CODES
from optkit.service._http import ServerCounters
from optkit.v2._proto.grpc_service_pb2_grpc import \
    add_GRPCInferenceServiceServicer_to_server as add_servicer

from bad_requests import CASES, Case

INTEGRATED = Path(__file__).resolve().parents[1] / "experiments" / "integrated.yaml"
TIERS = ("model-server", "gateway")


@pytest.fixture(scope="module")
def grpc_stack(repository: Path) -> Iterator[Stack]:
    config = yaml.safe_load(INTEGRATED.read_text())
    config["server"] = {"grpc_port": 0}
    with launch_stack(config, repository=repository) as running:
        yield running


def _target(stack: Stack, tier: str) -> str:
    target = stack.services[tier].grpc_target
    assert target is not None
    return target


def _rest(url: str, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers=headers or ({"Content-Type": "application/json"}
                                                     if body is not None else {}))
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_off_unless_configured() -> None:
    """gRPC is off by default; a port outside 0..65535 is refused naming the setting."""
    assert ServerConfig().grpc_port is None
    with pytest.raises(ValueError, match="server.grpc_port"):
        ServerConfig(grpc_port=70000)


@pytest.mark.parametrize("tier", TIERS)
def test_health_and_metadata(grpc_stack: Stack, tier: str) -> None:
    """tritonclient.grpc: live, ready, model ready, and the metadata REST gives."""
    with tg.InferenceServerClient(_target(grpc_stack, tier)) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits-mlp")
        assert not client.is_model_ready("digits-sklearn")  # on disk, not loaded
        server = client.get_server_metadata(as_json=True)
        assert server["name"] == f"optkit-{tier}" and "binary_tensor_data" in server["extensions"]
        meta = client.get_model_metadata("digits-mlp", as_json=True)
    _, rest = _rest(grpc_stack.services[tier].url, "GET", "/v2/models/digits-mlp")
    doc = json.loads(rest)
    assert meta["name"] == doc["name"] and meta["versions"] == doc["versions"]
    for key in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[key]] \
            == [(t["name"], t["datatype"], t["shape"]) for t in doc[key]]


@pytest.mark.parametrize("tier", TIERS)
def test_infer_raw_agrees_with_rest(grpc_stack: Stack, digits: tuple, tier: str) -> None:
    """Real digit rows over gRPC (raw contents, tritonclient's default): REST's answer,
    and the right labels."""
    _, xte, _, yte = digits
    rows = xte[:32]
    inp = tg.InferInput("pixels", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    with tg.InferenceServerClient(_target(grpc_stack, tier)) as client:
        result = client.infer("digits-mlp", [inp], request_id="g1")
    assert result.get_response().id == "g1"
    rest_inp = th.InferInput("pixels", list(rows.shape), "FP32")
    rest_inp.set_data_from_numpy(rows, binary_data=False)
    with th.InferenceServerClient(grpc_stack.services[tier].url[len("http://"):]) as http:
        expected = http.infer("digits-mlp", [rest_inp])
    for name in ("label", "probabilities"):
        np.testing.assert_array_equal(result.as_numpy(name), expected.as_numpy(name))
    assert (result.as_numpy("label").reshape(-1) == yte[:32]).mean() > 0.9


@pytest.mark.parametrize("tier", TIERS)
def test_infer_typed_contents_and_requested_output(grpc_stack: Stack, digits: tuple,
                                                   tier: str) -> None:
    """Typed (``fp32_contents``) inputs, one output asked for: that output alone, raw."""
    _, xte, _, yte = digits
    msg = pb.ModelInferRequest(model_name="digits-mlp", id="typed")
    tensor = msg.inputs.add(name="pixels", datatype="FP32", shape=[4, 64])
    tensor.contents.fp32_contents.extend(xte[:4].reshape(-1).tolist())
    msg.outputs.add(name="label")
    with grpc.insecure_channel(_target(grpc_stack, tier)) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(msg, timeout=10)
    assert answer.id == "typed" and [o.name for o in answer.outputs] == ["label"]
    labels = np.frombuffer(answer.raw_output_contents[0], dtype=np.int64)
    assert (labels == yte[:4]).mean() >= 0.75


@pytest.mark.parametrize("tier", TIERS)
def test_stream_answers_in_order(grpc_stack: Stack, digits: tuple, tier: str) -> None:
    """ModelStreamInfer: each request answered in order; a bad one is an error on the
    stream, which goes on."""
    _, xte, _, _ = digits
    got: list[Any] = []
    with tg.InferenceServerClient(_target(grpc_stack, tier)) as client:
        client.start_stream(callback=lambda result, error: got.append((result, error)))
        for i, rows in enumerate((1, 2, 3)):
            inp = tg.InferInput("pixels", [rows, 64 if i != 1 else 32], "FP32")
            inp.set_data_from_numpy(xte[:rows] if i != 1 else xte[:rows, :32].copy())
            client.async_stream_infer("digits-mlp", [inp], request_id=str(i))
        client.stop_stream()
    assert len(got) == 3
    assert got[0][1] is None and got[0][0].get_response().id == "0"
    assert got[1][0] is None and "shape [2, 32] given" in str(got[1][1])
    assert got[2][0].as_numpy("label").shape[0] == 3


def test_repository_on_the_model_server(grpc_stack: Stack) -> None:
    """Index, load and unload over gRPC, as the repository extension does over REST."""
    with tg.InferenceServerClient(_target(grpc_stack, "model-server")) as client:
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["digits-mlp"]["state"] == "READY"
        client.load_model("synthetic")
        assert client.is_model_ready("synthetic")
        ready = client.get_model_repository_index(as_json=True)["models"]
        assert "synthetic" in {m["name"] for m in ready}
        client.unload_model("synthetic")
        assert not client.is_model_ready("synthetic")
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.load_model("nope")


@pytest.mark.parametrize("tier", TIERS)
def test_unsupported_and_oversized(grpc_stack: Stack, tier: str) -> None:
    """ModelConfig is UNIMPLEMENTED; a message over the body limit RESOURCE_EXHAUSTED."""
    with grpc.insecure_channel(_target(grpc_stack, tier),
                               options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelConfig(pb.ModelConfigRequest(name="digits-mlp"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        big = pb.ModelInferRequest(model_name="digits-mlp")
        big.inputs.add(name="pixels", datatype="FP32", shape=[20000, 64])
        big.raw_input_contents.append(bytes(20000 * 64 * 4))  # 5 MiB, over the 4 MiB bound
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(big, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- the bad-request corpus over gRPC ----------------------------------------------------

def _model_route(path: str) -> tuple[str, str, str] | None:
    """``(model, version, tail)`` of a ``/v2/models/{m}[/versions/{v}][/tail]`` path."""
    parts = path.split("/")
    if parts[:3] != ["", "v2", "models"] or len(parts) < 4:
        return None
    name, rest = unquote(parts[3]), parts[4:]
    version = ""
    if rest[:1] == ["versions"] and len(rest) >= 2:
        version, rest = rest[1], rest[2:]
    return name, version, "/".join(rest)


_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents",
           "INT64": "int64_contents", "BYTES": "bytes_contents"}


def _param(target: Any, value: Any) -> bool:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        return False
    return True


def _infer_message(case: Case, name: str, version: str) -> Any:
    """The corpus case as a ModelInferRequest, or None where protobuf cannot say it."""
    body = case.body or b""
    head_len = case.headers.get("Inference-Header-Content-Length")
    try:
        head = int(head_len) if head_len is not None else len(body)
        doc = orjson.loads(body[:head])
    except ValueError:
        return None
    blob = body[head:]
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs", []), list):
        return None
    msg = pb.ModelInferRequest(model_name=name, model_version=version)
    if "id" in doc:
        if not isinstance(doc["id"], str):
            return None
        msg.id = doc["id"]
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        return None
    for key, value in params.items():
        if not _param(msg.parameters[key], value):
            return None
    for out in doc.get("outputs") or []:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            return None
        msg.outputs.add(name=out["name"])
    offset, raws = 0, []
    for raw in doc.get("inputs", []):
        if not isinstance(raw, dict) or not isinstance(raw.get("shape"), list) \
                or not all(type(d) is int for d in raw["shape"]) \
                or not isinstance(raw.get("parameters", {}), dict):
            return None
        tensor = msg.inputs.add(name=raw.get("name", ""), datatype=raw.get("datatype", ""),
                                shape=raw["shape"])
        size = raw.get("parameters", {}).get("binary_data_size")
        if size is not None:
            if type(size) is not int:
                return None
            raws.append(blob[offset:offset + size])
            offset += size
            continue
        data = raw.get("data")
        if data is None:
            continue
        field = _FIELDS.get(tensor.datatype, "fp32_contents")
        if not isinstance(data, list) or any(isinstance(v, list) for v in data):
            return None
        if field == "bytes_contents":
            data = [str(v).encode() for v in data]
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
            return None
        getattr(tensor.contents, field).extend(data)
    if raws:
        if offset != len(blob) or len(raws) != len(msg.inputs):
            return None
        msg.raw_input_contents.extend(raws)
    elif blob:
        return None
    return msg


def _grpc_call(case: Case) -> tuple[str, Any] | None:
    """``(rpc name, message)`` for a corpus case, or None (no gRPC form)."""
    route = _model_route(case.path)
    if case.method == "POST" and case.path.startswith("/v2/repository/models/") \
            and case.path.endswith("/load"):
        return "RepositoryModelLoad", pb.RepositoryModelLoadRequest(
            model_name=unquote(case.path.split("/")[4]))
    if route is None:
        return None
    name, version, tail = route
    if case.method == "GET" and tail == "":
        return "ModelMetadata", pb.ModelMetadataRequest(name=name, version=version)
    if case.method == "GET" and tail == "ready":
        return "ModelReady", pb.ModelReadyRequest(name=name, version=version)
    if case.method == "GET" and tail == "stats":
        return "ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version)
    if case.method == "POST" and tail == "infer" and len(case.body or b"") < (1 << 20):
        msg = _infer_message(case, name, version)
        return None if msg is None else ("ModelInfer", msg)
    return None


def test_bad_requests_get_the_rest_message_over_grpc(grpc_stack: Stack) -> None:
    """Every corpus case gRPC can express: the tier's REST message, the mapped code."""
    calls = [(case, _grpc_call(case)) for case in CASES]
    expressible = [(case, call) for case, call in calls if call is not None]
    assert len(expressible) >= 30, [c.name for c, _ in expressible]
    problems = []
    for tier in TIERS:
        with grpc.insecure_channel(_target(grpc_stack, tier)) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for case, (rpc, msg) in expressible:
                status, doc = _rest(grpc_stack.services[tier].url, case.method, case.path,
                                    case.body, case.headers or None)
                try:
                    getattr(stub, rpc)(msg, timeout=30)
                    problems.append(f"{tier} {case.name}: gRPC answered OK, REST {status}")
                    continue
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details()
                if code != STATUS_CODES[status] or details != doc["error"]:
                    problems.append(f"{tier} {case.name}: gRPC {code.name} {details!r}, "
                                    f"REST {status} {doc['error']!r}")
    assert not problems, "\n".join(problems)


class _Refusing:
    """A tier whose every infer raises ``error`` (the gRPC front end over a fake)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def infer(self, request: Any) -> Any:
        raise self.error

    def __getattr__(self, name: str) -> Any:
        async def unused(request: Any) -> Any:
            raise AssertionError(name)
        return unused


@pytest.mark.parametrize("error, code", [
    (QueueFull("digits-mlp: 1024 items waiting"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded("past its deadline"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (ModelNotReady("model 'm' is loading"), grpc.StatusCode.UNAVAILABLE),
    (ProtocolError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound("unknown model 'm'"), grpc.StatusCode.NOT_FOUND),
    (UpstreamTimeout("upstream slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
])
async def test_refusals_map_to_tritons_codes(error: Exception, code: grpc.StatusCode) -> None:
    """A full queue is RESOURCE_EXHAUSTED (a 503 over REST), a deadline DEADLINE_EXCEEDED,
    not ready UNAVAILABLE; the message is the error's own."""
    counters = ServerCounters()
    server = grpc.aio.server()
    add_servicer(GrpcFront(_Refusing(error), counters), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            msg = pb.ModelInferRequest(model_name="m")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(msg, timeout=10)
        assert (info.value.code(), info.value.details()) == (code, str(error))
        assert counters.infer_requests == 1 and counters.handed == counters.completed == 1
    finally:
        await server.stop(None)


@pytest.mark.parametrize("executor, warned", [("loop", True), ("thread", False)])
def test_a_model_server_on_grpc_says_when_its_batching_cannot_merge_grpc_calls(
        repository: Path, caplog: pytest.LogCaptureFixture, executor: str, warned: bool) -> None:
    """gRPC with batching computed on the loop merges nothing (grpc.aio hands the loop one call
    at a time): the server says so at start, naming the setting that does (a thread)."""
    from optkit import load_config
    from optkit.service import create_model_server

    config = load_config({"server": {"grpc_port": 0},
                          "batching": {"enabled": True, "executor": executor}})
    with caplog.at_level(logging.WARNING, logger="optkit.model_server"):
        create_model_server(repository, config)
    said = [r.getMessage() for r in caplog.records if "not merged" in r.getMessage()]
    assert bool(said) is warned
    if warned:
        assert "batching.executor: thread" in said[0]
