"""The catalogue's ONNX graphs, written with ``onnx.helper`` at build time (no converter, no
download).

::

    digits-onnx   the digits-sklearn artefact, converted: MaxAbsScaler + MLPClassifier as
                  Div, (MatMul, Add, Relu)*, MatMul, Add, Softmax, ArgMax; checked at build
                  to give digits-sklearn's probabilities to 1e-4 on every held-out row
    digits-cnn    a convolutional network heavy enough that a row costs milliseconds:

        pixels [N, 64] /16 -> [N, 1, 8, 8] -> upsampled (nearest) to [N, 1, 16, 16]
          conv 3x3 1->64, relu -> conv 3x3 64->128, relu -> conv 3x3 128->128, relu
          -> max-pool 4x4 -> [N, 2048] -> dense 2048->8192, relu    (random features, seeded)
          -> dense 8192->10 (ridge read-out, trained) -> softmax(T * scores) -> probabilities, label

Why digits-cnn is built this way. Its cost is set by its shapes, not by the values of its
weights: about 147 MFLOP a row (the convolutions 114, the dense layer 34) and 68 MB of
float32 weights, nearly all in the dense layer. A single row is a matrix-vector product that
streams all of them from memory, while a batch reuses each weight for every row: batching
meets real arithmetic. Training the convolutions
would need an autodiff framework (hundreds of megabytes) or a hand-written backward pass; a
seeded random convolutional network whose linear read-out is fitted (ridge regression on
its features, then a softmax temperature) reaches about 99 % on the held-out digits, and that
accuracy is checked here, where it is trained, like every digits model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._exceptions import ModelLoadError
from ..v2 import TensorSpec
from ._base import ModelConfig

__all__ = ["build_digits_onnx", "build_digits_cnn", "OPSET", "IR_VERSION", "AGREEMENT"]

#: opset 17 and IR version 8: what ONNX Runtime has read since 1.14, and most exporters write
OPSET, IR_VERSION = 17, 8
#: the largest difference in any probability digits-onnx may show against digits-sklearn
AGREEMENT = 1e-4
#: the convolutions run on the image upsampled to CNN_SIDE x CNN_SIDE; max-pooling by
#: CNN_POOL leaves 4 x 4 per channel for the dense layer
CNN_SIDE, CNN_POOL = 16, 4
CNN_CHANNELS, CNN_HIDDEN, CNN_RIDGE = (64, 128, 128), 8192, 10.0
DIGITS_IN = (TensorSpec("pixels", "FP32", (-1, 64)),)
DIGITS_OUT = (TensorSpec("probabilities", "FP32", (-1, 10)), TensorSpec("label", "INT64", (-1, 1)))


def _session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def _run(session: Any, x: np.ndarray, output: str, rows: int = 256) -> np.ndarray:
    return np.concatenate([session.run([output], {"pixels": x[i:i + rows]})[0]
                           for i in range(0, len(x), rows)])


class _Graph:
    """Nodes and weights of one graph as it is written, then the serialized model."""

    def __init__(self) -> None:
        import onnx.helper

        self.helper = onnx.helper
        self.nodes: list[Any] = []
        self.weights: list[Any] = []

    def weight(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        self.weights.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def head(self, scores: str) -> None:
        """probabilities = softmax(scores); label = its arg-max, as an [N, 1] column."""
        self.node("Softmax", [scores], "probabilities", axis=1)
        self.node("ArgMax", ["probabilities"], "label", axis=1, keepdims=1)

    def weights_bytes(self) -> int:
        """Bytes of the float32 weights written so far (the file adds its framing)."""
        return sum(int(np.prod(t.dims)) * 4 for t in self.weights if t.data_type == 1)

    def serialize(self, name: str, outputs: list[tuple[str, int, list[Any]]]) -> bytes:
        import onnx
        from onnx import TensorProto

        graph = self.helper.make_graph(
            self.nodes, name,
            [self.helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
            [self.helper.make_tensor_value_info(n, t, s) for n, t, s in outputs], self.weights)
        model = self.helper.make_model(graph, producer_name="optkit",
                                       opset_imports=[self.helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model.SerializeToString()


_DIGITS_OUTPUTS: list[tuple[str, int, list[Any]]] = [("probabilities", 1, ["batch", 10]),
                                                     ("label", 7, ["batch", 1])]  # FLOAT, INT64


def _write(root: Path, name: str, model_bytes: bytes, config: ModelConfig) -> None:
    vdir = root / name / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "model.onnx").write_bytes(model_bytes)
    config.write(vdir)


def _config(name: str, params: dict[str, Any], metrics: dict[str, Any]) -> ModelConfig:
    return ModelConfig(name=name, version="1", backend="onnx", inputs=DIGITS_IN,
                       outputs=DIGITS_OUT, max_batch_size=256, parameters=params,
                       metrics={**metrics,
                                "dataset": "sklearn digits, 25% held out (stratified)"})


# -- digits-onnx ----------------------------------------------------------------------------
def mlp_graph(pipe: Any) -> tuple[bytes, int]:
    """A MaxAbsScaler + MLPClassifier (relu, softmax) pipeline as an ONNX graph; the bytes
    of the graph and of its weights."""
    scaler, clf = pipe[0], pipe[-1]
    if len(pipe) != 2 or clf.activation != "relu" or clf.out_activation_ != "softmax":
        raise ModelLoadError(f"cannot convert {pipe!r}: expected MaxAbsScaler + a relu "
                             "MLPClassifier with a softmax output")
    if not np.array_equal(clf.classes_, np.arange(len(clf.classes_))):
        raise ModelLoadError(f"cannot convert {pipe!r}: classes are not 0..n-1")
    g = _Graph()
    h = g.node("Div", ["pixels", g.weight("scale", scaler.scale_)], "scaled")
    last = len(clf.coefs_) - 1
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        h = g.node("MatMul", [h, g.weight(f"W{i}", w)], f"matmul{i}")
        h = g.node("Add", [h, g.weight(f"b{i}", b)], f"dense{i}" if i < last else "scores")
        if i < last:
            h = g.node("Relu", [h], f"relu{i}")
    g.head(h)
    return g.serialize("digits_mlp", _DIGITS_OUTPUTS), g.weights_bytes()


def build_digits_onnx(root: Path, seed: int) -> None:
    """Convert ``root/digits-sklearn`` (built first if missing) and check the two agree."""
    import joblib

    from ._build import build_digits, digits_split

    artefact = root / "digits-sklearn" / "1" / "model.joblib"
    if not artefact.exists():
        build_digits(root, seed)
    pipe = joblib.load(artefact)
    model_bytes, weights = mlp_graph(pipe)
    _, xte, _, yte = digits_split(seed)
    session = _session(model_bytes)
    proba, labels = session.run(["probabilities", "label"], {"pixels": xte})
    expected = pipe.predict_proba(xte.astype(np.float64))
    worst = float(np.abs(proba - expected).max())
    if worst > AGREEMENT or not np.array_equal(labels.ravel(), expected.argmax(axis=1)):
        raise ModelLoadError(f"digits-onnx disagrees with digits-sklearn: largest probability "
                             f"difference {worst:.2e} (bound {AGREEMENT:g}), or a label differs")
    accuracy = float((labels.ravel() == yte).mean())
    _write(root, "digits-onnx", model_bytes, _config(
        "digits-onnx", {"intra_op_threads": 1},
        {"accuracy": round(accuracy, 4), "weights_bytes": weights,
         "converted_from": "digits-sklearn (MaxAbsScaler + MLPClassifier), onnx.helper",
         "max_abs_difference_vs_sklearn": float(f"{worst:.3g}")}))


# -- digits-cnn -----------------------------------------------------------------------------
def _cnn_features(g: _Graph, seed: int) -> str:
    """The network up to its CNN_HIDDEN relu features (seeded He-normal weights, zero biases)."""
    rng = np.random.default_rng(seed)

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)

    h = g.node("Div", ["pixels", g.weight("sixteen", 16.0)], "scaled")
    h = g.node("Reshape", [h, g.weight("image_shape", [-1, 1, 8, 8], np.int64)], "image")
    scale = CNN_SIDE // 8
    h = g.node("Resize", [h, "", g.weight("upsample", [1, 1, scale, scale])], "upsampled",
               mode="nearest")
    channels = 1
    for i, out in enumerate(CNN_CHANNELS):
        h = g.node("Conv", [h, g.weight(f"conv{i}_w", he((out, channels, 3, 3), channels * 9)),
                            g.weight(f"conv{i}_b", np.zeros(out))], f"conv{i}", pads=[1, 1, 1, 1])
        h = g.node("Relu", [h], f"conv{i}_relu")
        channels = out
    h = g.node("MaxPool", [h], "pool", kernel_shape=[CNN_POOL] * 2, strides=[CNN_POOL] * 2)
    h = g.node("Flatten", [h], "flat", axis=1)
    flat = channels * 16
    h = g.node("Gemm", [h, g.weight("dense_w", he((flat, CNN_HIDDEN), flat)),
                        g.weight("dense_b", np.zeros(CNN_HIDDEN))], "dense")
    return g.node("Relu", [h], "features")


def cnn_flops_per_row() -> int:
    """Multiply-adds x 2 of one row through digits-cnn (convolutions, dense, read-out)."""
    macs, channels = 0, 1
    for out in CNN_CHANNELS:
        macs += CNN_SIDE * CNN_SIDE * out * channels * 9
        channels = out
    macs += channels * 16 * CNN_HIDDEN + CNN_HIDDEN * 10
    return 2 * macs


def build_digits_cnn(root: Path, seed: int) -> None:
    """Fit the read-out on the features of the training split, check held-out accuracy."""
    from onnx import TensorProto

    from ._build import MIN_ACCURACY, digits_split

    xtr, xte, ytr, yte = digits_split(seed)
    features = _Graph()
    out = _cnn_features(features, seed)
    session = _session(features.serialize("digits_cnn_features",
                                          [(out, TensorProto.FLOAT, ["batch", CNN_HIDDEN])]))
    f = _run(session, xtr, out).astype(np.float64)
    # ridge regression onto one-hot targets, solved in the dual (n x n, n = 1,347 rows)
    alpha = np.linalg.solve(f @ f.T + CNN_RIDGE * np.eye(len(f)), np.eye(10)[ytr])
    readout = f.T @ alpha
    scores = f @ readout
    temperature = _fit_temperature(scores, ytr)

    g = _Graph()
    h = _cnn_features(g, seed)
    h = g.node("MatMul", [h, g.weight("readout", readout * temperature)], "scores")
    g.head(h)
    model_bytes = g.serialize("digits_cnn", _DIGITS_OUTPUTS)
    labels = _run(_session(model_bytes), xte, "label").ravel()
    accuracy = float((labels == yte).mean())
    if accuracy < MIN_ACCURACY:
        raise ModelLoadError(f"digits-cnn: held-out accuracy {accuracy:.3f} < {MIN_ACCURACY}")
    weights = g.weights_bytes()
    _write(root, "digits-cnn", model_bytes, _config(
        "digits-cnn", {"intra_op_threads": 1},
        {"accuracy": round(accuracy, 4), "weights_bytes": weights,
         "flops_per_row": cnn_flops_per_row(),
         "training": f"seeded random conv/dense features (He-normal, seed {seed}); ridge "
                     f"read-out (lambda {CNN_RIDGE:g}) and softmax temperature "
                     f"({temperature:.3g}) fitted on the training split"}))


def _fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimizes the training split's log loss (a grid)."""
    best, best_loss = 1.0, np.inf
    for t in np.logspace(0, 3, 61):
        z = scores * t
        z = z - z.max(axis=1, keepdims=True)
        loss = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
        if loss < best_loss:
            best, best_loss = float(t), loss
    return best
