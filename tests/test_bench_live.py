"""The generator against real stub servers on 127.0.0.1: known service time, stalls, bounds."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from optkit.bench import LoadSpec, StubServer, format_summary, load_run, run_bench, wrk_available
from optkit.bench._cli import main as cli_main

SERVICE_MS = 5.0


def test_closed_loop_rate_is_concurrency_over_service_time() -> None:
    """Closed loop with 8 connections on a 5 ms server: about 8 / 5 ms = 1,600 req/s."""
    with StubServer(service_ms=SERVICE_MS) as server:
        result = run_bench(server.url, LoadSpec.closed(8), warmup_s=0.3, duration_s=1.0)
    s = result.summary
    ideal = 8 / (SERVICE_MS / 1e3)
    assert 0.6 * ideal <= s["throughput_rps"] <= 1.05 * ideal
    assert SERVICE_MS <= s["p50_ms"] < 2.5 * SERVICE_MS
    assert s["errors"] == {} and s["late_sends"] == 0
    assert s["generator"]["cpu_percent"] < 90


def test_open_loop_latency_is_service_time_at_low_load() -> None:
    """Open loop at 100/s on a 5 ms server: p50 latency ~5 ms, achieved rate = offered."""
    with StubServer(service_ms=SERVICE_MS) as server:
        result = run_bench(server.url, LoadSpec.open(100), warmup_s=0.2, duration_s=1.0)
    s = result.summary
    assert SERVICE_MS <= s["p50_ms"] < 2.5 * SERVICE_MS
    assert s["achieved_fraction"] == pytest.approx(1.0, abs=0.03)
    assert s["requests"] == 100 and s["dropped"] == 0
    # Linux has timerfd, so the timetable must run on it, and wake ~25 µs late, not ~1 ms
    assert s["generator"]["precise_timer"] is sys.platform.startswith("linux")
    assert s["generator"]["schedule_lag_ms"]["p50"] < 1.0
    assert len(result.latencies_ms) == 100


def test_closed_loop_has_no_timetable() -> None:
    """A closed loop sends on answers, not on a timer: no precise timer, no schedule lag."""
    with StubServer(service_ms=1.0) as server:
        s = run_bench(server.url, LoadSpec.closed(2), warmup_s=0, duration_s=0.3).summary
    assert s["generator"]["precise_timer"] is False and s["generator"]["schedule_lag_ms"] is None


def test_resent_answers_are_counted(tmp_path: Path) -> None:
    """Answers marked optkit-retried: 1 are counted per request, in summary.json and printed."""
    with StubServer(service_ms=1.0, retried_every=4) as server:
        result = run_bench(server.url, LoadSpec.closed(4), warmup_s=0, duration_s=0.5,
                           out_dir=tmp_path / "run")
        marked = server.retried  # every 4th answer, the pre-run check request (1st) not one
    s = result.summary
    assert s["errors"] == {} and s["requests"] > 40
    assert int(result.records["retried"].sum()) == marked  # every marked answer recorded
    # the summary counts the measurement window: the few answers to requests in flight at
    # its end land after it, recorded but not summarized, and one of them may be marked
    after_window = len(result.records["retried"]) - s["requests"]
    assert 0 <= marked - s["retried"] <= after_window <= 4
    assert abs(s["retried"] - s["requests"] / 4) <= 1
    assert load_run(tmp_path / "run").summary["retried"] == s["retried"]
    assert f"retried      {s['retried']} (" in format_summary(s)


def test_stall_shows_in_open_loop_p99_and_late_sends_but_hides_from_closed_loop() -> None:
    """A 200 ms stall: open loop p99 and late sends show it; the closed loop's p99 does not."""
    # No warm-up, so the stall (at the 300th request) always lands inside the window.
    stall = dict(service_ms=2.0, stall_at_request=300, stall_ms=200.0)
    with StubServer(**stall) as server:
        opened = run_bench(server.url, LoadSpec.open(400, connections=8), warmup_s=0,
                           duration_s=1.5).summary
    with StubServer(**stall) as server:
        closed = run_bench(server.url, LoadSpec.closed(8), warmup_s=0, duration_s=1.5).summary
    assert opened["p99_ms"] > 100 and opened["late_sends"] > 20
    assert closed["max_ms"] > 150  # the stalled requests are there...
    assert closed["p99_ms"] < opened["p99_ms"] / 2  # ...but few: coordinated omission


