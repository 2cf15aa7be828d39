"""The load generator over gRPC (``optkit/bench/_grpc_client.py``): a ``grpc://`` target."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from optkit import BenchError, ConfigError
from optkit.bench import LoadSpec, run_bench
from optkit.bench._target import parse_target
from optkit.service import Stack, launch_stack


@pytest.fixture(scope="module")
def grpc_server(repository: Path) -> Iterator[Stack]:
    """A baseline model server with its gRPC front end on a free port."""
    with launch_stack({"server": {"grpc_port": 0}, "loading": {"models": ["digits-mlp"]}},
                      repository=repository, gateway=False) as running:
        yield running


def _url(stack: Stack) -> str:
    return "grpc://" + str(stack.services["model-server"].grpc_target)


def test_grpc_targets_are_loopback_with_a_port() -> None:
    """grpc://HOST:PORT on loopback; no port, a path or another host is refused."""
    target = parse_target("grpc://127.0.0.1:8001")
    assert (target.transport, target.grpc_target) == ("grpc", "127.0.0.1:8001")
    for bad in ("grpc://127.0.0.1", "grpc://127.0.0.1:8001/v2", "grpc://10.0.0.1:8001"):
        with pytest.raises(BenchError):
            parse_target(bad)


@pytest.mark.parametrize("load", [LoadSpec.closed(4), LoadSpec.open(50)],
                         ids=["closed", "open"])
def test_a_run_over_grpc_is_recorded_like_rest(grpc_server: Stack, load: LoadSpec) -> None:
    """Closed and open loop over gRPC: every request answered OK and recorded, the
    open loop's timetable kept."""
    s = run_bench(_url(grpc_server), load, warmup_s=0.1, duration_s=0.6).summary
    assert s["errors"] == {} and s["requests"] > 0
    assert s["target"].startswith("grpc://")
    if load.mode == "open":
        assert s["requests"] == 30 and s["dropped"] == 0


def test_a_bad_grpc_target_fails_fast(grpc_server: Stack) -> None:
    """An unknown model is refused before the run, with the server's own words; wrk
    (HTTP only) is refused for a gRPC target."""
    with pytest.raises(BenchError, match="NOT_FOUND: unknown model 'nope'"):
        run_bench(_url(grpc_server), LoadSpec.closed(1), model="nope", duration_s=0.2)
    with pytest.raises(ConfigError, match="HTTP only"):
        run_bench(_url(grpc_server), LoadSpec.closed(1, engine="wrk"), duration_s=0.2)
