"""Property-based fuzzing of the v2 codec (JSON and the binary tensor extension).

The promise under test: a request body, however wrong, is either decoded into a valid
:class:`InferRequest` or refused with :class:`ProtocolError` (the client's fault, 400);
never another exception (a 500), and a declared size never makes the decoder allocate
it (a huge shape with a small body costs a small body's memory). A well-formed request
of any datatype decodes to the very tensors it was encoded from, and so does an answer.

The live half (``bad_posts`` sent to a launched stack with every layer on, never a 5xx)
is in ``test_crosstalk.py``, which launches that stack anyway.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optkit._exceptions import ProtocolError
from optkit.v2._codec import BINARY_HEADER, DATATYPES, InferRequest, TensorSpec, \
    decode_infer_result, encode_binary_infer_request, encode_infer_request, \
    encode_infer_response, parse_infer_request
from optkit.v2._stream import parse_generate_request

# deadline=None: a shared 2-core machine must not turn a slow example into a failure
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
ROUND_TRIP = settings(max_examples=40, deadline=None)


def dumps(doc: Any) -> bytes:
    """JSON of a generated document; the stdlib's, as it writes integers of any size."""
    return json.dumps(doc).encode()


def decodes_or_refuses(body: bytes, header_length: int | None = None) -> InferRequest | None:
    """Decode ``body``; a ProtocolError is a clean refusal, anything else fails the test.

    What decodes must be self-consistent: every input shaped as declared, one batch size.
    """
    try:
        req = parse_infer_request(body, header_length)
    except ProtocolError as exc:
        assert str(exc), "a refusal must say why"
        return None
    assert req.inputs
    for item in req.inputs:
        assert item.array.dtype == DATATYPES[item.datatype]
        if item.array.dtype.kind == "f":
            assert np.isfinite(item.array).all()
    return req


# -- strategies -------------------------------------------------------------------------

def _finite_arrays(datatype: str, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    dtype = DATATYPES[datatype]
    elements = None
    if dtype.kind == "f":
        elements = st.floats(allow_nan=False, allow_infinity=False,
                             width=8 * dtype.itemsize)
    return hnp.arrays(dtype, shape, elements=elements)


@st.composite
def tensors(draw: st.DrawFn) -> np.ndarray:
    """A finite tensor of any v2 datatype with a leading batch dimension."""
    datatype = draw(st.sampled_from(sorted(DATATYPES)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
    return draw(_finite_arrays(datatype, shape))


@st.composite
def tensor_maps(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3, unique=True))
    return {name: draw(tensors()) for name in names}


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=24)
#: numbers and lists of them, ragged or deep: what a sloppy client puts in ``data``
DATA = st.recursive(st.integers(-(2**65), 2**65) | st.floats(allow_nan=False) | st.booleans(),
                    lambda inner: st.lists(inner, max_size=5), max_leaves=40)
HUGE_DIMS = st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63 - 1, 10**18])
DIMS = st.integers(0, 6) | HUGE_DIMS | st.integers(-3, -1)


@st.composite
def input_entries(draw: st.DrawFn) -> dict[str, Any]:
    """One ``inputs[i]`` entry, plausible but often wrong in one or more ways."""
    entry: dict[str, Any] = {
        "name": draw(st.text(max_size=5) | JSON_SCALARS),
        "datatype": draw(st.sampled_from(sorted(DATATYPES)) | st.sampled_from(["BYTES", "fp32", ""])
                         | JSON_SCALARS),
        "shape": draw(st.lists(DIMS, max_size=10) | JSON_VALUES),
    }
    if draw(st.booleans()):
        entry["data"] = draw(st.lists(DATA, max_size=12) | JSON_VALUES)
    else:
        entry["parameters"] = {"binary_data_size": draw(
            st.integers(-2, 64) | HUGE_DIMS | JSON_SCALARS)}
    if draw(st.booleans()):
        entry.pop(draw(st.sampled_from(sorted(entry))))
    return entry


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"inputs": draw(st.lists(input_entries(), max_size=3) | JSON_VALUES)}
    for key, value in (("id", JSON_VALUES), ("outputs", JSON_VALUES),
                       ("parameters", st.fixed_dictionaries(
                           {}, optional={"timeout": JSON_SCALARS,
                                         "binary_data_output": JSON_SCALARS}) | JSON_VALUES)):
        if draw(st.booleans()):
            doc[key] = draw(value)
    return doc


