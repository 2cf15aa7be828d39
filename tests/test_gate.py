"""The performance gate (optkit.lab._gate*): the gate file, the judging, the summary, and the
whole command on a real git repository whose service is a real process on 127.0.0.1.

The project under test is a temporary git repository of two commits: ``serve.py`` starts
optkit's stub v2 server with the service time written in ``delay_ms.txt``; the head commit
raises it from 2 ms to 3 ms (a deliberate slowdown). The gate runs ``python -m optkit gate``
as a user would and checks the exit status (1 regressed, 0 passed, 2 could not run) and what
it wrote. The A/A gate and the simulator's targets are heavy (``make gate-check``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

from optkit._exceptions import ConfigError
from optkit.lab import GateError, gate_error_rates, judge, load_gate_spec
from optkit.lab._gate import GateResult
from optkit.lab._gate_refs import checkouts
from optkit.lab._gate_report import junit_xml, markdown, to_json
from optkit.lab._simulate import simulate_trials
from optkit.lab.stats import analyse

ROOT = Path(__file__).resolve().parent.parent

SERVE = '''"""The project's service: optkit's stub v2 server, its service time read from delay_ms.txt."""
import pathlib
import sys

from optkit.bench._stub_server import main

delay = pathlib.Path(__file__).with_name("delay_ms.txt").read_text().strip()
sys.exit(main(["--service-ms", delay, "--lifetime-s", "120", *sys.argv[1:]]))
'''

#: few short trials: a 2 -> 3 ms service time is a ~30 % change, far beyond the noise; six
#: pairs are the fewest whose exact sign-flip p (2/64) clears Holm over two metrics at 0.1
GATE = {
    "name": "stub gate",
    "setup": ["{python} -c \"import pathlib; pathlib.Path('set-up').write_text('ok')\""],
    "service": {"command": ["{python}", "serve.py", "--port", "{port}"],
                "url": "http://127.0.0.1:{port}", "startup_timeout_s": 30},
    "loads": ["closed:4"], "pairs": 6, "warmup_s": 0.1, "duration_s": 0.3,
    "engine": "builtin", "alpha": 0.1, "max_reruns": 3,
    "gate": {"throughput_rps": 0, "p99_ms": 5},
}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=gate@test",
                           "-c", "user.name=gate", *args], check=True, capture_output=True,
                          text=True, timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository: ``base`` (2 ms per request), ``head`` (3 ms) on top of it."""
    repo = tmp_path_factory.mktemp("project")
    _git(repo, "init", "-q", "-b", "main")
    (repo / "serve.py").write_text(SERVE)
    (repo / "delay_ms.txt").write_text("2\n")
    (repo / "perf-gate.yaml").write_text(yaml.safe_dump(GATE))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base: 2 ms per request")
    _git(repo, "tag", "base")
    (repo / "delay_ms.txt").write_text("3\n")
    _git(repo, "commit", "-qam", "head: 3 ms per request (the slowdown)")
    _git(repo, "tag", "head")
    return repo