def test_open_loop_drops_beyond_max_in_flight() -> None:
    """During a stall, requests beyond max_in_flight are dropped and counted, not queued."""
    with StubServer(stall_at_request=100, stall_ms=300.0) as server:
        s = run_bench(server.url, LoadSpec.open(500, connections=4, max_in_flight=20),
                      warmup_s=0.1, duration_s=1.0).summary
    assert s["dropped"] > 50 and s["errors"]["dropped"] == s["dropped"]
    assert not s["valid"] and any("dropped" in r for r in s["invalid_reasons"])


def test_runs_are_bounded_in_count_and_time() -> None:
    """max_requests stops a long run early; a dying server ends in errors, not a hang."""
    with StubServer() as server:
        started = time.monotonic()
        s = run_bench(server.url, LoadSpec.closed(2), warmup_s=0, duration_s=30,
                      max_requests=200).summary
        assert s["requests"] == 200 and time.monotonic() - started < 5
        assert s["generator"]["stopped_by_max_requests"]
    server = StubServer().start()
    threading.Timer(0.8, server.stop).start()
    started = time.monotonic()
    s = run_bench(server.url, LoadSpec.closed(2), warmup_s=0, duration_s=1.5, timeout_s=1.0).summary
    assert time.monotonic() - started < 6
    assert s["transport_errors"] > 0 and not s["valid"]


def test_the_window_never_opens_before_its_start_on_uvloop() -> None:
    """uvloop's millisecond timers wake early; a closed-loop send before the window's
    start would fall out of it (the row cap above then counted 198 of 200)."""
    import uvloop

    from optkit.bench._generator import _sleep_until

    async def early_wakes() -> int:
        early = 0
        for i in range(100):
            target = time.monotonic_ns() + 1_500_000 + 7_000 * i
            await _sleep_until(target)
            early += time.monotonic_ns() < target
        return early

    assert uvloop.run(early_wakes()) == 0


def test_cli_writes_a_run_that_load_run_reads(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """optkit bench --out prints the summary and leaves files load_run reads back."""
    with StubServer() as server:
        code = cli_main(["bench", "--target", server.url, "--workload", "catalog-zipf",
                         "--mode", "open", "--rate", "200", "--arrival", "poisson",
                         "--warmup", "0.2", "--duration", "1", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and "p99" in out and "late sends" in out and "retried      0 (" in out
    run = load_run(tmp_path / "run")
    assert run.summary["load"] == "open:200" and run.summary["mode"] == "open"
    assert set(run.summary["per_model"]) == {"digits-mlp-s", "digits-mlp-m", "digits-mlp-l",
                                             "digits-mlp-xl"}
    assert len(run.latencies_ms) == run.summary["completed"]


@pytest.mark.skipif(wrk_available() is None, reason="wrk is not installed")
def test_wrk_engine_agrees_with_builtin_on_a_known_server() -> None:
    """wrk and the builtin generator see the same 5 ms server: similar req/s and p50."""
    with StubServer(service_ms=SERVICE_MS) as server:
        wrk = run_bench(server.url, LoadSpec.closed(8, engine="wrk"), warmup_s=0, duration_s=1)
        own = run_bench(server.url, LoadSpec.closed(8), warmup_s=0, duration_s=1)
    assert wrk.summary["engine"] == "wrk" and wrk.records == {}
    assert wrk.summary["throughput_rps"] == pytest.approx(own.summary["throughput_rps"], rel=0.3)
    assert wrk.summary["p50_ms"] == pytest.approx(own.summary["p50_ms"], rel=0.3)


@pytest.mark.skipif(wrk_available() is None, reason="wrk is not installed")
def test_wrk_warm_up_of_part_of_a_second_is_cut_at_its_time() -> None:
    """wrk counts whole seconds; a 0.3 s warm-up is interrupted at 0.3 s, not run for 1 s:
    the server sees about 0.3 s of warm-up traffic on top of the 1 s window."""
    with StubServer(service_ms=SERVICE_MS) as server:
        result = run_bench(server.url, LoadSpec.closed(8, engine="wrk"), warmup_s=0.3,
                           duration_s=1)
        served = server.requests
    window = result.summary["requests"]
    assert result.summary["valid"], result.summary["invalid_reasons"]
    warm_up = served - window
    assert 0 < warm_up < 0.7 * window, (warm_up, window)  # a whole second would be ~= window
