"""Notebook 06, a team's own server alone and behind optkit's gateway: the arms of the chain,
the tables and words made from its sessions, and ``optkit week --service`` end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from optkit import CompareSettings, ConfigError
from optkit.cli import main
from optkit.lab import Comparison, ExternalArm, load_arm
from optkit.lab._simulate import simulate_trials
from optkit.lab.stats import DEFAULT_DELTAS, analyse
from optkit.lab.week import (SERVICE_LAYERS, check_fronted, record_service, same_answers,
                             service_arm, service_calibration, service_chain, service_conclusion,
                             service_fronted, service_headline, service_servers, service_sessions,
                             service_settings_note, service_steps, service_target,
                             service_targets)

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "experiments" / "external" / "stub.yaml"
MLSERVER = ROOT / "benchmarks" / "vs-mlserver" / "mlserver-pw0-batch-lean.yaml"
WORKLOAD = ROOT / "experiments" / "external" / "workload.yaml"


def _arm(name: str) -> ExternalArm:
    return ExternalArm(kind="url", name=name, url="http://127.0.0.1:9")


def _session(a: str, b: str, trials: pd.DataFrame, *, quick: bool = False) -> Comparison:
    """A finished session over simulated trials (the analysis is the real one)."""
    load = str(trials["load"].iloc[0])
    return Comparison(_arm(a), _arm(b), CompareSettings(pairs=12, loads=(load,), quick=quick),
                      trials, {load: analyse(trials)}, pd.DataFrame(), dict(DEFAULT_DELTAS),
                      "defaults", 30.0)


def _chain(*, pooling: float = 0.8, batching: float = 1.0, streaming: float = 0.0
           ) -> list[Comparison]:
    names = ["svc", "svc+pooling", "svc+batching", "svc+streaming"]
    effects, level = [pooling, batching, streaming], 1000.0
    steps = []
    for i, effect in enumerate(effects):
        steps.append(_session(names[i], names[i + 1], simulate_trials(
            12, effect=effect, throughput_rps=level, p50_ms=4.0 / (level / 1000),
            outlier_prob=0.0, seed=i)))
        level *= 1 + effect
    return steps


def test_quick_mode_measures_the_stand_in_and_only_then() -> None:
    """The service is the arm file given; quick mode (CI) measures ``quick_service`` instead,
    unless it is None: then the service itself, briefly."""
    assert service_arm(MLSERVER).name == "mlserver-pw0-batch-lean"
    assert service_arm(MLSERVER, quick=True, quick_service=STUB).name == "stub"
    assert service_arm(MLSERVER, quick=True, quick_service=None).name == "mlserver-pw0-batch-lean"
    assert service_arm(MLSERVER, quick=False, quick_service=STUB).name == "mlserver-pw0-batch-lean"


def test_the_service_must_be_an_arm_without_a_gateway(tmp_path: Path) -> None:
    """A missing file, an optkit config, or an arm that already has optkit's gateway in front
    is refused before any trial, each saying what is wrong."""
    with pytest.raises(ConfigError, match="does not exist"):
        service_arm(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="optkit config, not a service"):
        service_arm(ROOT / "experiments" / "pooling.yaml")
    fronted = tmp_path / "fronted.yaml"
    fronted.write_text(yaml.safe_dump({"kind": "url", "name": "x", "url": "http://127.0.0.1:9",
                                       "gateway": {"pooling": {"enabled": True}}}))
    with pytest.raises(ConfigError, match="already puts optkit's gateway"):
        service_arm(fronted)


def test_the_chain_adds_one_week_layer_per_step() -> None:
    """Four arms: the service alone, then the gateway in front with the week's pooling,
    batching and streaming configs, in that order, each named for its layer."""
    alone, *fronted = service_steps(STUB)
    assert alone.gateway is None and [a.name for a in fronted] == [
        f"stub+{layer}" for layer in SERVICE_LAYERS]
    assert [a.command for a in fronted] == [alone.command] * 3
    pooled, batched, streamed = (a.gateway for a in fronted)
    assert pooled["pooling"]["enabled"] and not pooled["batching"]["enabled"]
    assert batched["batching"]["enabled"] and not batched["streaming"]["enabled"]
    assert streamed["streaming"]["enabled"] and streamed["batching"]["enabled"]


def test_each_service_has_its_own_calibration_file() -> None:
    """``{service}`` in the calibration path is the service's name: one server's noise band
    is never read for another's."""
    assert service_calibration("runs/calibration-{service}.json", load_arm(STUB)) == \
        "runs/calibration-stub.json"
    assert service_calibration(None, load_arm(STUB)) is None


