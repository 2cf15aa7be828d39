"""The onnx model kind: the built graphs, config against graph, bring-your-model folders, bad
files and refused shapes, the loading layer, and both tiers on real servers.

Graphs are real ONNX files written with ``onnx.helper`` into temporary repositories; the
digits graphs are the catalogue's own (``onnx_repository``). Nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import joblib
import numpy as np
import onnx
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from onnx import TensorProto, helper

from optkit import encode_infer_request
from optkit._config import LoadingConfig, ServiceConfig
from optkit._exceptions import ModelLoadError, ProtocolError
from optkit.models import MIN_ACCURACY, ModelConfig, ModelRepository, load_model
from optkit.models._build_onnx import AGREEMENT, cnn_flops_per_row
from optkit.models._onnx import OnnxModel
from optkit.models._repository import FAILED, READY
from optkit.service import create_gateway
from optkit.service import create_model_server as create_model_server_app
from optkit.service._model_server import ModelServer
from optkit.v2 import TensorSpec

FLOAT = TensorProto.FLOAT


def _graph(folder: Path, nodes: list[Any], inputs: list[tuple[str, int, list[Any]]],
           outputs: list[tuple[str, int, list[Any]]], weights: list[Any] = ()) -> Path:
    """Write ``folder/model.onnx`` (opset 17) and return the folder."""
    graph = helper.make_graph(nodes, "test", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], list(weights))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    return folder


def _doubler(folder: Path, batch: Any = "N", width: int = 4) -> Path:
    """y = 2 * x, x and y [batch, width] FP32."""
    return _graph(folder, [helper.make_node("Mul", ["x", "two"], ["y"])],
                  [("x", FLOAT, [batch, width])], [("y", FLOAT, [batch, width])],
                  [helper.make_tensor("two", FLOAT, [], [2.0])])


def _pairs(folder: Path) -> Path:
    """y = row sums of x taken two columns at a time: x [N, C] needs an even C (a Reshape)."""
    return _graph(folder, [
        helper.make_node("Reshape", ["x", "to_pairs"], ["p"]),
        helper.make_node("ReduceSum", ["p", "last"], ["y"], keepdims=0)],
        [("x", FLOAT, ["N", "C"])], [("y", FLOAT, ["N", "H"])],
        [helper.make_tensor("to_pairs", TensorProto.INT64, [3], [0, -1, 2]),
         helper.make_tensor("last", TensorProto.INT64, [1], [2])])


def _config(folder: Path, **doc: Any) -> None:
    (folder / "config.yaml").write_text(yaml.safe_dump({"backend": "onnx", **doc}))


def _spec(name: str, shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


# -- the catalogue's graphs -----------------------------------------------------------------
def test_digits_onnx_agrees_with_the_sklearn_artefact(onnx_repository: Path, digits: tuple) -> None:
    """digits-onnx gives digits-sklearn's probabilities to 1e-4 and its labels on every
    held-out row, through the onnx kind."""
    _, xte, _, yte = digits
    out = load_model(onnx_repository / "digits-onnx" / "1").predict({"pixels": xte})
    pipe = joblib.load(onnx_repository / "digits-sklearn" / "1" / "model.joblib")
    expected = pipe.predict_proba(xte.astype(np.float64))
    assert np.abs(out["probabilities"] - expected).max() <= AGREEMENT
    assert np.array_equal(out["label"].ravel(), expected.argmax(axis=1))
    assert out["label"].dtype == np.int64 and out["label"].shape == (len(xte), 1)
    assert float((out["label"].ravel() == yte).mean()) >= MIN_ACCURACY


def test_digits_cnn_is_accurate_and_records_what_it_is(onnx_repository: Path,
                                                       digits: tuple) -> None:
    """digits-cnn meets the digits accuracy held out; its config says its weights and FLOPs;
    its probabilities are distributions."""
    _, xte, _, yte = digits
    model = load_model(onnx_repository / "digits-cnn" / "1")
    out = model.predict({"pixels": xte})
    accuracy = float((out["label"].ravel() == yte).mean())
    assert accuracy >= MIN_ACCURACY and round(accuracy, 4) == model.config.metrics["accuracy"]
    assert np.allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    metrics = model.config.metrics
    assert metrics["flops_per_row"] == cnn_flops_per_row() > 100e6
    assert metrics["weights_bytes"] > 60e6
    assert model.nbytes >= (onnx_repository / "digits-cnn" / "1" / "model.onnx").stat().st_size


def test_a_batch_answers_row_for_row(onnx_repository: Path, digits: tuple) -> None:
    """One call of 32 rows gives what 32 calls of one row give (the leading dim is the batch)."""
    x = digits[1][:32]
    model = load_model(onnx_repository / "digits-cnn" / "1")
    batched = model.predict({"pixels": x})
    single = [model.predict({"pixels": x[i:i + 1]}) for i in range(len(x))]
    assert np.allclose(batched["probabilities"],
                       np.concatenate([s["probabilities"] for s in single]), atol=1e-5)
    assert np.array_equal(batched["label"], np.concatenate([s["label"] for s in single]))


def test_session_options_come_from_the_config(tmp_path: Path) -> None:
    """intra_op_threads, graph_optimization_level and spinning reach ONNX Runtime; an unknown
    parameter or a bad value fails the load naming it."""
    folder = _doubler(tmp_path / "m" / "1")
    _config(folder, parameters={"intra_op_threads": 2, "graph_optimization_level": "basic",
                                "intra_op_spinning": False})
    options = load_model(folder)._session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for params, words in (({"intra_op_thread": 1}, "unknown onnx parameter(s) ['intra_op_thread']"),
                          ({"intra_op_threads": -1}, "intra_op_threads must be"),
                          ({"graph_optimization_level": "max"}, "graph_optimization_level"),
                          ({"intra_op_spinning": "yes"}, "intra_op_spinning")):
        _config(folder, parameters=params)
        with pytest.raises(ModelLoadError) as caught:
            load_model(folder)
        assert words in str(caught.value)


# -- bring your model: configs completed from the graph ----------------------------------
def test_a_minimal_config_is_completed_from_the_graph(tmp_path: Path) -> None:
    """``backend: onnx`` alone: inputs, outputs and their shapes come from the graph (symbolic
    dims free), the name from the folder; the model serves."""
    _config(_doubler(tmp_path / "team-model" / "1"))
    repo = ModelRepository(tmp_path)
    config = repo.config("team-model")
    assert config.name == "team-model" and config.max_batch_size == 0
    assert config.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert config.outputs == (TensorSpec("y", "FP32", (-1, 4)),)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(repo.load("team-model").predict({"x": x})["y"], 2 * x)


def test_a_lone_model_file_is_a_model(tmp_path: Path) -> None:
    """``<repo>/<name>/<version>/model.onnx`` with no config at all is listed and loads."""
    _doubler(tmp_path / "bare" / "3")
    repo = ModelRepository(tmp_path)
    assert repo.names() == ["bare"] and repo.versions("bare") == ["3"]
    model = repo.load("bare")
    assert model.config.version == "3" and model.config.backend == "onnx"
    assert model.predict({"x": np.ones((1, 4), np.float32)})["y"].tolist() == [[2.0] * 4]


def test_a_fixed_batch_graph_is_served_that_many_rows_at_a_time(tmp_path: Path) -> None:
    """A graph exported with batch 1 gets max_batch_size 1 (never merged into a call it
    refuses); a config asking for more is refused, naming the fix."""
    folder = _doubler(tmp_path / "one" / "1", batch=1)
    _config(folder)
    assert load_model(folder).config.max_batch_size == 1
    _config(folder, max_batch_size=8)
    with pytest.raises(ModelLoadError, match="max_batch_size 8, but the graph fixes its leading "
                                             "dimension at 1"):
        load_model(folder)
    _config(folder, inputs=[_spec("x", [-1, 4])], outputs=[_spec("y", [-1, 4])])
    with pytest.raises(ModelLoadError, match="dimension 0 as -1 .free., the graph fixes it at 1 "
                                             ".a graph exported with a fixed batch"):
        load_model(folder)


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("inputs, outputs, words", [
    ([_spec("pixels", [-1, 4])], [_spec("y", [-1, 4])],
     "config.yaml's inputs ['pixels'] are not the graph's ['x']"),
    ([_spec("x", [-1, 4], "FP64")], [_spec("y", [-1, 4])],
     "config.yaml says input 'x' is FP64, the graph says FP32"),
    ([_spec("x", [-1, 8])], [_spec("y", [-1, 4])],
     "config.yaml gives input 'x' dimension 1 as 8 (fixed), the graph fixes it at 4"),
    ([_spec("x", [-1, 4, 1])], [_spec("y", [-1, 4])],
     "config.yaml gives input 'x' shape [-1, 4, 1], the graph [-1, 4]"),
    ([_spec("x", [-1, 4])], [_spec("z", [-1, 4])],
     "config.yaml's output(s) ['z'] are not in the graph, whose outputs are ['y']"),
])
def test_a_config_that_disagrees_with_its_graph_fails_the_load(
        tmp_path: Path, inputs: list, outputs: list, words: str) -> None:
    """Names, datatypes, ranks and fixed dims are checked; the reason says which and how."""
    folder = _doubler(tmp_path / "m" / "1")
    _config(folder, inputs=inputs, outputs=outputs)
    with pytest.raises(ModelLoadError) as caught:
        load_model(folder)
    assert words in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"this is not protobuf \x00\xff" * 10, "truncated"])
def test_a_file_that_is_not_onnx_fails_with_a_clear_reason(tmp_path: Path, content: Any) -> None:
    """Garbage, an empty file and a truncated graph fail the load (and a minimal config's
    completion) with 'not a valid ONNX graph', no ONNX Runtime code prefix."""
    folder = _doubler(tmp_path / "m" / "1")
    if content == "truncated":
        content = (folder / "model.onnx").read_bytes()[:-7]
    (folder / "model.onnx").write_bytes(content)
    _config(folder, inputs=[_spec("x", [-1, 4])], outputs=[_spec("y", [-1, 4])])
    with pytest.raises(ModelLoadError, match="is not a valid ONNX graph") as caught:
        load_model(folder)
    assert "[ONNXRuntimeError]" not in str(caught.value)
    _config(folder)
    with pytest.raises(ModelLoadError, match="is not a valid ONNX graph"):
        ModelConfig.read(folder)


def test_a_port_the_protocol_cannot_carry_fails_the_load(tmp_path: Path) -> None:
    """A string input cannot be said in v2 tensors here: completing the config, or checking a
    config that names it, fails naming the input and its type."""
    folder = _graph(tmp_path / "m" / "1", [helper.make_node("Identity", ["s"], ["t"])],
                    [("s", TensorProto.STRING, ["N", 1])], [("t", TensorProto.STRING, ["N", 1])])
    with pytest.raises(ModelLoadError, match="input 's' is of type STRING, which the v2 "
                                             "protocol cannot carry"):
        ModelConfig.read(folder)
    _config(folder, inputs=[_spec("s", [-1, 1], "UINT8")], outputs=[_spec("t", [-1, 1], "UINT8")])
    with pytest.raises(ModelLoadError, match=r"input 's' is a tensor\(string\)"):
        load_model(folder)


def test_only_what_the_config_leaves_out_is_read(tmp_path: Path) -> None:
    """A config that gives its inputs (narrowing a free dimension) but not its outputs keeps
    its inputs and takes the graph's outputs."""
    folder = _pairs(tmp_path / "m" / "1")
    _config(folder, inputs=[_spec("x", [-1, 6])])
    config = load_model(folder).config
    assert config.inputs == (TensorSpec("x", "FP32", (-1, 6)),)
    assert config.outputs == (TensorSpec("y", "FP32", (-1, -1)),)


