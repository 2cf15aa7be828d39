"""The ``ray`` engine on a local Ray instance, against a real stub server on 127.0.0.1.

Heavy: a local Ray instance takes about 15 s to start on this 2-core machine, and Ray
(~250 MB) is an optional extra, not a dev dependency. ``make ray-check`` installs
``optkit[ray]`` and runs this module; without Ray it is skipped, saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from optkit.bench import LoadSpec, StubServer, load_run, run_bench, schedule_offsets_ns
from optkit.bench._ray import ray_available
from third_party import missing

pytestmark = [
    pytest.mark.heavy,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not ray_available(),
                       reason=missing("ray", "pip install 'optkit[ray]' (make ray-check)")),
]


def test_ray_engine_offers_the_builtin_timetable_from_two_actor_processes(tmp_path: Path) -> None:
    """2 actors, open:400 Poisson: one run, same files and timetable as the built-in engine."""
    import ray

    load = dict(rate=400, arrival="poisson", connections=8)
    with StubServer(service_ms=2.0) as server:
        ray_run = run_bench(server.url, LoadSpec.open(engine="ray", **load), model="digits-mlp",
                            warmup_s=0.5, duration_s=2.0, seed=3, out_dir=tmp_path / "ray",
                            ray_actors=2)
        builtin = run_bench(server.url, LoadSpec.open(**load), model="digits-mlp",
                            warmup_s=0.5, duration_s=2.0, seed=3, out_dir=tmp_path / "builtin")
    assert not ray.is_initialized()  # the instance this run started is gone
    s, b = ray_run.summary, builtin.summary
    gen = s["generator"]
    assert s["engine"] == "ray" and s["ray"] == {"actors": 2, "address": "local"}
    assert len(set(gen["pids"])) == 2 and os.getpid() not in gen["pids"]
    assert [g["connections"] for g in gen["shards"]] == [4, 4]
    # the same files, readable the same way, with the same fields (the Ray run adds some)
    back = load_run(tmp_path / "ray")
    assert sorted(back.records) == sorted(builtin.records)
    assert set(b) <= set(back.summary) and set(b["generator"]) <= set(gen)
    # exactly the built-in engine's timetable, every request answered
    expected = schedule_offsets_ns(400, 2.5, "poisson", 3)
    assert np.array_equal(back.records["scheduled_ns"] - gen["t0_ns"], expected)
    assert s["requests"] == b["requests"] and s["errors"] == {} == b["errors"]
    assert s["achieved_fraction"] >= 0.98 and b["achieved_fraction"] >= 0.98
