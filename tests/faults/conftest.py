"""Fixtures of the fault suite: one stack with every layer on, shared, healed between tests.

Launching a stack costs about a second of two busy cores; the fault scenarios share
one (``fault_stack``), and each test gets it back healthy: a killed model server is
restarted on its port, a stopped one continued, before the test starts.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared harness, importable by name

from _harness import FaultStack, get_json, integrated_config, wait_until  # noqa: E402

#: the gateway's upstream timeout in the fault stack: short, so a stall outlasts it quickly
UPSTREAM_TIMEOUT_S = 1.0
#: requests that may wait per model and tier: far above the steady load's concurrency,
#: small enough that a flood of a few hundred clients overflows it (test_fault_overflow)
MAX_QUEUE = 128


@pytest.fixture(scope="session")
def fault_repository(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private, writable repository (tests add model versions to it)."""
    root = tmp_path_factory.mktemp("fault-models")
    for name in ("digits-mlp", "synthetic", "synthetic-wide"):
        shutil.copytree(repository / name, root / name)
    return root


@pytest.fixture(scope="session")
def _fault_stack(fault_repository: Path) -> Iterator[FaultStack]:
    config = integrated_config(server={"upstream_timeout_s": UPSTREAM_TIMEOUT_S},
                               loading={"models": ["digits-mlp", "synthetic"]},
                               batching={"max_queue": MAX_QUEUE})
    with FaultStack(fault_repository, config) as fs:
        yield fs


@pytest.fixture
def fault_stack(_fault_stack: FaultStack) -> FaultStack:
    """The shared stack, healthy: model server running, gateway ready through it."""
    fs = _fault_stack
    fs.heal()
    wait_until(lambda: get_json(fs.gateway_url + "/v2/health/ready")["ready"],
               "the gateway ready through its upstream", timeout_s=15)
    return fs