def test_chain_table_takes_each_arm_from_the_session_where_it_is_new() -> None:
    """One row per step; the service alone from the first session's A, each later arm from the
    session where it is B, with that session's change, CI and verdict."""
    steps = _chain()
    chain = service_chain(steps, slo_ms=10.0)
    assert list(chain["layer"]) == ["alone", "+ pooling", "+ batching", "+ streaming"]
    assert list(chain["arm"]) == ["svc", "svc+pooling", "svc+batching", "svc+streaming"]
    a = steps[0].trials
    first = a[(a["arm"] == "A") & a["valid"]]["throughput_rps"].mean()
    assert chain.loc[0, "throughput_rps"] == pytest.approx(first)
    assert chain.loc[0, "throughput_verdict"] == ""
    v = steps[1].verdict("throughput_rps")
    assert chain.loc[2, "throughput_change_pct"] == pytest.approx(v.change_pct)
    assert list(chain["throughput_verdict"][1:3]) == ["improved", "improved"]
    assert chain.loc[0, "slo"] == "does not hold" and chain.loc[2, "slo"] == "holds"
    shown = service_headline(chain).data
    assert "no change detected" in shown.loc[3, "throughput verdict"]


def test_conclusion_names_where_the_gateway_does_not_help() -> None:
    """A step that changes nothing is named with the smallest change it could have seen; a
    step that regressed is named too; steps that improved are not."""
    text = service_conclusion(_chain(batching=-0.3), slo_ms=10.0)
    where = next(line for line in text.splitlines() if line.startswith("Where the gateway"))
    assert "+ streaming at closed:32 (throughput: no change detected, a change beyond" in where
    assert "+ batching at closed:32 (throughput: regressed" in where
    assert "+ pooling" not in where
    assert "p99 <= 10 ms at closed:32: alone does not hold" in text


def test_target_is_judged_on_the_direct_session() -> None:
    """The gain is met only when the whole CI of the paired ratio clears it, and the SLO only
    when the whole CI of the fronted arm's p99 is within it."""
    big = _session("svc", "svc+batching", simulate_trials(12, effect=3.0, outlier_prob=0.0,
                                                           seed=5))
    table = service_targets(big, gain=3.0, slo_ms=10.0)
    assert list(table["status"]) == ["met", "met"]
    assert table.loc[0, "measured"].startswith("4.0")
    small = _session("svc", "svc+batching", simulate_trials(12, effect=1.0, outlier_prob=0.0,
                                                             seed=5), quick=True)
    table = service_targets(small, gain=3.0, slo_ms=1.0)
    assert list(table["status"]) == ["not met (provisional)", "not met (provisional)"]


def test_quick_mode_runs_no_target_session_and_says_so(tmp_path: Path) -> None:
    """In quick mode the target's session is not run (nothing is started), and the targets,
    the conclusion and results.json say it was not measured."""
    quick = CompareSettings(pairs=2, quick=True)
    assert service_target(_arm("a"), _arm("b"), repository=tmp_path, settings=quick) is None
    steps = _chain()
    assert service_sessions(steps, None) == steps
    table = service_targets(None)
    assert len(table) == 2 and table["status"].str.startswith("not measured").all()
    assert "Targets not measured: quick mode" in service_conclusion(steps, None)
    doc = json.loads(record_service(steps, None, out_dir=tmp_path).read_text())
    assert "target" not in {v["step"] for v in doc["verdicts"]} and len(doc["targets"]) == 2


def test_record_service_writes_every_step_and_the_target(tmp_path: Path) -> None:
    """``results.json``: each verdict row says its step, the chain and the targets as tables,
    and the conclusion, for ``optkit week``'s summary to read."""
    steps = _chain()
    target = _session("svc", "svc+batching", simulate_trials(12, effect=2.5, seed=9))
    doc: dict[str, Any] = json.loads(record_service(steps, target, out_dir=tmp_path).read_text())
    assert doc["day"] == "service" and doc["service"] == "svc"
    assert {v["step"] for v in doc["verdicts"]} == {
        "step 1: + pooling", "step 2: + batching", "step 3: + streaming", "target"}
    assert len(doc["chain"]) == 4 and len(doc["targets"]) == 2
    assert "Where the gateway does not help" in doc["conclusion"]


