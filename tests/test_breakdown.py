"""The breakdown: Triton statistics differenced over a trial's window, per arm, and drawn."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
import yaml

from optkit.bench import LoadSpec, StubServer
from optkit.bench._server_stats import StatsPoller
from optkit.lab import (BREAKDOWN_COLUMNS, breakdown_table, client_mean_ms, combine_tiers,
                        load_trial, plotting, run_trial, tier_means)
from optkit.service import launch_service


def _doc(*entries: tuple[str, int, int, int, int, int, int]) -> dict[str, Any]:
    """A Triton statistics answer: (name, count, success ns, queue, input, infer, output)."""
    def d(count: int, ns: int) -> dict[str, int]:
        return {"count": count, "ns": ns}
    return {"model_stats": [
        {"name": name, "version": "1", "inference_stats": {
            "success": d(n, total), "fail": d(0, 0), "queue": d(n, q),
            "compute_input": d(n, i), "compute_infer": d(n, m), "compute_output": d(n, o)}}
        for name, n, total, q, i, m, o in entries]}


def test_tier_means_differences_two_snapshots_per_request() -> None:
    """10 requests between the snapshots with 30/20/50/10 ms of parts are 3/2/5/1 ms each."""
    start = {"": _doc(("m", 5, 10**9, 1, 1, 1, 1))}
    end = {"": _doc(("m", 15, 10**9 + 150 * 10**6, 1 + 30 * 10**6, 1 + 20 * 10**6,
                     1 + 50 * 10**6, 1 + 10 * 10**6))}
    assert tier_means(start, end) == pytest.approx({
        "requests": 10, "server_ms": 15.0, "queue_ms": 3.0, "compute_input_ms": 2.0,
        "compute_infer_ms": 5.0, "compute_output_ms": 1.0})


def test_tier_means_adds_workers_present_in_both_snapshots_and_the_models_asked() -> None:
    """Workers' counters add up (one missing from a snapshot is left out); other models too."""
    zero = ("m", 0, 0, 0, 0, 0, 0)
    start = {"0": _doc(zero), "1": _doc(zero), "2": _doc(zero)}
    end = {"0": _doc(("m", 1, 4_000_000, 0, 0, 4_000_000, 0), ("other", 9, 9, 9, 9, 9, 9)),
           "1": _doc(("m", 3, 8_000_000, 0, 0, 8_000_000, 0))}
    got = tier_means(start, end, models=["m"])
    assert got is not None and got["requests"] == 4 and got["compute_infer_ms"] == 3.0


@pytest.mark.parametrize("end", [
    {"": {"error": "no such route"}},                     # not Triton's format
    {"": _doc(("m", 5, 0, 0, 0, 0, 0))},                  # no request in between
    {"": _doc(("m", 2, 0, 0, 0, 0, 0))},                  # counters went back: a restart
])
def test_tier_means_is_none_without_usable_statistics(end: dict[str, Any]) -> None:
    """An answer that is not Triton's, no request, or a counter going back: no means."""
    assert tier_means({"": _doc(("m", 5, 0, 0, 0, 0, 0))}, end) is None


def test_combine_tiers_nests_the_model_server_inside_the_gateway() -> None:
    """Queue, decode and encode add over tiers; the model is the server's; rest closes it."""
    gw = {"queue_ms": 0.5, "compute_input_ms": 0.2, "compute_infer_ms": 3.0,
          "compute_output_ms": 0.1}
    ms = {"queue_ms": 0.3, "compute_input_ms": 0.1, "compute_infer_ms": 1.0,
          "compute_output_ms": 0.2}
    both = combine_tiers(5.0, {"gateway": gw, "model-server": ms})
    assert both == pytest.approx({"mean_ms": 5.0, "queue_ms": 0.8, "compute_input_ms": 0.3,
                                  "compute_infer_ms": 1.0, "compute_output_ms": 0.3,
                                  "rest_ms": 2.6})
    assert tuple(both) == BREAKDOWN_COLUMNS
    alone = combine_tiers(5.0, {"gateway": gw, "model-server": None})  # third party behind
    assert alone is not None and alone["compute_infer_ms"] == 3.0
    assert alone["rest_ms"] == pytest.approx(1.2)
    assert combine_tiers(5.0, {"model-server": None}) is None
    assert combine_tiers(None, {"model-server": ms}) is None


