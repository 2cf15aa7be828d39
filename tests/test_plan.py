"""Pairs chosen in advance for power (optkit/lab/_plan.py), from a cell's calibration."""

from __future__ import annotations

import math

import pytest

from optkit.lab import CompareSettings, plan_pairs
from optkit.lab._plan import sd_upper
from optkit.lab.stats import detectable_effect, pairs_for_power, scaled_delta

CAL = {"cells": {"digits|closed:32": {"deltas": {
    "throughput_rps": {"delta": 0.03, "sd_d": 0.05, "n_pairs": 8},
    "p99_ms": {"delta": 0.07, "sd_d": 0.125, "n_pairs": 8}}}}}


def test_the_plan_is_the_fewest_pairs_that_reach_every_effect() -> None:
    """The chosen n is the largest of the per-metric needs, each the fewest pairs whose
    detectable effect (sd at its upper 80 % bound, band scaled to n, Holm over the session's
    4 tests) is within the effect sought; the table says what n can see for each metric."""
    settings = CompareSettings(pairs=32, loads=("closed:32",))
    plan = plan_pairs(settings, CAL, effects={"throughput_rps": 10, "p99_ms": -20})
    need = [pairs_for_power(sd_upper(sd, 8), abs(math.log1p(e / 100)), delta=delta, n_cal=8,
                            family_size=4, max_pairs=32)
            for sd, delta, e in ((0.05, 0.03, 10), (0.125, 0.07, -20))]
    assert plan.settings.pairs == max(need) > 8 and plan.reachable
    assert "planned so that" in plan.note and plan.settings.loads == ("closed:32",)
    def seen(n: int) -> float:  # what n pairs detect of throughput, as the plan reads it
        return detectable_effect(sd_upper(0.05, 8), n, delta=scaled_delta(0.03, 8, n),
                                 family_size=4)
    assert seen(need[0]) <= math.log1p(0.10) < seen(need[0] - 1)  # the fewest that reach it
    row = plan.table.set_index("metric").loc["throughput_rps"]
    assert row["band source"] == "measured" and row["A/A sd of d"] == "5.0 %"


def test_never_fewer_pairs_than_the_calibration_measured() -> None:
    """A cell calibrated on 24 pairs plans at least 24, however small the sd: a plan below
    the calibration rests on a band scaled up from it and an sd whose rare slow trials the
    calibration may not have seen."""
    cal = {"cells": {"digits|closed:32": {"deltas": {
        "throughput_rps": {"delta": 0.005, "sd_d": 0.01, "n_pairs": 24}}}}}
    plan = plan_pairs(CompareSettings(pairs=32, loads=("closed:32",)), cal)
    assert plan.settings.pairs == 24 and plan.reachable


def test_a_budget_too_small_says_so_before_the_session() -> None:
    """With 6 pairs at most, a 5 % change is out of reach: the plan takes the budget and says
    it is NOT enough; the table shows what 6 pairs can see."""
    plan = plan_pairs(CompareSettings(pairs=6, loads=("closed:32",)), CAL,
                      effects={"throughput_rps": 5}, max_pairs=8)
    assert not plan.reachable and plan.settings.pairs == 8 and "NOT enough" in plan.note
    assert "detectable at 8 pairs" in plan.table.columns


def test_without_a_calibration_the_pairs_stay_as_set() -> None:
    """No measured sd: nothing to plan from; the settings' pairs are kept and the note says
    the bands are the defaults."""
    plan = plan_pairs(CompareSettings(pairs=11, loads=("closed:1",)), CAL)
    assert plan.settings.pairs == 11 and not plan.reachable and "not calibrated" in plan.note


def test_more_tests_in_the_family_need_more_pairs() -> None:
    """Holm over two loads (8 tests) asks at least as many pairs as over one (4)."""
    one = plan_pairs(CompareSettings(pairs=32, loads=("closed:32",)), CAL)
    cal = {"cells": {**CAL["cells"], "digits|closed:1": CAL["cells"]["digits|closed:32"]}}
    two = plan_pairs(CompareSettings(pairs=32, loads=("closed:32", "closed:1")), cal)
    assert two.settings.pairs >= one.settings.pairs


def test_the_sd_bound_is_above_the_estimate_and_tightens_with_pairs() -> None:
    """An upper confidence bound: wider than the estimate, less so with more pairs."""
    assert sd_upper(0.05, 8) > sd_upper(0.05, 24) > 0.05
    assert sd_upper(0.05, 1) == math.inf


@pytest.mark.parametrize("family", [1, 4, 8])
def test_detectable_effect_falls_with_pairs_and_is_infinite_below_holms_floor(family: int) -> None:
    """More pairs see smaller effects; with too few for 2/2^n <= alpha/m nothing is seen."""
    effects = [detectable_effect(0.05, n, delta=scaled_delta(0.02, 24, n), family_size=family)
               for n in range(2, 40)]
    finite = [e for e in effects if math.isfinite(e)]
    assert finite and all(a >= b for a, b in zip(finite, finite[1:]))
    floor = next(n for n in range(2, 40) if 2 / 2**n <= 0.05 / family)
    assert math.isinf(effects[floor - 3]) and math.isfinite(effects[floor - 2])


# -- plan_day: which cells a day measures before it plans ------------------------------------

def _cell(settings: CompareSettings, load: str) -> dict:
    return {"workload": settings.workload, "load": load, "settings": settings.to_dict(),
            "deltas": {"throughput_rps": {"delta": 0.03, "sd_d": 0.05,
                                          "n_pairs": settings.pairs}}}


