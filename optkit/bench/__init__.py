"""optkit.bench: offer a load to a v2 service, measure it honestly, keep the raw data.

::

    LoadSpec + Workload ──▶ run_bench(target) ──▶ BenchResult ──▶ write_run / load_run
                                 │ its own process: asyncio generator (or wrk)
    run_trial(config) = fresh stack + warm-up + run_bench + service CPU/RSS + gates
                         ──▶ TrialResult.row()  (one row of the tidy trial table)

Every public name is re-exported here from a private module.
"""

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
