"""A run split over N generators and merged back (the Ray engine's core), without Ray.

The shards run here as N real generators on one event loop against a real stub server on
127.0.0.1; the Ray engine runs the same shard jobs in N actor processes
(``tests/test_bench_ray.py``, heavy, ``make ray-check``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time

import numpy as np
import pytest

from optkit._exceptions import BenchError, ConfigError
from optkit.bench import LoadSpec, StubServer, run_bench, schedule_offsets_ns, summarize
from optkit.bench._cli import main as cli_main
from optkit.bench._client import encode_request
from optkit.bench._engine import prepare
from optkit.bench._generator import Generator, GeneratorJob
from optkit.bench._shards import merge_shards, split_job


def _job(url: str, load: LoadSpec, *, models: tuple[int, ...], **kwargs: object) -> GeneratorJob:
    """A job on the stub: its real digits bodies, tagged with a model sequence to trace order."""
    tgt, _, pool = prepare(url, None, model="digits-mlp")
    body = pool.bodies[0]
    requests = tuple(encode_request("POST", tgt.infer_path("digits-mlp"), tgt.host_header, body)
                     for _ in models)
    return GeneratorJob(host=tgt.host, port=tgt.port, requests=requests, models=models,
                        load=load, **kwargs)  # type: ignore[arg-type]


def _run_shards(jobs: list[GeneratorJob]) -> list[tuple[dict[str, np.ndarray], dict]]:
    async def main() -> list:
        return await asyncio.gather(*(Generator(j).run() for j in jobs))
    return asyncio.run(main())


def test_split_shares_add_up_and_rotate_the_bodies() -> None:
    """Every count is shared exactly, and shard i's k-th body is the run's (i + k·n)-th."""
    job = GeneratorJob(host="127.0.0.1", port=1, requests=tuple(b"r%d" % i for i in range(7)),
                       models=tuple(range(7)), load=LoadSpec.open(1000, connections=5,
                                                                  max_in_flight=11),
                       warmup_s=0, duration_s=1, max_requests=101)
    shards = split_job(job, 3, start_unix_ns=123)
    assert [s.load.connections for s in shards] == [2, 2, 1]
    assert sum(s.load.max_in_flight for s in shards) == 11
    assert sum(s.max_requests for s in shards) == 101
    assert all((s.shard, s.shards, s.start_unix_ns) == (i, 3, 123) for i, s in enumerate(shards))
    for i, s in enumerate(shards):
        for k in range(20):
            g = i + 3 * k  # the request's index in the one-process run
            assert s.requests[k % 7] == job.requests[g % 7] and s.models[k % 7] == g % 7
    closed = dataclasses.replace(job, load=LoadSpec.closed(5))
    assert [s.load.concurrency for s in split_job(closed, 2)] == [3, 2]


@pytest.mark.parametrize("shards, load", [(0, LoadSpec.closed(4)), (5, LoadSpec.closed(4)),
                                          (3, LoadSpec.open(10, connections=2))])
def test_split_refuses_shards_without_a_connection_each(shards: int, load: LoadSpec) -> None:
    job = GeneratorJob(host="127.0.0.1", port=1, requests=(b"x",), models=(0,), load=load,
                       warmup_s=0, duration_s=1)
    with pytest.raises(ConfigError, match="generators"):
        split_job(job, shards)


def test_split_open_loop_run_merges_into_the_one_process_timetable() -> None:
    """3 shards, Poisson: the merged rows are the built-in run's timetable and body order."""
    load = LoadSpec.open(600, arrival="poisson", connections=6)
    with StubServer(service_ms=1.0) as server:
        job = _job(server.url, load, models=(0, 1, 2, 3, 4), warmup_s=0.2, duration_s=0.8,
                   seed=7)
        asked = time.monotonic_ns()
        start = time.time_ns() + 300_000_000
        parts = _run_shards(split_job(job, 3, start_unix_ns=start))
        answered = server.requests
    arrays, gen = merge_shards(parts)
    expected = schedule_offsets_ns(600, 1.0, "poisson", 7)
    assert len(arrays["scheduled_ns"]) == len(expected) == answered - 1  # minus prepare's check
    assert np.array_equal(arrays["scheduled_ns"] - gen["t0_ns"], expected)
    assert np.array_equal(arrays["model"], np.arange(len(expected)) % 5)
    assert gen["processes"] == 3 and len(gen["shards"]) == 3 and gen["connections"] == 6
    assert all(s["t0_ns"] - asked >= 290_000_000 for s in gen["shards"])  # the agreed start
    assert gen["cpu_percent"] == max(s["cpu_percent"] for s in gen["shards"])
    meta = {"mode": "open", "models": ["a", "b", "c", "d", "e"], "load": load.label}
    summary = summarize(arrays, gen, meta=meta)
    assert summary["requests"] == int(((expected >= 2e8) & (expected < 1e9)).sum())
    assert summary["errors"] == {} and summary["completed"] == summary["requests"]
    # latencies are the union's: the merged p99 is one of the shards' own latencies
    lat = np.concatenate([(a["end_ns"] - a["scheduled_ns"]) / 1e6 for a, _ in parts])
    assert summary["p99_ms"] in set(lat.tolist())


def test_split_closed_loop_keeps_every_connection_busy() -> None:
    """A closed loop of 5 split in 2: 3 + 2 connections, every answer one merged row."""
    with StubServer(service_ms=2.0) as server:
        job = _job(server.url, LoadSpec.closed(5), models=(0,), warmup_s=0, duration_s=0.5)
        parts = _run_shards(split_job(job, 2))
        answered = server.requests
    arrays, gen = merge_shards(parts)
    assert [g["connections"] for g in gen["shards"]] == [3, 2]
    assert len(arrays["end_ns"]) == answered - 1 and (arrays["error_code"] == 0).all()
    assert np.all(np.diff(arrays["scheduled_ns"]) >= 0)


def test_ray_engine_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """No Ray: a BenchError naming the extra, before any target is probed; the CLI exits 1."""
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray imports
    with pytest.raises(BenchError, match=r"pip install 'optkit\[ray\]'"):
        run_bench("http://127.0.0.1:9", LoadSpec.open(10, engine="ray"))
    assert cli_main(["bench", "--target", "http://127.0.0.1:9", "--mode", "open", "--rate", "10",
                     "--engine", "ray"]) == 1
    assert "pip install 'optkit[ray]'" in capsys.readouterr().err
