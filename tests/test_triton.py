"""NVIDIA Triton as an external arm (``experiments/external/triton.yaml``): the tritonserver
that PyPI's ``nvidia-pytriton`` bundles, serving the digits-sklearn pipeline
(``benchmarks/triton_digits.py``).

The heavy test launches the arm as ``optkit compare`` would and checks Triton's answers
against the pipeline itself, its sockets and its stop. It needs ``.venv-triton`` and
``.venv-triton-stub`` (``make triton``; ``make external`` runs it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import psutil
import pytest

from optkit.lab._arms import ExternalArm, load_arm
from third_party import missing

REPO = Path(__file__).resolve().parent.parent
ARM = REPO / "experiments" / "external" / "triton.yaml"
ARTEFACT = REPO / "build" / "models" / "digits-sklearn" / "1" / "model.joblib"
VENVS = (REPO / ".venv-triton", REPO / ".venv-triton-stub")
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}


def test_arm_file_starts_the_script_per_trial_on_loopback() -> None:
    """The arm is a command arm on a per-trial port, ready when the model is."""
    arm = load_arm(ARM)
    assert isinstance(arm, ExternalArm) and arm.kind == "command"
    assert arm.command[1].endswith("benchmarks/triton_digits.py") and "{port}" in arm.command
    assert arm.url == "http://127.0.0.1:{port}"
    assert arm.ready_url == "http://127.0.0.1:{port}/v2/models/digits-sklearn/ready"


def _group(pid: int) -> list[psutil.Process]:
    """The arm's process and every descendant (tritonserver, the stubs and their helpers)."""
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


def _infer(client: object, x: np.ndarray, binary: bool) -> dict[str, np.ndarray]:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary)
               for name in ("probabilities", "label")]
    result = client.infer("digits-sklearn", [inp], outputs=outputs)  # type: ignore[attr-defined]
    return {name: result.as_numpy(name) for name in ("probabilities", "label")}


@pytest.mark.heavy  # ~15 s: Triton's start-up (~5 s) and stop (~5 s); `make external`
def test_triton_answers_like_the_pipeline_listens_on_loopback_and_stops_clean(
        digits: tuple, tmp_path: Path) -> None:
    """Batches of 1 and 8 rows, JSON and binary: the pipeline's probabilities (to 1e-5) and
    labels; every socket on 127.0.0.1; ``optkit bench`` without errors; nothing left after."""
    httpclient = pytest.importorskip("tritonclient.http")
    for venv in VENVS:
        if not (venv / "bin" / "python").exists():
            pytest.skip(missing("triton", f"no {venv.name} (make triton)"))
    if not ARTEFACT.is_file():
        pytest.skip(f"no {ARTEFACT.relative_to(REPO)}: `make models`")
    pipeline = joblib.load(ARTEFACT)
    _, xte, _, _ = digits
    with load_arm(ARM).launch(log_dir=tmp_path) as stack:
        group = _group(stack.pids["service"])
        names = {p.name() for p in group}
        assert "tritonserver" in names and "triton_python_backend_stub" in names, names
        client = httpclient.InferenceServerClient(url=stack.url.removeprefix("http://"))
        try:
            meta = client.get_server_metadata()
            assert meta["name"] == "triton" and "binary_tensor_data" in meta["extensions"]
            model = client.get_model_metadata("digits-sklearn")
            assert model["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
            assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
                ("probabilities", "FP32", [-1, 10]), ("label", "INT64", [-1, 1])]
            for rows in (xte[:1], xte[1:9]):
                want = pipeline.predict_proba(rows.astype(np.float64)).astype(np.float32)
                for binary in (False, True):
                    got = _infer(client, rows, binary)
                    assert got["probabilities"].shape == want.shape
                    np.testing.assert_allclose(got["probabilities"], want, rtol=0, atol=1e-5)
                    np.testing.assert_array_equal(
                        got["label"], pipeline.classes_[want.argmax(1)].reshape(-1, 1))
        finally:
            client.close()
        listening = [(p.name(), c.laddr) for p in group for c in p.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN or not c.raddr]
        assert listening and all(addr.ip in LOOPBACK for _, addr in listening), listening
        proc = subprocess.run(
            [sys.executable, "-m", "optkit", "bench", "--target", stack.url,
             "--model", "digits-sklearn", "--duration", "1", "--warmup", "0", "--json"],
            capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["errors_total"] == 0 and summary["requests"] > 0, summary
        workspace = Path(next(a for p in group if p.name() == "tritonserver"
                              for a in p.cmdline() if a.endswith("/model-store"))).parent
    _, alive = psutil.wait_procs(group, timeout=5)
    assert not alive, [(p.pid, p.name()) for p in alive]
    assert not workspace.exists()  # pytriton's copy of tritonserver and the model store
    assert not list(Path("/dev/shm").glob(f"pytrtion{stack.pids['service']}-*"))
