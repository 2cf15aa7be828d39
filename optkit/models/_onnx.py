"""Serve an ONNX graph with ONNX Runtime: ``model.onnx`` beside its ``config.yaml``.

::

    config.yaml  (at least ``backend: onnx``)          model.onnx
      inputs / outputs / max_batch_size ──── checked ────  the graph's own inputs and outputs
      (omitted: read from the graph, signature())          │
      parameters: intra_op_threads,                        ▼
                  graph_optimization_level,  ──────▶  InferenceSession (CPU)
                  intra_op_spinning                        │ predict: one run for all the rows
                                                           ▼ (the leading dimension is the batch)

A config and its graph must agree before anything serves: the same input names, datatypes
and ranks, and no dimension the config calls free (``-1``) that the graph fixes. A config may
fix a dimension the graph leaves free (it narrows what clients may send). A graph whose
leading dimension is fixed at ``k`` is served ``k`` rows at a time (``max_batch_size: k``,
so no two requests are merged into a call it would refuse).

A request the graph refuses is the client's fault when ONNX Runtime says an input is invalid,
or when it failed on a shape the client chose in a free non-batch dimension: a
:class:`ProtocolError` (400) naming the input and its shape, ONNX Runtime's reason on one line.
Any other failure is the model's (500). The session's memory (``nbytes``, what the loading
layer's budget counts) is measured: the process's resident memory grew by it while ONNX
Runtime built the session (its copy of the weights, pre-packed kernels), and it is never
taken below the file's size.

A model built in a loader process travels back pickled as the file's bytes (checked
unchanged since the load) and builds its session again where it is unpickled.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._exceptions import ModelLoadError, ProtocolError
from ._base import ModelConfig
from ._onnx_graph import MODEL_FILE, Port, one_line, ports, signature

__all__ = ["OnnxModel", "MODEL_FILE", "PARAMETERS", "signature"]

log = logging.getLogger("optkit.models")

#: the parameters an onnx model's config may set, and their defaults (ONNX Runtime's own)
PARAMETERS: dict[str, Any] = {
    "intra_op_threads": 0,            # threads one run may use; 0: ONNX Runtime's (the cores)
    "graph_optimization_level": "all",  # disable | basic | extended | all
    "intra_op_spinning": True,        # idle intra-op threads spin (fast wake-up, burns a core)
}
_LEVELS = ("disable", "basic", "extended", "all")


def _options(config: ModelConfig) -> Any:
    """ONNX Runtime session options from the config's parameters (unknown keys refused)."""
    import onnxruntime as ort

    params = {**PARAMETERS, **config.parameters}
    unknown = set(params) - set(PARAMETERS)
    if unknown:
        raise ModelLoadError(f"model {config.name!r}: unknown onnx parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(PARAMETERS)}")
    threads, level, spinning = (params["intra_op_threads"], params["graph_optimization_level"],
                                params["intra_op_spinning"])
    if type(threads) is not int or threads < 0:
        raise ModelLoadError(f"model {config.name!r}: intra_op_threads must be an integer >= 0, "
                             f"got {threads!r}")
    if level not in _LEVELS:
        raise ModelLoadError(f"model {config.name!r}: graph_optimization_level must be one of "
                             f"{list(_LEVELS)}, got {level!r}")
    if type(spinning) is not bool:
        raise ModelLoadError(f"model {config.name!r}: intra_op_spinning must be true or false, "
                             f"got {spinning!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph run at a time per call: sequential execution
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # fatal only: a refused request is answered with the reason, not also logged by ONNX Runtime
    options.log_severity_level = 4
    return options


def _check(config: ModelConfig, inputs: list[Port], outputs: list[Port]) -> ModelConfig:
    """The config against the graph; returns it with ``max_batch_size`` set from a graph that
    fixes its leading dimension.

    Raises:
        ModelLoadError: they disagree (the message says where and how).
    """
    where = f"model {config.name!r} version {config.version}"
    graph_in = {p.name: p for p in inputs}
    names = {spec.name for spec in config.inputs}
    if names != set(graph_in):
        raise ModelLoadError(f"{where}: config.yaml's inputs {sorted(names)} are not the graph's "
                             f"{sorted(graph_in)}")
    graph_out = {p.name: p for p in outputs}
    if missing := [s.name for s in config.outputs if s.name not in graph_out]:
        raise ModelLoadError(f"{where}: config.yaml's output(s) {missing} are not in the graph, "
                             f"whose outputs are {sorted(graph_out)}")
    fixed_batch: set[int] = set()
    for kind, specs, by_name in (("input", config.inputs, graph_in), ("output", config.outputs,
                                                                        graph_out)):
        for spec in specs:
            port = by_name[spec.name]
            if port.datatype is None:
                raise ModelLoadError(f"{where}: {kind} {spec.name!r} is a {port.onnx_type}, which "
                                     "the v2 protocol cannot carry")
            if spec.datatype != port.datatype:
                raise ModelLoadError(f"{where}: config.yaml says {kind} {spec.name!r} is "
                                     f"{spec.datatype}, the graph says {port.datatype}")
            if not spec.shape:
                raise ModelLoadError(f"{where}: {kind} {spec.name!r} has no leading (batch) "
                                     "dimension")
            if port.dims is None:
                continue  # the graph does not say: the config's word stands (warm-up tries it)
            if len(port.dims) != len(spec.shape):
                raise ModelLoadError(f"{where}: config.yaml gives {kind} {spec.name!r} shape "
                                     f"{list(spec.shape)}, the graph {_dims(port.dims)}")
            for axis, (want, has) in enumerate(zip(spec.shape, port.dims)):
                if has is not None and want != has:
                    raise ModelLoadError(
                        f"{where}: config.yaml gives {kind} {spec.name!r} dimension {axis} as "
                        f"{want} ({'free' if want == -1 else 'fixed'}), the graph fixes it at "
                        f"{has}" + (" (a graph exported with a fixed batch: re-export it with a "
                                    "dynamic batch axis, or say so in the config)"
                                    if axis == 0 else ""))
            if kind == "input" and port.dims[0] is not None:
                fixed_batch.add(port.dims[0])
    if fixed_batch:
        k = min(fixed_batch)
        if config.max_batch_size == 0:
            return replace(config, max_batch_size=k)
        if config.max_batch_size > k:
            raise ModelLoadError(f"{where}: max_batch_size {config.max_batch_size}, but the graph "
                                 f"fixes its leading dimension at {k}")
    return config


def _dims(dims: tuple[int | None, ...]) -> list[int]:
    return [-1 if d is None else d for d in dims]


def _resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None where /proc does not say."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class OnnxModel:
    """A graph run by ONNX Runtime on the CPU: v2 tensors in, the graph's outputs out."""

    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        path = version_dir / MODEL_FILE
        try:
            data = path.read_bytes()
            stat = path.stat()
        except OSError as exc:
            raise ModelLoadError(f"{path}: {exc.strerror or exc}") from None
        self._setup(config, path, data, (len(data), stat.st_mtime_ns))

    def _setup(self, config: ModelConfig, path: Path, data: bytes,
               stamp: tuple[int, int]) -> None:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        self._path, self._stamp = path, stamp
        self._session: Any = None
        self._broken = ""
        options = _options(config)
        before = _resident_bytes()
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail,
                ort_errors.NotImplemented, ort_errors.RuntimeException,
                ort_errors.InvalidArgument) as exc:
            raise ModelLoadError(f"{path} is not a valid ONNX graph for ONNX Runtime "
                                 f"{ort.__version__}: {one_line(exc)}") from None
        after = _resident_bytes()
        grown = 0 if before is None or after is None else after - before
        self._nbytes = max(len(data), grown)
        self.config = _check(config, ports(session.get_inputs()), ports(session.get_outputs()))
        self._session = session
        self._inputs = tuple(spec.name for spec in self.config.inputs)
        self._outputs = [spec.name for spec in self.config.outputs]
        # shapes a client chooses: inputs with a free dimension past the batch one
        self._free = {spec.name for spec in self.config.inputs if -1 in spec.shape[1:]}
        self._refusals = (ort_errors.InvalidArgument,)
        self._failures = (ort_errors.RuntimeException, ort_errors.Fail, ort_errors.EPFail)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __repr__(self) -> str:
        return (f"<OnnxModel {self.config.name!r} version {self.config.version} "
                f"[{self._nbytes} bytes]>")

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise ModelLoadError(f"model {self.config.name!r}: {self._broken}")
        feed = {name: np.ascontiguousarray(inputs[name]) for name in self._inputs}
        try:
            values = session.run(self._outputs, feed)
        except self._refusals as exc:
            raise self._refused(feed, exc, self._inputs) from None
        except self._failures as exc:
            chosen = [n for n in self._inputs if n in self._free]
            if chosen:  # the client chose a shape the declared signature allows; the graph not
                raise self._refused(feed, exc, chosen) from None
            raise RuntimeError(one_line(exc)) from None
        return dict(zip(self._outputs, values))

    def _refused(self, feed: Mapping[str, np.ndarray], exc: BaseException,
                 names: Sequence[str]) -> ProtocolError:
        text = one_line(exc)
        named = [n for n in names if re.search(rf"\b{re.escape(n)}\b", text)] or list(names)
        shapes = ", ".join(f"input {n!r} of shape {list(feed[n].shape)}" for n in named)
        return ProtocolError(f"the model's graph refused {shapes}: {text}")

    # -- pickling (a loader process hands the model back) ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        data = self._path.read_bytes()
        if (len(data), self._path.stat().st_mtime_ns) != self._stamp:
            raise ModelLoadError(f"{self._path} changed while it loaded")
        return {"config": self.config, "path": str(self._path), "data": data,
                "stamp": self._stamp}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Runs in the process pool's result thread, where an exception would break the pool
        # for every later load: a failure is kept, and raised by every call instead.
        try:
            self._setup(state["config"], Path(state["path"]), state["data"], state["stamp"])
        except Exception as exc:  # the bytes a worker just built a session from: unlikely
            log.error("onnx model %r did not rebuild its session: %s", state["config"].name, exc)
            self.config, self._nbytes = state["config"], len(state["data"])
            self._session, self._broken = None, f"its session did not rebuild: {exc}"
