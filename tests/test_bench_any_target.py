"""``optkit bench`` on a v2 server whose metadata lists no inputs (MLServer's default):
the inputs come from the workload or ``--input``, or whole bodies from ``--body FILE``.

The server is the bench stub with ``metadata_inputs=False`` on 127.0.0.1; the checks
against MLServer and KServe are heavy tests (they need ``.venv-mlserver`` / ``.venv-kserve``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optkit._exceptions import BenchError
from optkit.bench import LoadSpec
from optkit.bench._engine import run_bench
from optkit.bench._stub_server import StubServer
from optkit.bench._workload import InputSpec
from third_party import missing

REPO = Path(__file__).resolve().parent.parent
LOAD = LoadSpec(mode="closed", concurrency=2)


@pytest.fixture(scope="module")
def bare() -> StubServer:
    with StubServer(service_ms=0.5, metadata_inputs=False) as server:
        yield server


def test_metadata_without_inputs_is_refused_with_a_way_out(bare: StubServer) -> None:
    with pytest.raises(BenchError, match=r"lists no 'inputs'.*--input"):
        run_bench(bare.url, LOAD, model="digits-sklearn", warmup_s=0, duration_s=0.2)


def test_inputs_named_on_the_command_line_replace_metadata(bare: StubServer) -> None:
    before = bare.requests
    result = run_bench(bare.url, LOAD, model="digits-sklearn", warmup_s=0, duration_s=0.3,
                       inputs=[InputSpec.parse("pixels:FP32:64")])
    assert result.summary["errors_total"] == 0 and result.summary["requests"] > 0
    assert bare.requests - before >= result.summary["requests"]  # the stub checked each body


def test_workload_inputs_replace_metadata(bare: StubServer) -> None:
    workload = {"models": ["synthetic"], "inputs": [{"name": "x", "datatype": "FP32",
                                                     "shape": [-1, 16]}]}
    result = run_bench(bare.url, LOAD, workload, warmup_s=0, duration_s=0.3)
    assert result.summary["errors_total"] == 0 and result.summary["requests"] > 0


def test_body_file_is_sent_as_is(bare: StubServer, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"id": "mine", "inputs": [
        {"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": [0.5] * 128}]}))
    result = run_bench(bare.url, LOAD, model="digits-sklearn", warmup_s=0, duration_s=0.3,
                       body=body)
    assert result.summary["errors_total"] == 0 and result.summary["requests"] > 0
    wrong = tmp_path / "wrong.json"  # a body the server refuses stops the run before load
    wrong.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                             "data": [1, 2, 3]}]}))
    with pytest.raises(BenchError, match="400"):
        run_bench(bare.url, LOAD, model="digits-sklearn", warmup_s=0, duration_s=0.2, body=wrong)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BenchError, match="not JSON"):
        run_bench(bare.url, LOAD, model="digits-sklearn", warmup_s=0, duration_s=0.2,
                  body=tmp_path / "bad.json")


@pytest.mark.parametrize("text", ["pixels", "pixels:FP32", "pixels:FP32:x", ":FP32:4",
                                  "pixels:FP32:0"])
def test_bad_input_option_is_refused(text: str) -> None:
    with pytest.raises(BenchError):
        InputSpec.parse(text)


THIRD_PARTY = {"mlserver": REPO / ".venv-mlserver", "kserve": REPO / ".venv-kserve"}


@pytest.mark.heavy  # starts MLServer or KServe (~10 s each); `make external`
@pytest.mark.parametrize("server", sorted(THIRD_PARTY))
def test_third_party_server_is_measured_with_workload_inputs(server: str, tmp_path: Path) -> None:
    """MLServer / KServe (from PyPI, own venvs) list no inputs: refused, then measured."""
    from optkit.lab._arms import load_arm

    if not (THIRD_PARTY[server] / "bin" / "python").exists():
        pytest.skip(missing(server, f"no {THIRD_PARTY[server].name} (make third-party)"))
    arm = load_arm(REPO / "experiments" / "external" / f"{server}.yaml")
    with arm.launch(log_dir=tmp_path) as stack:
        proc = subprocess.run(
            [sys.executable, "-m", "optkit", "bench", "--target", stack.url,
             "--model", "digits-sklearn", "--duration", "0.5", "--warmup", "0", "--json"],
            capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 1 and "lists no 'inputs'" in proc.stderr  # their default
        proc = subprocess.run(
            [sys.executable, "-m", "optkit", "bench", "--target", stack.url,
             "--workload", str(REPO / "experiments" / "external" / "workload.yaml"),
             "--duration", "0.5", "--warmup", "0", "--json"],
            capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["errors_total"] == 0 and summary["requests"] > 0
