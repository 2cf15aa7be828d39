"""The lab over gRPC: an arm whose ``url`` is ``grpc://127.0.0.1:{grpc_port}`` (issue #33).

A real trial drives optkit's model server through its v2 gRPC service and keeps the records
and gates of a REST trial, saying it came over gRPC; the choices that cannot work (wrk, which
speaks HTTP only; optkit's gRPC front with ``--workers`` > 1) are refused before any trial.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from optkit._exceptions import ConfigError
from optkit.bench import LoadSpec
from optkit.bench._validity import ValidityGates
from optkit.lab import compare, load_trial, run_trial
from optkit.lab._arm_params import render
from optkit.lab._arms import ExternalArm, _free_ports, _get_status, load_arm
from optkit.lab._settings import CompareSettings, parse_load

#: a shared 2-core machine: the short trials here check the plumbing, not the timing
LENIENT = ValidityGates(check_stability=False, max_generator_cpu_percent=100.0,
                        max_loop_lag_p99_ms=1e3, max_schedule_lag_p99_ms=1e3)


def _server_arm(repository: Path, tmp_path: Path, *, workers: int = 1,
                ready_url: str | None = "http://127.0.0.1:{port}/v2/health/ready"
                ) -> dict[str, object]:
    """optkit's model server as a command arm measured over gRPC (digits-mlp only)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"loading": {"models": ["digits-mlp"]}}))
    doc: dict[str, object] = {
        "kind": "command", "name": "optkit-grpc",
        "command": [sys.executable, "-m", "optkit", "serve", "model-server", "--repository",
                    str(repository), "--host", "127.0.0.1", "--port", "{port}", "--grpc-port",
                    "{grpc_port}", "--workers", str(workers), "--config", str(config)],
        "url": "grpc://127.0.0.1:{grpc_port}", "startup_timeout_s": 30}
    if ready_url is not None:
        doc["ready_url"] = ready_url
    return doc


def test_a_trial_over_grpc_is_recorded_and_says_so(repository: Path, tmp_path: Path) -> None:
    """A real model server, its load over gRPC: no errors, valid, every record from the gRPC
    run (its summary's target and transport, the row's and trial.json's transport), and the
    breakdown read from the server's REST side while the load went over gRPC."""
    arm = ExternalArm.from_dict(_server_arm(repository, tmp_path))
    assert arm.transport == "grpc"
    result = run_trial(arm, repository=repository, load=LoadSpec.closed(4), workload="digits",
                       warmup_s=0.3, duration_s=1.0, gates=LENIENT, out_dir=tmp_path / "trial")
    s = result.bench.summary
    assert result.valid, result.invalid_reasons
    assert s["errors_total"] == 0 and s["requests"] > 0
    assert s["transport"] == "grpc" and s["target"].startswith("grpc://127.0.0.1:")
    assert result.transport == "grpc" and result.row()["transport"] == "grpc"
    assert len(result.bench.records["scheduled_ns"]) >= s["requests"]  # warm-up + window
    assert result.breakdown is not None and result.breakdown["tiers"]["model-server"]["requests"]
    again = load_trial(tmp_path / "trial")
    assert again.transport == "grpc" and again.row()["transport"] == "grpc"


def test_an_optkit_config_runs_over_grpc_on_its_front_tier(repository: Path,
                                                            tmp_path: Path) -> None:
    """transport="grpc": an experiment config's stack gets a gRPC port per tier (the config
    named none) and the load goes to the gateway's, the tier clients meet; the gateway's
    statistics are still read over REST. An arm served over HTTP is refused for it, and
    so is a transport that is neither."""
    config = {"name": "pooling-over-grpc", "pooling": {"enabled": True},
              "loading": {"models": ["digits-mlp"]}}
    result = run_trial(config, repository=repository, load=LoadSpec.closed(4),
                       workload="digits", warmup_s=0.3, duration_s=1.0, gates=LENIENT,
                       transport="grpc")
    s = result.bench.summary
    assert result.valid, result.invalid_reasons
    assert s["errors_total"] == 0 and s["requests"] > 0
    assert result.transport == "grpc" and s["target"].startswith("grpc://127.0.0.1:")
    assert result.breakdown is not None and result.breakdown["tiers"]["gateway"]["requests"]
    http_arm = ExternalArm.from_dict({"kind": "url", "name": "rest",
                                      "url": "http://127.0.0.1:9"})
    with pytest.raises(ConfigError, match="served over HTTP"):
        run_trial(http_arm, repository=repository, load=LoadSpec.closed(1), duration_s=0.5,
                  transport="grpc")
    with pytest.raises(ConfigError, match="transport must be"):
        run_trial(config, repository=repository, load=LoadSpec.closed(1), duration_s=0.5,
                  transport="quic")
    with pytest.raises(ConfigError, match="transport must be"):
        CompareSettings(transport="quic")


