"""benchmarks/vs_mlserver.py: its arm files are arms, and it reaches a verdict end to end.

The script is loaded from its file (``benchmarks/`` is not a package). Without MLServer, the
end-to-end runs put optkit's own model-server arm on both sides: they check the plumbing
(screening, session, headline, files) and claim nothing. The run against MLServer itself
needs ``.venv-mlserver`` (``make mlserver``) and is heavy (``make external``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import yaml

import optkit.lab as lab
from optkit.bench import Workload

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "vs_mlserver.py"
ARMS = REPO / "benchmarks" / "vs-mlserver"
OPTKIT_ARM = ARMS / "optkit-2w-batching.yaml"
ARTEFACT = REPO / "build" / "models" / "digits-sklearn" / "1" / "model.joblib"
TINY = ["--pairs", "2", "--warmup", "0", "--duration", "1"]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vs_mlserver", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _needs_wrk_and_models() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("no wrk on PATH: the script measures with wrk (`make wrk`)")
    if not ARTEFACT.is_file():
        pytest.skip(f"no {ARTEFACT.relative_to(REPO)}: `make models`")


def _run(*args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_arm_files_are_valid_arms() -> None:
    """Every file is a command arm on per-trial ports, serving the same joblib, loopback only."""
    files = sorted(p for p in ARMS.glob("*.yaml") if p.name != "workload.yaml")
    assert {"optkit-2w-batching", "mlserver-default", "mlserver-pw0-batch-lean"} <= {
        p.stem for p in files}
    for path in files:
        arm = lab.load_arm(path)
        assert isinstance(arm, lab.ExternalArm) and arm.kind == "command" and arm.independent
        assert arm.name == path.stem and "{port}" in arm.url and "{port}" in arm.ready_url
        assert arm.ready_url.endswith("/v2/models/digits-sklearn/ready")
        assert arm.cwd is not None and Path(arm.cwd).is_dir()
        if not arm.name.startswith("mlserver-"):
            continue
        # gRPC and metrics on port 0 (the kernel's pick), HTTP and Prometheus files per trial:
        # back-to-back trials never meet on a port or a file
        folder = Path(arm.cwd)
        settings = json.loads((folder / "settings.json").read_text())
        assert settings["host"] == "127.0.0.1"
        assert settings["grpc_port"] == 0 and settings["metrics_port"] == 0
        assert arm.env["MLSERVER_HTTP_PORT"] == "{port}"
        assert "{port}" in arm.env["MLSERVER_METRICS_DIR"]
        model = json.loads((folder / "digits-sklearn" / "model-settings.json").read_text())
        assert model["name"] == "digits-sklearn"
        assert (folder / "digits-sklearn" / model["parameters"]["uri"]).resolve() == ARTEFACT
    workload = Workload.resolve(ARMS / "workload.yaml")
    assert workload.models == ("digits-sklearn",) and workload.rows == (1,)


def test_presets_hold_what_their_names_say() -> None:
    """default: MLServer's defaults; pw0-batch-lean: no pool, batching, lean; optkit: 2 workers."""
    def read(name: str) -> tuple[dict, dict]:
        folder = ARMS / f"mlserver-{name}"
        return (json.loads((folder / "settings.json").read_text()),
                json.loads((folder / "digits-sklearn" / "model-settings.json").read_text()))

    settings, model = read("default")
    assert set(settings) == {"host", "grpc_port", "metrics_port"}
    assert "max_batch_size" not in model
    settings, model = read("pw0-batch-lean")
    assert settings["parallel_workers"] == 0 and settings["debug"] is False
    assert settings["metrics_endpoint"] is None and settings["gzip_enabled"] is False
    assert model["max_batch_size"] == 32 and model["max_batch_time"] == 0.002
    command = list(lab.load_arm(OPTKIT_ARM).command)
    assert command[command.index("--workers") + 1] == "2"
    config = (ARMS / command[command.index("--config") + 1]).resolve()
    assert config == REPO / "benchmarks" / "optkit-batching.yaml"
    assert yaml.safe_load(config.read_text())["batching"]["enabled"] is True


