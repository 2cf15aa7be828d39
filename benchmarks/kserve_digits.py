"""KServe's Python model server (the ``kserve`` package from PyPI) serving ``digits-sklearn``.

::

    python3.11 -m venv .venv-kserve
    .venv-kserve/bin/pip install kserve==0.21.0 scikit-learn==<optkit's version> joblib
    .venv-kserve/bin/python benchmarks/kserve_digits.py --http_port 8090 --enable_grpc false

A second third-party v2 server for ``optkit bench`` and ``optkit compare`` (see
``experiments/external/kserve.yaml``). KServe's scikit-learn server is not on PyPI, so the
model class here is the few lines a KServe user writes: load the joblib pipeline, answer
``predict`` with the labels. Everything that serves it (FastAPI app, v2 REST routes,
request parsing, uvicorn) is KServe's. Like MLServer by default, KServe's v2 model
metadata lists no inputs, so optkit's workload names them.

KServe 0.21 binds its REST server to ``0.0.0.0`` unconditionally
(``kserve/protocol/rest/server.py``); this script makes uvicorn bind ``127.0.0.1`` instead,
and ``--enable_grpc false`` keeps its gRPC server (bound to every interface) from starting,
so nothing listens beyond loopback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import uvicorn

ARTEFACT = Path(__file__).resolve().parent.parent / "build/models/digits-sklearn/1/model.joblib"

_config_init = uvicorn.Config.__init__


def _loopback_only(self: Any, *args: Any, **kwargs: Any) -> None:
    kwargs["host"] = "127.0.0.1"
    _config_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback_only  # type: ignore[method-assign]

import kserve  # noqa: E402 - after the loopback patch, which its server reads at start-up
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402


class DigitsSklearn(kserve.Model):
    """The digits-sklearn pipeline; ``predict`` answers one INT64 label per row."""

    def __init__(self, name: str, artefact: Path) -> None:
        super().__init__(name)
        self.artefact = artefact
        self.pipeline: Any = None

    def load(self) -> bool:
        self.pipeline = joblib.load(self.artefact)
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        rows = payload.inputs[0].as_numpy().astype(np.float32).reshape(-1, 64)
        labels = np.asarray(self.pipeline.predict(rows), dtype=np.int64)
        out = InferOutput(name="label", shape=list(labels.shape), datatype="INT64")
        out.set_data_from_numpy(labels, binary_data=False)
        return InferResponse(response_id=payload.id or "", model_name=self.name,
                             infer_outputs=[out])


if __name__ == "__main__":
    if not ARTEFACT.exists():
        sys.exit(f"no {ARTEFACT}: run `optkit models build --repository build/models` first")
    model = DigitsSklearn("digits-sklearn", ARTEFACT)
    model.load()
    kserve.ModelServer(workers=1).start([model])
