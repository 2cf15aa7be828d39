"""The v2 codec: round trips, the binary extension, and every malformed input."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optkit import ProtocolError, TensorSpec, decode_infer_response, encode_infer_request, \
    encode_infer_response, parse_infer_request, validate_inputs

SPECS = (TensorSpec("pixels", "FP32", (-1, 64)),)


def _body(**input_fields: object) -> bytes:
    entry = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    entry.update(input_fields)
    return orjson.dumps({"inputs": [entry]})


def test_round_trip_flat_json() -> None:
    """An encoded request decodes to the same array, shape and id."""
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    req = parse_infer_request(encode_infer_request({"pixels": x}, request_id="r1"))
    assert req.id == "r1" and req.batch_size == 2
    np.testing.assert_array_equal(req.input("pixels"), x)


def test_nested_data_is_accepted() -> None:
    """Row-major nested lists are as good as flat ones."""
    req = parse_infer_request(_body(shape=[2, 2], data=[[1, 2], [3, 4]]))
    np.testing.assert_array_equal(req.input("pixels"), [[1, 2], [3, 4]])


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, max_side=5),
                  elements=st.floats(-1e6, 1e6, width=32)))
def test_round_trip_property(x: np.ndarray) -> None:
    """Any finite float32 tensor survives encode -> parse unchanged."""
    np.testing.assert_array_equal(parse_infer_request(encode_infer_request({"t": x})).input("t"), x)


def test_binary_extension_both_ways() -> None:
    """Binary tensors (Triton's extension) decode, and binary outputs encode with a header length."""
    x = np.arange(64, dtype=np.float32).reshape(1, 64)
    head = orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "label", "parameters": {"binary_data": True}}]})
    req = parse_infer_request(head + x.tobytes(), len(head))
    np.testing.assert_array_equal(req.input("pixels"), x)
    assert req.outputs == {"label": True}
    body, hlen = encode_infer_response("m", "1", [("label", np.array([[7]])),
                                                  ("p", np.ones((1, 2), np.float32))],
                                       binary=req.outputs)
    assert hlen is not None
    out = decode_infer_response(body, hlen)
    assert out["label"].tolist() == [[7]] and out["p"].tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("body, message", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"inputs": []}', "non-empty 'inputs'"),
    (_body(datatype="FLOAT"), "unsupported datatype"),
    (_body(shape=[1, 65]), "do not match shape"),
    (_body(shape="1x64"), "'shape' must be a list"),
    (_body(shape=[1, -64]), "non-negative"),
    (_body(data=["a"] * 64), "must be numbers"),
    (_body(data=[[1, 2], [3]], shape=[2, 2]), "not a regular array"),
    (_body(data=[float("nan")] * 64), "must be numbers"),  # orjson writes NaN as null
    (_body(datatype="UINT8", data=[300] * 64), "out of range"),
    (_body(datatype="INT32", data=[1.5] * 64), "non-integer"),
    (_body(data=None), "'data' must be a list"),
    (orjson.dumps({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32"}]}), "needs 'data'"),
    (orjson.dumps({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}), "'name'"),
])
def test_malformed_requests_raise_protocol_error(body: bytes, message: str) -> None:
    """Each malformed request is a ProtocolError (400) saying what is wrong."""
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(body)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_binary_nan_or_infinity_is_refused_like_json(bad: float) -> None:
    """Binary tensors are held to the JSON path's rule: no NaN or infinity reaches a model
    (a model may then skip its own scan for them, as the scikit-learn adapter does)."""
    x = np.zeros((1, 64), dtype=np.float32)
    x[0, 5] = bad
    head = orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]})
    with pytest.raises(ProtocolError, match="NaN or infinity"):
        parse_infer_request(head + x.tobytes(), len(head))


def test_binary_header_outside_body_is_rejected() -> None:
    """A header length beyond the body is the client's error, not an index error."""
    with pytest.raises(ProtocolError, match="outside the body"):
        parse_infer_request(b"{}", 10)


@pytest.mark.parametrize("body, message", [
    (_body(name="image"), "unexpected input"),
    (_body(datatype="FP64"), "datatype FP64 given, model expects FP32"),
    (_body(shape=[64], data=[0.0] * 64), "shape \\[64\\] given"),
    (_body(shape=[300, 64], data=[0.0] * 300 * 64), "batch size 300"),
])
def test_validation_against_metadata(body: bytes, message: str) -> None:
    """Requests that decode but do not fit the model's metadata are rejected by name."""
    with pytest.raises(ProtocolError, match=message):
        validate_inputs(parse_infer_request(body), SPECS, max_batch_size=256)


def test_missing_input_is_named() -> None:
    """A model with two inputs names the one the request left out."""
    specs = SPECS + (TensorSpec("mask", "BOOL", (-1, 64)),)
    with pytest.raises(ProtocolError, match="missing input 'mask'"):
        validate_inputs(parse_infer_request(_body()), specs, max_batch_size=0)