def test_grpc_arms_measure_the_same_servers_over_grpc() -> None:
    """grpc/: optkit's model server (1 process: gRPC serves one) and MLServer pw0-batch-lean,
    the load on {grpc_port}, readiness over HTTP; MLServer's gRPC preset is pw0-batch-lean's
    settings without "grpc_port" (settings.json beats MLSERVER_GRPC_PORT), same model."""
    grpc = ARMS / "grpc"
    optkit, mlserver = (lab.load_arm(grpc / f"{name}-grpc.yaml")
                        for name in ("optkit-1p-batching", "mlserver-pw0-batch-lean"))
    for arm in (optkit, mlserver):
        assert arm.transport == "grpc" and arm.url == "grpc://127.0.0.1:{grpc_port}"
        assert arm.ready_url == "http://127.0.0.1:{port}/v2/models/digits-sklearn/ready"
    command = list(optkit.command)
    assert "--workers" not in command and command[command.index("--grpc-port") + 1] == \
        "{grpc_port}"
    rest = lab.load_arm(ARMS / "optkit-1p-batching.yaml")
    assert [c for c in command if c not in ("--grpc-port", "{grpc_port}")] == [
        "../" + c if c.startswith("../") else c for c in rest.command]  # one folder deeper
    assert mlserver.env["MLSERVER_GRPC_PORT"] == "{grpc_port}"
    folder, preset = Path(mlserver.cwd or ""), ARMS / "mlserver-pw0-batch-lean"
    settings = json.loads((folder / "settings.json").read_text())
    assert "grpc_port" not in settings
    assert settings == {k: v for k, v in json.loads((preset / "settings.json").read_text()).items()
                        if k != "grpc_port"}
    model = json.loads((folder / "digits-sklearn" / "model-settings.json").read_text())
    same = json.loads((preset / "digits-sklearn" / "model-settings.json").read_text())
    assert {k: v for k, v in model.items() if k != "parameters"} == \
        {k: v for k, v in same.items() if k != "parameters"}
    assert (folder / "digits-sklearn" / model["parameters"]["uri"]).resolve() == \
        (preset / "digits-sklearn" / same["parameters"]["uri"]).resolve()


