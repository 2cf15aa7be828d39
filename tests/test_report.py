"""The week's roll-up, Friday's target table, the index page and the three final reports,
built from recorded results (sessions simulated with known effects, written as the days write
them) — so every number a report shows can be checked against what was put in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from optkit import CompareSettings, ServiceConfig, plotting
from optkit.lab import Comparison
from optkit.lab.week.report import (rollup, run_reports, target_table, waterfall_steps, write_index,
                            next_steps, validity_table)
from optkit.lab._simulate import simulate_trials
from optkit.lab.week import DAYS, record_day
from optkit.lab.stats import DEFAULT_DELTAS, analyse

#: (day, effect on log throughput) of a simulated week: Wednesday buys nothing.
WEEK = (("mon", 0.25), ("tue", 0.60), ("wed", 0.0), ("thu", 0.10), ("fri", 0.90))


def _session(day: str, effect: float, *, loads: tuple[str, ...] = ("closed:32",),
             throughput: float = 1900.0, seed: int = 0) -> Comparison:
    frames = []
    for k, load in enumerate(loads):
        frames.append(simulate_trials(12, effect=effect, load=load, throughput_rps=throughput,
                                      mem_per_client_kb=75.0, mem_effect=-0.6 * (effect > 0.5),
                                      p99_effect=-effect, seed=seed + k))
    trials = pd.concat(frames, ignore_index=True)
    verdicts = {load: analyse(trials[trials["load"] == load]) for load in loads}
    a, b = DAYS[day].a, DAYS[day].b
    return Comparison(ServiceConfig(name=a), ServiceConfig(name=b),
                      CompareSettings(pairs=12, loads=loads), trials, verdicts,
                      pd.DataFrame([{"pair": 0, "arm": "A", "load": loads[0]}]),
                      dict(DEFAULT_DELTAS), "defaults", 30.0)


@pytest.fixture(scope="module")
def week_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with every day recorded the way the notebooks record them."""
    run = tmp_path_factory.mktemp("week")
    for i, (day, effect) in enumerate(WEEK):
        loads = ("closed:32", "open:2500") if day == "fri" else ("closed:32",)
        cmp = _session(day, effect, loads=loads, seed=10 * i)
        extra = {}
        if day == "fri":
            extra["targets"] = target_table(cmp).to_dict(orient="records")
        record_day(cmp, day=day, out_dir=run / day, extra=extra)
    return run


def test_rollup_reads_every_day_and_chains_the_gains(week_dir: Path) -> None:
    """Each day's verdict comes back from results.json; the chain multiplies the day gains."""
    table = rollup(week_dir)
    assert list(dict.fromkeys(table["day"])) == [d for d, _ in WEEK]
    thr = table[(table["metric"] == "throughput_rps") & (table["load"] == "closed:32")]
    recorded = {r.day: r.change_pct for r in thr.itertuples()}
    steps = waterfall_steps(table)
    chained = 1.0
    for day in ("mon", "tue", "wed", "thu"):
        chained *= 1 + recorded[day] / 100
        row = steps[steps["day"] == day].iloc[0]
        assert row["cumulative_pct"] == pytest.approx(100 * (chained - 1))
    fri = steps[steps["day"] == "fri"].iloc[0]
    assert fri["cumulative_pct"] == pytest.approx(recorded["fri"])  # measured, not chained
    assert steps.set_index("day").loc["tue", "verdict"] == "improved"
    assert steps.set_index("day").loc["wed", "verdict"] != "improved"


def test_waterfall_says_when_a_day_did_not_measure(week_dir: Path) -> None:
    """A day without that load is kept as 'not measured' instead of silently vanishing."""
    steps = waterfall_steps(rollup(week_dir), load="open:2500")
    assert steps.set_index("day").loc["mon", "verdict"] == "not measured"
    assert steps.set_index("day").loc["fri", "measured"]
    fig = plotting.waterfall(steps)
    assert len(fig.axes) == 1


def test_target_table_judges_each_target_by_its_interval() -> None:
    """Level targets need the whole CI on the right side; the gain target needs mean and floor."""
    cmp = _session("fri", 0.9, loads=("closed:32", "open:2500"))
    table = target_table(cmp).set_index("target")
    gain = table.loc[table.index.str.startswith("throughput gain")].iloc[0]
    v = cmp.verdict("throughput_rps", "closed:32")
    assert gain["status"] == ("met" if v.change_pct >= 50 and v.ci_low_pct > 35 else "not met")
    level = table.loc[table.index.str.startswith("throughput >=")].iloc[0]
    b = cmp.trials[(cmp.trials["arm"] == "B") & (cmp.trials["load"] == "closed:32")]
    assert float(level["measured"].split()[0].replace(",", "")) == pytest.approx(
        b["throughput_rps"].mean(), rel=1e-3)
    small = _session("fri", 0.02, throughput=1000.0, loads=("closed:32",))
    small_table = target_table(small).set_index("target")
    assert (small_table["status"] != "met").loc[small_table.index.str.startswith("throughput")].all()
    assert "not measured" in set(small_table["status"])  # no open:2500 in that session


