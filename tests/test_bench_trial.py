"""The trial runner: fresh stack, warm-up, window, service usage, gates, manifest, files."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from optkit.bench import (ROW_COLUMNS, LoadSpec, ProcessSampler, StubServer, environment_manifest,
                          load_trial, run_trial)


@contextlib.contextmanager
def stub_launcher(config: Any, *, repository: Path, gateway: bool, cpus: Any,
                  ready_timeout_s: float) -> Iterator[SimpleNamespace]:
    """A launch_stack stand-in: one stub server in this process."""
    with StubServer(service_ms=1.0) as server:
        yield SimpleNamespace(url=server.url, model_server_url=server.url, gateway_url=None,
                              pids={"model-server": os.getpid()})


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
    assert result.manifest["seed"] == 5 and result.manifest["config"]["name"] == "stubbed"
    assert result.manifest["packages"]["numpy"] and result.manifest["cpu_count"] >= 1
    row = load_trial(tmp_path / "t1").row()
    assert tuple(row) == ROW_COLUMNS and row == result.row()
    assert row["throughput_rps"] > 100 and row["errors"] == 0


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
    assert result.mem_per_request_kb is None or result.mem_per_request_kb >= 0
    assert "error" not in result.stats_after["gateway"]
    assert result.row()["label"] == "baseline" and result.row()["load"] == "open:200"
