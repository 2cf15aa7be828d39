"""The suite's four kinds of test, as the sprint plan counts them, marked on every test.

- ``unit``: one module in-process, no socket (codec, statistics, config, layers with fakes).
- ``integration``: real servers on 127.0.0.1 (aiohttp test servers or launched processes).
- ``load``: live A/B sessions and benchmarks under load (``slow``-marked tests).
- ``comprehensive``: a whole sprint day end to end (the notebooks under nbmake).

``pytest -m unit`` (or ``integration``, ...) runs one kind; the end of every run prints how
many of each ran. A module lands in ``integration`` by starting servers (listed below).
"""

from __future__ import annotations

import collections

import pytest

KINDS = ("unit", "integration", "load", "comprehensive")

#: test modules whose tests start real servers on loopback
INTEGRATION_MODULES = frozenset({
    "test_batching_service", "test_bench_client", "test_bench_lifecycle", "test_bench_live", "test_bench_target",
    "test_bench_shards", "test_bench_ray", "test_deploy_kubernetes",
    "test_gateway", "test_interop", "test_launcher", "test_loading", "test_model_server",
    "test_pool", "test_streaming", "test_fault_kill", "test_fault_stall", "test_fault_loading",
    "test_fault_soak", "test_tier_agreement", "test_openapi",
    "test_crosstalk", "test_fault_disconnect", "test_fault_overflow",
    "test_fault_balancing", "test_model_server_workers", "test_external_arms",
    "test_bench_any_target", "test_descriptors", "test_vs_mlserver", "test_gate", "test_onnx",
    "test_grpc", "test_bench_grpc_client", "test_channels", "test_lab_grpc",
})

#: test modules that assert bounds on time, rate or CPU, or run work under load: ``make test``
#: runs them one at a time (with the load tests and notebooks), after the rest have run two
#: at a time (pytest-xdist), so a neighbour test's CPU never decides whether they pass
SERIAL_MODULES = frozenset({
    "test_bench_live", "test_bench_shards", "test_bench_target", "test_bench_timer",
    "test_trial", "test_bench_lifecycle", "test_bench_any_target", "test_bench_ray",
    "test_gateway", "test_pool", "test_launcher", "test_balancing", "test_loading",
    "test_model_server_workers", "test_external_arms", "test_soak", "test_crosstalk",
    "test_fault_kill", "test_fault_stall", "test_fault_loading", "test_fault_soak",
    "test_fault_disconnect", "test_fault_overflow", "test_fault_balancing", "test_vs_mlserver",
    "test_gate",
})

_counts: collections.Counter[str] = collections.Counter()


def pytest_configure(config: pytest.Config) -> None:
    for kind, text in (("unit", "in-process, no socket"),
                       ("integration", "real servers on 127.0.0.1"),
                       ("load", "live sessions and benchmarks under load"),
                       ("comprehensive", "a sprint day end to end (notebooks)")):
        config.addinivalue_line("markers", f"{kind}: {text}")
    config.addinivalue_line("markers", "serial: bounds on time or rate; never run beside another test")


def _module_name(item: pytest.Item) -> str:
    """The test module's own name (``test_gateway``), or "" for a notebook."""
    module = getattr(item, "module", None)
    return module.__name__.rsplit(".", 1)[-1] if module is not None else ""


def kind_of(item: pytest.Item) -> str:
    """The kind of one collected test (see the module docstring)."""
    if str(item.fspath).endswith(".ipynb"):
        return "comprehensive"
    if item.get_closest_marker("slow") is not None:
        return "load"
    return "integration" if _module_name(item) in INTEGRATION_MODULES else "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, kind_of(item)))
        if _module_name(item) in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.skipped):
        for kind in KINDS:
            if kind in report.keywords:
                _counts[kind] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _counts:
        parts = ", ".join(f"{_counts[k]} {k}" for k in KINDS)
        terminalreporter.write_line(f"optkit test kinds: {parts} ({sum(_counts.values())} run)")
