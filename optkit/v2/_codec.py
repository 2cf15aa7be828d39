"""Open Inference Protocol v2 (REST) request/response codec and validation.

A v2 inference request is a JSON document naming input tensors::

    {"id": "42",
     "inputs":  [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": [...128 numbers...]}],
     "outputs": [{"name": "label"}]}

Tensors carry a leading batch dimension, so a request with ``shape[0] == n`` is answered
row for row, and a batched upstream call is an ordinary v2 request. ``data`` may be flat
(row-major) or nested. The binary tensor extension (Triton's, ``tritonclient``'s default)
works both ways: a JSON header of ``Inference-Header-Content-Length`` bytes, then raw
little-endian tensor bytes, each input saying its ``binary_data_size``.

Everything a client can get wrong raises :class:`ProtocolError` (-> 400) saying what and
where; nothing here raises anything else on bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import orjson

from .._exceptions import ProtocolError

__all__ = [
    "DATATYPES",
    "BINARY_HEADER",
    "TensorSpec",
    "InferInput",
    "InferRequest",
    "parse_infer_request",
    "validate_inputs",
    "request_deadline",
    "split_rows",
    "encode_infer_request",
    "encode_infer_response",
    "decode_infer_response",
    "decode_infer_result",
    "encode_binary_infer_request",
    "InferResult",
    "json_dumps",
    "json_loads",
    "error_body",
]

BINARY_HEADER = "Inference-Header-Content-Length"

#: v2 datatype name -> numpy dtype (little-endian, as the binary extension requires).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAME_OF = {dt: name for name, dt in DATATYPES.items()}
_MAX_DIMS = 8
#: the most bytes a declared shape may span (its non-zero dimensions): far above any body
#: the servers accept, and far below what numpy refuses to shape
_MAX_TENSOR_BYTES = 1 << 40
#: per float datatype, the magnitude from which a float64 rounds to infinity in a cast
#: (half an ulp above the largest finite value; float64 itself: none)
_FLOAT_LIMIT = {dt: float(np.finfo(dt).max) + 2.0 ** (np.finfo(dt).maxexp - 2 - np.finfo(dt).nmant)
                for dt in DATATYPES.values() if dt.kind == "f"}

_F64 = DATATYPES["FP64"]
_NO_BLOB = memoryview(b"")  # a JSON-only body's binary part (read-only, shared)
_OPTS = orjson.OPT_SERIALIZE_NUMPY


def json_dumps(obj: Any) -> bytes:
    """Serialize with orjson (numpy arrays included)."""
    return orjson.dumps(obj, option=_OPTS)


json_loads = orjson.loads


def error_body(message: str) -> bytes:
    """The JSON error body every endpoint answers with: ``{"error": message}``."""
    return orjson.dumps({"error": message})


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as metadata describes it; ``-1`` is a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorSpec":
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))


@dataclass
class InferInput:
    """One decoded input tensor."""

    name: str
    datatype: str
    array: np.ndarray


@dataclass
class InferRequest:
    """A decoded v2 inference request."""

    inputs: list[InferInput]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    #: requested output names -> wants binary data; empty means "all, as JSON".
    outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    #: the v2 ``timeout`` parameter (microseconds, as Triton names it); None or 0: no deadline
    timeout_us: int | None = None

    @property
    def batch_size(self) -> int:
        return int(self.inputs[0].array.shape[0]) if self.inputs and self.inputs[0].array.ndim else 1

    def input(self, name: str) -> np.ndarray:
        for item in self.inputs:
            if item.name == name:
                return item.array
        raise ProtocolError(f"missing input {name!r}")


def _check_shape(raw: Any, name: str) -> tuple[int, ...]:
    if type(raw) is not list or len(raw) > _MAX_DIMS:
        raise _bad(name, f"'shape' must be a list of at most {_MAX_DIMS} integers")
    for dim in raw:
        if type(dim) is not int or dim < 0:  # bool is not int by type
            raise _bad(name, f"'shape' must hold non-negative integers, got {raw!r}")
    return tuple(raw)


def _bad(name: str, problem: str) -> ProtocolError:
    return ProtocolError(f"input {name!r}: {problem}")


def _decode_json_data(data: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """Input ``name``'s JSON ``data`` as a flat array of ``dtype``, or a ProtocolError."""
    if not isinstance(data, list):
        raise _bad(name, "'data' must be a list")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise _bad(name, f"'data' is not a regular array: {exc}") from None
    if arr.dtype is _F64 and dtype.kind == "f" and arr.size:  # the usual case, first
        # orjson refuses NaN, infinity and numbers beyond float64: only a narrower datatype's
        # range is left (1e39 would be inf as FP32); a flat list by Python's max/min, which
        # under load cost ~3 us a request less than numpy's abs and max
        limit = _FLOAT_LIMIT[dtype]
        if dtype is not _F64 and ((max(data) >= limit or min(data) <= -limit)
                                  if arr.ndim == 1 else np.abs(arr).max() >= limit):
            raise _bad(name, f"data out of range for {_NAME_OF[dtype]}")
        arr = arr.astype(dtype, copy=False)
        return arr if arr.ndim == 1 else arr.reshape(-1)
    kind = arr.dtype.kind
    if arr.size == 0:
        return np.zeros(0, dtype=dtype)
    if dtype.kind == "b":
        if kind != "b":
            raise _bad(name, "BOOL data must be true/false")
        return arr.reshape(-1)
    if kind not in "biuf":
        raise _bad(name, f"data must be numbers for datatype {_NAME_OF[dtype]}")
    if dtype.kind in "iu":
        if kind == "f":
            # numpy infers float64 for integers no single int type holds ([0, 2**64 - 1]):
            # whole numbers still get their exact value (rare; element by element)
            arr = _whole_numbers(data, arr.shape)
        if arr is None:
            raise _bad(name, f"integer datatype {_NAME_OF[dtype]} got non-integer data")
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise _bad(name, f"data out of range for {_NAME_OF[dtype]}")
    elif dtype.kind == "f":  # integers or booleans for a float datatype
        limit = _FLOAT_LIMIT[dtype]
        if arr.max() >= limit or arr.min() <= -limit:
            raise _bad(name, f"data out of range for {_NAME_OF[dtype]}")
    return arr.astype(dtype, copy=False).reshape(-1)


