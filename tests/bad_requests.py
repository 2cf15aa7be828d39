"""One corpus of bad requests, sent to both tiers by ``test_tier_agreement.py``.

Each case is a request a client can get wrong and the status the model server
(the reference tier) answers it with; the gateway must give the same status and
the same ``{"error": ...}`` message. The model used is ``digits-mlp`` (input
``pixels``, FP32 ``[-1, 64]``, outputs ``probabilities`` and ``label``,
``max_batch_size`` 256), loaded at start-up; ``digits-sklearn`` exists on disk
but is not loaded (``loading.models: [digits-mlp]``, ``lazy: false``).

Where the two tiers cannot give the same message, the case names why in
``same_message=False``'s ``why`` (a documented difference), and only the status
and the JSON shape are compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Case", "CASES", "MAX_BODY", "good_request"]

MAX_BODY = 4 * 1024 * 1024  # server.max_body_bytes in experiments/integrated.yaml (default)
_M = "/v2/models/digits-mlp"
_ROW = [0.0] * 64


@dataclass(frozen=True)
class Case:
    """One bad request and the status the model server gives it."""

    name: str
    method: str
    path: str
    status: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: sent with chunked transfer encoding (no Content-Length)
    chunked: bool = False
    #: False where the message cannot match; ``why`` says why (the status still must)
    same_message: bool = True
    why: str = ""


def _j(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _pixels(shape: list[int], data: list[Any], datatype: str = "FP32",
            name: str = "pixels", **extra: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data, **extra}


def good_request(rows: int = 1, **extra: Any) -> dict[str, Any]:
    """A valid infer request for digits-mlp (``extra`` merged into the document)."""
    return {"inputs": [_pixels([rows, 64], _ROW * rows)], **extra}


def _binary(header: dict[str, Any], tail: bytes, declared: str) -> tuple[bytes, dict[str, str]]:
    head = _j(header)
    return head + tail, {"Content-Type": "application/octet-stream",
                         "Inference-Header-Content-Length": declared}


def _binary_cases() -> list[Case]:
    header = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                          "parameters": {"binary_data_size": 256}}]}
    head_len = len(_j(header))
    cases = []
    for name, declared, tail in [
        ("binary header length not an integer", "abc", bytes(256)),
        ("binary header length negative", "-1", bytes(256)),
        ("binary header length past the body", str(head_len + 10_000), bytes(256)),
        ("binary header length zero", "0", bytes(256)),
        ("binary header length cuts the JSON", str(head_len - 5), bytes(256)),
        ("binary data shorter than declared", str(head_len), bytes(100)),
        ("binary data longer than declared", str(head_len), bytes(300)),
    ]:
        body, headers = _binary(header, tail, declared)
        cases.append(Case(name, "POST", _M + "/infer", 400, body, headers))
    wrong_size = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                              "parameters": {"binary_data_size": 255}}]}
    body, headers = _binary(wrong_size, bytes(255), str(len(_j(wrong_size))))
    cases.append(Case("binary_data_size disagrees with the shape", "POST", _M + "/infer", 400,
                      body, headers))
    bad_size = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                            "parameters": {"binary_data_size": "many"}}]}
    body, headers = _binary(bad_size, bytes(256), str(len(_j(bad_size))))
    cases.append(Case("binary_data_size not an integer", "POST", _M + "/infer", 400, body,
                      headers))
    return cases


CASES: list[Case] = [
    # -- which model ------------------------------------------------------------------
    Case("unknown model", "POST", "/v2/models/nope/infer", 404, _j(good_request())),
    Case("unknown model, empty inputs", "POST", "/v2/models/nope/infer", 404, _j({"inputs": []})),
    Case("unknown model, malformed JSON", "POST", "/v2/models/nope/infer", 404, b"{not json"),
    Case("unknown version", "POST", _M + "/versions/9/infer", 404, _j(good_request())),
    Case("unknown version, bad body", "POST", _M + "/versions/9/infer", 404, b"[]"),
    Case("version not a number", "POST", _M + "/versions/x1/infer", 400, _j(good_request())),
    Case("model name with a dot-dot", "POST", "/v2/models/..%2Fetc/infer", 400,
         _j(good_request())),
    Case("unknown model metadata", "GET", "/v2/models/nope", 404),
    Case("unknown model ready", "GET", "/v2/models/nope/ready", 404),
    Case("unknown version metadata", "GET", _M + "/versions/9", 404),
    Case("model not loaded", "POST", "/v2/models/digits-sklearn/infer", 503,
         _j({"inputs": [_pixels([1, 64], _ROW)]})),
    Case("model not loaded, bad body", "POST", "/v2/models/digits-sklearn/infer", 400,
         _j({"inputs": [_pixels([1, 3], [0.0] * 3)]})),
    Case("model not loaded, generate_stream bad body", "POST",
         "/v2/models/digits-sklearn/generate_stream", 400, _j({"image": [[0.0]]})),
    Case("unknown model, body over the limit", "POST", "/v2/models/nope/infer", 404,
         b"0" * (MAX_BODY + 1)),
    # -- the body as a whole -----------------------------------------------------------
    Case("malformed JSON", "POST", _M + "/infer", 400, b"{not json"),
    Case("empty body", "POST", _M + "/infer", 400, b""),
    Case("JSON array", "POST", _M + "/infer", 400, b"[1, 2]"),
    Case("JSON string", "POST", _M + "/infer", 400, b'"hello"'),
    Case("JSON null", "POST", _M + "/infer", 400, b"null"),
    Case("not UTF-8", "POST", _M + "/infer", 400, b'{"inputs": "\xff\xfe"}'),
    Case("body over the limit (declared)", "POST", _M + "/infer", 413, b"0" * (MAX_BODY + 1)),
    Case("body over the limit (chunked)", "POST", _M + "/infer", 413, b"0" * (MAX_BODY + 1),
         chunked=True),
    Case("generate_stream body over the limit", "POST", _M + "/generate_stream", 413,
         b"0" * (MAX_BODY + 1)),
    # -- inputs -----------------------------------------------------------------------
    Case("missing inputs", "POST", _M + "/infer", 400, _j({"id": "1"})),
    Case("empty inputs", "POST", _M + "/infer", 400, _j({"inputs": []})),
    Case("inputs not a list", "POST", _M + "/infer", 400, _j({"inputs": {"pixels": _ROW}})),
    Case("input not an object", "POST", _M + "/infer", 400, _j({"inputs": [42]})),
    Case("input without a name", "POST", _M + "/infer", 400,
         _j({"inputs": [{"shape": [1, 64], "datatype": "FP32", "data": _ROW}]})),
    Case("wrong input name", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([1, 64], _ROW, name="image")]})),
    Case("input given twice", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([1, 64], _ROW), _pixels([1, 64], _ROW)]})),
    Case("unknown datatype", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([1, 64], _ROW, datatype="FLOAT")]})),
    Case("wrong datatype", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([1, 64], [0] * 64, datatype="INT32")]})),
    Case("datatype BYTES", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([1, 64], ["a"] * 64, datatype="BYTES")]})),
    Case("shape/data length mismatch", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([1, 64], _ROW[:63])]})),
    Case("wrong shape", "POST", _M + "/infer", 400, _j({"inputs": [_pixels([2, 32], _ROW)]})),
    Case("shape with a negative dimension", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([-1, 64], _ROW)]})),
    Case("shape not a list", "POST", _M + "/infer", 400, _j({"inputs": [_pixels("1x64", _ROW)]})),  # type: ignore[arg-type]
    Case("shape huge", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([2 ** 40, 64], _ROW)]})),
    Case("data not numbers", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([1, 64], ["x"] * 64)]})),
    Case("data missing", "POST", _M + "/infer", 400,
         _j({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32"}]})),
    Case("data ragged", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([2, 64], [_ROW, _ROW[:10]])]})),
    Case("data NaN", "POST", _M + "/infer", 400,
         b'{"inputs": [{"name": "pixels", "shape": [1, 1], "datatype": "FP32", "data": [NaN]}]}'),
    Case("batch of zero rows", "POST", _M + "/infer", 400, _j({"inputs": [_pixels([0, 64], [])]})),
    Case("batch over max_batch_size", "POST", _M + "/infer", 400, _j(good_request(257))),
    # -- outputs, parameters, timeout ------------------------------------------------
    Case("unknown requested output", "POST", _M + "/infer", 400,
         _j(good_request(outputs=[{"name": "logits"}]))),
    Case("outputs not a list", "POST", _M + "/infer", 400, _j(good_request(outputs="label"))),
    Case("output without a name", "POST", _M + "/infer", 400,
         _j(good_request(outputs=[{"parameters": {}}]))),
    Case("parameters not an object", "POST", _M + "/infer", 400,
         _j(good_request(parameters=[1, 2]))),
    Case("input parameters not an object", "POST", _M + "/infer", 400,
         _j({"inputs": [_pixels([1, 64], _ROW, parameters="x")]})),
    Case("timeout not a number", "POST", _M + "/infer", 400,
         _j(good_request(parameters={"timeout": "soon"}))),
    Case("timeout negative", "POST", _M + "/infer", 400,
         _j(good_request(parameters={"timeout": -5}))),
    Case("timeout fractional", "POST", _M + "/infer", 400,
         _j(good_request(parameters={"timeout": 1.5}))),
    Case("id not a string", "POST", _M + "/infer", 400, _j(good_request(id={"a": 1}))),
    # -- the binary tensor extension ---------------------------------------------------
    *_binary_cases(),
    # -- content type, method, route -------------------------------------------------
    Case("JSON body sent as text/plain", "POST", _M + "/infer", 400, b"{not json",
         {"Content-Type": "text/plain"}),
    Case("wrong method on infer", "GET", _M + "/infer", 405),
    Case("wrong method on health", "POST", "/v2/health/live", 405),
    Case("wrong method on stats", "DELETE", "/stats", 405),
    Case("unknown route", "GET", "/v2/nowhere", 404),
    Case("unknown route under a model", "POST", _M + "/explain", 404, _j(good_request())),
    Case("root", "GET", "/", 404),
    # -- generate_stream ---------------------------------------------------------------
    Case("generate_stream malformed JSON", "POST", _M + "/generate_stream", 400, b"{"),
    Case("generate_stream not an object", "POST", _M + "/generate_stream", 400, b"[[0.0]]"),
    Case("generate_stream unknown input", "POST", _M + "/generate_stream", 400,
         _j({"image": [_ROW]})),
    Case("generate_stream no input", "POST", _M + "/generate_stream", 400, _j({})),
    Case("generate_stream wrong row width", "POST", _M + "/generate_stream", 400,
         _j({"pixels": [_ROW[:10]]})),
    Case("generate_stream no rows", "POST", _M + "/generate_stream", 400, _j({"pixels": []})),
    Case("generate_stream parameters not an object", "POST", _M + "/generate_stream", 400,
         _j({"pixels": [_ROW], "parameters": 3})),
    Case("generate_stream too many rows", "POST", _M + "/generate_stream", 400,
         _j({"pixels": [[0] * 64] * 16385})),
    Case("generate_stream unknown model", "POST", "/v2/models/nope/generate_stream", 404,
         _j({"pixels": []})),
    # -- the statistics extension ----------------------------------------------------
    Case("stats of an unknown model", "GET", "/v2/models/nope/stats", 404),
    Case("stats of an unknown version", "GET", _M + "/versions/99/stats", 404),
    # -- the repository extension ----------------------------------------------------
    Case("repository index malformed JSON", "POST", "/v2/repository/index", 400, b"{"),
    Case("repository index not an object", "POST", "/v2/repository/index", 400, b"[]"),
    Case("repository load of an unknown model", "POST", "/v2/repository/models/nope/load", 404),
]
