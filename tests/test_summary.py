"""What a week found and where its reports are (optkit/lab/week/_summary.py): the index's
table a row per day and load, the last screen of ``optkit week``, and the line each day
notebook opens with."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from optkit.lab.week import latest_report, summary_rows, week_summary

# summary.csv as a week of 2026-12-05 wrote it: 15 columns, one per headline metric and load
SUMMARY_CSV = """\
day,title,compare,seconds,status,throughput_rps @ closed:32,p99_ms @ closed:32,throughput_rps @ closed:1,p99_ms @ closed:1,throughput_rps @ large-output closed:16,p99_ms @ large-output closed:16,throughput_rps @ closed:8,p99_ms @ closed:8,throughput_rps @ open:2500,p99_ms @ open:2500
mon,Connection pooling,pooling vs baseline,111.8,ok,"+59.7 % [+44.1, +73.9] improved","-31.9 % [-39.6, -22.9] improved",,,,,,,,
tue,Request batching,batching vs pooling,235.8,ok,"+122.0 % [+97.9, +148.1] improved","-60.5 % [-64.9, -54.7] improved","-13.0 % [-25.4, +2.1] no change detected","+6.8 % [-1.3, +14.8] no change detected",,,,,,
wed,Response streaming,streaming vs batching,274.2,ok,"+3.8 % [-7.2, +16.1] no change detected","-10.9 % [-20.5, +2.9] no change detected",,,"+13.4 % [+5.2, +23.1] within noise","+1.9 % [-9.6, +10.2] no change detected",,,,
thu,Async model loading,loading vs streaming,167.1,ok,,,,,,,"+76.8 % [+59.4, +100.0] improved","+52.0 % [+31.2, +74.8] regressed",,
fri,Integration,integrated vs baseline,385.7,ok,"+288.4 % [+272.1, +310.4] improved","-76.5 % [-78.6, -74.2] improved",,,"+1.3 % [-7.6, +10.4] no change detected","+18.2 % [+7.9, +38.3] regressed",,,"+6.4 % [+2.3, +13.2] within noise","-96.8 % [-98.0, -95.2] improved"
"""

TARGETS = [
    {"target": "throughput >= 2,500 req/s (all layers, closed:32)", "measured": "9,863.6 req/s",
     "ci": "[9,425.3, 10,302.0]", "baseline": "2,555.5 req/s", "status": "met"},
    {"target": "memory < 50 KB per request (all layers, closed:32)", "measured": "59.0 KB",
     "ci": "[58.8, 59.3]", "baseline": "42.7 KB", "status": "not met"},
]


def week_summary_frame() -> pd.DataFrame:
    return pd.read_csv(io.StringIO(SUMMARY_CSV))


def test_a_row_per_day_and_load_with_one_column_per_headline_metric() -> None:
    """14 verdict columns become 9 rows of 7 columns; a day's name only on its first row."""
    rows = summary_rows(week_summary_frame())
    assert list(rows.columns) == ["day", "compares", "time", "status", "at", "throughput",
                                  "p99"]
    assert len(rows) == 9
    assert list(rows["day"]) == ["mon", "tue", "", "wed", "", "thu", "fri", "", ""]
    fri = rows.iloc[6:]
    assert list(fri["at"]) == ["closed:32", "large-output closed:16", "open:2500"]
    assert fri.iloc[2]["p99"] == "-96.8 % [-98.0, -95.2] improved"
    assert rows.iloc[0]["time"] == "112 s" and rows.iloc[0]["status"] == "ok"


def test_a_failed_day_or_report_keeps_a_row_with_its_error() -> None:
    """A day with no results and a final report that failed each show their error."""
    frame = pd.DataFrame([{"day": "mon", "compare": "pooling vs baseline", "seconds": 3.0,
                           "status": "failed", "error": "PapermillExecutionError: boom"},
                          {"day": "report:sprint-summary", "status": "failed",
                           "error": "ValueError: no days"}])
    rows = summary_rows(frame)
    assert list(rows["status"]) == ["failed: PapermillExecutionError: boom",
                                    "failed: ValueError: no days"]
    assert list(rows["at"]) == ["", ""]
    screen = week_summary(frame, "/nonexistent/run")
    assert "mon: failed: PapermillExecutionError: boom" in screen
    assert "report:sprint-summary: failed: ValueError: no days" in screen


