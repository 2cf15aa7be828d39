"""Build a model from its version folder: read ``config.yaml``, pick the backend it names."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from .._exceptions import ModelLoadError
from ._base import Model, ModelConfig

__all__ = ["load_model"]


def load_model(version_dir: Path, *, overrides: Mapping[str, Any] | None = None) -> Model:
    """Read ``config.yaml`` in ``version_dir`` and build the backend it names.

    Args:
        version_dir: ``<repository>/<model>/<version>``, resolved by the caller.
        overrides: parameters that replace the config's (experiments use this to
            change a synthetic model's cost without rebuilding).
    """
    config = ModelConfig.read(version_dir)
    if overrides:
        config = dataclasses.replace(config, parameters={**config.parameters, **overrides})
    try:
        # each backend imports its own library (scikit-learn, ONNX Runtime) only when it is used
        if config.backend == "numpy_mlp":
            from ._numpy_mlp import NumpyMLP
            return NumpyMLP(config, version_dir)
        if config.backend == "sklearn":
            from ._sklearn import SklearnModel
            return SklearnModel(config, version_dir)
        if config.backend == "synthetic":
            from ._synthetic import SyntheticModel
            return SyntheticModel(config, version_dir)
        if config.backend == "onnx":
            from ._onnx import OnnxModel
            return OnnxModel(config, version_dir)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"loading {version_dir}: {exc!r}") from exc
    raise ModelLoadError(f"{version_dir}: unknown backend {config.backend!r}")