def test_a_shape_the_graph_refuses_is_the_clients_fault(tmp_path: Path) -> None:
    """A free dimension the graph's nodes cannot take: a ProtocolError naming the input and
    its shape, ONNX Runtime's reason on one line; a shape it takes still serves."""
    model = load_model(_pairs(tmp_path / "pairs" / "1"))
    assert model.config.inputs == (TensorSpec("x", "FP32", (-1, -1)),)
    ok = model.predict({"x": np.ones((2, 4), np.float32)})
    assert ok["y"].tolist() == [[2.0, 2.0], [2.0, 2.0]]
    with pytest.raises(ProtocolError) as caught:
        model.predict({"x": np.ones((2, 3), np.float32)})
    text = str(caught.value)
    assert text.startswith("the model's graph refused input 'x' of shape [2, 3]: ")
    assert "\n" not in text and "[ONNXRuntimeError]" not in text and "Reshape" in text


def test_a_failure_on_a_declared_shape_is_the_models(tmp_path: Path) -> None:
    """A graph that fails on a shape its signature fixes raises a plain error (a 500), not a
    ProtocolError: the client sent what the model declared."""
    folder = _graph(tmp_path / "m" / "1", [helper.make_node("Reshape", ["x", "threes"], ["y"])],
                    [("x", FLOAT, ["N", 4])], [("y", FLOAT, ["M", 3])],
                    [helper.make_tensor("threes", TensorProto.INT64, [2], [-1, 3])])
    model = load_model(folder)
    with pytest.raises(RuntimeError) as caught:
        model.predict({"x": np.ones((1, 4), np.float32)})
    assert not isinstance(caught.value, ProtocolError)
    assert "[ONNXRuntimeError]" not in str(caught.value)


