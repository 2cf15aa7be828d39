"""What the Wednesday and Thursday measurements rest on, against real server processes:
model-load churn during a run, start-up phases, and bulk scoring as an event stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from optkit import ConfigError, ServiceConfig
from optkit.lab._bulk import bulk_stream
from optkit.lab._churn import Churn, ChurnPlan
from optkit.lab._startup import startup_time
from optkit.service import launch_stack

pytestmark = pytest.mark.timeout(90)


def _config(*, streaming: bool = False, models: tuple[str, ...] = ("synthetic",)) -> ServiceConfig:
    return ServiceConfig.from_dict({"pooling": {"enabled": True},
                                    "streaming": {"enabled": streaming, "sub_batch_rows": 64},
                                    "loading": {"models": list(models)}})


def test_churn_plan_is_validated() -> None:
    with pytest.raises(ConfigError):
        ChurnPlan(models=())
    with pytest.raises(ConfigError):
        ChurnPlan(models=("a",), every_s=0)
    with pytest.raises(ConfigError):
        ChurnPlan(models=("a",), action="explode")  # type: ignore[arg-type]
    assert ChurnPlan(models=["a", "b"]).to_dict()["models"] == ["a", "b"]


def test_churn_loads_again_and_times_each_event(repository: Path) -> None:
    """Every event is a real reload (the repository counts it), timed until READY."""
    import json
    import urllib.request

    plan = ChurnPlan(models=("synthetic-wide",), every_s=0.2, start_s=0.0, action="cycle")
    with launch_stack(_config(models=("synthetic",)), repository=repository,
                      gateway=False) as stack:
        with Churn(plan, stack.model_server_url) as churn:
            import time

            deadline = time.monotonic() + 10
            while len(churn.events) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
        with urllib.request.urlopen(stack.model_server_url + "/stats", timeout=5) as resp:
            stats = json.loads(resp.read())
    loads = [e for e in churn.events if e.action == "load"]
    unloads = [e for e in churn.events if e.action == "unload"]
    assert len(loads) >= 2 and len(unloads) >= 2, churn.records()
    assert all(e.status == 200 and e.state == "READY" for e in loads), churn.records()
    assert all(e.state == "UNAVAILABLE" for e in unloads), churn.records()
    assert all(e.end_ns >= e.start_ns for e in churn.events)
    assert stats["repository"]["loads"] >= 1 + len(loads)  # start-up + every churn load
    assert not churn.errors


def test_churn_records_a_refused_load(repository: Path) -> None:
    """A load the server refuses (unknown model) is an event with its status, not a crash."""
    plan = ChurnPlan(models=("no-such-model",), every_s=0.2, start_s=0.0, event_timeout_s=2)
    with launch_stack(_config(), repository=repository, gateway=False) as stack:
        with Churn(plan, stack.model_server_url) as churn:
            import time

            deadline = time.monotonic() + 5
            while not churn.events and time.monotonic() < deadline:
                time.sleep(0.05)
    assert churn.events and churn.events[0].status == 404
    assert churn.errors and "404" in churn.errors[0]


def test_startup_phases_are_ordered(repository: Path) -> None:
    """A fresh server binds, is live, answers its model and is ready, in that order."""
    found = startup_time(_config(models=("synthetic", "digits-mlp")), repository=repository,
                         model="synthetic", timeout_s=60)
    assert None not in found.values(), found
    assert 0 < found["port_s"] <= found["live_s"] <= found["first_answer_s"]  # type: ignore[operator]


@pytest.mark.parametrize("streaming", [False, True])
def test_bulk_scoring_stream_is_complete(repository: Path, streaming: bool) -> None:
    """2,000 rows through the gateway: every row scored, the last event says so; events come
    in sub-batches of 64 rows either way (buffered: in one body at the end)."""
    with launch_stack(_config(streaming=streaming), repository=repository) as stack:
        found = bulk_stream(stack.url, "synthetic", rows=2000)
    assert found["complete"] and found["rows_scored"] == 2000, found
    assert found["events"] == -(-2000 // 64) + 1  # one per sub-batch, then the final one
    assert found["first_event_s"] <= found["last_event_s"]
