"""The gRPC messages as REST bodies and back (``optkit/v2/_grpc_codec.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from optkit import ProtocolError
from optkit.v2 import (encode_infer_response, infer_request_body, infer_response_message,
                       parse_infer_request)
from optkit.v2._proto import grpc_service_pb2 as pb


def _request(**kwargs: object) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="digits-mlp", **kwargs)  # type: ignore[arg-type]


def test_raw_contents_decode_to_the_same_arrays() -> None:
    """Raw tensors go through the binary extension: the arrays come back bit for bit."""
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    msg = _request(id="r1")
    msg.inputs.add(name="pixels", datatype="FP32", shape=[2, 64])
    msg.raw_input_contents.append(x.tobytes())
    req = parse_infer_request(*infer_request_body(msg))
    assert req.id == "r1" and req.binary_default
    np.testing.assert_array_equal(req.input("pixels"), x)


def test_typed_contents_decode_like_json_data() -> None:
    """Typed values are JSON ``data``: an INT8 value out of range is refused as over REST."""
    msg = _request()
    tensor = msg.inputs.add(name="x", datatype="INT32", shape=[1, 3])
    tensor.contents.int_contents.extend([1, -2, 3])
    out = msg.outputs.add(name="label")
    assert out.name == "label"
    req = parse_infer_request(*infer_request_body(msg))
    np.testing.assert_array_equal(req.input("x"), np.array([[1, -2, 3]], dtype=np.int32))
    assert req.outputs == {"label": True}
    small = _request()
    t = small.inputs.add(name="x", datatype="INT8", shape=[1])
    t.contents.int_contents.append(300)
    with pytest.raises(ProtocolError, match="out of range for INT8"):
        parse_infer_request(*infer_request_body(small))


def test_parameters_of_every_kind_become_json() -> None:
    """bool/int64/double/string parameters arrive as the REST request's ``parameters``."""
    msg = _request()
    t = msg.inputs.add(name="x", datatype="FP32", shape=[1])
    t.contents.fp32_contents.append(1.0)
    msg.parameters["timeout"].int64_param = 5000
    msg.parameters["flag"].bool_param = True
    msg.parameters["ratio"].double_param = 0.5
    msg.parameters["tag"].string_param = "a"
    req = parse_infer_request(*infer_request_body(msg))
    assert req.timeout_us == 5000
    assert req.parameters["flag"] is True and req.parameters["ratio"] == 0.5
    assert req.parameters["tag"] == "a"


@pytest.mark.parametrize("build, message", [
    (lambda m: (m.inputs.add(name="x", datatype="FP32", shape=[1]),
                m.raw_input_contents.extend([b"\0" * 4, b"\0" * 4])),
     "raw_input_contents holds 2 tensor"),
    (lambda m: m.inputs.add(name="x", datatype="FP32", shape=[1]).contents
     .int_contents.append(1), "FP32 values go in fp32_contents, got int_contents"),
    (lambda m: m.inputs.add(name="x", datatype="FP32", shape=[1]).contents
     .fp32_contents.append(float("nan")), "data holds NaN or infinity"),
])
def test_what_only_protobuf_can_get_wrong(build: object, message: str) -> None:
    """Mixed or misplaced contents, and NaN (JSON has none), are ProtocolErrors (400s)."""
    msg = _request()
    build(msg)  # type: ignore[operator]
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(*infer_request_body(msg))


def test_no_contents_is_the_rest_missing_data_message() -> None:
    """An input with no values for a non-empty shape: the REST codec's own words."""
    msg = _request()
    msg.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    with pytest.raises(ProtocolError, match=r"needs 'data' \(or binary_data_size\)"):
        parse_infer_request(*infer_request_body(msg))


@pytest.mark.parametrize("binary", [True, False])
def test_answers_come_back_raw(binary: bool) -> None:
    """A JSON or binary REST answer becomes raw_output_contents with name, datatype, shape."""
    probs = np.linspace(0, 1, 20, dtype=np.float32).reshape(2, 10)
    label = np.array([[3], [7]], dtype=np.int64)
    body, head = encode_infer_response("m", "1", [("probabilities", probs), ("label", label)],
                                       request_id="q", binary_default=binary)
    msg = infer_response_message(body, head)
    assert (msg.model_name, msg.model_version, msg.id) == ("m", "1", "q")
    assert [(o.name, o.datatype, list(o.shape)) for o in msg.outputs] == [
        ("probabilities", "FP32", [2, 10]), ("label", "INT64", [2, 1])]
    np.testing.assert_array_equal(np.frombuffer(msg.raw_output_contents[0], np.float32)
                                  .reshape(2, 10), probs)
    np.testing.assert_array_equal(np.frombuffer(msg.raw_output_contents[1], np.int64), [3, 7])


def test_a_malformed_answer_is_a_protocol_error() -> None:
    """An upstream's unusable answer is said, not crashed on."""
    with pytest.raises(ProtocolError, match="malformed v2 response"):
        infer_response_message(b'{"outputs": 3}', None)
