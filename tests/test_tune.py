"""optkit tune: the space is checked before anything runs, a tiny real search writes a study,
its tables, a tuned experiment file and a validation verdict; resume adds to the same study;
the budget stops candidates; Ctrl-C keeps what was measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from optkit import ConfigError, ServiceConfig, load_config
from optkit.cli import main
from optkit.lab import (Slo, TuneResult, load_space, parse_budget, parse_slo, resumed_candidates,
                        tune)

ROOT = Path(__file__).resolve().parents[1]

#: a base with batching on, every model of the test repository loaded
BASE = {"name": "base", "pooling": {"enabled": True}, "batching": {"enabled": True}}
#: the base's max_batch_size (32) is in the space, its max_concurrent_batches (1) is not: the
#: first candidate takes the one from the base, and no candidate is the base itself
SPACE = {"batching.max_batch_size": {"int": [4, 64], "log": True},
         "batching.max_concurrent_batches": {"choices": [2, 3]}}
#: short trials at a light load, against an SLO every sane candidate meets, the stability gate
#: off: on a busy 2-core machine a 1 s window's per-window CV reads over 10 % now and then (a
#: candidate then counts as infeasible), and these tests judge the tuner, not the machine)
TINY = dict(load="closed:4", slo="p99<=250ms", workload="digits", warmup_s=0.3, duration_s=1.0,
            engine="builtin", log=None, gates={"check_stability": False})


# -- the space, without servers ---------------------------------------------------------------

def test_the_example_space_loads_against_the_integrated_config() -> None:
    """experiments/tune/space.yaml names real keys with values integrated.yaml's schema takes."""
    space = load_space(ROOT / "experiments/tune/space.yaml", ROOT / "experiments/integrated.yaml")
    assert {"batching.max_batch_size", "batching.max_delay_ms",
            "batching.max_concurrent_batches"} <= set(space.keys)
    by_key = {p.key: p for p in space.params}
    assert by_key["batching.max_batch_size"].log and by_key["batching.max_batch_size"].kind == "int"


@pytest.mark.parametrize("doc, words", [
    ({"batching.max_batchsize": {"int": [1, 8]}}, ["batching.max_batchsize", "unknown key",
                                                    "max_batch_size"]),
    ({"batchin.max_batch_size": {"int": [1, 8]}}, ["batchin.max_batch_size", "unknown section"]),
    ({"max_batch_size": {"int": [1, 8]}}, ["'max_batch_size'", "section.key"]),
    ({"batching.max_batch_size": {"int": [8, 4]}}, ["batching.max_batch_size", "below its high"]),
    ({"batching.max_batch_size": {"int": [0, 8]}}, ["batching.max_batch_size", "must be > 0"]),
    ({"batching.max_batch_size": {"int": [1.5, 8]}}, ["batching.max_batch_size", "integer ends"]),
    ({"batching.max_delay_ms": {"float": [0.0, 4.0], "log": True}}, ["max_delay_ms", "low > 0"]),
    ({"batching.max_delay_ms": {"float": [0.5]}}, ["max_delay_ms", "[low, high]"]),
    ({"batching.max_delay_ms": {"float": [0.5, 2], "choices": [1]}}, ["exactly one of"]),
    ({"batching.max_delay_ms": {"float": [0.5, 2], "logg": True}}, ["unknown option", "logg"]),
    ({"batching.executor": {"choices": ["loop", "gpu"]}}, ["batching.executor", "'gpu'"]),
    ({"batching.executor": {"choices": []}}, ["batching.executor", "non-empty"]),
    ({"loading.models": {"choices": [["a"]]}}, ["loading.models", "cannot be searched"]),
    ({}, ["at least one"]),
])
def test_a_bad_space_is_refused_naming_the_key(doc: dict[str, Any], words: list[str]) -> None:
    """Each malformed entry is a ConfigError whose message names the key and what is wrong."""
    with pytest.raises(ConfigError) as info:
        load_space(doc, BASE)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_a_candidate_is_the_base_with_the_space_keys_set() -> None:
    """apply() replaces only the space's keys; every other setting is the base's."""
    space = load_space(SPACE, BASE)
    cfg = space.apply(BASE, {"batching.max_batch_size": 16,
                             "batching.max_concurrent_batches": 2}, name="c1")
    base = load_config(BASE)
    assert (cfg.batching.max_batch_size, cfg.batching.max_concurrent_batches) == (16, 2)
    assert cfg.name == "c1" and cfg.pooling == base.pooling
    assert cfg.batching.max_delay_ms == base.batching.max_delay_ms