def _whole_numbers(data: list[Any], shape: tuple[int, ...]) -> np.ndarray | None:
    """``data`` as an object array of Python ints, or None if any value is not one."""
    arr = np.empty(shape, dtype=object)
    arr[...] = data
    flat = arr.reshape(-1)
    if not all(type(v) is int or type(v) is bool for v in flat):
        return None
    return flat


def _json_object(data: bytes | memoryview, refusal: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object, or a ProtocolError (malformed, or ``refusal``)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(refusal)
    return doc


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode a v2 infer body (JSON, or JSON header + binary tensors).

    Args:
        body: the whole request body.
        header_length: value of ``Inference-Header-Content-Length`` if present.

    Raises:
        ProtocolError: anything malformed, with what and where.
    """
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(f"{BINARY_HEADER} {header_length} is outside the body")
        head, blob = body[:header_length], memoryview(body)[header_length:]
    else:
        head, blob = body, _NO_BLOB
    doc = _json_object(head, "request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    offset = 0
    inputs: list[InferInput] = []
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise ProtocolError(f"inputs[{i}] must be an object")
        name, datatype = raw.get("name"), raw.get("datatype")
        if type(name) is not str or not name:
            raise ProtocolError(f"inputs[{i}]: 'name' must be a non-empty string")
        if i and any(item.name == name for item in inputs):
            raise _bad(name, "appears twice")
        dtype = DATATYPES.get(datatype) if type(datatype) is str else None
        if dtype is None:
            raise _bad(name, f"unsupported datatype {datatype!r}")
        shape = _check_shape(raw.get("shape"), name)
        count = math.prod(shape)
        if (count or math.prod(d for d in shape if d)) * dtype.itemsize > _MAX_TENSOR_BYTES:
            # an empty tensor of shape [0, 2**62] holds nothing, yet numpy cannot shape it
            raise _bad(name, f"shape {list(shape)} is too large")
        params = raw.get("parameters")
        size = None
        if params:
            if not isinstance(params, dict):
                raise _bad(name, "'parameters' must be an object")
            size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise _bad(name, f"bad binary_data_size {size!r}")
            if offset + size > len(blob):
                raise _bad(name, "binary data runs past the end of the body")
            if size != count * dtype.itemsize:
                raise _bad(name, f"{size} binary bytes do not match {datatype} {list(shape)}")
            flat = np.frombuffer(blob[offset:offset + size], dtype=dtype)
            offset += size
            if dtype.kind == "f" and not np.isfinite(flat).all():
                raise _bad(name, "data holds NaN or infinity")
            if dtype.kind == "b" and flat.view(np.uint8).max(initial=0) > 1:
                raise _bad(name, "BOOL bytes must be 0 or 1")
        elif "data" in raw:
            flat = _decode_json_data(raw["data"], dtype, name)
        else:
            raise _bad(name, "needs 'data' (or binary_data_size)")
        if flat.size != count:
            raise _bad(name, f"{flat.size} values do not match shape {list(shape)} "
                             f"({count} values)")
        inputs.append(InferInput(name, datatype, flat.reshape(shape)))
    if offset != len(blob):
        raise ProtocolError("binary data left over after the last input")
    outputs: dict[str, bool] = {}
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    raw_outputs = doc.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise ProtocolError("'outputs' must be a list")
    for j, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ProtocolError(f"outputs[{j}] must be an object with a 'name'")
        oparams = raw.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise ProtocolError(f"outputs[{j}]: 'parameters' must be an object")
        outputs[raw["name"]] = bool(oparams.get("binary_data"))
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):  # the v2 protocol: "id": $string
        raise ProtocolError(f"'id' must be a string, got {type(rid).__name__}")
    timeout = params.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or timeout < 0):
        raise ProtocolError(f"parameter 'timeout' must be a non-negative integer of "
                            f"microseconds, got {timeout!r}")
    return InferRequest(inputs=inputs, id=rid, parameters=params, outputs=outputs,
                        binary_default=bool(params.get("binary_data_output")),
                        timeout_us=timeout or None)


def request_deadline(request: InferRequest, now: float) -> float | None:
    """When the request stops being worth running, on the clock ``now`` came from."""
    return None if request.timeout_us is None else now + request.timeout_us * 1e-6


def validate_inputs(request: InferRequest, specs: Sequence[TensorSpec], max_batch_size: int) -> None:
    """Check a request's inputs against a model's metadata (names, datatypes, shapes).

    Raises:
        ProtocolError: missing/unexpected input, wrong datatype or shape, batch too large.
    """
    inputs = request.inputs
    n = len(specs)
    if len(inputs) == n and (inputs[0].name == specs[0].name if n == 1  # one input: no genexpr
                             else all(i.name == s.name for i, s in zip(inputs, specs))):
        pairs: Iterable[tuple[TensorSpec, InferInput]] = zip(specs, inputs)  # the usual order
    else:
        given, wanted = {item.name: item for item in inputs}, {spec.name for spec in specs}
        if extra := set(given) - wanted:
            raise ProtocolError(
                f"unexpected input(s) {sorted(extra)}; the model takes {sorted(wanted)}")
        if missing := [spec.name for spec in specs if spec.name not in given]:
            raise ProtocolError(f"missing input {missing[0]!r}")
        pairs = [(spec, given[spec.name]) for spec in specs]
    batch = None
    for spec, item in pairs:
        if item.datatype != spec.datatype:
            raise ProtocolError(
                f"input {spec.name!r}: datatype {item.datatype} given, model expects {spec.datatype}")
        shape, want = item.array.shape, spec.shape
        if len(shape) != len(want):
            raise _shape_error(spec, shape)
        for got, dim in zip(shape, want):
            if dim != -1 and got != dim:
                raise _shape_error(spec, shape)
        if batch is None:
            batch = shape[0] if shape else 1
        elif shape and shape[0] != batch:
            raise ProtocolError("inputs disagree on the batch size")
    if batch is not None and (batch < 1 or (max_batch_size > 0 and batch > max_batch_size)):
        raise ProtocolError(f"batch size {batch} outside 1..{max_batch_size}")


def _shape_error(spec: TensorSpec, shape: tuple[int, ...]) -> ProtocolError:
    return ProtocolError(
        f"input {spec.name!r}: shape {list(shape)} given, model expects {list(spec.shape)}")


def _response_head(model_name: str, model_version: str, outputs: list[dict[str, Any]],
                   request_id: str | None) -> bytes:
    """The JSON document of a v2 answer (its ``data`` given or to be filled in)."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version,
                           "outputs": outputs}
    if request_id is not None:
        doc["id"] = request_id
    return json_dumps(doc)


