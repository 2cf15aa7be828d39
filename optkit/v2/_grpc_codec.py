"""The v2 gRPC messages (Triton's ``inference.*``) as the REST codec's bodies, and back.

A ``ModelInferRequest`` is turned into the REST request it stands for, in the binary
tensor extension, and decoded by the one REST codec (``parse_infer_request``): so a bad
request gets the same checks and the same message on both transports::

    ModelInferRequest                           REST body (JSON head + raw tensors)
      inputs[i] + raw_input_contents[i]   ──▶     {"name", "datatype", "shape",
                                                   "parameters": {"binary_data_size": n}}
      inputs[i].contents.<type>_contents  ──▶     {"name", "datatype", "shape", "data": [...]}
      outputs[j]                          ──▶     {"name", "parameters": {"binary_data": true}}
      parameters (bool/int64/uint64/double/string) ──▶ "parameters" (+ binary_data_output)

    REST answer (JSON or binary) ──infer_response_message──▶ ModelInferResponse with every
                                                             output in raw_output_contents

Answers always come back as ``raw_output_contents`` (as Triton sends them); typed
contents are read in requests (the ``<type>_contents`` field of the input's datatype,
as JSON ``data`` is, so the REST range checks apply), raw ones too. ``BYTES`` tensors
are refused as over REST. The cost is one small JSON head each way.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .._exceptions import ProtocolError
from ._codec import DATATYPES, json_dumps, json_loads
from ._stream import datatype_of
from ._proto import grpc_service_pb2 as pb

__all__ = ["infer_request_body", "infer_response_message", "parameters_dict",
           "encode_grpc_infer_request", "pb", "STATUS_CODES", "HTTP_STATUS_KEY",
           "PARAMETERS_KEY"]

#: trailing metadata of a refusal: the REST status it stands for (``optkit.layers.channels``
#: reads it back; standard clients ignore it)
HTTP_STATUS_KEY = "optkit-http-status"
#: trailing metadata of ModelMetadata: the REST document's ``parameters`` (JSON), which the
#: protobuf message has no field for
PARAMETERS_KEY = "optkit-parameters-bin"

#: REST status -> the name of its gRPC code (``grpc.StatusCode[name]``), as Triton maps its
#: errors: the service answers a refusal with it, ``optkit.layers.channels`` inverts it
STATUS_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED", 409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

#: v2 datatype -> the InferTensorContents field its typed values travel in (Triton's table)
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP16": "fp32_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_PARAM_KINDS = ("bool_param", "int64_param", "uint64_param", "double_param", "string_param")


def parameters_dict(params: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as the plain JSON ``parameters`` object."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is not None:
            out[key] = getattr(value, kind)
    return out


def infer_request_body(msg: pb.ModelInferRequest) -> tuple[bytes, int]:
    """The REST body a gRPC infer request stands for: ``(body, header_length)``.

    The header length goes in ``Inference-Header-Content-Length``; the body is then
    decoded by :func:`optkit.v2.parse_infer_request` like any binary-extension request.

    Raises:
        ProtocolError: what protobuf can say that JSON cannot (raw and typed contents
            mixed, a raw tensor count that is not the input count, typed values in a
            field that is not their datatype's).
    """
    raws = msg.raw_input_contents
    if raws and len(raws) != len(msg.inputs):
        raise ProtocolError(f"raw_input_contents holds {len(raws)} tensor(s) for "
                            f"{len(msg.inputs)} input(s)")
    inputs: list[dict[str, Any]] = []
    for i, tensor in enumerate(msg.inputs):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.shape)}
        params = parameters_dict(tensor.parameters)
        params.pop("binary_data_size", None)  # the REST framing's own; set below for raw
        typed = tensor.HasField("contents") and tensor.contents.ListFields()
        if raws:
            if typed:
                raise ProtocolError(f"input {tensor.name!r}: both contents and "
                                    f"raw_input_contents given")
            params["binary_data_size"] = len(raws[i])
        elif typed or not all(tensor.shape):
            entry["data"] = _typed_values(tensor)
        # no contents for a non-empty shape: no "data", and the codec's REST message says so
        if params:
            entry["parameters"] = params
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if msg.id:
        doc["id"] = msg.id
    params = parameters_dict(msg.parameters)
    if msg.outputs:
        doc["outputs"] = [{"name": o.name, "parameters": {"binary_data": True}}
                          for o in msg.outputs]
    else:
        params["binary_data_output"] = True
    doc["parameters"] = params
    head = json_dumps(doc)
    return (head + b"".join(raws) if raws else head), len(head)


def _typed_values(tensor: Any) -> list[Any]:
    """The input's typed values as a JSON ``data`` list (its datatype's field only)."""
    field = CONTENTS_FIELD.get(tensor.datatype)
    contents = tensor.contents
    given = [f.name for f, _ in contents.ListFields()] if tensor.HasField("contents") else []
    if field is None or field == "bytes_contents" or not given:
        return []  # the codec names the datatype it refuses (or finds the shape empty)
    if given != [field]:
        raise ProtocolError(f"input {tensor.name!r}: {tensor.datatype} values go in "
                            f"{field}, got {', '.join(given)}")
    values = list(getattr(contents, field))
    if field in ("fp32_contents", "fp64_contents") and not np.isfinite(values).all():
        # JSON has no NaN: the REST binary path's refusal, word for word
        raise ProtocolError(f"input {tensor.name!r}: data holds NaN or infinity")
    return values


def infer_response_message(body: bytes, header_length: int | None) -> pb.ModelInferResponse:
    """A v2 REST answer (JSON, or the binary extension) as a ``ModelInferResponse``.

    Raises:
        ProtocolError: the body is not a well-formed v2 answer.
    """
    head = body if header_length is None else body[:header_length]
    try:
        doc = json_loads(head)
        blob = memoryview(body)[len(head):]
        msg = pb.ModelInferResponse(model_name=str(doc.get("model_name", "")),
                                    model_version=str(doc.get("model_version") or ""),
                                    id=str(doc.get("id") or ""))
        offset = 0
        for entry in doc["outputs"]:
            datatype, shape = entry["datatype"], entry["shape"]
            size = (entry.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                if offset + size > len(blob):
                    raise ValueError("binary data runs past the end of the body")
                raw = bytes(blob[offset:offset + size])
                offset += size
            else:
                raw = np.asarray(entry["data"], dtype=DATATYPES[datatype]).tobytes()
            msg.outputs.add(name=entry["name"], datatype=datatype, shape=shape)
            msg.raw_output_contents.append(raw)
        return msg
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"malformed v2 response: {exc!r}") from None


def encode_grpc_infer_request(model: str, inputs: Mapping[str, np.ndarray], *,
                              version: str = "", outputs: Sequence[str] = (),
                              request_id: str = "") -> pb.ModelInferRequest:
    """A ``ModelInferRequest`` with every tensor in ``raw_input_contents`` (as
    ``tritonclient.grpc`` sends them; used by the load generator)."""
    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, arr in inputs.items():
        arr = np.ascontiguousarray(arr)
        msg.inputs.add(name=name, datatype=datatype_of(arr.dtype), shape=list(arr.shape))
        msg.raw_input_contents.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False)
                                      .tobytes())
    for name in outputs:
        msg.outputs.add(name=name)
    return msg
