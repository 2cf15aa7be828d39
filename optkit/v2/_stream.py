"""The v2 codec's pieces for streamed answers and the generate extension.

::

    encode_infer_response_frames   the answer's JSON document around empty ``data`` slots
                                   (or the binary header), so rows can be written between
    json_data_piece / binary_data_piece   one block of rows, ready to write into a slot
    parse_generate_request         a ``generate_stream`` body, checked like an infer request

Kept apart from :mod:`optkit.v2._codec` (the whole-document codec) and built on it:
a streamed answer is byte for byte the buffered one.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .._exceptions import ProtocolError
from ._codec import DATATYPES, InferInput, InferRequest, TensorSpec, _decode_json_data, \
    _json_object, _NAME_OF, _response_head, json_dumps, validate_inputs

__all__ = ["datatype_of", "encode_infer_response_frames", "json_data_piece", "binary_data_piece",
           "parse_generate_request"]

_DATA_SLOT = "\x00optkit-data\x00"


def datatype_of(dtype: np.dtype) -> str:
    """The v2 datatype name of a numpy dtype (either byte order)."""
    return _NAME_OF[dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype]


def encode_infer_response_frames(
    model_name: str,
    model_version: str,
    outputs: Sequence[tuple[str, np.dtype, Sequence[int]]],
    *,
    request_id: str | None = None,
    binary: bool = False,
) -> tuple[list[bytes], int | None]:
    """The fixed parts of a v2 response whose tensor data will be written piecewise.

    The answer :func:`encode_infer_response` would give, cut where the data goes, so
    a streamer can send it without ever holding it whole::

        JSON:    frames[0] [data of output 0] frames[1] [data of output 1] ... frames[n]
        binary:  frames[0] (the JSON header; its length is returned)  then raw data

    JSON data of an output is ``[`` + :func:`json_data_piece` of its row blocks joined
    by ``,`` + ``]``; binary data is :func:`binary_data_piece` of its row blocks, output
    after output. Byte for byte what the buffered encoder writes for the same tensors.

    Args:
        outputs: ``(name, dtype, full shape)`` per output, in answer order.
        binary: every output as binary data (the header's length is then known up front,
            from shapes and datatypes); else every output as JSON.
    """
    entries: list[dict[str, Any]] = []
    for name, dtype, shape in outputs:
        entry: dict[str, Any] = {"name": name, "shape": [int(d) for d in shape],
                                 "datatype": datatype_of(np.dtype(dtype))}
        if binary:
            entry["parameters"] = {"binary_data_size": math.prod(shape) * np.dtype(dtype).itemsize}
        else:
            entry["data"] = _DATA_SLOT
        entries.append(entry)
    head = _response_head(model_name, model_version, entries, request_id)
    if binary:
        return [head], len(head)
    return head.split(json_dumps(_DATA_SLOT)), None


def json_data_piece(block: np.ndarray) -> bytes:
    """A row block's values as the inside of a JSON array (no brackets)."""
    return json_dumps(np.ascontiguousarray(block).reshape(-1))[1:-1]


def binary_data_piece(block: np.ndarray) -> bytes:
    """A row block's values as the binary extension's little-endian bytes."""
    return np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).tobytes()


def parse_generate_request(body: bytes, specs: Sequence[TensorSpec], *,
                           max_rows: int) -> InferRequest:
    """Decode a ``generate_stream`` body against a model's inputs.

    The generate extension's request is a JSON object whose keys are the model's
    input names, each holding a list of rows, plus optional ``parameters``::

        {"x": [[0.1, ...], [0.2, ...]], "parameters": {"id": "r1"}}

    Returns an :class:`InferRequest` (datatypes from the model's metadata) already
    checked like an infer request, with between 1 and ``max_rows`` rows.

    Raises:
        ProtocolError: malformed JSON, an unknown or missing input, a value that is
            not a regular list of rows of the model's shape and datatype, too many rows.
    """
    doc = _json_object(body, "generate request must be a JSON object of input names to rows")
    params = doc.pop("parameters", None) or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    by_name = {spec.name: spec for spec in specs}
    unknown = set(doc) - set(by_name)
    if unknown:
        raise ProtocolError(f"unexpected input(s) {sorted(unknown)}; the model takes "
                            f"{sorted(by_name)}")
    inputs: list[InferInput] = []
    for name, value in doc.items():
        spec = by_name[name]
        flat = _decode_json_data(value, DATATYPES[spec.datatype], name)
        shape = np.shape(value) if flat.size else (0,)
        inputs.append(InferInput(name, spec.datatype, flat.reshape(shape)))
    request = InferRequest(inputs=inputs, parameters=params,
                           id=None if params.get("id") is None else str(params["id"]))
    validate_inputs(request, specs, 0)
    if request.batch_size > max_rows:
        raise ProtocolError(f"{request.batch_size} rows is over the {max_rows}-row limit "
                            "of generate_stream")
    return request
