"""The browser check of the HTML reports (optkit/lab/week/_browser_check.py) tells a good report from a
bad one: pages built from the real pieces (the headline table ``week.headline`` renders, a
figure PNG drawn by matplotlib) and from the faults issue #13 found (a figure as
``<Figure size ...>`` text, a stderr block, an image that does not load, the raw table only),
rendered in headless Chromium. The real reports are checked in tests/test_compare.py (Monday,
through ``optkit week``) and tests/test_report.py (the three final reports)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from optkit import CompareSettings, ServiceConfig
from optkit.lab.week import ReportCheck, check_report_folder
from optkit.lab import Comparison
from optkit.lab._simulate import simulate_trials
from optkit.lab.week import headline
from optkit.lab.stats import DEFAULT_DELTAS, analyse
from optkit.lab.week.report import write_index
from test_summary import week_summary_frame

DAY_REPORT = "01-connection-pooling.html"


def _comparison() -> Comparison:
    trials = simulate_trials(8, effect=0.3, seed=5)
    return Comparison(ServiceConfig(name="baseline"), ServiceConfig(name="pooling"),
                      CompareSettings(pairs=8), trials, {"closed:32": analyse(trials)},
                      pd.DataFrame(), dict(DEFAULT_DELTAS), "defaults", 10.0)


def _figure_png() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _page(*parts: str) -> str:
    return "<!doctype html><html><head><meta charset='utf-8'></head><body>" + "".join(parts) \
        + "</body></html>"


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: a good day report, a bad one, and the run's index page as ``optkit
    week`` writes it for a whole week (no headline expected)."""
    run = tmp_path_factory.mktemp("run")
    cmp = _comparison()
    table = headline(cmp).to_html()
    good, bad = run / "good" / DAY_REPORT, run / "bad" / DAY_REPORT
    for path in (good, bad):
        path.parent.mkdir()
    good.write_text(_page("<h2>Verdicts</h2>", table,
                          f'<img src="data:image/png;base64,{_figure_png()}">',
                          '<div data-mime-type="text/plain"><pre>done</pre></div>'))
    bad.write_text(_page(cmp.verdict_table().to_html(),
                         '<img src="data:image/png;base64,bm90IGEgcG5n">',
                         '<img src="figures/missing.png">',
                         '<div data-mime-type="application/vnd.jupyter.stderr">'
                         '<pre>IProgress not found</pre></div>',
                         '<div data-mime-type="text/plain">'
                         '<pre>&lt;Figure size 450x450 with 1 Axes&gt;</pre></div>',
                         '<table style="width:1500px"><tr><td>too wide</td></tr></table>'))
    write_index(run, week_summary_frame())
    return run


@pytest.fixture(scope="module")
def checked(pages: Path, browser_check: Any) -> dict[str, ReportCheck]:
    results = browser_check(sorted(pages.rglob("*.html")))
    return {str(r.path.relative_to(pages.resolve())): r for r in results}


def test_a_good_day_report_passes(checked: dict[str, ReportCheck]) -> None:
    good = checked[f"good/{DAY_REPORT}"]
    assert (good.images_total, good.images_loaded, good.stderr_blocks) == (1, 1, 0)
    assert good.headline is True and good.ok, good.line()


def test_every_fault_of_a_bad_report_is_found(checked: dict[str, ReportCheck]) -> None:
    bad = checked[f"bad/{DAY_REPORT}"]
    assert (bad.images_total, bad.images_loaded) == (2, 0)
    assert bad.stderr_blocks == 1 and bad.figure_placeholders == 1 and bad.headline is False
    assert bad.overflow_px >= 250 and "past the right edge of a 1200 px window" in bad.line()
    assert not bad.ok and len(bad.problems) == 5, bad.problems


def test_a_page_that_is_not_a_day_report_needs_no_headline(
        checked: dict[str, ReportCheck]) -> None:
    index = checked["index.html"]
    assert index.headline is None and index.images_total == 0 and index.ok, index.line()


def test_the_index_of_a_whole_week_fits_a_laptop_screen(checked: dict[str, ReportCheck]) -> None:
    """The week's summary (15 columns in summary.csv, 14 of them verdicts) as index.html
    shows it, a row per day and load: nothing runs past a 1200 px window (issue #32)."""
    assert checked["index.html"].overflow_px == 0, checked["index.html"].line()


def test_the_command_prints_a_line_per_report_and_saves_screenshots(
        pages: Path, checked: dict[str, ReportCheck], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`optkit check-reports`: exit 1 when a report fails, 0 when all pass, 2 for no folder
    (and 2, saying why, where the browser is missing; ``checked`` skips this test then)."""
    assert check_report_folder(pages, screenshots=tmp_path) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "2 of 3 report(s) passed"
    assert any(line.startswith(f"FAIL bad/{DAY_REPORT}: images 0/2 loaded") for line in out)
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert shots == ["bad__01-connection-pooling.png", "good__01-connection-pooling.png",
                     "index.png"]
    assert all((tmp_path / s).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in shots)
    assert check_report_folder(pages / "good") == 0
    assert check_report_folder(pages / "missing") == 2


# Faults the check found in a quick week on a loaded machine (every trial of a session invalid):


def test_a_session_without_a_verdict_still_has_a_headline_and_a_key_figure_line() -> None:
    """No verdict: the headline says so in a row (not an empty table), and the key-figure cell
    shows a line instead of failing the day with StopIteration."""
    from optkit.lab.week import key_figure

    cmp = _comparison()
    cmp.verdicts["closed:32"] = []
    frame = headline(cmp).data
    assert list(frame["verdict"]) == ["no verdict: fewer than 2 valid pairs (see the log above)"]
    assert {"metric", "change", "95 % CI", "verdict"} <= set(frame.columns)
    assert "no verdict" in key_figure({"paired-throughput_rps-closed-32": object()}).data
    assert key_figure(_comparison().figures()) is not None


def test_a_flat_load_timeline_draws_without_a_warning() -> None:
    """One latency value (or none) on a log axis made matplotlib warn into Thursday's report."""
    import warnings

    from optkit import plotting

    requests = pd.DataFrame({"arm": ["A", "A"], "t_s": [0.1, 0.2], "latency_ms": [5.0, 5.0]})
    none = pd.DataFrame(columns=["arm", "t_s", "latency_ms"])  # week.load_timeline, no valid trial
    events = pd.DataFrame(columns=["arm", "start_s", "end_s", "model", "action"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for frame in (requests, none):
            fig = plotting.load_timeline(frame, events, slo_ms=10.0)
            fig.canvas.draw()
    assert fig.axes[0].get_ylim()[0] < fig.axes[0].get_ylim()[1]