def test_the_last_screen_of_a_week(tmp_path: Path) -> None:
    """Verdicts without their CIs, the seed targets as measured, the run folder and the
    index; every line fits a wide terminal (120 columns)."""
    run = tmp_path / "week-20261205-204005"
    (run / "fri").mkdir(parents=True)
    (run / "fri" / "results.json").write_text(json.dumps({"targets": TARGETS}))
    (run / "index.html").write_text("<html></html>")
    summary = week_summary_frame()
    summary.attrs["run_dir"] = str(run)
    screen = week_summary(summary)
    lines = screen.splitlines()
    assert lines[0].split() == ["day", "compares", "time", "at", "throughput", "p99"]
    assert any(line.startswith("mon  pooling vs baseline") and "+59.7 % improved" in line
               for line in lines)
    assert "[+44.1, +73.9]" not in screen  # the CIs are in the reports
    assert "  met      throughput >= 2,500 req/s (all layers, closed:32): 9,863.6 req/s " \
           "[9,425.3, 10,302.0] (baseline 2,555.5 req/s)" in lines
    assert any(line.startswith("  not met  memory < 50 KB") for line in lines)
    assert lines[-2] == f"Run folder: {run}/"
    assert lines[-1].startswith(f"Reports:    {run / 'index.html'}")
    assert max(len(line) for line in lines[:-2]) <= 120, max(lines[:-2], key=len)


def test_a_week_without_friday_says_where_its_reports_are(tmp_path: Path) -> None:
    summary = week_summary_frame().iloc[:1]
    screen = week_summary(summary, tmp_path)
    assert "Seed targets" not in screen and screen.splitlines()[-1] == f"Run folder: {tmp_path}/"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder, the working directory in its notebooks/ (as a kernel's is)."""
    for folder in ("experiments", "notebooks", "runs"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    return tmp_path


def test_no_report_yet_says_how_to_make_one(project: Path) -> None:
    line = latest_report("tue").data
    assert line.startswith("No executed report of Request batching (tue) yet: `make week`")
    assert "optkit week --days tue" in line


def test_the_newest_report_of_the_day_is_named_and_linked(project: Path) -> None:
    """The newest run's executed copy (its HTML), its date and kind, and the week's index,
    linked relative to the notebook's folder."""
    for name, stamp, provisional in (("week-20261201-090000", 1_000_000, False),
                                     ("week-20261202-090000", 2_000_000, True)):
        day = project / "runs" / name / "mon"
        day.mkdir(parents=True)
        for suffix in (".ipynb", ".html"):
            path = day / f"01-connection-pooling{suffix}"
            path.write_text("{}")
            os.utime(path, (stamp, stamp))
        (day / "results.json").write_text(json.dumps({"provisional": provisional}))
        (day.parent / "index.html").write_text("")
    line = latest_report("mon").data
    assert line.startswith("Latest executed report of Connection pooling (mon): "
                           "[runs/week-20261202-090000/mon/01-connection-pooling.html]"
                           "(../runs/week-20261202-090000/mon/01-connection-pooling.html)")
    assert "quick run, provisional" in line
    assert "its week: [index.html](../runs/week-20261202-090000/index.html)" in line


def test_a_report_being_executed_says_it_is_the_report(project: Path) -> None:
    """Under optkit week, out_dir holds the copy papermill is writing: the line says so."""
    day = project / "runs" / "week-20261203-090000" / "wed"
    day.mkdir(parents=True)
    copy = day / "03-response-streaming.ipynb"
    copy.write_text(json.dumps({"metadata": {"papermill": {"start_time": "2026-12-03T09:00",
                                                           "end_time": None}}}))
    line = latest_report("wed", out_dir=day).data
    assert line == ("This is the executed report of Response streaming (wed) in the run "
                    "`week-20261203-090000`; every report of the run is linked from "
                    "[index.html](../index.html).")
    copy.write_text(json.dumps({"metadata": {"papermill": {"start_time": "2026-12-03T09:00",
                                                           "end_time": "2026-12-03T09:05"}}}))
    assert latest_report("wed", out_dir=day).data.startswith("Latest executed report")


def test_an_unknown_day_is_refused(project: Path) -> None:
    with pytest.raises(KeyError, match="sat"):
        latest_report("sat")