# -- pickling: the loader's process executor ------------------------------------------------
def test_a_model_travels_pickled_as_its_file(onnx_repository: Path, digits: tuple,
                                             tmp_path: Path) -> None:
    """Pickled (as a loader process hands it back), a model rebuilds its session and answers
    the same; a file changed since the load is refused instead of shipped."""
    x = digits[1][:8]
    model = load_model(onnx_repository / "digits-onnx" / "1")
    copy = pickle.loads(pickle.dumps(model))
    assert isinstance(copy, OnnxModel) and copy.config == model.config
    assert np.array_equal(copy.predict({"pixels": x})["probabilities"],
                          model.predict({"pixels": x})["probabilities"])
    assert pickle.loads(pickle.dumps(copy)).config == model.config
    folder = _doubler(tmp_path / "m" / "1")
    changing = load_model(folder)
    _doubler(folder, width=5)
    with pytest.raises(ModelLoadError, match="changed while it loaded"):
        pickle.dumps(changing)


# -- real servers -----------------------------------------------------------------------------
@pytest.fixture
async def tiers(tmp_path: Path, onnx_repository: Path) -> AsyncIterator[Any]:
    """Start a background-loading model server (a worker process loads, warm-up on) over a
    copy of some ONNX models plus ``pairs``, and a gateway in front of it, on 127.0.0.1."""
    clients: list[TestClient] = []

    async def start(*models: str) -> tuple[Path, TestClient, TestClient]:
        root = tmp_path / "repo"
        for name in models:
            shutil.copytree(onnx_repository / name, root / name)
        _pairs(root / "pairs" / "1")
        config = ServiceConfig(loading=LoadingConfig(mode="background", warmup=True))
        server = TestClient(TestServer(ModelServer(root, config).make_app(), host="127.0.0.1"))
        await server.start_server()
        clients.append(server)
        for _ in range(600):  # bounded: 30 s
            if [e["state"] for e in await _index(server)] == [READY] * (len(models) + 1):
                break
            await asyncio.sleep(0.05)
        gateway = TestClient(TestServer(create_gateway([str(server.make_url(""))]),
                                        host="127.0.0.1"))
        await gateway.start_server()
        clients.append(gateway)
        return root, server, gateway

    yield start
    for client in reversed(clients):
        await client.close()


