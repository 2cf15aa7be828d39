"""NVIDIA Triton (the ``tritonserver`` that PyPI's ``nvidia-pytriton`` wheel bundles) serving
``digits-sklearn``.

::

    make triton        # .venv-triton (pytriton, numpy 2, scikit-learn) + .venv-triton-stub
    .venv-triton/bin/python benchmarks/triton_digits.py --http-port 8090

A third third-party v2 server for ``optkit bench`` and ``optkit compare`` (see
``experiments/external/triton.yaml``), and the only one whose front end is not Python. A
request travels::

    client ──HTTP──▶ tritonserver (C++: v2 REST, dynamic batcher) ──▶ Python-backend stub
      (one process per instance, numpy 1) ──shared memory + ZeroMQ──▶ this process (numpy 2):
      infer() stacks the batch, predict_proba, answers

The model is the few lines a pytriton user writes: load the joblib pipeline, answer a batch
with ``probabilities`` (FP32, [-1, 10]) and ``label`` (INT64, [-1, 1]) for input ``pixels``
(FP32, [-1, 64]), the names and types optkit's model server gives ``digits-sklearn``, so one
request body works on both. Triton lists them in its model metadata (no workload needed) and
announces ``binary_tensor_data`` in its server metadata.

Two environments, because Triton's Python-backend stub embeds the *system* libpython3.11 and
was built against numpy 1 (with numpy 2 every inference fails with "output tensor shape does
not match size of output"), while the pickled pipeline needs optkit's numpy 2: the stub runs
in ``.venv-triton-stub`` (Debian's python3.11, numpy 1.26), chosen here by replacing
pytriton's ``get_triton_python_backend_python_env``, which would pick this process's own.

Everything listens on 127.0.0.1 only (pytriton's Triton binds 0.0.0.0 by default). SIGTERM
or SIGINT stops tritonserver, the stubs and this process, and removes pytriton's workspace.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import signal
import socket
import sys
from typing import Any

import joblib
import numpy as np
import pytriton.server.triton_server as _triton_server
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
ARTEFACT = REPO / "build/models/digits-sklearn/1/model.joblib"
STUB_ENV = REPO / ".venv-triton-stub"
LOOPBACK = "127.0.0.1"


def _stub_env() -> pathlib.Path:
    """The environment Triton's Python-backend stub imports numpy and zmq from."""
    if not (STUB_ENV / "bin" / "python").exists():
        sys.exit(f"no {STUB_ENV}: run `make triton` (the stub needs its own numpy 1 venv)")
    return STUB_ENV


# pytriton puts this environment's bin/ first on tritonserver's PATH; the stub finds its
# Python there. Its default is sys.exec_prefix: this process's numpy 2, which the stub cannot use.
_triton_server.get_triton_python_backend_python_env = _stub_env


def _port(text: str) -> int | None:
    """``off`` -> None; ``0`` -> a free loopback port; else the port itself."""
    if text == "off":
        return None
    port = int(text)
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port {port} is out of range")
    if port:
        return port
    # pytriton reads 0 as "Triton's default" (8000/8001/8002) when it connects to the
    # server, so a free port is picked here instead of letting the kernel pick one.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http-port", type=_port, required=True,
                   help="v2 REST port on 127.0.0.1 (0: a free one)")
    p.add_argument("--grpc-port", type=_port, default="0",
                   help="v2 gRPC port on 127.0.0.1, 0 for a free one (default), or off")
    p.add_argument("--metrics", type=_port, default="off",
                   help="Prometheus metrics port on 127.0.0.1, 0 for a free one, or off (default)")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="largest batch (rows) the dynamic batcher forms (default 64)")
    p.add_argument("--max-queue-delay-us", type=int, default=0,
                   help="how long the batcher holds a request for company (default 0: it "
                        "batches only what is already queued)")
    p.add_argument("--instances", type=int, default=1,
                   help="model instances: a stub process and a thread here each (default 1)")
    p.add_argument("--artefact", type=pathlib.Path, default=ARTEFACT)
    args = p.parse_args(argv)
    if args.http_port is None:
        p.error("--http-port cannot be off: the v2 REST API is what is measured")
    for name in ("max_batch_size", "instances"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_queue_delay_us < 0:
        p.error("--max-queue-delay-us must be >= 0")
    return args


def _infer_fn(pipeline: Any) -> Any:
    """One instance's callable: a batch of ``pixels`` rows in, both outputs out."""
    classes = np.asarray(pipeline.classes_)

    @batch
    def infer(pixels: np.ndarray) -> dict[str, np.ndarray]:
        proba = pipeline.predict_proba(pixels.astype(np.float64, copy=False)).astype(np.float32)
        labels = classes[proba.argmax(axis=1)].astype(np.int64).reshape(-1, 1)
        return {"probabilities": proba, "label": labels}

    return infer


def _stop_on_sigterm() -> None:
    """SIGTERM ends ``Triton.serve`` the way Ctrl-C does: it stops everything it started."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if not args.artefact.exists():
        sys.exit(f"no {args.artefact}: run `make models` first")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    pipeline = joblib.load(args.artefact)
    config = TritonConfig(
        http_address=LOOPBACK, http_port=args.http_port,
        allow_grpc=args.grpc_port is not None, grpc_address=LOOPBACK, grpc_port=args.grpc_port,
        allow_metrics=args.metrics is not None, metrics_address=LOOPBACK,
        metrics_port=args.metrics, exit_timeout_secs=5, log_verbose=0)
    _stop_on_sigterm()
    with Triton(config=config) as triton:
        triton.bind(
            model_name="digits-sklearn",
            infer_func=[_infer_fn(pipeline) for _ in range(args.instances)],
            inputs=[Tensor(name="pixels", dtype=np.float32, shape=(64,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,)),
                     Tensor(name="label", dtype=np.int64, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=DynamicBatcher(
                max_queue_delay_microseconds=args.max_queue_delay_us)),
            strict=True)
        triton.serve()


if __name__ == "__main__":
    main()