def test_slo_and_budget_are_parsed_or_refused() -> None:
    """p99<=10ms, p50<=0.5s; 15m, 90s, 1h; anything else is a ConfigError saying the form."""
    assert parse_slo("p99<=10ms") == Slo("p99_ms", 10.0)
    assert parse_slo("p50 <= 0.5s") == Slo("p50_ms", 500.0)
    assert (parse_budget("15m"), parse_budget("90s"), parse_budget("1h")) == (900, 90, 3600)
    for bad in ("p99<10ms", "p98<=10ms", "p99<=0ms"):
        with pytest.raises(ConfigError, match="p99<=10ms"):
            parse_slo(bad)
    with pytest.raises(ConfigError, match="15m"):
        parse_budget("soon")


def test_cli_bad_space_exits_2_naming_the_key(tmp_path: Path, capsys: Any) -> None:
    """optkit tune with an unknown key in the space: exit 2, the key in the message, no study."""
    space = tmp_path / "space.yaml"
    space.write_text("batching.max_batch_size: {int: [4, 64]}\n"
                     "batching.max_delay: {float: [0, 2]}\n")
    out = tmp_path / "out"
    code = main(["tune", str(ROOT / "experiments/integrated.yaml"), "--space", str(space),
                 "--slo", "p99<=10ms", "--out", str(out), "--repository", str(tmp_path)])
    assert code == 2
    assert "batching.max_delay" in capsys.readouterr().err
    assert not (out / "study.db").exists()


def test_a_budget_too_small_for_one_candidate_and_the_validation_is_refused(
        repository: Path, tmp_path: Path) -> None:
    """Before any trial: a budget that cannot hold a candidate plus the validation is refused."""
    with pytest.raises(ConfigError, match="cannot hold one candidate"):
        tune(BASE, SPACE, repository=repository, budget="20s", pairs=4,
             out_dir=tmp_path, **TINY)
    assert not (tmp_path / "study.db").exists()


# -- real searches (short trials on real stacks) ----------------------------------------------

@pytest.fixture(autouse=True)
def not_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """make test sets OPTKIT_QUICK=1 (the notebooks' CI mode): here the tests' own sizes apply."""
    monkeypatch.delenv("OPTKIT_QUICK", raising=False)