def test_a_missing_mlserver_venv_is_named(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """An MLServer arm without its venv stops before any trial, saying how to make it."""
    doc = yaml.safe_load((ARMS / "mlserver-default.yaml").read_text())
    doc.update(cwd=str(ARMS / "mlserver-default"), command=[str(tmp_path / "bin" / "mlserver"),
                                                            "start", "."])
    arm = tmp_path / "mlserver-nowhere.yaml"
    arm.write_text(yaml.safe_dump(doc))
    _needs_wrk_and_models()  # the script checks those first
    assert _script().main(["--against", str(arm), *TINY, "--out", str(tmp_path / "out")]) == 2
    assert "make mlserver" in capsys.readouterr().err


@pytest.mark.slow
def test_a_session_reaches_a_verdict_with_its_ci(tmp_path: Path) -> None:
    """optkit's arm against itself (A/A): 2 pairs, a ratio inside its CI, every file written."""
    _needs_wrk_and_models()
    done = _run("--against", str(OPTKIT_ARM), *TINY, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "needs >= 8" in done.stdout  # 2 pairs can never pass Holm: said, not hidden
    doc = json.loads((tmp_path / "summary.json").read_text())
    (verdict,) = doc["verdicts"]
    assert verdict["a"] == "optkit-2w-batching" and verdict["b"] == "optkit-2w-batching-B"
    for metric in ("throughput_rps", "p99_ms"):
        m = verdict[metric]
        assert m["pairs"] == 2 and m["ci"][0] <= m["ratio"] <= m["ci"][1]
        assert m["verdict"] == "no change detected"  # Holm p >= 0.5 with 2 pairs
    trials = pd.read_csv(next(tmp_path.glob("*-vs-*")) / "trials.csv")
    assert len(trials) == verdict["trials"] >= 4 and doc["settings"]["engine"] == "wrk"
    assert (tmp_path / "summary.md").read_text().startswith("**optkit-2w-batching-B")


@pytest.mark.slow
def test_screening_picks_the_highest_median(tmp_path: Path) -> None:
    """The screening step runs each arm per round and names the one with the most req/s."""
    _needs_wrk_and_models()
    one = yaml.safe_load(OPTKIT_ARM.read_text())
    command = one["command"]
    command[command.index("--workers") + 1] = "1"
    one.update(name="optkit-1w", command=command, cwd=str(ARMS))
    arm_1w = tmp_path / "optkit-1w.yaml"
    arm_1w.write_text(yaml.safe_dump(one))
    settings = lab.CompareSettings(pairs=2, warmup_s=0, duration_s=1, engine="wrk",
                                   workload=str(ARMS / "workload.yaml"))
    best, rows = _script().screen([OPTKIT_ARM, arm_1w], rounds=1, settings=settings,
                                  repository=REPO / "build" / "models", out=tmp_path / "screen",
                                  log=lambda _: None)
    assert sorted(r["arm"] for r in rows) == ["optkit-1w", "optkit-2w-batching"]
    assert all(r["valid"] for r in rows), rows
    top = max(rows, key=lambda r: r["throughput_rps"])
    assert best.stem == top["arm"]


@pytest.mark.heavy  # MLServer's start-up is ~5 s a trial, its worker pool ~10 s to stop
def test_against_mlserver_default_and_best(tmp_path: Path) -> None:
    """Both MLServer presets that matter run as arms, back to back, with their venv recorded."""
    _needs_wrk_and_models()
    if not (REPO / ".venv-mlserver" / "bin" / "mlserver").exists():
        pytest.skip("no .venv-mlserver: `make mlserver` (benchmarks/README.md)")
    done = _run("--against", "default", "--against", "pw0-batch-lean", *TINY,
                "--out", str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["mlserver_venv"]["mlserver"] == "1.7.1"
    assert [v["a"] for v in doc["verdicts"]] == ["mlserver-default", "mlserver-pw0-batch-lean"]
    assert all(v["invalid_trials"] == 0 for v in doc["verdicts"]), doc["verdicts"]


def test_yardsticks_run_the_probe_triton_and_mlservers_best_in_that_order() -> None:
    """--yardsticks: the bare probe, Triton, MLServer's best; named arms resolve to their files."""
    script = _script()
    assert script.arm_path("bare-probe") == ARMS / "bare-probe-2w.yaml"
    assert script.arm_path("triton") == REPO / "experiments" / "external" / "triton.yaml"
    assert [p.stem for p in script.plan_against([], yardsticks=True, screen=False)] == [
        "bare-probe-2w", "triton", "mlserver-pw0-batch-lean"]
    assert [p.stem for p in script.plan_against(["default"], yardsticks=True, screen=False)] == [
        "bare-probe-2w", "triton", "mlserver-default"]
    # with --screen the winner is added once screening has named it
    assert [p.stem for p in script.plan_against([], yardsticks=True, screen=True)] == [
        "bare-probe-2w", "triton"]
    assert script.plan_against(["triton"], yardsticks=False, screen=False) == [
        REPO / "experiments" / "external" / "triton.yaml"]


def test_targets_are_met_only_by_the_whole_ci_at_the_p99_bound() -> None:
    """Issue 28's table: a target is met when the CI's low end clears it and p99 <= 5 ms."""
    script = _script()

    def verdict(a: str, ratio: float, low: float, p99: float) -> dict:
        return {"a": a, "b": "optkit-2w-batching",
                "throughput_rps": {"ratio": ratio, "ci": [low, ratio * 1.05],
                                   "verdict": "improved"},
                "p99_ms": {"median": {"optkit-2w-batching": p99, a: 20.0}}}

    table = script.describe_targets([verdict("bare-probe-2w", 0.97, 0.96, 4.2),
                                     verdict("triton", 6.5, 5.8, 4.2),
                                     verdict("mlserver-pw0-batch-lean", 9.0, 8.5, 5.5),
                                     verdict("optkit-other", 1.0, 0.9, 1.0)])
    rows = table.splitlines()[2:]
    assert len(rows) == 3  # no target against an arm it does not name
    assert rows[0].endswith("| yes |") and ">= 0.95x" in rows[0]
    assert rows[1].endswith("| no |")   # 5.8 < 6 at the CI's low end
    assert rows[2].endswith("| no |")   # p99 5.5 ms > 5 ms
    breakdown = script.describe_breakdown({"breakdown": [
        {"arm": "optkit", "mean_ms": 2.0, "queue_ms": 0.5, "compute_input_ms": 0.01,
         "compute_infer_ms": 0.3, "compute_output_ms": 0.01, "rest_ms": 1.18},
        {"arm": "mlserver", "mean_ms": 15.0, "queue_ms": None, "compute_input_ms": None,
         "compute_infer_ms": None, "compute_output_ms": None, "rest_ms": None}]})
    assert "| optkit | 2.000 | 0.500 |" in breakdown and "| mlserver | 15.000 | - |" in breakdown


def test_a_missing_triton_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Triton arm without its venvs stops before any trial, saying `make triton`."""
    doc = yaml.safe_load((REPO / "experiments" / "external" / "triton.yaml").read_text())
    doc.update(cwd=str(tmp_path), command=[str(tmp_path / "nowhere" / "python"), "x.py"])
    arm = tmp_path / "triton-nowhere.yaml"
    arm.write_text(yaml.safe_dump(doc))
    _needs_wrk_and_models()  # the script checks those first
    assert _script().main(["--against", str(arm), *TINY, "--out", str(tmp_path / "out")]) == 2
    assert "make triton" in capsys.readouterr().err


@pytest.mark.slow
def test_the_bare_probe_arm_serves_a_valid_trial(tmp_path: Path) -> None:
    """The yardstick starts as an arm (2 processes on one port), answers v2, stops: one short
    trial without an error, no breakdown (it keeps no statistics)."""
    if not ARTEFACT.is_file():
        pytest.skip(f"no {ARTEFACT.relative_to(REPO)}: `make models`")
    from optkit.bench import LoadSpec

    arm = lab.load_arm(ARMS / "bare-probe-2w.yaml")
    trial = lab.run_trial(arm, repository=REPO / "build" / "models", load=LoadSpec.closed(8),
                          workload=str(ARMS / "workload.yaml"), warmup_s=0.5, duration_s=1.5,
                          out_dir=tmp_path / "t")
    # the probe's own business: every request answered, no transport or HTTP error, the
    # service alive throughout (the generator's gates - its CPU, a 1.5 s window's stability
    # - are the measuring machine's, judged in the real session)
    s = trial.bench.summary
    assert s["errors_total"] == 0 and s["transport_errors"] == 0, trial.invalid_reasons
    assert not [r for r in trial.invalid_reasons if "error" in r or "exited" in r]
    assert trial.bench.throughput_rps > 100, trial.invalid_reasons
    assert trial.breakdown is None
    assert "Traceback" not in (tmp_path / "t" / "service.log").read_text()