def test_the_memory_target_is_per_client_at_closed_32() -> None:
    """The seed's "< 50 KB per request" target reads memory per client (held ÷ 32 clients)."""
    cmp = _session("fri", 0.9, loads=("closed:32", "open:2500"))
    table = target_table(cmp).set_index("target")
    row = table.loc[table.index.str.startswith("memory < 50 KB per client")].iloc[0]
    b = cmp.trials[(cmp.trials["arm"] == "B") & (cmp.trials["load"] == "closed:32")]
    assert row["measured"] == f"{b['mem_per_client_kb'].mean():,.1f} KB"
    assert {v.metric for v in cmp.verdicts["open:2500"]} >= {"mem_held_mb"}
    assert "mem_per_client_kb" not in {v.metric for v in cmp.verdicts["open:2500"]}


def test_rollup_leaves_out_verdicts_on_memory_per_request_in_flight(tmp_path: Path) -> None:
    """An earlier run's results.json judged memory ÷ requests in flight: read, but not rolled up."""
    verdict = {"load": "open:2500", "change_pct": 884.0, "ci_low_pct": 700.0,
               "ci_high_pct": 1000.0, "p_adjusted": 0.001, "verdict": "regressed", "n_pairs": 12}
    (tmp_path / "fri").mkdir()
    (tmp_path / "fri" / "results.json").write_text(json.dumps({"title": "fri", "verdicts": [
        {**verdict, "metric": "mem_per_request_kb"},
        {**verdict, "metric": "throughput_rps", "change_pct": 5.0, "verdict": "improved"}]}))
    assert list(rollup(tmp_path)["metric"]) == ["throughput_rps"]


def test_an_open_loop_target_counts_only_at_the_load_served() -> None:
    """p99 < 10 ms at open:2500 is judged only where arm B answered >= 98 % of the offered
    rate in every trial and dropped <= 1 % of it; otherwise the table says what was served."""
    def fri(achieved: float, dropped: int) -> pd.Series:
        cmp = _session("fri", 0.9, loads=("closed:32", "open:2500"))
        t = cmp.trials
        open_rows = t["load"] == "open:2500"
        t.loc[open_rows, "p99_ms"] = 4.0  # well inside the bound, however it was served
        t.loc[open_rows, ["offered_rps", "achieved_fraction", "dropped"]] = [2500.0, achieved,
                                                                             dropped]
        table = target_table(cmp).set_index("target")
        return table.loc[table.index.str.startswith("p99 < 10 ms")].iloc[0]
    assert fri(0.995, 0)["status"] == "met"
    short = fri(0.76, 0)
    assert short["status"] == "not met (load not served)"
    assert "served 76.0 % of 2,500 req/s" in short["measured"]
    assert "dropped 2.0 %" in fri(0.99, 100)["measured"]  # 100 of 2,500 x 2 s offered


def test_next_steps_and_validity_come_from_the_record(week_dir: Path) -> None:
    """Wednesday's missing gain is named; validity rows point at the trial folders."""
    steps = next_steps(week_dir)
    assert any(line.startswith("wed: no throughput gain") for line in steps)
    validity = validity_table(week_dir)
    assert set(validity["day"]) == {d for d, _ in WEEK}
    assert all(Path(f).is_dir() for f in validity["folder"])


def test_index_links_every_report(week_dir: Path) -> None:
    """index.html links each day's report that exists and carries the summary table."""
    for day, cls in DAYS.items():
        (week_dir / day / Path(cls.notebook).with_suffix(".html").name).write_text("<html></html>")
    summary = pd.DataFrame([{"day": d, "status": "ok"} for d in DAYS])
    page = write_index(week_dir, summary).read_text()
    for day, cls in DAYS.items():
        assert f'href="{day}/{Path(cls.notebook).with_suffix(".html").name}"' in page
    assert "<table" in page and "Daily reports" in page


@pytest.fixture(scope="module")
def final_reports(week_dir: Path) -> dict[str, str]:
    """The three report notebooks executed over the recorded week, once (name -> status)."""
    return run_reports(week_dir)


# No server and no load (papermill over recorded results): not `slow`, so make test runs them
# beside the other unit tests (xdist) instead of alone in the serial run.
def test_final_reports_are_generated_with_figures(week_dir: Path,
                                                  final_reports: dict[str, str]) -> None:
    """The three report notebooks run over the recorded week; HTML (figures inline, no code)
    and Markdown twins are written, and the numbers in them are the recorded ones."""
    status = final_reports
    assert status == {name: "ok" for name in status}, status
    out = week_dir / "reports"
    summary = (out / "sprint-summary.html").read_text()
    assert "data:image/png;base64" in summary  # the waterfall, drawn inline
    assert "&lt;Figure size" not in summary and "<Figure size" not in summary
    assert "def " not in summary and "import " not in summary  # code hidden
    fri = json.loads((week_dir / "fri" / "results.json").read_text())
    for target in fri["targets"]:
        assert target["target"].split(" (")[0].replace(">", "&gt;").replace("<", "&lt;") in summary
    performance = (out / "performance-report.md").read_text()
    mon = rollup(week_dir).query("day == 'mon' and metric == 'throughput_rps'").iloc[0]
    assert f"{mon.change_pct:+.1f} %" in performance
    guide = (out / "deployment-guide.md").read_text()
    assert "optkit serve gateway" in guide and "loading.mode: sync" in guide