async def _index(client: TestClient) -> list[dict[str, str]]:
    return orjson.loads(await (await client.post("/v2/repository/index")).read())


async def test_both_tiers_serve_the_onnx_models(tiers: Any, digits: tuple) -> None:
    """digits-onnx and digits-cnn answer through the model server and the gateway alike,
    labels right; the metadata says the onnx platform; the loader's bytes are the sessions'
    measured memory, at least the files' sizes."""
    root, server, gateway = await tiers("digits-onnx", "digits-cnn")
    _, xte, _, yte = digits
    body = encode_infer_request({"pixels": xte[:16]})
    for name in ("digits-onnx", "digits-cnn"):
        answers = []
        for client in (server, gateway):
            resp = await client.post(f"/v2/models/{name}/infer", data=body)
            assert resp.status == 200
            doc = orjson.loads(await resp.read())
            answers.append(doc["outputs"])
            meta = orjson.loads(await (await client.get(f"/v2/models/{name}")).read())
            assert meta["platform"] == "optkit_onnx"
        assert answers[0] == answers[1]
        labels = np.array(next(o for o in answers[0] if o["name"] == "label")["data"])
        assert float((labels == yte[:16]).mean()) >= 0.9
    stats = orjson.loads(await (await server.get("/stats")).read())["loading"]
    files = sum((root / n / "1" / "model.onnx").stat().st_size
                for n in ("digits-onnx", "digits-cnn", "pairs"))
    assert stats["bytes_loaded"] >= files and stats["mode"] == "background/process"
    # pairs refuses the warm-up's [1, 1] as a client's shape: it is READY, not warmed
    assert stats["warmups"] == 2


async def test_a_refused_shape_is_a_400_naming_the_input_at_both_tiers(tiers: Any) -> None:
    """A request whose free dimension the graph refuses: the same 400 from both tiers, naming
    the input and shape; never a 500 or ONNX Runtime's text."""
    _, server, gateway = await tiers()
    body = encode_infer_request({"x": np.ones((1, 3), np.float32)})
    answers = []
    for client in (server, gateway):
        resp = await client.post("/v2/models/pairs/infer", data=body)
        doc = orjson.loads(await resp.read())
        answers.append((resp.status, doc))
    assert answers[0] == answers[1]
    status, doc = answers[0]
    assert status == 400 and "input 'x' of shape [1, 3]" in doc["error"]
    assert "[ONNXRuntimeError]" not in doc["error"]
    ok = await server.post("/v2/models/pairs/infer",
                           data=encode_infer_request({"x": np.ones((1, 4), np.float32)}))
    assert ok.status == 200


