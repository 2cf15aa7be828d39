"""External arms for ``optkit compare`` (a command that starts a service, a fixed URL), the
pre-flight that stops a doomed session before its first trial, and honest exit statuses.

The "third-party" command here is the bench stub server run as its own process
(``python -m optkit.bench._stub_server``); the URL arm is a stub server in this process.
Exit paths run ``python -m optkit ...`` in a subprocess and check the status and message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from optkit.lab._arms import ExternalArm, load_arm
from optkit.lab import compare
from optkit._exceptions import ConfigError, LaunchError
from optkit.bench._stub_server import StubServer
from optkit.bench._validity import ValidityGates

STUB_COMMAND = [sys.executable, "-m", "optkit.bench._stub_server", "--port", "{port}",
                "--service-ms", "1", "--lifetime-s", "120"]


#: a shared 2-core machine: the tiny trials here check the plumbing, not the timing
LENIENT = ValidityGates(check_stability=False, max_generator_cpu_percent=100.0,
                        max_loop_lag_p99_ms=1e3, max_schedule_lag_p99_ms=1e3)


def _write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def _optkit(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "optkit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_arm_files_are_checked_strictly(tmp_path: Path) -> None:
    good = {"kind": "command", "name": "stub", "command": "prog --port {port}",
            "url": "http://127.0.0.1:{port}"}
    arm = load_arm(_write(tmp_path / "a.yaml", good))
    assert isinstance(arm, ExternalArm) and arm.command == ("prog", "--port", "{port}")
    assert arm.ready_url == "http://127.0.0.1:{port}/v2/health/ready"
    for bad, words in [({**good, "kind": "docker"}, "kind must be"),
                       ({**good, "colour": 1}, "unknown key"),
                       ({**good, "command": []}, "command must be"),
                       ({**good, "startup_timeout_s": "10"}, "startup_timeout_s"),
                       ({**good, "url": "http://10.1.2.3:{port}"}, "loopback"),
                       ({"kind": "url", "url": "http://127.0.0.1:1", "command": "x"}, "never started"),
                       ({**good, "env": {"A": True}}, "env must")]:
        with pytest.raises(ConfigError, match=words):
            ExternalArm.from_dict(bad)


@pytest.mark.heavy  # ~16 s: four trials and a session's figures (`make external`)
def test_command_arm_and_url_arm_through_compare(tmp_path: Path) -> None:
    """A command started fresh per trial (logs kept) against a fixed URL (not independent)."""
    command = _write(tmp_path / "stub.yaml", {
        "kind": "command", "name": "stub-process", "command": STUB_COMMAND,
        "url": "http://127.0.0.1:{port}", "startup_timeout_s": 30})
    with StubServer(service_ms=1.0) as fixed:
        url = {"kind": "url", "name": "stub-thread", "url": fixed.url}
        cmp = compare(command, url, repository=tmp_path / "unused", pairs=2, warmup_s=0.2,
                      duration_s=0.4, loads=("closed:2",), engine="builtin", progress=False,
                      out_dir=tmp_path / "out", max_reruns=0, gates=LENIENT)
        assert fixed.requests > 0  # the url arm's trials really hit the fixed server
    assert len(cmp.trials) == 4, cmp.trials
    assert cmp.trials["valid"].all(), cmp.trials["invalid_reasons"].tolist()
    assert set(cmp.trials["label"]) == {"stub-process", "stub-thread"}
    assert cmp.independent_trials() == {"A": True, "B": False}
    assert cmp.to_json()["independent_trials"]["B"] is False
    logs = sorted((tmp_path / "out" / "trials").glob("*-A-0/service.log"))
    assert len(logs) == 2 and all("stub v2 server" in p.read_text() for p in logs)
    assert cmp.verdicts["closed:2"]  # analysed with the same statistics as optkit arms


def test_a_service_behind_optkits_gateway_is_an_arm(tmp_path: Path) -> None:
    """``gateway:`` puts optkit's gateway in front of a command arm whose metadata lists no
    inputs (MLServer's default): the trial measures the gateway, every request is answered,
    and the gateway's books say they were passed through and merged."""
    stub = {"kind": "command", "name": "bare", "url": "http://127.0.0.1:{port}",
            "command": [*STUB_COMMAND, "--no-metadata-inputs"], "startup_timeout_s": 30}
    alone = load_arm(stub)
    batching = {"name": "batching", "pooling": {"enabled": True},
                "batching": {"enabled": True, "max_delay_ms": 2.0}}
    fronted = alone.behind_gateway(batching)
    assert fronted.name == "bare+batching" and fronted.to_dict()["gateway"]["batching"]["enabled"]
    from_file = load_arm(_write(tmp_path / "fronted.yaml", {**stub, "gateway": batching}))
    assert from_file.gateway == fronted.gateway
    with pytest.raises(ConfigError, match="batching.max_batch_size"):
        load_arm({**stub, "gateway": {"batching": {"max_batch_size": 0}}})
    workload = Path(__file__).resolve().parent.parent / "experiments/external/workload.yaml"
    cmp = compare(alone, fronted, repository=tmp_path / "unused", pairs=2, warmup_s=0.2,
                  duration_s=0.5, loads=("closed:8",), engine="builtin", progress=False,
                  out_dir=tmp_path / "out", max_reruns=0, gates=LENIENT, workload=workload)
    trials = cmp.trials
    assert trials["valid"].all(), trials["invalid_reasons"].tolist()
    assert (trials["errors"] == 0).all() and (trials["throughput_rps"] > 0).all()
    folder = sorted((tmp_path / "out" / "trials").glob("*-B-0"))[0]
    gateway = yaml.safe_load((folder / "trial.json").read_text())["stats_after"]["gateway"]
    assert gateway["passed_through"] > 0 and gateway["merged_calls"] > 0
    assert gateway["models"] == {"digits-sklearn": "passthrough"}
    assert (folder / "gateway.log").is_file() and (folder / "service.log").is_file()


def test_compare_without_repository_fails_once_before_any_trial(tmp_path: Path) -> None:
    baseline = str(Path(__file__).resolve().parent.parent / "experiments" / "baseline.yaml")
    proc = _optkit("compare", baseline, baseline, "--repository", str(tmp_path / "none"),
                   "--pairs", "2", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("does not exist") == 1 and "optkit models build" in proc.stderr
    assert not (tmp_path / "out").exists()  # not one trial was started


def test_unreachable_url_arm_and_bad_command_exit_nonzero(tmp_path: Path) -> None:
    url = _write(tmp_path / "url.yaml", {"kind": "url", "name": "gone",
                                          "url": "http://127.0.0.1:9"})
    bad_cmd = _write(tmp_path / "cmd.yaml", {"kind": "command", "name": "nothing",
                                              "command": ["no-such-program-xyz"],
                                              "url": "http://127.0.0.1:{port}"})
    for a, b, words in [(url, url, "not ready (unreachable)"),
                        (bad_cmd, url, "not found on PATH")]:
        proc = _optkit("compare", str(a), str(b), "--pairs", "2", "--out", str(tmp_path / "o"),
                       cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count(words) == 1, proc.stderr


def test_command_that_dies_stops_the_session_at_its_first_trial(tmp_path: Path) -> None:
    """The program exists but exits at once: one error, with its log, and no more trials."""
    dies = _write(tmp_path / "dies.yaml", {
        "kind": "command", "name": "dies", "url": "http://127.0.0.1:{port}",
        "command": [sys.executable, "-c", "import sys; print('bad settings'); sys.exit(3)"]})
    with pytest.raises(LaunchError, match="could not run its first trial") as info:
        compare(dies, dies, repository=tmp_path, pairs=2, warmup_s=0.1, duration_s=0.2,
                loads=("closed:1",), engine="builtin", progress=False)
    assert "code 3" in str(info.value) and "bad settings" in str(info.value)


@pytest.mark.heavy  # ~10 s: a whole CLI session (`make external`)
def test_all_pairs_lost_exits_nonzero(tmp_path: Path) -> None:
    """Every trial runs but fails a validity gate: 2,000 req/s offered over 64 connections to
    a server taking 50 ms each (at most 1,280 req/s) achieves < 98 % of the rate. The session
    has no valid pair, so no verdict, and must not exit 0."""
    with StubServer(service_ms=50.0) as slow:
        url = _write(tmp_path / "url.yaml", {"kind": "url", "name": "slow", "url": slow.url})
        proc = _optkit("compare", str(url), str(url), "--pairs", "2", "--warmup", "0",
                       "--duration", "0.3", "--load", "open:2000", "--max-reruns", "0",
                       "--calibration", "none", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "achieved" in proc.stdout  # the gate that failed is on record
    assert proc.stderr.count("fewer than 2 valid pairs") == 1


@pytest.mark.heavy  # a Jupyter kernel start and papermill (~10 s); `make external`
def test_week_exits_nonzero_and_names_the_failed_day(tmp_path: Path) -> None:
    """A project whose Monday notebook raises: the week goes on, then exits 1 naming mon."""
    import nbformat

    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "experiments").mkdir()
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("quick = True", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("raise RuntimeError('monday broke')")]
    nbformat.write(nb, tmp_path / "notebooks" / "01-connection-pooling.ipynb")
    proc = _optkit("week", "--days", "mon", "--repository", str(repo / "build" / "models"),
                   "--out", str(tmp_path / "run"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "optkit week: mon failed" in proc.stderr and "monday broke" in proc.stderr