def _gate(project: Path, out: Path, *args: str, timeout: float = 120
          ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GITHUB_STEP_SUMMARY", None)
    return subprocess.run([sys.executable, "-m", "optkit", "gate", "--repo", str(project),
                           "--spec", str(project / "perf-gate.yaml"), "--out", str(out),
                           "--simulate-sessions", "20", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _verdicts(effect: float, *, seed: int = 0, pairs: int = 12) -> dict:
    return {"closed:8": analyse(simulate_trials(pairs, effect=effect, seed=seed),
                                n_resamples=999, seed=seed)}


def test_gate_file_is_read_strictly(tmp_path: Path) -> None:
    """Unknown keys, metrics and bad values are named; defaults fill what a file leaves out."""
    spec = load_gate_spec({})
    assert spec.gate == {"throughput_rps": 0.0, "p99_ms": 0.0} and spec.alpha == 0.01
    assert spec.settings.pairs == 20 and spec.service is None
    for bad, words in [({"colour": 1}, "unknown key"),
                       ({"gate": {"speed": 1}}, "unknown metric 'speed'"),
                       ({"gate": {"p99_ms": -1}}, r"gate.p99_ms must be"),
                       ({"gate": {"p99_ms": "5"}}, r"gate.p99_ms must be"),
                       ({"gate": {}}, "at least one metric"),
                       ({"pairs": 1}, "pairs must be >= 2"),
                       ({"loads": ["sideways:3"]}, "sideways"),
                       ({"alpha": 0.7}, "alpha must be"),
                       ({"service": {"command": "x", "url": "http://10.0.0.1:{port}"}},
                        "loopback"),
                       ({"service": {"url": "http://127.0.0.1:{port}"}}, "command is missing"),
                       ({"setup": [[]]}, r"setup\[0\] must be")]:
        with pytest.raises(Exception, match=words) as info:
            load_gate_spec(bad)
        assert "Error" in type(info.value).__name__, bad
    with pytest.raises(ConfigError, match="does not exist"):
        load_gate_spec(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="'service' section"):
        spec.arm(tmp_path, "base@0")
    checked = load_gate_spec(GATE)
    arm = checked.arm(tmp_path, "base@1234567")
    assert arm.command[0] == sys.executable and arm.cwd == str(tmp_path)
    assert checked.setup_commands(tmp_path)[0][0] == sys.executable


def test_judge_gates_only_declared_metrics_with_their_bands() -> None:
    """A 20 % slower head fails on throughput; an ungated metric never fails the gate; a
    declared regression wider than the change lets it pass; Holm runs over the gated only."""
    slow = _verdicts(-0.20, seed=4)
    checks = judge(slow, {"throughput_rps": 0.0})
    assert [(c.metric, c.verdict) for c in checks] == [("throughput_rps", "regressed")]
    assert checks[0].band_source == ("the lab's default noise band (no A/A calibration of "
                                     "this cell)")
    assert checks[0].change_pct < -10 and checks[0].ci_high_pct < -checks[0].band_pct
    assert checks[0].p_adjusted == pytest.approx(slow["closed:8"][0].p_value)  # family of 1
    lenient = judge(slow, {"throughput_rps": 40.0})
    assert lenient[0].passed and lenient[0].band_source == "declared (40 %)"
    assert lenient[0].band_pct == pytest.approx(40.0)
    assert all(c.passed for c in judge(_verdicts(0.20, seed=4), {"throughput_rps": 0.0}))
    assert judge(slow, {"ttfb_p99_ms": 0.0}) == []  # not measured: nothing judged


def test_summary_json_and_junit_say_the_same(tmp_path: Path) -> None:
    """The Markdown names the regression with its CI and band; JSON and JUnit agree."""
    spec = load_gate_spec({**GATE, "pairs": 12, "loads": ["closed:8"]})
    checks = judge(_verdicts(-0.20, seed=4), spec.gate, alpha=spec.alpha)
    result = GateResult(spec, checks, base="base@1", head="head@2", elapsed_s=3.0,
                        runner={"cpu_model": "test CPU", "cpu_count": 2},
                        rates=gate_error_rates(spec, checks, sessions=10))
    assert result.status == "failed" and result.exit_code == 1
    md = markdown(result)
    assert "❌ stub gate: 2 regression(s) — throughput_rps at closed:8 -20." in md
    assert "| closed:8 | throughput_rps |" in md and "**regressed**" in md
    assert "false alarms (A/A)" in md and "test CPU (2 cores)" in md
    doc = json.loads(json.dumps(to_json(result)))
    assert doc["exit_code"] == 1 and doc["checks"][0]["passed"] is False
    assert len(doc["rates"]) == 3
    suite = ET.fromstring(junit_xml(result))
    assert suite.get("failures") == "2" and suite.get("tests") == "2"
    missing = GateResult(spec, [c for c in checks if c.metric != "p99_ms"], "a", "b",
                         missing=["p99_ms at closed:8"])
    assert missing.status == "failed"  # a regression outranks what was not judged
    unjudged = GateResult(spec, [c for c in checks if c.passed], "a", "b",
                          missing=["throughput_rps at closed:8"])
    assert unjudged.status == "error" and unjudged.exit_code == 2
    assert "Not judged" in markdown(unjudged)


def test_bad_refs_and_bad_repository_exit_2_before_any_checkout(project: Path,
                                                                tmp_path: Path) -> None:
    """A ref that is no commit, or a folder that is no repository: exit 2, said once, and a
    summary saying the gate could not run."""
    proc = _gate(project, tmp_path / "o1", "--base", "no-such-branch", "--head", "head")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("'no-such-branch' is not a commit") == 1
    assert "could not run" in (tmp_path / "o1" / "gate.md").read_text()
    assert json.loads((tmp_path / "o1" / "gate.json").read_text())["exit_code"] == 2
    proc = _gate(tmp_path, tmp_path / "o2", "--base", "a", "--head", "b", "--spec",
                 str(project / "perf-gate.yaml"))
    assert proc.returncode == 2 and "git rev-parse" in proc.stderr, proc.stderr
    proc = _gate(project, tmp_path / "o3", "--base", "base")
    assert proc.returncode == 2 and "--head" in proc.stderr
    proc = _gate(project, tmp_path / "o4", "--base", "base", "--head", "head", "--pairs", "5")
    assert proc.returncode == 2 and "5 pairs can never reach alpha 0.1" in proc.stderr
    assert len(_git(project, "worktree", "list").splitlines()) == 1  # none left behind


def test_checkouts_are_set_up_once_and_removed(project: Path, tmp_path: Path) -> None:
    """Both refs checked out (even one commit twice), set up in place, removed after; a
    failing setup names its side and command."""
    spec = load_gate_spec(GATE)
    with checkouts(project, "base", "base", setup=spec.setup_commands,
                   work_dir=tmp_path / "w") as (base, head):
        assert base.commit == head.commit and base.path != head.path
        assert (base.path / "set-up").read_text() == "ok" and (head.path / "set-up").exists()
        assert (base.path / "delay_ms.txt").read_text() == "2\n"
    assert not base.path.exists() and len(_git(project, "worktree", "list").splitlines()) == 1
    failing = lambda _: [[sys.executable, "-c", "import sys; print('no'); sys.exit(4)"]]
    with pytest.raises(GateError, match=r"base setup: .* exited with code 4"), \
            checkouts(project, "base", "head", setup=failing, work_dir=tmp_path / "w2"):
        pass
    assert len(_git(project, "worktree", "list").splitlines()) == 1


def test_a_slower_head_is_regressed_and_exits_1(project: Path, tmp_path: Path) -> None:
    """base (2 ms) vs head (3 ms), interleaved on this machine: throughput regressed, exit 1,
    and the summary, JSON and JUnit files written."""
    out = tmp_path / "out"
    proc = _gate(project, out, "--base", "base", "--head", "head")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads((out / "gate.json").read_text())
    throughput = next(c for c in doc["checks"] if c["metric"] == "throughput_rps")
    assert throughput["verdict"] == "regressed" and throughput["change_pct"] < -15
    assert throughput["base_mean"] > throughput["head_mean"]
    assert doc["refs"]["base"]["ref"] == "base" and doc["status"] == "failed"
    trials = doc["session"]["trials"]
    assert trials["total"] >= 12 and not any(trials["pairs_lost"].values())
    md = (out / "gate.md").read_text()
    assert md.strip() in proc.stdout
    assert "regression(s) — throughput_rps at closed:4" in md
    assert ET.parse(out / "gate-junit.xml").getroot().get("failures") in ("1", "2")
    assert (out / "session" / "trials.csv").is_file()
    assert len(_git(project, "worktree", "list").splitlines()) == 1  # checkouts removed


@pytest.mark.heavy  # ~30 s: a second whole gate and its A/A noise session (`make gate-check`)
def test_the_same_ref_twice_passes_and_exits_0(project: Path, tmp_path: Path) -> None:
    """A/A: head against itself, two checkouts of one commit, its bands measured first on
    this machine (base vs base): no regression, exit 0, the measured bands used and kept."""
    out = tmp_path / "aa"
    proc = _gate(project, out, "--base", "head", "--head", "head", "--calibrate-pairs", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "gate.json").read_text())
    assert doc["status"] == "passed" and all(c["passed"] for c in doc["checks"])
    md = (out / "gate.md").read_text()
    assert "✅ stub gate: passed" in md and "Noise measured here first" in md
    cell = json.loads((out / "calibration.json").read_text())["cells"]["digits|closed:4"]
    assert cell["n_pairs"] == 4 and "throughput_rps" in cell["deltas"]
    assert all(c["band_source"].startswith(("A/A noise band, scaled (calibration given: 4",
                                            "A/A noise band, measured", "declared"))
               for c in doc["checks"]), [c["band_source"] for c in doc["checks"]]
    assert doc["noise_session"]["trials"]["total"] >= 8


@pytest.mark.heavy  # ~50 s of simulated gates (`make gate-check`)
def test_default_gate_meets_its_targets_on_the_simulator() -> None:
    """At the defaults (20 pairs, alpha 0.01, throughput and p99 gated, one load): false
    alarms <= 1 % (exact 95 % upper bound over 3,000 A/A gates: the rate is ~0.5 %, which
    1,000 gates cannot bound below 1 %), a 10 % regression caught >= 90 % (lower bound)."""
    spec = load_gate_spec({})
    aa = gate_error_rates(spec, sessions=3000, effects=(0.0,), seed=7)
    assert aa.iloc[0]["ci_high"] <= 0.01, aa
    caught = gate_error_rates(spec, sessions=1000, effects=(-0.10,), seed=8)
    assert caught.iloc[0]["ci_low"] >= 0.90, caught
    assert math.isclose(aa.iloc[0]["cv"], 0.04)


@pytest.mark.heavy  # ~20 s: a whole gate of two arm files (`make gate-check`)
def test_two_arm_files_are_gated_like_two_refs(tmp_path: Path) -> None:
    """--arms: two command arm files (the stub at 1 ms and at 2 ms): regressed, exit 1."""
    arms = []
    for name, ms in (("fast", "1"), ("slow", "2")):
        arm = {"kind": "command", "name": name, "url": "http://127.0.0.1:{port}",
               "command": [sys.executable, "-m", "optkit.bench._stub_server", "--port",
                           "{port}", "--service-ms", ms, "--lifetime-s", "120"]}
        arms.append(tmp_path / f"{name}.yaml")
        arms[-1].write_text(yaml.safe_dump(arm))
    spec = tmp_path / "perf-gate.yaml"
    spec.write_text(yaml.safe_dump({k: v for k, v in GATE.items()
                                    if k not in ("setup", "service")}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "optkit", "gate", "--spec", str(spec),
                           "--arms", *map(str, arms), "--out", str(tmp_path / "out"),
                           "--simulate-sessions", "0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "`fast` vs `slow`" in (tmp_path / "out" / "gate.md").read_text()
