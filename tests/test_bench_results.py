"""Summaries from raw records, validity gates, result files and the trial table (no servers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

import optkit.bench as bench
from optkit import BenchError
from optkit.bench import (BenchResult, ValidityGates, check_validity, load_run, percentiles_ms,
                          summarize, write_run)
from optkit.lab import ROW_COLUMNS, TrialResult, memory_held_mb, memory_per_client_kb
from optkit.bench._records import DROPPED, HTTP, OK, TIMEOUT

MS = 1_000_000
WS, WE = 1_000 * MS, 3_000 * MS  # a 2 s window


def records(rows: list[tuple[int, int, int, int, int, int]]) -> dict[str, np.ndarray]:
    """Columns from (scheduled, start, end, status, error, model) rows, times in ms."""
    a = np.asarray(rows, dtype=np.int64)
    return {"scheduled_ns": a[:, 0] * MS, "start_ns": a[:, 1] * MS,
            "first_byte_ns": np.where(a[:, 1] > 0, a[:, 1] * MS + MS // 2, 0),
            "end_ns": a[:, 2] * MS, "status": a[:, 3].astype(np.int16),
            "error_code": a[:, 4].astype(np.int8), "model": a[:, 5].astype(np.int16)}


def gen() -> dict:
    return {"window_start_ns": WS, "window_end_ns": WE, "cpu_percent": 10.0,
            "loop_lag_ms": {"p50": 0.0, "p99": 0.5, "max": 1.0},
            "schedule_lag_ms": {"p50": 0.0, "p99": 0.1, "max": 0.2}}


META = {"mode": "open", "load": "open:4", "models": ["a", "b"], "engine": "builtin"}


def known_run() -> dict:
    rows = [(500, 500, 510, 200, OK, 0)]  # warm-up: outside the window
    rows += [(1000 + 250 * i, 1000 + 250 * i, 1000 + 250 * i + 10, 200, OK, i % 2)
             for i in range(6)]                                   # on time, 10 ms
    rows += [(2500, 2505, 2600, 200, OK, 0)]                      # 5 ms late, 100 ms
    rows += [(2600, 2600, 2610, 503, HTTP, 1)]                    # an HTTP error
    rows += [(2700, 0, 2700, 0, DROPPED, 0)]                      # dropped at the cap
    rows += [(2800, 2800, 7800, 0, TIMEOUT, 0)]                   # a transport error
    return summarize(records(rows), gen(), meta=META, window_s=1.0)


def test_percentiles_use_observed_values() -> None:
    """Percentiles are inverted-CDF: always a latency that happened."""
    p = percentiles_ms(np.arange(1, 101, dtype=float))
    assert (p["p50"], p["p90"], p["p99"], p["max"]) == (50, 90, 99, 100)
    assert percentiles_ms(np.zeros(0))["p99"] is None


def test_percentile_curve_agrees_with_the_summary() -> None:
    """On the same records a curve's p50..p99.9 are the summary's: one method (inverted CDF)."""
    from optkit.lab.stats import percentile_curve

    lat = np.random.default_rng(0).permutation(np.arange(1, 1001))  # 1..1000 ms, shuffled
    raw = records([(1000 + i, 1000 + i, 1000 + i + int(ms), 200, OK, 0)
                   for i, ms in enumerate(lat)])
    s = summarize(raw, gen(), meta=META)
    _, curve = percentile_curve(BenchResult(s, raw).latencies_ms, [0.5, 0.9, 0.99, 0.999])
    summary = [s["p50_ms"], s["p90_ms"], s["p99_ms"], s["p999_ms"]]
    assert curve.tolist() == summary == [500, 900, 990, 999]  # 99.9/100 would give 1000


def test_summary_known_answer() -> None:
    """Counts, latency from the scheduled time, late sends, drops and error kinds add up."""
    s = known_run()
    assert s["requests"] == 10 and s["completed"] == 7
    assert s["throughput_rps"] == pytest.approx(7 / 2.0)
    assert s["max_ms"] == pytest.approx(100.0) and s["p50_ms"] == pytest.approx(10.0)
    assert s["late_sends"] == 1 and s["dropped"] == 1
    assert s["errors"] == {"http_503": 1, "dropped": 1, "timeout": 1}
    assert s["transport_errors"] == 1 and s["errors_total"] == 2
    assert s["per_model"]["b"] == {"requests": 4, "ok": 3, "p50_ms": 10.0, "p99_ms": 10.0}
    assert s["windows"]["throughput_rps"] == [4.0, 3.0]
    assert not s["valid"] and any("transport" in r for r in s["invalid_reasons"])


def test_retried_answers_are_counted_in_the_window() -> None:
    """Marked answers (optkit-retried) count when scheduled in the window; unrecorded is None."""
    rows = [(500, 500, 510, 200, OK, 0), (1000, 1000, 1010, 200, OK, 0),
            (1500, 1500, 1510, 503, HTTP, 1), (2000, 2000, 2010, 200, OK, 1)]
    raw = records(rows)
    raw["retried"] = np.array([1, 1, 1, 0], dtype=np.int8)  # the warm-up one is not counted
    s = summarize(raw, gen(), meta=META)
    assert s["retried"] == 2
    assert "retried      2 (answers marked optkit-retried" in bench.format_summary(s)
    raw.pop("retried")
    s = summarize(raw, gen(), meta=META)
    assert s["retried"] is None and "retried      n/a" in bench.format_summary(s)


def test_gates_flag_each_problem_by_name() -> None:
    """Each gate adds its own reason: errors, achieved rate, generator, stability."""
    s = {"mode": "open", "requests": 1000, "errors": {"http_500": 50, "reset": 2},
         "transport_errors": 2, "achieved_fraction": 0.9, "dropped": 3,
         "generator": {"saturation_reasons": ["generator CPU 95% of a core > 90%"]},
         "windows": {"throughput_rps": [100, 100, 150], "cv": 0.23}}
    reasons = " | ".join(check_validity(s))
    for word in ("transport", "HTTP errors", "achieved", "dropped", "CPU", "unstable"):
        assert word in reasons
    assert check_validity({"mode": "closed", "requests": 10, "errors": {}}) == []
    with pytest.raises(ValueError, match="max_error_rate"):
        ValidityGates(max_error_rate=2)


def test_run_files_round_trip(tmp_path: Path) -> None:
    """write_run then load_run gives back the same summary and records."""
    rows = [(1000, 1000, 1010, 200, OK, 0), (1500, 1501, 1530, 200, OK, 1)]
    raw = records(rows)
    summary = summarize(raw, gen(), meta=META)
    written = write_run(tmp_path / "run", BenchResult(summary, raw))
    loaded = load_run(tmp_path / "run")
    assert loaded.path == tmp_path / "run" and written.path == loaded.path
    assert loaded.summary == orjson.loads(orjson.dumps(summary))
    for name, column in raw.items():
        assert np.array_equal(loaded.records[name], column)
    assert loaded.latencies_ms.tolist() == [10.0, 30.0]
    assert loaded.service_ms.tolist() == [10.0, 29.0]
    assert list(loaded.frame()["model_name"]) == ["a", "b"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A run written by a newer schema version is refused, not misread."""
    (tmp_path / "summary.json").write_bytes(orjson.dumps({"schema_version": 99}))
    with pytest.raises(BenchError, match="schema_version"):
        load_run(tmp_path)