def encode_infer_response(
    model_name: str,
    model_version: str,
    outputs: Iterable[tuple[str, np.ndarray]],
    *,
    request_id: str | None = None,
    binary: Mapping[str, bool] | None = None,
    binary_default: bool = False,
) -> tuple[bytes, int | None]:
    """Encode a v2 response; returns ``(body, binary_header_length or None)``."""
    doc_outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in outputs:
        arr = np.ascontiguousarray(arr)
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape),
                                 "datatype": _NAME_OF[arr.dtype.newbyteorder("<")
                                                      if arr.dtype.byteorder == ">" else arr.dtype]}
        if (binary or {}).get(name, binary_default):
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.reshape(-1)
        doc_outputs.append(entry)
    head = _response_head(model_name, model_version, doc_outputs, request_id)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def encode_infer_request(inputs: Mapping[str, np.ndarray], *, request_id: str | None = None,
                         outputs: Sequence[str] = (),
                         parameters: Mapping[str, Any] | None = None) -> bytes:
    """Encode numpy arrays as a JSON v2 request body (used by clients, benches, the gateway)."""
    doc: dict[str, Any] = {"inputs": [
        {"name": name, "shape": list(arr.shape), "datatype": _NAME_OF[np.asarray(arr).dtype],
         "data": np.ascontiguousarray(arr).reshape(-1)} for name, arr in inputs.items()]}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    if outputs:
        doc["outputs"] = [{"name": name} for name in outputs]
    return json_dumps(doc)


