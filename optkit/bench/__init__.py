"""optkit.bench: offer a load to a v2 service, measure it honestly, keep the raw data.

::

    LoadSpec + Workload ──▶ run_bench(target) ──▶ BenchResult ──▶ write_run / load_run
                                 │ its own process: asyncio generator (or wrk)
    run_trial(config) = fresh stack + warm-up + run_bench + service CPU/RSS + gates
                         ──▶ TrialResult.row()  (one row of the tidy trial table)

Every public name is re-exported here from a private module.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:  # what the names below resolve to, imported on first use (see _LAZY)
    from ._engine import prepare, run_bench
    from ._load import LoadSpec, schedule_offsets_ns
    from ._manifest import environment_manifest, git_commit
    from ._records import COLUMNS, ERROR_KINDS
    from ._results import (SCHEMA_VERSION, BenchResult, format_summary, load_run, percentiles_ms,
                           summarize, write_run)
    from ._stub_server import StubServer
    from ._trial import ROW_COLUMNS, ProcessSampler, TrialResult, flatten_stats, load_trial, \
        memory_per_request_kb, run_trial
    from ._validity import ValidityGates, check_validity
    from ._workload import BodyPool, InputSpec, Workload, builtin_workloads, zipf_weights
    from ._wrk import wrk_available

__all__ = [
    "run_bench",
    "prepare",
    "LoadSpec",
    "schedule_offsets_ns",
    "Workload",
    "BodyPool",
    "InputSpec",
    "builtin_workloads",
    "zipf_weights",
    "BenchResult",
    "SCHEMA_VERSION",
    "COLUMNS",
    "ERROR_KINDS",
    "summarize",
    "percentiles_ms",
    "write_run",
    "load_run",
    "format_summary",
    "ValidityGates",
    "check_validity",
    "run_trial",
    "TrialResult",
    "ROW_COLUMNS",
    "load_trial",
    "memory_per_request_kb",
    "flatten_stats",
    "ProcessSampler",
    "environment_manifest",
    "git_commit",
    "StubServer",
    "wrk_available",
]

#: name -> the module that defines it, imported on first use: the generator's own process
#: (``python -m optkit.bench._worker``, one per trial) then imports only what it runs.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("prepare", "run_bench"), "._engine"),
    **dict.fromkeys(("LoadSpec", "schedule_offsets_ns"), "._load"),
    **dict.fromkeys(("environment_manifest", "git_commit"), "._manifest"),
    **dict.fromkeys(("COLUMNS", "ERROR_KINDS"), "._records"),
    **dict.fromkeys(("SCHEMA_VERSION", "BenchResult", "format_summary", "load_run",
                     "percentiles_ms", "summarize", "write_run"), "._results"),
    **dict.fromkeys(("StubServer",), "._stub_server"),
    **dict.fromkeys(("ROW_COLUMNS", "ProcessSampler", "TrialResult", "flatten_stats",
                     "load_trial", "memory_per_request_kb", "run_trial"), "._trial"),
    **dict.fromkeys(("ValidityGates", "check_validity"), "._validity"),
    **dict.fromkeys(("BodyPool", "InputSpec", "Workload", "builtin_workloads", "zipf_weights"),
                    "._workload"),
    **dict.fromkeys(("wrk_available",), "._wrk"),
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