@pytest.mark.parametrize("stored, measured", [
    ("same", []),                      # measured the same way: reused
    ("more pairs", []),                # an older file's 16 pairs, more than the 12 taken now
    ("missing", ["closed:16"]),        # never measured here
    ("other gates", ["closed:16"]),    # measured with the stability gate on: again
    ("other warm-up", ["closed:16"]),  # measured after a 0.5 s warm-up: again
    ("no settings", []),               # an older file that did not record them: kept
])
def test_a_day_measures_the_cells_it_lacks_or_that_were_measured_another_way(
        tmp_path, monkeypatch: pytest.MonkeyPatch, stored: str, measured: list[str]) -> None:
    import json
    import dataclasses
    from optkit.lab.week import _days
    monkeypatch.delenv("OPTKIT_QUICK", raising=False)  # make test sets it: a real day here
    day = _days.day_settings(quick=False, pairs=24, warmup_s=1.0, duration_s=2.0,
                             loads=["closed:16"], seed=0, workload="large-output",
                             engine="builtin", gates={"check_stability": False})
    other = {"same": dataclasses.replace(day, pairs=_days.CALIBRATION_PAIRS),
             "more pairs": dataclasses.replace(day, pairs=16),
             "other gates": dataclasses.replace(day, gates=None),
             "other warm-up": dataclasses.replace(day, warmup_s=0.5)}
    cells = {}
    if stored in other:
        cells["large-output|closed:16"] = _cell(other[stored], "closed:16")
    elif stored == "no settings":
        cells["large-output|closed:16"] = {k: v for k, v in _cell(other["same"], "closed:16")
                                           .items() if k != "settings"}
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"schema_version": 2, "cells": cells}, default=str))
    calls: list[tuple[str, ...]] = []

    def fake_calibrate(arm, *, repository, out, progress, settings):  # records, then stores
        calls.append(settings.loads)
        assert settings.pairs == _days.CALIBRATION_PAIRS and settings.workload == "large-output"
        doc = json.loads(path.read_text())
        doc["cells"]["large-output|closed:16"] = _cell(settings, "closed:16")
        path.write_text(json.dumps(doc, default=str))

    monkeypatch.setattr(_days, "calibrate", fake_calibrate)
    plan = _days.plan_day(day, "batching", repository=tmp_path, calibration=path)
    assert [load for loads in calls for load in loads] == measured
    assert plan.settings.pairs >= _days.MIN_SESSION_PAIRS  # never below the week's floor
    again: list[tuple[str, ...]] = []
    monkeypatch.setattr(_days, "calibrate", lambda *a, **k: again.append(k["settings"].loads))
    _days.plan_day(day, "batching", repository=tmp_path, calibration=path)
    assert again == []  # once measured this way, the next week reuses it


def test_a_small_calibration_does_not_shorten_the_session_below_min_pairs() -> None:
    """A 12-pair cell whose sd says 12 pairs would do still gets min_pairs (16), within the
    budget; without min_pairs the calibration's own pairs are the floor."""
    cal = {"cells": {"digits|closed:32": {"deltas": {
        "throughput_rps": {"delta": 0.005, "sd_d": 0.01, "n_pairs": 12}}}}}
    settings = CompareSettings(pairs=24, loads=("closed:32",))
    assert plan_pairs(settings, cal, max_pairs=24).settings.pairs == 12
    plan = plan_pairs(settings, cal, max_pairs=24, min_pairs=16)
    assert plan.settings.pairs == 16 and plan.reachable
    assert plan_pairs(settings, cal, max_pairs=14, min_pairs=16).settings.pairs == 14


def test_a_gate_that_cannot_act_on_a_load_does_not_make_it_measured_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Friday's digits session allows overload (for its open loop); at closed:32 under wrk,
    which keeps no windows, that changes nothing, so Monday's cell serves Friday and the
    other way round. At open:2500 it changes what counts as valid: another procedure."""
    import json
    from optkit.lab.week._days import day_settings, procedure
    monkeypatch.delenv("OPTKIT_QUICK", raising=False)  # make test sets it: real days here
    mon = day_settings(quick=False, pairs=16, warmup_s=1.0, duration_s=2.0, loads=["closed:32"],
                       seed=0, engine="wrk")
    fri = day_settings(quick=False, pairs=16, warmup_s=1.0, duration_s=2.0,
                       loads=["closed:32", "open:2500"], seed=5, engine="wrk",
                       gates={"allow_overload": True})
    stored = json.loads(json.dumps(fri.to_dict(), default=str))  # as the calibration file has it
    assert procedure(stored, "closed:32") == procedure(mon, "closed:32")
    assert procedure(stored, "open:2500") != procedure(mon, "open:2500")
    builtin = dataclasses_replace(mon, engine="builtin")  # windows: the stability gate acts
    assert procedure(dataclasses_replace(fri, engine="builtin"), "closed:32") != \
        procedure(builtin, "closed:32")
    assert procedure(dataclasses_replace(mon, warmup_s=0.5), "closed:32") != \
        procedure(mon, "closed:32")


def dataclasses_replace(settings, **changes):  # noqa: D103
    import dataclasses
    return dataclasses.replace(settings, **changes)


def test_a_notebooks_relative_repository_is_read_from_its_folder(tmp_path, monkeypatch):
    """``"../build/models"`` in a notebook (cwd notebooks/) is the project's build/models, not
    a folder beside the project; ``optkit week`` passes the project as the root."""
    from optkit.lab.week import _days

    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "experiments").mkdir()
    built = []
    monkeypatch.setattr(_days, "build_repository", lambda repo: built.append(repo))
    monkeypatch.chdir(project / "notebooks")
    assert _days.ensure_repository("../build/models") == (project / "build" / "models").resolve()
    assert _days.ensure_repository("build/models", project) == (project / "build" / "models").resolve()
    assert built == [(project / "build" / "models").resolve()] * 2
