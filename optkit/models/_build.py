"""The numpy and scikit-learn models of the catalogue (``_catalogue.py``), seeded and repeatable:

    digits-mlp       MLP (64 hidden) trained on scikit-learn's bundled digits, run in numpy
    digits-sklearn   the very same trained MLP as a scikit-learn/joblib artefact
    digits-mlp-s     16 hidden units                     (~5 KB of weights)
    digits-mlp-m     256x256                             (~0.3 MB)
    digits-mlp-l     1024x1024                           (~4.4 MB)
    digits-mlp-xl    65,536 random relu features + ridge (~19 MB)
    digits-onnx      the digits-sklearn artefact converted to an ONNX graph, run by ONNX Runtime
                     (checked at build to agree with it to 1e-4)
    digits-cnn       a convolutional network in ONNX, ~147 MFLOP a row, 68 MB of weights: ms a row
                     (its read-out trained here; see _build_onnx.py for why so)
    synthetic        CPU cost a + b*batch, known ground truth
    synthetic-wide   same, with a 65,536-wide output per row (large responses)
    synthetic-slow   same cost per call; a load burns 1 s of CPU in Python holding the
                     GIL (as unpickling does) and holds 16 MiB of weights (the loading day)

Every digits model records its held-out accuracy in its config; a build that
misses ``MIN_ACCURACY`` fails loudly instead of writing a bad model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import joblib
import numpy as np

from .._exceptions import ModelLoadError
from ..v2 import TensorSpec
from ._base import ModelConfig
from ._numpy_mlp import save_mlp

__all__ = ["build_digits", "digits_split", "MIN_ACCURACY"]

MIN_ACCURACY = 0.95
DIGITS_IN = (TensorSpec("pixels", "FP32", (-1, 64)),)
DIGITS_OUT = (TensorSpec("probabilities", "FP32", (-1, 10)), TensorSpec("label", "INT64", (-1, 1)))
SYNTH_WIDTH = 16


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The train/held-out split every model and test uses: ``Xtr, Xte, ytr, yte``.

    Pixels are the raw 0..16 values, float32; 25 % is held out, stratified.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(
        x.astype(np.float32), y.astype(np.int64), test_size=0.25, random_state=seed, stratify=y)
    return xtr, xte, ytr, yte


def _train_mlp(hidden: tuple[int, ...], max_iter: int, seed: int):  # type: ignore[no-untyped-def]
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    xtr, _, ytr, _ = digits_split(seed)
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fixed epochs, by design
        clf.fit(xtr / 16.0, ytr)
    return clf


def _accuracy(predict: Callable[[np.ndarray], np.ndarray], seed: int) -> float:
    _, xte, _, yte = digits_split(seed)
    return float((predict(xte) == yte).mean())


def _digits_config(name: str, backend: str, acc: float, nbytes: int, **params: object) -> ModelConfig:
    if acc < MIN_ACCURACY:
        raise ModelLoadError(f"{name}: held-out accuracy {acc:.3f} < {MIN_ACCURACY}")
    return ModelConfig(name=name, version="1", backend=backend, inputs=DIGITS_IN,
                       outputs=DIGITS_OUT, max_batch_size=256, parameters=dict(params),
                       metrics={"accuracy": round(acc, 4), "weights_bytes": int(nbytes),
                                "dataset": "sklearn digits, 25% held out (stratified)"})


def _write_mlp(root: Path, name: str, layers: list[tuple[np.ndarray, np.ndarray]], seed: int) -> None:
    def predict(x: np.ndarray) -> np.ndarray:
        h = x / 16.0
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < len(layers) - 1:
                h = np.maximum(h, 0)
        return h.argmax(axis=1)

    nbytes = sum(w.size + b.size for w, b in layers) * 4
    config = _digits_config(name, "numpy_mlp", _accuracy(predict, seed), nbytes, seed=seed)
    vdir = root / name / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    save_mlp(vdir / "model.npz", layers, 1.0 / 16.0)
    config.write(vdir)


def _sklearn_layers(clf) -> list[tuple[np.ndarray, np.ndarray]]:  # type: ignore[no-untyped-def]
    return [(np.asarray(w, np.float32), np.asarray(b, np.float32))
            for w, b in zip(clf.coefs_, clf.intercepts_)]


def build_digits(root: Path, seed: int) -> None:
    """digits-mlp and digits-sklearn: one trained network, two artefacts."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler

    clf = _train_mlp((64,), 300, seed)
    _write_mlp(root, "digits-mlp", _sklearn_layers(clf), seed)
    # The same trained network as a plain scikit-learn pipeline: scale 0..16 -> 0..1.
    scaler = MaxAbsScaler().fit(np.full((1, 64), 16.0))
    pipe = make_pipeline(scaler, clf)
    vdir = root / "digits-sklearn" / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipe, vdir / "model.joblib")
    acc = _accuracy(lambda x: pipe.predict(x.astype(np.float64)), seed)
    _digits_config("digits-sklearn", "sklearn", acc, (vdir / "model.joblib").stat().st_size,
                   seed=seed).write(vdir)


def _build_variant(root: Path, name: str, seed: int) -> None:
    if name == "digits-mlp-xl":
        _write_mlp(root, name, _random_features(65536, seed), seed)
        return
    hidden, epochs = {"digits-mlp-s": ((16,), 500), "digits-mlp-m": ((256, 256), 60),
                      "digits-mlp-l": ((1024, 1024), 25)}[name]
    _write_mlp(root, name, _sklearn_layers(_train_mlp(hidden, epochs, seed)), seed)


def _random_features(width: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random relu features with a ridge read-out (solved in the dual: n x n)."""
    xtr, _, ytr, _ = digits_split(seed)
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((64, width)) * 0.35).astype(np.float32)
    b1 = (rng.standard_normal(width) * 0.5).astype(np.float32)
    h = np.maximum(xtr / 16.0 @ w1 + b1, 0.0)
    targets = np.eye(10, dtype=np.float32)[ytr]
    alpha = np.linalg.solve(h @ h.T + 10.0 * np.eye(len(h), dtype=np.float32), targets)
    w2 = (h.T @ alpha).astype(np.float32)
    return [(w1, b1), (w2, np.zeros(10, np.float32))]


def _build_synthetic(root: Path, name: str, width: int, **load: float) -> None:
    config = ModelConfig(
        name=name, version="1", backend="synthetic",
        inputs=(TensorSpec("x", "FP32", (-1, SYNTH_WIDTH)),),
        outputs=(TensorSpec("y", "FP32", (-1, width)),), max_batch_size=256,
        parameters={"cost_a_us": 100.0, "cost_b_us": 20.0, "output_width": width,
                    "load_cost_s": 0.0, **load},
        metrics={"cost_model": "cost_a_us + cost_b_us * batch_size (CPU spin)"})
    config.write(root / name / "1")
