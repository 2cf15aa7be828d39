"""A multilayer perceptron evaluated in numpy: relu hidden layers, softmax output.

The weights file ``model.npz`` holds ``input_scale`` and ``W0, b0, W1, b1, ...``;
the model returns class probabilities and the arg-max label per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ._base import ModelConfig

__all__ = ["NumpyMLP", "save_mlp"]


def save_mlp(path: Path, layers: list[tuple[np.ndarray, np.ndarray]], input_scale: float) -> None:
    """Store weights as float32 arrays in ``path`` (an ``.npz``)."""
    arrays: dict[str, np.ndarray] = {"input_scale": np.float32(input_scale)}
    for i, (w, b) in enumerate(layers):
        arrays[f"W{i}"] = np.asarray(w, dtype=np.float32)
        arrays[f"b{i}"] = np.asarray(b, dtype=np.float32)
    np.savez(path, **arrays)


class NumpyMLP:
    """Classifier ``x -> softmax(relu(...relu(x*s @ W0 + b0)...) @ Wn + bn)``."""

    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        self.config = config
        # our own file object: np.load leaves its file open when the archive is corrupt
        with open(version_dir / "model.npz", "rb") as file, np.load(file) as data:
            self._scale = np.float32(data["input_scale"])
            n = sum(1 for k in data.files if k.startswith("W"))
            self._layers = [(data[f"W{i}"], data[f"b{i}"]) for i in range(n)]
        self._input = config.inputs[0].name
        self._prob_name, self._label_name = (t.name for t in config.outputs)

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes + b.nbytes for w, b in self._layers)

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        h = inputs[self._input].astype(np.float32, copy=False) * self._scale
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            h = h @ w
            h += b
            if i < last:
                np.maximum(h, 0.0, out=h)
        h -= h.max(axis=1, keepdims=True)
        np.exp(h, out=h)
        h /= h.sum(axis=1, keepdims=True)
        return {self._prob_name: h, self._label_name: h.argmax(axis=1).reshape(-1, 1)}