# -- bad input: refused cleanly ---------------------------------------------------------

@FUZZ
@given(documents(), st.binary(max_size=96), st.integers(-4, 4) | st.none())
def test_documents_decode_or_refuse(doc: dict[str, Any], blob: bytes, extra: int | None) -> None:
    """A JSON header (of any shape) with any binary tail and any declared header length."""
    head = dumps(doc)
    decodes_or_refuses(head)
    decodes_or_refuses(head + blob, None if extra is None else len(head) + extra)


@FUZZ
@given(tensor_maps(), st.data())
def test_truncated_and_corrupted_bodies_are_refused_cleanly(
        inputs: dict[str, np.ndarray], data: st.DataObject) -> None:
    """A valid body cut anywhere, bytes overwritten, or its header length misstated."""
    body, head_len = encode_binary_infer_request(inputs)
    cut = data.draw(st.integers(0, len(body)), "cut")
    decodes_or_refuses(body[:cut], head_len if cut >= head_len else None)
    decodes_or_refuses(body[:cut], data.draw(st.integers(-2, len(body) + 2), "header length"))
    pos = data.draw(st.integers(0, max(0, len(body) - 1)), "position")
    junk = data.draw(st.binary(min_size=1, max_size=4), "junk")  # non-UTF-8 included
    decodes_or_refuses(body[:pos] + junk + body[pos + len(junk):], head_len)
    text = encode_infer_request(inputs)
    decodes_or_refuses(text[:data.draw(st.integers(0, len(text)), "json cut")])


@FUZZ
@given(st.binary(max_size=200), st.integers(-(2**63), 2**63) | st.none())
def test_raw_bytes_are_refused_cleanly(body: bytes, header_length: int | None) -> None:
    decodes_or_refuses(body, header_length)


@FUZZ
@given(st.sampled_from(sorted(DATATYPES)), st.sampled_from(["NaN", "Infinity", "-Infinity",
                                                           "1e400", "-1e400", "1e39", "70000",
                                                           "1e309"]))
def test_nan_inf_and_overflow_are_refused(datatype: str, literal: str) -> None:
    """Non-finite values, and finite ones the datatype cannot hold, never decode to inf."""
    body = (b'{"inputs":[{"name":"x","shape":[2],"datatype":"' + datatype.encode()
            + b'","data":[1,' + literal.encode() + b']}]}')
    req = decodes_or_refuses(body)
    if req is not None:  # only a datatype wide enough may take it, and then exactly
        assert float(req.inputs[0].array[1]) == float(literal)


@settings(max_examples=60, deadline=None)
@given(st.lists(HUGE_DIMS | st.integers(0, 3), min_size=1, max_size=8),
       st.sampled_from(sorted(DATATYPES)), st.booleans())
def test_a_huge_declared_shape_allocates_nothing(shape: list[int], datatype: str,
                                                 binary: bool) -> None:
    """The decoder's memory is bounded by the body, whatever size the header claims."""
    assume(math.prod(shape) > 10**6 or 0 in shape)
    entry: dict[str, Any] = {"name": "x", "datatype": datatype, "shape": shape}
    if binary:
        entry["parameters"] = {"binary_data_size": math.prod(shape) * DATATYPES[datatype].itemsize}
        head = dumps({"inputs": [entry]})
        body, head_len = head + bytes(64), len(head)
    else:
        entry["data"] = [1] * 16
        body, head_len = dumps({"inputs": [entry]}), None
    tracemalloc.start()
    try:
        decodes_or_refuses(body, head_len)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"decoding a {len(body)}-byte body allocated {peak} bytes"


@FUZZ
@given(st.dictionaries(st.sampled_from(["x", "y", "parameters", "pixels"]),
                       st.lists(DATA, max_size=6) | JSON_VALUES, max_size=3) | JSON_VALUES)
def test_generate_requests_decode_or_refuse(doc: Any) -> None:
    specs = [TensorSpec("x", "FP32", (-1, 3))]
    try:
        req = parse_generate_request(dumps(doc), specs, max_rows=8)
    except ProtocolError:
        return
    assert 1 <= req.batch_size <= 8 and req.inputs[0].array.shape[1:] == (3,)