@pytest.mark.slow
def test_a_tiny_tune_writes_a_study_a_tuned_experiment_and_a_verdict(
        repository: Path, tmp_path: Path) -> None:
    """Three candidates, then a 2-pair validation: study.db, history with every candidate (the
    first with the base's own setting where the space holds it), tuned.yaml that loads as an
    experiment holding the winner, and a verdict from the paired session."""
    out = tmp_path / "tune"
    result = tune(BASE, SPACE, repository=repository, trials=3, pairs=2, out_dir=out, seed=3,
                  **TINY)
    assert isinstance(result, TuneResult)
    assert (out / "study.db").exists() and resumed_candidates(out) == 3
    hist = result.history
    assert len(hist) == 3 and list(hist["candidate"]) == [0, 1, 2]
    assert hist.loc[0, "source"] == "base settings"
    assert hist.loc[0, "batching.max_batch_size"] == load_config(BASE).batching.max_batch_size
    # an infeasible candidate (an unlucky invalid trial, say) is kept with its reason
    assert hist["feasible"].any()
    assert hist.loc[~hist["feasible"].astype(bool), "reason"].str.len().gt(0).all()
    assert (hist["best_goodput_rps"].diff().dropna() >= 0).all()
    assert result.best is not None
    tuned = load_config(out / "tuned.yaml")
    assert tuned.name == "base-tuned"
    assert tuned.batching.max_batch_size == result.best["batching.max_batch_size"]
    assert tuned.batching.max_concurrent_batches == result.best["batching.max_concurrent_batches"]
    assert tuned.pooling.enabled  # the base's other settings are kept
    assert result.comparison is not None and result.validated
    assert result.validation["throughput_verdict"].split(" (")[0] in (
        "improved", "regressed", "within noise", "no change detected")
    assert result.validation["pairs"] == 2
    doc = json.loads((out / "tune.json").read_text())
    assert doc["candidates"] == 3 and doc["verdict"] == result.verdict
    assert (out / "validation" / "verdict.json").exists()
    assert len(pd.read_csv(out / "history.csv")) == 3
    assert not result.pareto.empty and set(result.pareto["candidate"]) <= set(hist["candidate"])
    assert "at least 5" in result.importance_note  # too few candidates: said, not computed


@pytest.mark.slow
@pytest.mark.heavy  # make tune-check (make heavy): keeps make test under 10 min
def test_resume_adds_candidates_to_the_same_study(repository: Path, tmp_path: Path) -> None:
    """A second run with resume continues the study (2 + 1 candidates, numbered on); without
    resume the folder is refused, and a resume with another space is refused."""
    out = tmp_path / "tune"
    first = tune(BASE, SPACE, repository=repository, trials=2, out_dir=out, validate=False,
                 **TINY)
    assert len(first.history) == 2
    with pytest.raises(ConfigError, match="--resume"):
        tune(BASE, SPACE, repository=repository, trials=1, out_dir=out, validate=False, **TINY)
    other = {**SPACE, "batching.max_delay_ms": {"float": [0.1, 2.0]}}
    with pytest.raises(ConfigError, match="space"):
        tune(BASE, other, repository=repository, trials=1, out_dir=out, validate=False,
             resume=True, **TINY)
    second = tune(BASE, SPACE, repository=repository, trials=1, out_dir=out, validate=False,
                  resume=True, **TINY)
    assert list(second.history["candidate"]) == [0, 1, 2]
    assert second.new_candidates == 1 and resumed_candidates(out) == 3
    assert second.history.loc[0, "throughput_rps"] == first.history.loc[0, "throughput_rps"]
    again = tune(BASE, SPACE, repository=repository, trials=1, out_dir=out, validate=False,
                 fresh=True, **TINY)  # start over: the old study and its trials are gone
    assert list(again.history["candidate"]) == [0] and resumed_candidates(out) == 1
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["c000"]


@pytest.mark.slow
@pytest.mark.heavy  # make tune-check (make heavy): keeps make test under 10 min
def test_cli_exits_1_when_no_candidate_meets_the_slo(repository: Path, tmp_path: Path,
                                                      capsys: Any) -> None:
    """An SLO nothing can meet: exit 1, the reason recorded per candidate, no tuned.yaml."""
    out = tmp_path / "tune"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    code = main(["tune", str(base), "--space", str(space), "--slo", "p99<=0.001ms",
                 "--load", "closed:4", "--trials", "2", "--warmup", "0.3", "--duration", "1",
                 "--repository", str(repository), "--out", str(out), "--no-validate"])
    assert code == 1
    assert "no candidate met p99<=0.001ms" in capsys.readouterr().err
    hist = pd.read_csv(out / "history.csv")
    assert len(hist) == 2 and not hist["feasible"].any()
    assert hist["reason"].str.contains("over the SLO|invalid trial").all()
    assert not (out / "tuned.yaml").exists()


