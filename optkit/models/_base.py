"""The model protocol and the config file every model version carries.

A model repository is a folder, Triton-style::

    <repository>/
      digits-mlp/
        1/
          config.yaml      name, backend, inputs, outputs, max_batch_size, parameters, metrics
          model.npz        the weights (model.joblib for the scikit-learn backend,
                           model.onnx for the onnx backend)

A version is loaded by reading its ``config.yaml`` and handing the folder to the
backend it names. An ONNX graph needs less (bring your model): a ``config.yaml`` that
says only ``backend: onnx``, or none at all beside ``model.onnx``, is completed from the
graph (its inputs and outputs; the name is the folder's). Paths come only from the repository root and a validated model
name; nothing is ever loaded from a path a request names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import yaml

from .._exceptions import ModelLoadError, ModelNotFound, ProtocolError
from ..v2 import TensorSpec

__all__ = ["ModelConfig", "Model", "validate_model_name", "is_version_dir", "CONFIG_FILE"]

CONFIG_FILE = "config.yaml"
_ONNX_FILE = "model.onnx"  # a version folder with this and no config is an onnx model
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERSION = re.compile(r"^[0-9]{1,9}$")


def validate_model_name(name: str, version: str | None = None) -> None:
    """Reject names that are not plain model names (no paths, no dots-only, bounded).

    Raises:
        ProtocolError: the name or version is not acceptable.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ProtocolError(f"invalid model name {name!r}")
    if version is not None and not _VERSION.match(version):
        raise ProtocolError(f"invalid model version {version!r}")


def is_version_dir(path: Path) -> bool:
    """Whether ``path`` holds a model version: a ``config.yaml``, or a lone ``model.onnx``."""
    return (path / CONFIG_FILE).exists() or (path / _ONNX_FILE).exists()


@dataclass(frozen=True)
class ModelConfig:
    """What ``config.yaml`` of a model version says."""

    name: str
    version: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    parameters: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, version_dir: Path) -> "ModelConfig":
        path = version_dir / CONFIG_FILE
        try:
            if not path.exists() and (version_dir / _ONNX_FILE).exists():
                doc: Any = {"backend": "onnx"}
            else:
                doc = yaml.safe_load(path.read_text())
            if not isinstance(doc, dict):
                raise TypeError(f"a mapping of settings, not {type(doc).__name__}")
            if doc.get("backend") == "onnx" and ("inputs" not in doc or "outputs" not in doc):
                from ._onnx_graph import signature  # bring your model: the graph says what is left out

                graph_in, graph_out = signature(version_dir)
                doc = {"inputs": [t.to_dict() for t in graph_in],
                       "outputs": [t.to_dict() for t in graph_out], **doc}
            return cls(
                name=str(doc.get("name", version_dir.parent.name)),
                version=str(doc.get("version", version_dir.name)),
                backend=str(doc["backend"]),
                inputs=tuple(TensorSpec.from_dict(d) for d in doc["inputs"]),
                outputs=tuple(TensorSpec.from_dict(d) for d in doc["outputs"]),
                max_batch_size=int(doc.get("max_batch_size", 0)),
                parameters=dict(doc.get("parameters") or {}),
                metrics=dict(doc.get("metrics") or {}),
            )
        except FileNotFoundError:
            raise ModelNotFound(f"no {CONFIG_FILE} in {version_dir}") from None
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
            raise ModelLoadError(f"bad {path}: {exc!r}") from exc

    def write(self, version_dir: Path) -> None:
        version_dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "name": self.name,
            "version": self.version,
            "backend": self.backend,
            "max_batch_size": self.max_batch_size,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "parameters": dict(self.parameters),
            "metrics": dict(self.metrics),
        }
        (version_dir / CONFIG_FILE).write_text(yaml.safe_dump(doc, sort_keys=False))

    def metadata(self, *, versions: list[str] | None = None) -> dict[str, Any]:
        """The v2 model metadata document."""
        return {
            "name": self.name,
            "versions": versions or [self.version],
            "platform": f"optkit_{self.backend}",
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "parameters": {"max_batch_size": self.max_batch_size, **dict(self.metrics)},
        }


class Model(Protocol):
    """A loaded model: maps named input arrays (leading batch dim) to named outputs."""

    config: ModelConfig

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one (possibly batched) call; every output has the inputs' batch size."""
        ...

    @property
    def nbytes(self) -> int:
        """Bytes of weights held in memory."""
        ...
