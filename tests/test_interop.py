"""A standard v2 client (NVIDIA's tritonclient) talks to optkit's servers unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from optkit.service import Stack

httpclient = pytest.importorskip("tritonclient.http")


@pytest.mark.parametrize("tier", ["model-server", "gateway"])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer(stack: Stack, digits: tuple, tier: str, binary: bool) -> None:
    """tritonclient's health, metadata and infer calls work, with binary tensors and without."""
    _, xte, _, yte = digits
    url = stack.services[tier].url.removeprefix("http://")
    client = httpclient.InferenceServerClient(url=url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits-mlp")
        meta = client.get_model_metadata("digits-mlp")
        assert meta["inputs"][0]["name"] == "pixels"
        x = xte[:32]
        inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("label", binary_data=binary)]
        result = client.infer("digits-mlp", [inp], outputs=outputs)
        labels = result.as_numpy("label").ravel()
        assert labels.shape == (32,)
        assert float((labels == yte[:32]).mean()) >= 0.9
    finally:
        client.close()


def test_tritonclient_repository_extension(stack: Stack) -> None:
    """tritonclient's repository index and load/unload calls are understood."""
    client = httpclient.InferenceServerClient(url=stack.model_server_url.removeprefix("http://"))
    try:
        names = {m["name"] for m in client.get_model_repository_index()}
        assert {"digits-mlp", "synthetic"} <= names
        client.unload_model("synthetic")
        assert not client.is_model_ready("synthetic")
        client.load_model("synthetic")
        assert client.is_model_ready("synthetic")
    finally:
        client.close()


@pytest.mark.parametrize("model", ["digits-onnx", "digits-cnn"])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_gets_the_same_answers_from_both_tiers_on_onnx(
        onnx_stack: Stack, digits: tuple, model: str, binary: bool) -> None:
    """The ONNX models through tritonclient: metadata, ready, and the same probabilities and
    labels from the model server and the gateway, right on held-out digits."""
    _, xte, _, yte = digits
    x = xte[:32]
    answers = []
    for tier in ("model-server", "gateway"):
        client = httpclient.InferenceServerClient(
            url=onnx_stack.services[tier].url.removeprefix("http://"))
        try:
            assert client.is_model_ready(model)
            meta = client.get_model_metadata(model)
            assert meta["platform"] == "optkit_onnx"
            assert [i["name"] for i in meta["inputs"]] == ["pixels"]
            inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
                       for n in ("probabilities", "label")]
            result = client.infer(model, [inp], outputs=outputs)
            answers.append((result.as_numpy("probabilities"), result.as_numpy("label")))
        finally:
            client.close()
    (p_server, l_server), (p_gateway, l_gateway) = answers
    assert np.array_equal(p_server, p_gateway) and np.array_equal(l_server, l_gateway)
    assert p_server.shape == (32, 10) and l_server.shape == (32, 1)
    assert float((l_server.ravel() == yte[:32]).mean()) >= 0.9