def test_client_mean_counts_successes_answered_inside_the_span() -> None:
    """Only OK requests whose answer came within [start, end] count, latency from schedule."""
    records = {"scheduled_ns": np.array([0, 10, 20, 30]), "end_ns": np.array([5, 16, 27, 99]),
               "error_code": np.array([0, 0, 3, 0])}
    assert client_mean_ms(records, 5, 30) == (pytest.approx(5.5e-6), 2)
    assert client_mean_ms({}, 0, 1) == (None, 0)


def test_breakdown_table_takes_medians_of_valid_trials_per_load_and_arm() -> None:
    """Medians per (load, label) over valid, analysed trials; an arm without stats is NaN."""
    rows = [{"load": "closed:8", "label": "a", "pair": p, "valid": True, "mean_ms": m,
             "queue_ms": q, "compute_input_ms": 0.1, "compute_infer_ms": 1.0,
             "compute_output_ms": 0.1, "rest_ms": m - q - 1.2} for p, (m, q) in
            enumerate([(2.0, 0.1), (3.0, 0.2), (4.0, 0.9)])]
    rows.append({**rows[0], "mean_ms": 99.0, "valid": False})
    rows.append({"load": "closed:8", "label": "b", "pair": 0, "valid": True, "mean_ms": 7.0})
    table = breakdown_table(pd.DataFrame(rows))
    assert table.loc[("closed:8", "a"), "mean_ms"] == 3.0
    assert table.loc[("closed:8", "a"), "queue_ms"] == pytest.approx(0.2)
    assert table.loc[("closed:8", "a"), "trials"] == 3
    assert math.isnan(table.loc[("closed:8", "b"), "queue_ms"])
    assert table.loc[("closed:8", "b"), "mean_ms"] == 7.0
    # two sessions (a Comparison has .trials) stack: the arm in both pools its trials
    two = breakdown_table(SimpleNamespace(trials=pd.DataFrame(rows[:2])), pd.DataFrame(rows[2:]))
    assert two.loc[("closed:8", "a"), "trials"] == 3 and len(two) == 2
    old = breakdown_table(pd.DataFrame([{"load": "closed:8", "label": "x", "p99_ms": 1.0}]))
    assert old["queue_ms"].isna().all()  # a trials.csv from before the breakdown still reads


def test_breakdown_bars_draws_one_bar_per_arm() -> None:
    """One stacked bar per arm; an arm without statistics is its client mean, hatched."""
    table = pd.DataFrame(
        {"mean_ms": [3.0, 7.0], "queue_ms": [0.2, np.nan], "compute_input_ms": [0.1, np.nan],
         "compute_infer_ms": [1.0, np.nan], "compute_output_ms": [0.1, np.nan],
         "rest_ms": [1.6, np.nan], "trials": [3, 0]},
        index=pd.MultiIndex.from_tuples([("closed:8", "a"), ("closed:8", "b")],
                                        names=["load", "label"]))
    fig = plotting.breakdown_bars(table)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert len(ax.patches) == 6  # five parts of a, the one hatched bar of b


def test_a_server_without_statistics_gives_no_breakdown(tmp_path: Path) -> None:
    """The stub answers 404 to /v2/models/stats: the trial runs, its breakdown is None."""
    @contextlib.contextmanager
    def launch(*_: Any, **__: Any) -> Iterator[SimpleNamespace]:
        with StubServer(service_ms=1.0) as server:
            yield SimpleNamespace(url=server.url, model_server_url=server.url, gateway_url=None,
                                  pids={})
    result = run_trial({"name": "stub"}, repository=tmp_path, load=LoadSpec.closed(2),
                       workload="digits", warmup_s=0.2, duration_s=0.5, launcher=launch)
    assert result.breakdown is None and result.model_stats == {}
    row = result.row()
    assert row["queue_ms"] is None and row["mean_ms"] == result.bench.summary["mean_ms"]