# -- round trips: encode then decode gives the same tensors -----------------------------

def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@ROUND_TRIP
@given(tensor_maps(), st.booleans())
def test_requests_round_trip(inputs: dict[str, np.ndarray], binary: bool) -> None:
    if binary:
        req = parse_infer_request(*encode_binary_infer_request(inputs))
    else:
        req = parse_infer_request(encode_infer_request(inputs, request_id="r"))
        assert req.id == "r"
    assert [item.name for item in req.inputs] == list(inputs)
    for item in req.inputs:
        _same(item.array, inputs[item.name])


@ROUND_TRIP
@given(tensor_maps(), st.booleans(), st.text(max_size=8) | st.none())
def test_answers_round_trip(outputs: dict[str, np.ndarray], binary: bool,
                            request_id: str | None) -> None:
    body, head_len = encode_infer_response("m", "1", outputs.items(), request_id=request_id,
                                           binary_default=binary)
    assert (head_len is not None) == binary
    result = decode_infer_result(body, head_len)
    assert result.id == request_id and list(result.outputs) == list(outputs)
    for name, arr in outputs.items():
        _same(result.outputs[name], arr)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_datatype_round_trips_at_its_extremes(datatype: str) -> None:
    dtype = DATATYPES[datatype]
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype) if dtype.kind in "iu" else None
    values = [False, True] if info is None else [info.min, info.max, 0]
    arr = np.array([values], dtype=dtype)
    for body, head_len in ((encode_infer_request({"x": arr}), None),
                           encode_binary_infer_request({"x": arr})):
        _same(parse_infer_request(body, head_len).inputs[0].array, arr)


# -- live: a real model server never answers a bad body with a 500 ----------------------

GOOD = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)}, outputs=["label"])


@st.composite
def bad_posts(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A body and headers a v2 server must refuse (or, rarely, serve) without a 500."""
    kind = draw(st.sampled_from(["document", "raw", "cut", "binary"]))
    headers = {"Content-Type": "application/json"}
    if kind == "document":
        body = dumps(draw(documents()))
    elif kind == "raw":
        body = draw(st.binary(max_size=120))
    elif kind == "cut":
        body = GOOD[:draw(st.integers(0, len(GOOD) - 1))]
    else:
        body, head_len = encode_binary_infer_request({"pixels": draw(tensors())})
        body = body[:draw(st.integers(0, len(body)))]
        headers[BINARY_HEADER] = draw(st.sampled_from(
            [str(head_len), str(head_len + 7), "-1", "abc", "9" * 30, "+12", "1_0", "0x10"]))
    return body, headers


# -- the bugs the fuzzing found, pinned ---------------------------------------------------

@pytest.mark.parametrize("entry", [
    {"datatype": "FP16", "shape": [1], "data": [1e10]},        # was inf, silently
    {"datatype": "FP32", "shape": [1], "data": [1e300]},       # was inf + a RuntimeWarning (500)
    {"datatype": "FP32", "shape": [0, 2**62], "data": []},     # was numpy's ValueError (500)
    {"datatype": "INT8", "shape": [2**40, 2**40], "data": [1]},
])
def test_found_refusals(entry: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_infer_request(dumps({"inputs": [{"name": "x", **entry}]}))


def test_found_uint64_beyond_int64_decodes_exactly() -> None:
    """[0, 2**64 - 1] as UINT64 was refused as "non-integer" (numpy inferred float64)."""
    req = parse_infer_request(dumps({"inputs": [
        {"name": "x", "datatype": "UINT64", "shape": [2], "data": [0, 2**64 - 1]}]}))
    assert req.inputs[0].array.tolist() == [0, 2**64 - 1]


def test_found_bool_bytes_other_than_0_or_1_are_refused() -> None:
    head = dumps({"inputs": [{"name": "x", "datatype": "BOOL", "shape": [2],
                              "parameters": {"binary_data_size": 2}}]})
    assert parse_infer_request(head + b"\x00\x01", len(head)).inputs[0].array.tolist() == [False, True]
    with pytest.raises(ProtocolError):
        parse_infer_request(head + b"\x00\x02", len(head))