def test_grpc_arms_are_checked_when_loaded(tmp_path: Path) -> None:
    """{grpc_port} is a placeholder of command arms; a gRPC url is ready by its ServerReady
    unless ready_url says otherwise; optkit's gRPC front with --workers > 1 cannot start."""
    doc = _server_arm(tmp_path, tmp_path, ready_url=None)
    arm = ExternalArm.from_dict(doc)
    assert arm.ready_url == "grpc://127.0.0.1:{grpc_port}" and arm.transport == "grpc"
    for workers in (["--workers", "2"], ["--workers=3"]):
        command = [c for c in doc["command"] if c not in ("--workers", "1")]  # type: ignore
        with pytest.raises(ConfigError, match="serves gRPC from one process"):
            ExternalArm.from_dict({**doc, "command": [*command, *workers]})
    with pytest.raises(ConfigError, match="cannot be declared"):  # filled per trial, like {port}
        ExternalArm.from_dict({**doc, "parameters": {"grpc_port": 8001}})
    with pytest.raises(ConfigError, match="fixed port, not {grpc_port}"):
        ExternalArm.from_dict({"kind": "url", "url": "grpc://127.0.0.1:{grpc_port}"})
    fixed = ExternalArm.from_dict({"kind": "url", "url": "grpc://127.0.0.1:8001"})
    assert fixed.ready_url == "grpc://127.0.0.1:8001" and fixed.transport == "grpc"
    fronted = ExternalArm.from_dict({**doc, "gateway": {"name": "front"}})
    assert fronted.transport == "http"  # the gateway takes REST; its upstream call is gRPC
    port, grpc_port = _free_ports(2)
    assert port != grpc_port
    assert render("{port}/{grpc_port}", {"port": port, "grpc_port": grpc_port}) == \
        f"{port}/{grpc_port}"
    assert _get_status(f"grpc://127.0.0.1:{grpc_port}", 0.5) is None  # nothing listens


def test_wrk_is_refused_for_a_grpc_arm_before_any_trial(tmp_path: Path) -> None:
    """engine auto is the built-in generator when an arm is over gRPC; wrk is refused by the
    session before its first trial and by a trial before it starts anything."""
    assert parse_load("closed:8", engine="auto", grpc=True).engine == "builtin"
    with pytest.raises(ConfigError, match="HTTP only"):
        parse_load("closed:8", engine="wrk", grpc=True)
    doc = _server_arm(tmp_path / "no-repository", tmp_path)
    with pytest.raises(ConfigError, match="HTTP only"):
        compare(doc, load_arm({**doc, "name": "other"}), repository=tmp_path, pairs=2,
                engine="wrk", progress=False)
    with pytest.raises(ConfigError, match="HTTP only"):
        run_trial(ExternalArm.from_dict(doc), repository=tmp_path,
                  load=LoadSpec.closed(4, engine="wrk"), duration_s=0.5)


@pytest.mark.heavy  # ~12 s: a whole CLI-shaped session, two servers per pair (`make external`)
def test_a_session_over_grpc_compares_two_servers(repository: Path, tmp_path: Path) -> None:
    """Two gRPC arms through compare, one ready by ServerReady: every trial valid and over
    gRPC in trials.csv."""
    a = _server_arm(repository, tmp_path, ready_url=None)
    b = {**_server_arm(repository, tmp_path), "name": "optkit-grpc-http-ready"}
    cmp = compare(a, b, repository=repository, pairs=2, warmup_s=0.3, duration_s=0.6,
                  loads=("closed:4",), progress=False, out_dir=tmp_path / "out",
                  max_reruns=0, gates=LENIENT)
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(cmp.trials) == 4 and cmp.trials["valid"].all()
    assert set(trials["transport"]) == {"grpc"} and (trials["errors"] == 0).all()