@pytest.mark.parametrize("breakage, words", [
    ("garbage", "is not a valid ONNX graph"),
    ("config", "config.yaml's inputs ['image'] are not the graph's ['pixels']"),
])
async def test_a_bad_new_version_fails_and_the_old_keeps_serving(
        tiers: Any, digits: tuple, breakage: str, words: str) -> None:
    """Version 2 not ONNX, or disagreeing with its config: its load fails with the reason
    (FAILED in the index, a JSON 500 to the load), version 1 answers throughout."""
    root, server, _ = await tiers("digits-onnx")
    v2 = root / "digits-onnx" / "2"
    shutil.copytree(root / "digits-onnx" / "1", v2)
    if breakage == "garbage":
        (v2 / "model.onnx").write_bytes(b"\x08\x07 definitely not a graph" * 100)
    else:
        doc = yaml.safe_load((v2 / "config.yaml").read_text())
        doc["inputs"][0]["name"] = "image"
        (v2 / "config.yaml").write_text(yaml.safe_dump(doc))
    resp = await server.post("/v2/repository/models/digits-onnx/load")
    assert resp.status == 500 and words in orjson.loads(await resp.read())["error"]
    states = {(e["name"], e["version"]): (e["state"], e["reason"]) for e in await _index(server)}
    assert states[("digits-onnx", "2")][0] == FAILED and words in states[("digits-onnx", "2")][1]
    assert states[("digits-onnx", "1")] == (READY, "")
    resp = await server.post("/v2/models/digits-onnx/infer",
                             data=encode_infer_request({"pixels": digits[1][:2]}))
    assert resp.status == 200 and orjson.loads(await resp.read())["model_version"] == "1"


async def test_a_budget_below_the_session_fails_its_load(tmp_path: Path,
                                                         onnx_repository: Path) -> None:
    """digits-cnn under a budget smaller than its session: FAILED 'over memory budget'."""
    root = tmp_path / "repo"
    shutil.copytree(onnx_repository / "digits-cnn", root / "digits-cnn")
    size = (root / "digits-cnn" / "1" / "model.onnx").stat().st_size
    config = ServiceConfig(loading=LoadingConfig(mode="background", executor="thread",
                                                 memory_budget_bytes=size - 1))
    server = TestClient(TestServer(ModelServer(root, config).make_app(), host="127.0.0.1"))
    await server.start_server()
    try:
        resp = await server.post("/v2/repository/models/digits-cnn/load")
        assert resp.status == 500 and "over memory budget" in orjson.loads(await resp.read())["error"]
        (entry,) = await _index(server)
        assert entry["state"] == FAILED and "over memory budget" in entry["reason"]
    finally:
        await server.close()


async def test_a_real_exported_graph_serves_from_a_bare_folder(tmp_path: Path) -> None:
    """SqueezeNet as the onnx package ships it (light model-zoo copy, exported with a fixed
    batch of 1), dropped alone into a folder: served one row at a time, metadata from the
    graph, two rows refused with a 400."""
    shipped = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    if not shipped.exists():
        pytest.skip(f"this onnx wheel ships no {shipped.name}")
    (tmp_path / "squeezenet" / "1").mkdir(parents=True)
    shutil.copy(shipped, tmp_path / "squeezenet" / "1" / "model.onnx")
    server = TestClient(TestServer(create_model_server_app(tmp_path), host="127.0.0.1"))
    await server.start_server()
    try:
        meta = orjson.loads(await (await server.get("/v2/models/squeezenet")).read())
        assert meta["inputs"] == [_spec("data_0", [1, 3, 224, 224])]
        assert meta["parameters"]["max_batch_size"] == 1
        image = np.random.default_rng(0).random((1, 3, 224, 224), np.float32)
        resp = await server.post("/v2/models/squeezenet/infer",  # 600 KB: a stream, not bytes
                                 data=io.BytesIO(encode_infer_request({"data_0": image})))
        doc = orjson.loads(await resp.read())
        assert resp.status == 200 and doc["outputs"][0]["shape"] == [1, 1000, 1, 1]
        assert abs(sum(doc["outputs"][0]["data"]) - 1.0) < 1e-3  # a softmax over 1,000 classes
        resp = await server.post("/v2/models/squeezenet/infer", data=io.BytesIO(
            encode_infer_request({"data_0": np.concatenate([image, image])})))
        assert resp.status == 400 and "shape [2, 3, 224, 224] given, model expects [1, 3, " in \
            orjson.loads(await resp.read())["error"]
    finally:
        await server.close()