def test_week_service_refuses_what_is_not_an_arm(tmp_path: Path) -> None:
    """``optkit week --service`` exits 2 before running anything when the file is missing
    or is not an arm file."""
    assert main(["week", "--service", str(tmp_path / "none.yaml"), "--out", str(tmp_path)]) == 2
    assert main(["week", "--service", str(ROOT / "experiments" / "pooling.yaml"),
                 "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "service").exists()


@pytest.fixture(scope="module")
def service_run(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``optkit week --service stub.yaml --quick``: notebook 06 once, for the tests that read it
    (nbmake leaves it out: see notebooks/conftest.py)."""
    out = tmp_path_factory.mktemp("service-week")
    code = main(["week", "--service", str(STUB), "--quick", "--out", str(out),
                 "--repository", str(repository)])
    assert code == 0, (out / "summary.csv").read_text() if (out / "summary.csv").exists() else code
    return out


@pytest.mark.slow
def test_week_service_runs_notebook_06(service_run: Path) -> None:
    """The day ran into the run folder's ``service/``: the executed notebook and its HTML,
    one session folder per step and the target, and results.json with the chain."""
    day = service_run / "service"
    assert (day / "06-your-service.html").stat().st_size > 10_000
    for folder in ("1-pooling", "2-batching", "3-streaming"):
        assert (day / folder / "verdict.json").is_file(), folder
    assert not (day / "target").exists()  # quick mode: the chain only
    doc = json.loads((day / "results.json").read_text())
    assert doc["provisional"] and doc["service"] == "stub"
    assert {t["status"] for t in doc["targets"]} == {"not measured (quick mode runs the chain only)"}
    assert [row["layer"] for row in doc["chain"]] == ["alone", "+ pooling", "+ batching",
                                                      "+ streaming"]
    assert doc["gateway"] and all(row["models"] == "digits-sklearn: passthrough"
                                  for row in doc["gateway"])
    assert "06-your-service.html" in (service_run / "index.html").read_text()


@pytest.mark.slow
def test_service_report_reads_well_in_a_browser(service_run: Path, browser_check: Any) -> None:
    """The HTML report, rendered in headless Chromium: every figure loaded, no stderr block,
    a headline table shown."""
    from optkit.lab.week._browser_check import failures

    results = browser_check([service_run / "service" / "06-your-service.html"])
    assert results[0].headline is True and results[0].images_total >= 2, results[0].line()
    assert all(r.ok for r in results), failures(results)


# --- another setting of the server behind the gateway (fronted) -------------------------------

def _stub_arm(tmp_path: Path, name: str, service_ms: float = 0.5, **extra: Any) -> Path:
    """An arm file of the bench stub under another name: a second "setting" of the server
    (its service time ``service_ms``; stub.yaml's is 1 ms)."""
    doc = {"kind": "command", "name": name,
           "command": [sys.executable, "-m", "optkit.bench._stub_server", "--port", "{port}",
                       "--service-ms", f"{service_ms:g}", "--no-metadata-inputs"],
           "cwd": str(ROOT), "url": "http://127.0.0.1:{port}", "startup_timeout_s": 30, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_fronted_setting_is_a_parameter_else_the_arm_key_else_the_service(
        tmp_path: Path) -> None:
    """Behind the gateway runs: the ``fronted`` given, else the service arm's ``fronted:``
    key (relative to its file), else the service itself; quick mode's stand-in ignores the
    real service's."""
    lean = _stub_arm(tmp_path, "stub-lean")
    other = _stub_arm(tmp_path, "stub-other")
    keyed = _stub_arm(tmp_path, "stub-batch", service_ms=2, fronted="stub-lean.yaml")
    twin = _stub_arm(tmp_path, "stub-twin", service_ms=2)
    alone = service_arm(STUB)
    assert service_fronted(alone) is alone
    assert service_fronted(alone, lean).name == "stub-lean"
    batch = service_arm(keyed)
    assert batch.fronted == str(lean.resolve())
    assert service_fronted(batch).name == "stub-lean"
    assert service_fronted(batch, other).name == "stub-other"  # the parameter wins
    assert service_fronted(batch, quick=True, quick_service=STUB).name == "stub-lean"
    stand_in = service_arm(keyed, quick=True, quick_service=STUB)
    assert service_fronted(stand_in, lean, quick=True, quick_service=STUB) is stand_in
    assert service_fronted(alone, STUB) is alone  # naming the service itself: one setting
    assert service_fronted(batch, twin) is batch  # the same setting under another name
    # the key is the service day's: it does not follow the arm behind a gateway
    assert batch.behind_gateway(ROOT / "experiments" / "pooling.yaml").fronted is None
    assert "fronted" not in alone.to_dict() and batch.to_dict()["fronted"] == str(lean.resolve())


def test_the_chain_runs_the_fronted_setting_behind_the_gateway(tmp_path: Path) -> None:
    """Step 0 is the service alone; every step behind the gateway runs the fronted setting,
    named for it, with the layer configs given (a file per layer, or the week's by name)."""
    lean = _stub_arm(tmp_path, "stub-lean")
    alone, *behind = service_steps(STUB, fronted=lean)
    assert alone.name == "stub" and [a.name for a in behind] == [
        "stub-lean+pooling", "stub-lean+batching", "stub-lean+streaming"]
    assert {a.command for a in behind} == {load_arm(lean).command}
    configs = [ROOT / "experiments" / f"{layer}.yaml" for layer in ("pooling", "batching")]
    _, _, batched = service_steps(STUB, fronted=lean, layers=configs)
    assert batched.gateway is not None and batched.gateway["batching"]["enabled"]
    with pytest.raises(ConfigError, match="not a file"):
        service_steps(STUB, layers=[tmp_path / "none.yaml"])


def test_the_fronted_setting_is_checked_before_any_trial(tmp_path: Path) -> None:
    """Refused, each saying why: no such file (in the arm's key too), an optkit config, an arm
    with optkit's gateway in front, a fronted: of its own, the service's name for another
    setting, a ready URL for another model."""
    alone = service_arm(STUB)
    with pytest.raises(ConfigError, match="does not exist"):
        service_fronted(alone, tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="fronted: .* is not a file"):
        load_arm(_stub_arm(tmp_path, "keyed", fronted="none.yaml"))
    with pytest.raises(ConfigError, match="not an arm file"):
        service_fronted(alone, ROOT / "experiments" / "pooling.yaml")
    gated = _stub_arm(tmp_path, "gated", gateway={"pooling": {"enabled": True}})
    with pytest.raises(ConfigError, match="already puts optkit's gateway"):
        service_fronted(alone, gated)
    _stub_arm(tmp_path, "lean")
    nested = _stub_arm(tmp_path, "nested", fronted="lean.yaml")
    with pytest.raises(ConfigError, match="fronted: key of its own"):
        service_fronted(alone, nested)
    with pytest.raises(ConfigError, match="named 'stub' like the service"):
        service_fronted(alone, _stub_arm(tmp_path, "stub", startup_timeout_s=20))
    other = _stub_arm(tmp_path, "other-model",
                      ready_url="http://127.0.0.1:{port}/v2/models/digits-mlp/ready")
    mine = _stub_arm(tmp_path, "mine", ready_url="http://127.0.0.1:{port}/v2/models/"
                     "digits-sklearn/ready")
    with pytest.raises(ConfigError, match="must serve the same model"):
        service_fronted(service_arm(mine), other)


def test_same_answers_compares_outputs_row_for_row() -> None:
    """Two answers agree when their outputs have the same names, datatypes, shapes and values
    (floats within a tolerance); otherwise the difference is named."""
    out = {"outputs": [{"name": "label", "datatype": "INT64", "shape": [1, 1], "data": [3]},
                       {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}]}
    near = json.loads(json.dumps(out))
    near["outputs"][1]["data"] = [0.25000001, 0.75]
    assert same_answers(out, near) is None
    other = json.loads(json.dumps(out))
    other["outputs"][0]["data"] = [4]
    assert same_answers(out, other) == "output 'label': other values"
    shaped = json.loads(json.dumps(out))
    shaped["outputs"][1]["shape"] = [2, 1]
    assert "shape" in str(same_answers(out, shaped))
    assert "outputs" in str(same_answers(out, {"outputs": out["outputs"][:1]}))


def test_check_fronted_starts_both_and_compares_their_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both settings are started once: each must serve the workload's models and give the
    same answers to the same requests; nothing is started when the setting is the service."""
    from optkit.lab.week import _fronted

    alone = service_arm(STUB)
    assert check_fronted(alone, alone, workload=WORKLOAD)["checked"] is False
    lean = service_fronted(alone, _stub_arm(tmp_path, "stub-lean"))
    done = check_fronted(alone, lean, workload=WORKLOAD, requests=3, log_dir=tmp_path / "logs")
    assert done == {"checked": True, "models": ["digits-sklearn"], "requests": 3,
                    "alone": "stub", "fronted": "stub-lean"}
    assert (tmp_path / "logs" / "stub-lean" / "service.log").is_file()
    real = _fronted._post_json
    calls: list[str] = []

    def ones_from_the_second(url: str, body: bytes) -> tuple[int, bytes]:
        status, answer = real(url, body)
        calls.append(url)
        if len(calls) > 2:  # the fronted setting's answers: another model's
            answer = answer.replace(b"[0", b"[1")
        return status, answer

    monkeypatch.setattr(_fronted, "_post_json", ones_from_the_second)
    with pytest.raises(ConfigError, match="answer differently .*not the same model"):
        check_fronted(alone, lean, workload=WORKLOAD, requests=2)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="does not serve nope"):
        check_fronted(alone, lean, workload={"models": ["nope"], "rows": 1,
                                             "inputs": [{"name": "pixels", "datatype": "FP32",
                                                         "shape": [-1, 64]}]})


def test_the_report_names_both_settings_when_they_differ(tmp_path: Path) -> None:
    """Two settings: the chain has each row's server, the headline a column for it, the
    targets' arms and the conclusion say plainly that step 1 and the target compare different
    settings, and results.json records both. One setting: none of it."""
    names = ["svc-batch", "svc-lean+pooling", "svc-lean+batching", "svc-lean+streaming"]
    steps = [_session(names[i], names[i + 1], simulate_trials(12, effect=0.5, seed=i))
             for i in range(3)]
    chain = service_chain(steps)
    assert list(chain["server"]) == ["svc-batch", "svc-lean", "svc-lean", "svc-lean"]
    assert list(chain["layer"]) == ["alone", "+ pooling", "+ batching", "+ streaming"]
    assert "server setting" in service_headline(chain).data.columns
    assert service_servers(steps) == {"alone": "svc-batch", "fronted": "svc-lean",
                                      "differ": True}
    target = _session("svc-batch", "svc-lean+batching", simulate_trials(12, effect=2.0, seed=7))
    text = service_conclusion(steps, target)
    assert text.splitlines()[0].startswith("Two server settings: svc-batch is measured alone; "
                                           "behind optkit's gateway every step runs svc-lean")
    arms = service_targets(target)["arms"]
    assert (arms == "svc-lean+batching vs svc-batch (different server settings: svc-lean "
                    "behind the gateway, svc-batch alone)").all()
    doc = json.loads(record_service(steps, target, out_dir=tmp_path).read_text())
    assert doc["servers"]["alone"] == "svc-batch" and doc["servers"]["fronted"] == "svc-lean"
    assert doc["servers"]["differ"] and "Two server settings" in doc["servers"]["note"]
    one = _chain()
    assert not service_servers(one)["differ"] and service_settings_note(one) == ""
    assert "server setting" not in service_headline(service_chain(one)).data.columns
    assert not service_conclusion(one).startswith("Two server settings")


def test_week_fronted_needs_a_service_and_an_arm_file(tmp_path: Path) -> None:
    """``--fronted`` without ``--service``, or naming no arm file: exit 2 before anything runs."""
    assert main(["week", "--fronted", str(STUB), "--out", str(tmp_path)]) == 2
    assert main(["week", "--service", str(STUB), "--fronted", str(tmp_path / "none.yaml"),
                 "--out", str(tmp_path)]) == 2
    assert main(["week", "--service", str(STUB), "--fronted",
                 str(ROOT / "experiments" / "pooling.yaml"), "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "service").exists()


@pytest.mark.slow
def test_week_service_runs_the_fronted_setting_behind_the_gateway(
        repository: Path, tmp_path: Path) -> None:
    """``optkit week --service stub.yaml --fronted stub-lean.yaml --quick``: the notebook
    checks both serve the same model, runs stub alone and stub-lean behind the gateway, and
    its results say so."""
    lean = _stub_arm(tmp_path, "stub-lean")
    out = tmp_path / "run"
    code = main(["week", "--service", str(STUB), "--fronted", str(lean), "--quick",
                 "--out", str(out), "--repository", str(repository)])
    assert code == 0, (out / "summary.csv").read_text()
    doc = json.loads((out / "service" / "results.json").read_text())
    assert [row["arm"] for row in doc["chain"]] == [
        "stub", "stub-lean+pooling", "stub-lean+batching", "stub-lean+streaming"]
    assert doc["servers"]["differ"] and doc["same_model"]["checked"]
    assert doc["conclusion"].startswith("Two server settings: stub is measured alone")
    assert "ANOTHER SETTING" in (out / "service" / "06-your-service.html").read_text()