def test_memory_per_client_known_answer() -> None:
    """(load RSS - idle RSS) summed over processes, divided by the closed loop's clients, in KiB."""
    idle = {"model-server": 100 * 2**20, "gateway": 50 * 2**20}
    load = {"model-server": 101 * 2**20, "gateway": 51 * 2**20}
    assert memory_per_client_kb(idle, load, 8) == pytest.approx(2 * 1024 / 8)
    shrunk = {"model-server": 103 * 2**20, "gateway": 49 * 2**20}  # net growth 2 MiB, not 3
    assert memory_per_client_kb(idle, shrunk, 8) == pytest.approx(2 * 1024 / 8)
    assert memory_per_client_kb(idle, {"gateway": 40 * 2**20}, 8) is None  # no net growth
    assert memory_per_client_kb(idle, load, 0) is None


def test_memory_per_client_is_equal_when_memory_held_is_equal_but_in_flight_differs() -> None:
    """The defect of ÷ in-flight: at closed:32 two arms holding the same memory read the same."""
    idle = {"model-server": 100 * 2**20, "gateway": 50 * 2**20}
    load = {"model-server": 104 * 2**20, "gateway": 52 * 2**20}  # 6 MiB held by either arm
    in_flight = {"A": 30.0, "B": 3.0}  # the slow arm queues in the server, the fast one does not
    held_kb = 6 * 1024
    per_in_flight = {arm: held_kb / n for arm, n in in_flight.items()}
    assert per_in_flight["B"] / per_in_flight["A"] == pytest.approx(10)  # read as +900 % "worse"
    per_client = {arm: memory_per_client_kb(idle, load, 32) for arm in in_flight}
    assert per_client["A"] == per_client["B"] == pytest.approx(held_kb / 32)


def test_memory_held_is_peak_minus_idle_summed_over_tiers() -> None:
    """The open loop's figure: Σ (peak - idle) MB, each tier floored at a page, not ÷ in flight."""
    services = {"model-server": {"rss_idle_mb": 100.0, "rss_peak_mb": 112.0, "rss_load_mb": 110.0},
                "gateway": {"rss_idle_mb": 50.0, "rss_peak_mb": 49.0, "rss_load_mb": 49.0},
                "lost": {"rss_idle_mb": None, "rss_peak_mb": 70.0}}
    assert memory_held_mb(services) == pytest.approx(12.0 + 4096 / 2**20)
    assert memory_held_mb({}) is None


def test_trial_row_has_the_tidy_columns() -> None:
    """row() yields exactly the trial-table columns; pair/position/arm can be filled in."""
    result = TrialResult(label="baseline", load="open:4",
                         bench=BenchResult(known_run()), mem_held_mb=12.5,
                         valid=False, invalid_reasons=("a", "b"))
    row = result.row(pair=3, position=0, arm="A")
    assert tuple(row) == ROW_COLUMNS
    assert row["pair"] == 3 and row["arm"] == "A" and row["errors"] == 2
    assert row["invalid_reasons"] == "a; b" and row["valid"] is False
    with pytest.raises(ValueError, match="column"):
        result.row(colour="red")


def test_package_all_is_complete() -> None:
    """optkit.bench.__all__ lists every public name the package exposes."""
    public = {n for n in dir(bench) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(bench, n)).__name__ == "module"}
    assert set(bench.__all__) == public - modules
