"""What an ONNX graph declares, read without building a session: its inputs and outputs as v2
tensor specs (``signature``), and ONNX Runtime's messages on one line (``one_line``).

A config that leaves its inputs or outputs out is completed from here (``ModelConfig.read``);
the served model (``_onnx.py``) checks its config against the same ports.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .._exceptions import ModelLoadError
from ..v2 import TensorSpec

__all__ = ["MODEL_FILE", "Port", "ports", "signature", "one_line"]

MODEL_FILE = "model.onnx"
#: ONNX element types (as ``onnx.TensorProto`` names them) -> v2 datatypes; ONNX Runtime names
#: the same types ``tensor(<lower-case name>)``
_V2_TYPES = {"BOOL": "BOOL", "UINT8": "UINT8", "UINT16": "UINT16", "UINT32": "UINT32",
             "UINT64": "UINT64", "INT8": "INT8", "INT16": "INT16", "INT32": "INT32",
             "INT64": "INT64", "FLOAT16": "FP16", "FLOAT": "FP32", "DOUBLE": "FP64"}
_ORT_TYPES = {f"tensor({name.lower()})": v2 for name, v2 in _V2_TYPES.items()}
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
#: ONNX Runtime's source location and failed check, between "Status Message:" and its reason
_ORT_SOURCE = re.compile(r"/\S+\.(?:h|cc|cpp):\d+ .*? was false\. ")
_SIGNATURES: dict[tuple[str, int, int], tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {}
_SIGNATURES_LOCK = threading.Lock()


@dataclass(frozen=True)
class Port:
    """One graph input or output as ONNX Runtime sees it: dims are ints or None (free)."""

    name: str
    datatype: str | None  # None: a type the v2 protocol cannot carry
    onnx_type: str
    dims: tuple[int | None, ...] | None  # None: rank unknown


def ports(args: Sequence[Any]) -> list[Port]:
    out = []
    for arg in args:
        shape = arg.shape
        dims = None if shape is None else tuple(d if isinstance(d, int) and d > 0 else None
                                                for d in shape)
        out.append(Port(arg.name, _ORT_TYPES.get(arg.type), str(arg.type), dims))
    return out


def signature(version_dir: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs a graph declares, as config entries (free dims -> ``-1``).

    Read with the ``onnx`` package (no session is built), cached per file and modification
    time: a config that leaves its inputs or outputs out is completed with these.

    Raises:
        ModelLoadError: the file is missing or not an ONNX graph, or a port cannot be said in
            the v2 protocol (its type, or an output of unknown rank: give it in the config).
    """
    path = version_dir / MODEL_FILE
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelLoadError(f"{path}: {exc.strerror or exc}") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _SIGNATURES_LOCK:
        found = _SIGNATURES.get(key)
    if found is not None:
        return found
    import onnx  # only a config that leaves its ports out needs the graph parsed here

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, onnx's own errors
        raise ModelLoadError(f"{path} is not a valid ONNX graph: {one_line(exc)}") from None
    if not model.HasField("graph") or not model.graph.output:
        raise ModelLoadError(f"{path} is not a valid ONNX graph: it holds no graph with outputs")
    graph = model.graph
    weights = {t.name for t in graph.initializer}

    def spec(value: Any, kind: str) -> TensorSpec:
        if not value.type.HasField("tensor_type"):
            raise ModelLoadError(f"{path}: {kind} {value.name!r} is not a tensor "
                                 f"({value.type.WhichOneof('value')}): the v2 protocol carries "
                                 "tensors only")
        tensor = value.type.tensor_type
        onnx_type = onnx.TensorProto.DataType.Name(tensor.elem_type)
        datatype = _V2_TYPES.get(onnx_type)
        if datatype is None:
            raise ModelLoadError(f"{path}: {kind} {value.name!r} is of type {onnx_type}, which "
                                 "the v2 protocol cannot carry")
        if not tensor.HasField("shape"):
            raise ModelLoadError(f"{path}: the graph does not say the rank of {kind} "
                                 f"{value.name!r}: give its shape in {version_dir / 'config.yaml'}")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                     for d in tensor.shape.dim)
        return TensorSpec(value.name, datatype, dims)

    found = (tuple(spec(v, "input") for v in graph.input if v.name not in weights),
             tuple(spec(v, "output") for v in graph.output))
    with _SIGNATURES_LOCK:
        _SIGNATURES[key] = found
    return found


def one_line(exc: BaseException) -> str:
    """ONNX Runtime's message without its code prefix, its source locations, its advice line
    or its newlines."""
    text = " ".join(_ORT_PREFIX.sub("", str(exc).strip()).split())
    text = _ORT_SOURCE.sub("", text).replace(" Name:''", "")
    return text.split(" Please fix either the inputs/outputs or the model.")[0]