def test_final_reports_read_well_in_a_browser(week_dir: Path, final_reports: dict[str, str],
                                              browser_check: Any) -> None:
    """The three final HTML reports rendered in headless Chromium: every image loaded (the
    summary draws at least one) and no stderr block (optkit/lab/week/_browser_check.py)."""
    from optkit.lab.week._browser_check import failures

    pages = sorted((week_dir / "reports").glob("*.html"))
    assert len(pages) == len(final_reports) == 3
    results = browser_check(pages)
    assert all(r.ok for r in results), failures(results)
    assert next(r for r in results if r.path.name == "sprint-summary.html").images_total >= 1


def test_trial_folders_name_their_pair_and_arm(tmp_path: Path) -> None:
    """A trial does not know its pair or arm; the session's folder name does, and the
    session readers take them from there (load events and timelines of one pair)."""
    from optkit.lab.week._sessions import _trial_doc

    folder = tmp_path / "closed-8-p03-B-1"
    folder.mkdir()
    (folder / "trial.json").write_text(json.dumps({"load": "closed:8", "pair": None,
                                                   "arm": None, "events": []}))
    doc = _trial_doc(folder)
    assert (doc["pair"], doc["arm"], doc["attempt"], doc["load"]) == (3, "B", 1, "closed:8")


def test_a_regression_is_explained_only_by_what_its_day_measured(tmp_path: Path) -> None:
    """next_steps marks a regression explained when its day recorded a reason for that
    (workload, load, metric); any other stays on the list to find out."""
    verdict = {"workload": "digits", "change_pct": 26.0, "ci_low_pct": 15.0, "ci_high_pct": 36.0,
               "p_adjusted": 0.04, "verdict": "regressed", "n_pairs": 16}
    (tmp_path / "thu").mkdir()
    (tmp_path / "thu" / "results.json").write_text(json.dumps({
        "title": "thu", "b": "loading", "verdicts": [
            {**verdict, "load": "closed:8", "metric": "p99_ms"},
            {**verdict, "load": "closed:8", "metric": "p50_ms"}],
        "explained": [{"load": "closed:8", "metric": "p99_ms", "why": "only while a model loads"}]}))
    steps = [s for s in next_steps(tmp_path) if s.startswith("thu:")]
    assert any("p99_ms regressed +26.0 % at closed:8" in s and "explained: only while a model "
               "loads" in s for s in steps)
    assert any("p50_ms regressed" in s and "find out why" in s for s in steps)


def test_load_costs_are_explained_only_when_the_arm_is_as_fast_between_loads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """explain_load_costs gives a reason for a latency regression only where arm B's
    percentile outside loads is within the band of arm A's."""
    from types import SimpleNamespace

    from optkit.lab.week import _sessions

    verdicts = pd.DataFrame([
        {"load": "closed:8", "metric": "p99_ms", "verdict": "regressed", "delta": 0.05},
        {"load": "closed:8", "metric": "p50_ms", "verdict": "regressed", "delta": 0.05},
        {"load": "closed:8", "metric": "throughput_rps", "verdict": "improved", "delta": 0.02}])
    cmp = SimpleNamespace(verdict_table=lambda: verdicts, a=SimpleNamespace(name="streaming"),
                          b=SimpleNamespace(name="loading"))
    during = pd.DataFrame([
        {"load": "closed:8", "arm": "A", "share_during": 0.0, "p50_during_ms": 1044.0,
         "p50_outside_ms": 1.00, "p99_during_ms": 1050.0, "p99_outside_ms": 2.10,
         "p99_ratio": 500.0, "loaders_cpu_percent": 0.0, "server_cpu_percent": 80.0},
        {"load": "closed:8", "arm": "B", "share_during": 0.75, "p50_during_ms": 1.30,
         "p50_outside_ms": 1.20, "p99_during_ms": 3.10, "p99_outside_ms": 2.15,
         "p99_ratio": 1.44, "loaders_cpu_percent": 50.0, "server_cpu_percent": 32.0}])
    monkeypatch.setattr(_sessions, "during_loads", lambda _cmp: during)
    (only,) = _sessions.explain_load_costs(cmp)  # p50 outside: 1.20 vs 1.00, beyond 5 %
    assert (only["load"], only["metric"]) == ("closed:8", "p99_ms")
    assert "3.10 ms during loads, 2.15 ms between them" in only["why"]
    assert "50 % of a core" in only["why"] and "1,050 ms" in only["why"]
