"""Built-in models and the repository builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .._exceptions import ModelLoadError
from ._base import CONFIG_FILE, Model, ModelConfig, validate_model_name
from ._build import MIN_ACCURACY, MODEL_NAMES, build_repository, digits_split

__all__ = ["Model", "ModelConfig", "load_model", "build_repository", "digits_split",
           "validate_model_name", "MODEL_NAMES", "MIN_ACCURACY", "CONFIG_FILE"]


def load_model(version_dir: Path, *, overrides: Mapping[str, Any] | None = None) -> Model:
    """Read ``config.yaml`` in ``version_dir`` and build the backend it names.

    Args:
        version_dir: ``<repository>/<model>/<version>``, resolved by the caller.
        overrides: parameters that replace the config's (experiments use this to
            change a synthetic model's cost without rebuilding).
    """
    config = ModelConfig.read(version_dir)
    if overrides:
        import dataclasses
        config = dataclasses.replace(config, parameters={**config.parameters, **overrides})
    try:
        if config.backend == "numpy_mlp":
            from ._numpy_mlp import NumpyMLP
            return NumpyMLP(config, version_dir)
        if config.backend == "sklearn":
            from ._sklearn import SklearnModel
            return SklearnModel(config, version_dir)
        if config.backend == "synthetic":
            from ._synthetic import SyntheticModel
            return SyntheticModel(config, version_dir)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"loading {version_dir}: {exc!r}") from exc
    raise ModelLoadError(f"{version_dir}: unknown backend {config.backend!r}")