def _check_sums(result: Any, *, tiers: set[str]) -> dict[str, Any]:
    b = result.breakdown
    assert b is not None, result.model_stats
    assert set(b["tiers"]) == tiers
    parts = [b[c] for c in BREAKDOWN_COLUMNS[1:-1]]
    assert all(p >= 0 for p in parts), b
    # the parts, measured by the servers, fit inside the client's mean (rest >= -10 %), and
    # with the rest they give it back within 10 %
    assert b["rest_ms"] >= -0.1 * b["mean_ms"], b
    assert sum(parts) + b["rest_ms"] == pytest.approx(b["mean_ms"], rel=0.10)
    # the two sides counted the same requests in the span (the snapshots line up with it)
    inner = b["tiers"]["gateway" if "gateway" in tiers else "model-server"]
    assert inner["requests"] == pytest.approx(b["client_requests"], rel=0.10), b
    return b


def test_breakdown_of_a_real_model_server_sums_to_the_client_mean(repository: Path,
                                                                   tmp_path: Path) -> None:
    """A real model server, batching, 8 clients: the parts fit the measured mean latency."""
    config = {"name": "batching", "batching": {"enabled": True},
              "loading": {"models": ["digits-sklearn"]}}
    result = run_trial(config, repository=repository, load=LoadSpec.closed(8),
                       workload={"models": ["digits-sklearn"]}, warmup_s=0.5, duration_s=2.0,
                       gateway=False, out_dir=tmp_path / "t")
    b = _check_sums(result, tiers={"model-server"})
    assert b["compute_infer_ms"] > 0 and b["queue_ms"] > 0
    again = load_trial(tmp_path / "t")
    assert again.breakdown == b and again.row() == result.row()
    assert set(again.model_stats["model-server"]) == {"start_ns", "end_ns", "start", "end"}


def test_breakdown_through_the_gateway_adds_both_tiers(repository: Path) -> None:
    """Gateway in front of the model server: both tiers' statistics enter the breakdown."""
    config = {"name": "pooled", "loading": {"models": ["digits-sklearn"]}}
    result = run_trial(config, repository=repository, load=LoadSpec.closed(4),
                       workload={"models": ["digits-sklearn"]}, warmup_s=0.5, duration_s=1.5)
    _check_sums(result, tiers={"gateway", "model-server"})


def test_two_workers_are_polled_each_on_its_own_connection(repository: Path,
                                                           tmp_path: Path) -> None:
    """--workers 2: the poller keeps one connection per worker, and the breakdown adds both."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(
        {"name": "2w", "batching": {"enabled": True}, "loading": {"models": ["digits-sklearn"]}}))
    svc = launch_service("model-server", ["--repository", str(repository), "--workers", "2"],
                         workdir=tmp_path, config_path=config_path, ready_timeout_s=60)
    try:
        with StatsPoller(svc.url) as poller:
            pass
        assert poller.available and set(poller.snapshots[0][1]) == {"0", "1"}

        @contextlib.contextmanager
        def launch(*_: Any, **__: Any) -> Iterator[SimpleNamespace]:
            yield SimpleNamespace(url=svc.url, model_server_url=svc.url, gateway_url=None,
                                  pids={"model-server": svc.pid})
        result = run_trial({"name": "2w"}, repository=repository, load=LoadSpec.closed(8),
                           workload={"models": ["digits-sklearn"]}, warmup_s=0.5,
                           duration_s=1.5, launcher=launch)
        _check_sums(result, tiers={"model-server"})
        assert set(result.model_stats["model-server"]["end"]) == {"0", "1"}
    finally:
        svc.stop()
