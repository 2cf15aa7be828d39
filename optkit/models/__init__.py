"""Models: the model protocol, the built-in kinds, the repository on disk and its builder.

::

    <repository>/<model>/<version>/config.yaml + weights     (Triton-style folders;
         │                                                    a lone model.onnx will do)
         │ ModelRepository: names validated, nothing loaded from a path a request names
         ▼
    load_model(version_dir) ──▶ NumpyMLP | SklearnModel | OnnxModel | SyntheticModel  (a ``Model``)
    build_repository(dir)   ──▶ the seeded catalogue (digits-mlp, digits-sklearn, digits-onnx,
                                digits-cnn, sizes, synthetic)
"""

from ._base import CONFIG_FILE, Model, ModelConfig, validate_model_name
from ._build import MIN_ACCURACY, digits_split
from ._catalogue import MODEL_NAMES, build_repository
from ._load import load_model
from ._repository import ModelRepository, RepositoryStatistics

__all__ = ["Model", "ModelConfig", "load_model", "build_repository", "digits_split",
           "validate_model_name", "MODEL_NAMES", "MIN_ACCURACY", "CONFIG_FILE",
           "ModelRepository", "RepositoryStatistics"]