@dataclass
class InferResult:
    """A decoded v2 inference response."""

    model_name: str
    model_version: str | None
    outputs: dict[str, np.ndarray]
    id: str | None = None


def decode_infer_result(body: bytes, header_length: int | None = None) -> InferResult:
    """Decode a v2 response body (JSON, or JSON header + binary tensors).

    Raises:
        ProtocolError: the body is not a well-formed v2 response.
    """
    head = body if header_length is None else body[:header_length]
    try:
        doc = orjson.loads(head)
        blob = memoryview(body)[len(head):]
        out: dict[str, np.ndarray] = {}
        offset = 0
        for entry in doc["outputs"]:
            dtype = DATATYPES[entry["datatype"]]
            size = (entry.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                if offset + size > len(blob):
                    raise ValueError("binary data runs past the end of the body")
                arr = np.frombuffer(blob[offset:offset + size], dtype=dtype)
                offset += size
            else:
                arr = np.asarray(entry["data"], dtype=dtype)
            out[entry["name"]] = arr.reshape(entry["shape"])
        version = doc.get("model_version")
        rid = doc.get("id")
        return InferResult(str(doc.get("model_name", "")),
                           None if version is None else str(version), out,
                           None if rid is None else str(rid))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed v2 response: {exc!r}") from None


def decode_infer_response(body: bytes, header_length: int | None = None) -> dict[str, np.ndarray]:
    """Decode a v2 response body into ``{output name: array}``."""
    return decode_infer_result(body, header_length).outputs


def encode_binary_infer_request(inputs: Mapping[str, np.ndarray], *,
                                outputs: Sequence[str] = (),
                                request_id: str | None = None) -> tuple[bytes, int]:
    """A v2 request with every tensor in the binary extension, answers asked for in binary.

    Returns ``(body, header_length)``: send the length as ``Inference-Header-Content-Length``.
    ``outputs`` empty asks for every output.
    """
    entries, blobs = [], []
    for name, arr in inputs.items():
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        entries.append({"name": name, "shape": list(arr.shape), "datatype": _NAME_OF[arr.dtype],
                        "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    doc: dict[str, Any] = {"inputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    if outputs:
        doc["outputs"] = [{"name": o, "parameters": {"binary_data": True}} for o in outputs]
    else:
        doc["parameters"] = {"binary_data_output": True}
    head = json_dumps(doc)
    return head + b"".join(blobs), len(head)


def split_rows(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Cut each output of a batched call along its batch dimension back into its items' rows.

    Raises:
        ValueError: an output does not have ``sum(rows)`` rows.
    """
    total = sum(rows)
    for key, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise ValueError(f"output {key!r} has shape {list(value.shape)}, not {total} rows")
    parts, start = [], 0
    for n in rows:
        parts.append({key: value[start:start + n] for key, value in outputs.items()})
        start += n
    return parts
