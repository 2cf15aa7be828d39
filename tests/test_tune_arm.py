"""optkit tune on a service optkit does not own: an arm file's own placeholders (parameters:
with defaults), rendered per start; a space over them (arm.NAME), checked before anything runs;
the tuned arm file written with the winning defaults; one live tune of a templated stub arm."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from optkit import ConfigError
from optkit.cli import main
from optkit.lab import tune
from optkit.lab._arm_params import render
from optkit.lab._arms import ExternalArm, load_arm
from optkit.lab._tune_arm import ArmSpace, load_arm_space, load_tune_base, write_tuned_arm
from optkit.lab._tune_space import load_space

ROOT = Path(__file__).resolve().parents[1]

#: a command arm with two parameters of its own, one in the command, one in an env value
ARM = {"kind": "command", "name": "svc", "url": "http://127.0.0.1:{port}",
       "command": ["prog", "--port", "{port}", "--batch", "{max_batch_size}"],
       "env": {"BATCH_TIME": "{max_batch_time}", "JSON": '{"a": 1}'},
       "parameters": {"max_batch_size": 32, "max_batch_time": 0.002}}
SPACE = {"arm.max_batch_size": {"int": [1, 64], "log": True},
         "arm.max_batch_time": {"float": [0.0005, 0.02]}}


# -- placeholders, without servers ------------------------------------------------------------

def test_render_fills_declared_placeholders_and_leaves_other_braces() -> None:
    values = {"port": 8123, "max_batch_size": 8, "flag": True, "t": 0.002}
    assert render("--port {port} --b {max_batch_size}", values) == "--port 8123 --b 8"
    assert render("{flag}/{t}", values) == "true/0.002"
    assert render('{"a": 1} {other}', values) == '{"a": 1} {other}'  # not ours: kept


def test_an_arm_declares_its_parameters_with_defaults() -> None:
    arm = ExternalArm.from_dict(ARM)
    assert arm.parameters == {"max_batch_size": 32, "max_batch_time": 0.002}
    assert arm.to_dict()["parameters"] == arm.parameters
    assert "parameters" not in ExternalArm.from_dict(
        {k: v for k, v in ARM.items() if k not in ("parameters", "command", "env")}
        | {"command": ["prog"]}).to_dict()  # an arm without any: unchanged on disk


@pytest.mark.parametrize("change, words", [
    ({"command": ["prog", "{max_batch_sise}", "{max_batch_size}"]},
     ["command[1]", "unknown placeholder {max_batch_sise}", "{max_batch_size}"]),
    ({"env": {"X": "{nope}"}, "command": ["prog", "{max_batch_size}", "{max_batch_time}"]},
     ["env.X", "unknown placeholder {nope}"]),
    ({"parameters": {"max_batch_size": None, "max_batch_time": 0.002}},
     ["max_batch_size has no default"]),
    ({"parameters": {"max_batch_time": 0.002}}, ["unknown placeholder {max_batch_size}"]),
    ({"parameters": {"max_batch_size": 32, "max_batch_time": 0.002, "spare": 1}},
     ["spare declared but no placeholder uses it"]),
    ({"parameters": {"max_batch_size": [1, 2], "max_batch_time": 0.002}},
     ["max_batch_size", "number, a string or a boolean"]),
    ({"parameters": {"port": 1, "max_batch_size": 32, "max_batch_time": 0.002}},
     ["{port}", "cannot be declared"]),
    ({"parameters": [32]}, ["parameters must map"]),
])
def test_bad_placeholders_and_parameters_are_refused(change: dict[str, Any],
                                                     words: list[str]) -> None:
    """Each is a ConfigError naming the placeholder or parameter and what is wrong."""
    with pytest.raises(ConfigError) as info:
        ExternalArm.from_dict({**ARM, **change})
    for word in words:
        assert word in str(info.value), str(info.value)


def test_a_url_arm_takes_no_parameters() -> None:
    with pytest.raises(ConfigError, match="never started"):
        ExternalArm.from_dict({"kind": "url", "url": "http://127.0.0.1:9",
                               "parameters": {"a": 1}})


# -- the space over an arm, without servers ---------------------------------------------------

def test_a_candidate_is_the_arm_with_its_parameters_set() -> None:
    arm = ExternalArm.from_dict(ARM)
    space = load_arm_space(SPACE, arm)
    assert isinstance(space, ArmSpace) and space.keys == tuple(SPACE)
    assert space.base_values(arm) == {"arm.max_batch_size": 32, "arm.max_batch_time": 0.002}
    cand = space.apply(arm, {"arm.max_batch_size": 4}, name="c1")
    assert cand.name == "c1" and cand.parameters == {"max_batch_size": 4,
                                                     "max_batch_time": 0.002}
    assert cand.command == arm.command  # rendered at start, not here


@pytest.mark.parametrize("doc, words", [
    ({"arm.max_batch_sizes": {"int": [1, 8]}}, ["arm.max_batch_sizes names nothing",
                                                "arm.max_batch_size, arm.max_batch_time"]),
    ({"batching.max_batch_size": {"int": [1, 8]}}, ["the base is an arm file", "arm.NAME"]),
    ({"arm.max_batch_size": {"int": [8, 1]}}, ["arm.max_batch_size", "below its high"]),
    ({}, ["at least one"]),
])
def test_a_bad_arm_space_is_refused_naming_the_key(doc: dict[str, Any],
                                                   words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_arm_space(doc, ExternalArm.from_dict(ARM))
    for word in words:
        assert word in str(info.value), str(info.value)


def test_a_range_over_a_string_default_and_an_arm_without_parameters_are_refused() -> None:
    arm = ExternalArm.from_dict({**ARM, "parameters": {"max_batch_size": "32",
                                                       "max_batch_time": 0.002}})
    with pytest.raises(ConfigError, match="not a number: search it with choices"):
        load_arm_space({"arm.max_batch_size": {"int": [1, 8]}}, arm)
    assert load_arm_space({"arm.max_batch_size": {"choices": ["8", "32"]}}, arm).keys
    bare = ExternalArm.from_dict({"kind": "command", "name": "bare", "command": ["prog"],
                                  "url": "http://127.0.0.1:{port}"})
    with pytest.raises(ConfigError, match="declares no parameters"):
        load_arm_space({"arm.x": {"int": [1, 8]}}, bare)


def test_arm_keys_against_an_optkit_config_and_a_url_arm_as_base_are_refused() -> None:
    with pytest.raises(ConfigError, match="the base is an optkit config"):
        load_space({"arm.max_batch_size": {"int": [1, 8]}}, None)
    with pytest.raises(ConfigError, match="cannot be tuned"):
        load_tune_base({"kind": "url", "name": "u", "url": "http://127.0.0.1:9"})


def test_the_tuned_arm_file_has_the_winning_defaults_and_paths_that_still_hold(
        tmp_path: Path) -> None:
    """Written elsewhere than the arm file, its cwd still names the same folder."""
    (tmp_path / "arms" / "server-dir").mkdir(parents=True)
    source = tmp_path / "arms" / "svc.yaml"
    source.write_text(yaml.safe_dump({**ARM, "cwd": "server-dir"}))
    arm = load_arm(source)
    out = tmp_path / "runs" / "tune" / "tuned.yaml"
    write_tuned_arm(out, source, arm, {"arm.max_batch_size": 8, "arm.max_batch_time": 0.002},
                    {"candidate": 3}, "p99<=100ms", "closed:32")
    tuned = load_arm(out)
    assert isinstance(tuned, ExternalArm) and tuned.name == "svc-tuned"
    assert tuned.parameters == {"max_batch_size": 8, "max_batch_time": 0.002}
    assert Path(tuned.cwd or "").resolve() == (tmp_path / "arms" / "server-dir").resolve()
    head = out.read_text()
    assert "max_batch_size: 32 -> 8" in head and "max_batch_time: 0.002 (the arm's default)" in head


def test_the_shipped_mlserver_arm_and_space_load() -> None:
    """experiments/tune/mlserver-batching.yaml's defaults are the preset's; its model settings
    leave the two knobs out (a value there would win over the MLSERVER_MODEL_* variables)."""
    arm = load_tune_base(ROOT / "experiments/tune/mlserver-batching.yaml")
    assert arm.parameters == {"max_batch_size": 32, "max_batch_time": 0.002}
    space = load_arm_space(ROOT / "experiments/tune/mlserver-space.yaml", arm)
    assert set(space.keys) == {"arm.max_batch_size", "arm.max_batch_time"}
    assert all(p.contains(v) for p, v in zip(space.params, space.base_values(arm).values()))
    settings = yaml.safe_load((Path(arm.cwd or "") / "digits-sklearn/model-settings.json")
                              .read_text())
    assert not {"max_batch_size", "max_batch_time"} & set(settings)


def test_cli_space_naming_nothing_exits_2(tmp_path: Path, capsys: Any) -> None:
    arm = tmp_path / "svc.yaml"
    arm.write_text(yaml.safe_dump({**ARM, "command": [sys.executable, "--batch",
                                                      "{max_batch_size}", "{max_batch_time}"]}))
    space = tmp_path / "space.yaml"
    space.write_text("arm.max_batch: {int: [1, 8]}\n")
    code = main(["tune", str(arm), "--space", str(space), "--slo", "p99<=100ms",
                 "--out", str(tmp_path / "out"), "--repository", str(tmp_path)])
    assert code == 2
    assert "arm.max_batch names nothing" in capsys.readouterr().err
    assert not (tmp_path / "out" / "study.db").exists()


def test_cli_unknown_placeholder_exits_2(tmp_path: Path, capsys: Any) -> None:
    arm = tmp_path / "svc.yaml"
    arm.write_text(yaml.safe_dump({**ARM, "env": {"T": "{max_batch_tme}"}}))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    code = main(["tune", str(arm), "--space", str(space), "--slo", "p99<=100ms",
                 "--out", str(tmp_path / "out"), "--repository", str(tmp_path)])
    assert code == 2
    assert "unknown placeholder {max_batch_tme}" in capsys.readouterr().err


# -- a live tune of a templated arm -----------------------------------------------------------

@pytest.fixture(autouse=True)
def not_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTKIT_QUICK", raising=False)


@pytest.mark.slow
@pytest.mark.heavy  # ~15 s: six fresh stub servers (make tune-check, make heavy)
def test_a_tiny_tune_of_a_templated_stub_arm(tmp_path: Path) -> None:
    """optkit's bench stub as a server optkit does not own, its per-request time a parameter
    (default 4 ms): two candidates (the default first), the winner validated against the arm at
    its default in a 2-pair session, tuned.yaml an arm file holding the winner's value."""
    arm = tmp_path / "stub.yaml"
    arm.write_text(yaml.safe_dump({
        "kind": "command", "name": "stub", "cwd": str(ROOT), "url": "http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", "optkit.bench._stub_server", "--port", "{port}",
                    "--service-ms", "{service_ms}", "--lifetime-s", "120"],
        "parameters": {"service_ms": 4}, "startup_timeout_s": 30}))
    out = tmp_path / "tune"
    result = tune(arm, {"arm.service_ms": {"choices": [4, 1]}}, slo="p99<=250ms",
                  repository=tmp_path / "unused", load="closed:4", trials=2, pairs=2,
                  out_dir=out, warmup_s=0.3, duration_s=1.0, engine="builtin", seed=1,
                  log=None, gates={"check_stability": False})
    hist = result.history
    assert list(hist["candidate"]) == [0, 1] and hist.loc[0, "source"] == "base settings"
    assert hist.loc[0, "arm.service_ms"] == 4
    if set(hist["arm.service_ms"]) == {4, 1}:  # the value reached the server's command line
        tput = hist.set_index("arm.service_ms")["throughput_rps"]
        assert tput[1] > 1.5 * tput[4], tput
    assert result.best is not None
    tuned = load_arm(out / "tuned.yaml")
    assert isinstance(tuned, ExternalArm) and tuned.name == "stub-tuned"
    assert tuned.parameters == {"service_ms": result.best["arm.service_ms"]}
    if result.best["arm.service_ms"] == 4:  # the default won: nothing to validate
        assert result.validation.get("best_is_base")
    else:  # 1 ms: validated against the arm at its default, paired
        assert result.comparison is not None and result.validated
        assert result.validation["pairs"] == 2
        assert (result.comparison.a.name, result.comparison.b.name) == ("stub", "stub-tuned")
        assert result.comparison.b.parameters == {"service_ms": 1}
