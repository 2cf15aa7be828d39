"""The trial runner: fresh stack, warm-up, window, service usage, gates, manifest, files."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, ContextManager, Iterator

import orjson
import pytest

from optkit.bench import LoadSpec, StubServer
from optkit.lab import (ROW_COLUMNS, ProcessSampler, environment_manifest, flatten_stats, load_trial,
                        memory_held_mb, run_trial)


@contextlib.contextmanager
def stub_launcher(config: Any, *, repository: Path, gateway: bool, cpus: Any,
                  ready_timeout_s: float) -> Iterator[SimpleNamespace]:
    """A launch_stack stand-in: one stub server in this process."""
    with StubServer(service_ms=1.0) as server:
        yield SimpleNamespace(url=server.url, model_server_url=server.url, gateway_url=None,
                              pids={"model-server": os.getpid()})


def stub_process_launcher(**flags: Any) -> Callable[..., ContextManager[SimpleNamespace]]:
    """A launch_stack stand-in: the stub as its own process (its RSS is the stub's alone)."""

    @contextlib.contextmanager
    def launch(config: Any, *, repository: Path, gateway: bool, cpus: Any,
               ready_timeout_s: float) -> Iterator[SimpleNamespace]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        args = [sys.executable, "-m", "optkit.bench._stub_server", "--port", str(port),
                "--lifetime-s", "60"]
        for key, value in flags.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None and proc.stdout.readline()  # "stub v2 server on ..."
            url = f"http://127.0.0.1:{port}"
            yield SimpleNamespace(url=url, model_server_url=url, gateway_url=None,
                                  pids={"model-server": proc.pid})
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

    return launch


def test_flatten_stats_joins_nested_keys_and_summarizes_histograms() -> None:
    """Nested /stats becomes dotted columns; histograms give count/sum/mean and buckets; the rest is left."""
    doc = {"requests": 9, "uptime_s": 1.5, "draining": False, "name": "gw", "recent": [1, 2],
           "pool": {"requests": 9, "reuse_ratio": 0.75, "limit": None},
           "batching": {"digits": {"batches": 3, "size": {
               "bounds": [1, 8], "counts": [1, 2, 0], "sum": 9.0, "count": 3}},
               "empty": {"bounds": [1.0], "counts": [0, 0], "sum": 0.0, "count": 0}}}
    assert flatten_stats(doc) == {
        "requests": 9, "uptime_s": 1.5, "pool.requests": 9, "pool.reuse_ratio": 0.75,
        "batching.digits.batches": 3, "batching.digits.size.count": 3,
        "batching.digits.size.sum": 9.0, "batching.digits.size.mean": 3.0,
        "batching.digits.size.le_1": 1, "batching.digits.size.le_8": 2,
        "batching.digits.size.le_inf": 0,
        "batching.empty.count": 0, "batching.empty.sum": 0.0, "batching.empty.le_1": 0,
        "batching.empty.le_inf": 0}


@pytest.mark.parametrize(("hold_kb", "low", "high"), [(1024, 0.8 * 1024, 1.25 * 1024),
                                                      (0, 0.0, 64.0)])
def test_memory_per_client_reads_a_known_cost(tmp_path: Path, hold_kb: int, low: float,
                                              high: float) -> None:
    """8 clients all waiting on a server that holds 1 MiB per request read ~1024 KiB per client."""
    result = run_trial({"name": "held"}, repository=tmp_path, load=LoadSpec.closed(8),
                       workload="digits", warmup_s=0.3, duration_s=1.0,
                       launcher=stub_process_launcher(service_ms=20, hold_kb=hold_kb))
    assert result.bench.summary["mean_in_flight"] == pytest.approx(8, rel=0.1)
    mem = result.mem_per_client_kb
    assert result.mem_held_mb is None  # a closed loop's figure is per client
    assert (mem or 0.0) >= low and (mem or 0.0) <= high, (mem, result.services)


def test_trial_with_a_stub_stack_writes_a_readable_trial(tmp_path: Path) -> None:
    """run_trial measures, samples the service, records stats and a manifest, and round-trips."""
    result = run_trial({"name": "stubbed"}, repository=tmp_path, load=LoadSpec.closed(4),
                       workload="digits", warmup_s=0.3, duration_s=1.0, seed=5,
                       out_dir=tmp_path / "t1", launcher=stub_launcher)
    assert result.label == "stubbed" and result.load == "closed:4"
    use = result.services["model-server"]
    assert use["cpu_percent"] is not None and use["rss_load_mb"] > 10 and use["rss_idle_mb"] > 10
    assert result.stats_after["model-server"]["requests"] > result.stats_before["model-server"][
        "requests"]
    assert result.stats_row() == {"model-server.requests": result.stats_after["model-server"][
        "requests"], "model-server.answers.retried": 0}  # nested /stats, flattened
    assert result.manifest["seed"] == 5 and result.manifest["config"]["name"] == "stubbed"
    assert result.manifest["packages"]["numpy"] and result.manifest["cpu_count"] >= 1
    row = load_trial(tmp_path / "t1").row()
    assert tuple(row) == ROW_COLUMNS and row == result.row()
    assert row["throughput_rps"] > 100 and row["errors"] == 0
    # a trial recorded before 2026-12-06 (÷ requests in flight) reads back with today's figure
    doc = orjson.loads((tmp_path / "t1" / "trial.json").read_bytes())
    del doc["mem_per_client_kb"], doc["mem_held_mb"]
    doc["mem_per_request_kb"] = 3.0
    (tmp_path / "t1" / "trial.json").write_bytes(orjson.dumps(doc))
    old = load_trial(tmp_path / "t1")
    assert old.mem_per_client_kb == result.mem_per_client_kb and old.row() == result.row()


def test_sampler_reports_cpu_and_rss_of_a_process() -> None:
    """The sampler gives CPU % and RSS of a process between two times."""
    with ProcessSampler({"me": os.getpid()}, interval_s=0.02) as sampler:
        sum(i * i for i in range(300_000))
    first, last = sampler.samples[0][0], sampler.samples[-1][0]
    use = sampler.usage(first, last)["me"]
    assert use["cpu_percent"] is not None and use["rss_peak_mb"] >= use["rss_load_mb"] > 1


def test_manifest_has_versions_and_extra_fields() -> None:
    """The manifest names python, packages and the CPU, and keeps caller fields."""
    m = environment_manifest(seed=3)
    assert m["python"].startswith("3.") and "aiohttp" in m["packages"] and m["seed"] == 3
    assert m["git_commit"] is None or len(m["git_commit"]) == 40


def test_trial_against_the_real_stack(repository: Path, tmp_path: Path) -> None:
    """A live trial: optkit's model server behind its gateway, both sampled, one valid-ish row."""
    result = run_trial(None, repository=repository, load=LoadSpec.open(200), workload="digits",
                       warmup_s=0.3, duration_s=1.0, out_dir=tmp_path / "live")
    assert set(result.services) == {"model-server", "gateway"}
    assert result.bench.summary["errors"] == {}
    assert result.bench.summary["achieved_fraction"] == pytest.approx(1.0, abs=0.03)
    # an open loop's memory is what it held (peak - idle), on this trial's own readings
    idle = {n: u["rss_idle_mb"] * 2**20 for n, u in result.services.items()}
    load = {n: u["rss_load_mb"] * 2**20 for n, u in result.services.items()}
    assert min(idle.values()) > 10 * 2**20 and min(load.values()) > 10 * 2**20
    assert result.mem_per_client_kb is None  # no fixed concurrency to divide by
    assert result.mem_held_mb == memory_held_mb(result.services) > 0
    assert result.bench.summary["mean_in_flight"] == pytest.approx(
        result.bench.summary["throughput_rps"] * result.bench.summary["service_mean_ms"] / 1e3)
    assert result.stats_row()["gateway.server.accepted"] > 200  # /stats flattened, by tier
    assert "error" not in result.stats_after["gateway"]
    assert result.row()["label"] == "baseline" and result.row()["load"] == "open:200"


def test_memory_held_under_load_is_the_peak_above_idle() -> None:
    """gateway_grown_mb / model_server_grown_mb: the window's peak minus the idle RSS of that
    tier; unknown when a tier was not sampled."""
    from optkit.bench._results import BenchResult
    from optkit.lab._trial import TrialResult

    services = {"gateway": {"rss_peak_mb": 193.5, "rss_idle_mb": 66.0},
                "model-server": {"rss_peak_mb": None, "rss_idle_mb": 70.0}}
    row = TrialResult(label="x", load="closed:32", bench=BenchResult({}), services=services).row()
    assert row["gateway_grown_mb"] == pytest.approx(127.5)
    assert row["gateway_peak_mb"] == 193.5
    assert row["model_server_grown_mb"] is None