class TrialClock:
    """A clock in which time passes only when a trial is measured: 100 s per trial folder
    written, so the budget's arithmetic, not this machine's speed, decides the count."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __call__(self) -> float:
        return 100.0 * len(list(self.out.glob("trials/*/trial.json")))


@pytest.mark.slow
@pytest.mark.heavy  # make tune-check (make heavy): keeps make test under 10 min
def test_the_budget_stops_starting_candidates(repository: Path, tmp_path: Path) -> None:
    """Each candidate costs 100 s of the clock; with 350 s and no validation the fourth would
    start with 50 s left, less than the 100 s the longest one took: three candidates run."""
    out = tmp_path / "tune"
    result = tune(BASE, SPACE, repository=repository, budget=350, out_dir=out, validate=False,
                  clock=TrialClock(out), **TINY)
    assert len(result.history) == 3, result.stopped
    assert result.stopped.startswith("budget")


@pytest.mark.slow
@pytest.mark.heavy  # make tune-check (make heavy): keeps make test under 10 min
def test_ctrl_c_keeps_the_candidates_measured_and_writes_the_best(
        repository: Path, tmp_path: Path) -> None:
    """A KeyboardInterrupt after the second candidate: both stay in the study and the tables,
    tuned.yaml is written from the best so far, and nothing is validated."""
    out = tmp_path / "tune"
    lines: list[str] = []

    def log(line: str) -> None:
        if line.startswith("candidate"):
            lines.append(line)
            if len(lines) == 2:  # Ctrl-C as the second candidate is reported
                raise KeyboardInterrupt

    result = tune(BASE, SPACE, repository=repository, trials=5, out_dir=out, pairs=2,
                  **{**TINY, "log": log})
    assert result.interrupted and result.comparison is None
    assert "candidate 2 of 5" in lines[1] and "best so far" in lines[1]
    assert len(result.history) == 2 and (result.history["state"] == "COMPLETE").all()
    assert (out / "tuned.yaml").exists() and (out / "history.csv").exists()
    assert yaml.safe_load((out / "tuned.yaml").read_text())["name"] == "base-tuned"
    assert isinstance(load_config(out / "tuned.yaml"), ServiceConfig)


# -- the tables, from a study built by hand (no servers) --------------------------------------

def _study(rows: list[tuple[int, float, float, bool]]) -> Any:
    """An in-memory study of candidates (max_batch_size, throughput, p99, feasible)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for size, tput, p99, feasible in rows:
        trial = study.ask({"batching.max_batch_size": optuna.distributions.IntDistribution(1, 64)})
        for key, value in {"throughput_rps": tput, "p99_ms": p99, "valid": True,
                           "feasible": feasible, "goodput_rps": tput if feasible else 0.0}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, tput if feasible else 0.0)
    return study


def test_the_tables_of_a_study_known_answers() -> None:
    """Pareto keeps exactly the undominated (throughput up, p99 down); the best-so-far curve
    counts only candidates that met the SLO; importances say why they are missing under 5."""
    from optkit.lab import _tune_report as report

    study = _study([(8, 100.0, 5.0, True), (16, 120.0, 8.0, True), (4, 90.0, 9.0, True),
                    (64, 130.0, 12.0, False)])
    hist = report.history(study, ("batching.max_batch_size",))
    front = report.pareto(hist, "p99_ms")
    assert list(front["throughput_rps"]) == [100.0, 120.0, 130.0]  # (90, 9 ms) is dominated
    curve = report.best_curve(hist)
    assert list(curve["best_goodput_rps"]) == [100.0, 120.0, 120.0, 120.0]
    assert list(curve["best_candidate"]) == [0, 1, 1, 1]
    table, note = report.importances(study)
    assert table.empty and "at least 5" in note
    six = _study([(s, 10.0 * s, 1.0, True) for s in (1, 2, 4, 8, 16, 32)])
    table, note = report.importances(six)
    assert list(table["parameter"]) == ["batching.max_batch_size"] and "fANOVA" in note
    assert table["importance"].iloc[0] == pytest.approx(1.0)
