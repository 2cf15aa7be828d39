"""optkit.bench: offer a load to any v2 service, measure it honestly, keep the raw data.

::

    LoadSpec + Workload ──▶ run_bench(target) ──▶ BenchResult ──▶ write_run / load_run
                                 │ its own process: asyncio generator (or wrk, or Ray actors)
                                 ▼
                        records.npz + summary.json (validity gates: the generator's own CPU,
                        its schedule lag, errors, stable windows)

A trial (a fresh service, a warm-up, a window) and everything built on trials is the lab's
(:mod:`optkit.lab`). Names are imported on first use (``_FACE`` is the one list of them): the
generator's own process (``python -m optkit.bench._worker``, one per trial) then imports only
what it runs.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

#: module -> the public names it gives the face; ``__all__`` and ``__getattr__`` come from it
_FACE: dict[str, tuple[str, ...]] = {
    "._engine": ("run_bench", "prepare"),
    "._load": ("LoadSpec", "schedule_offsets_ns"),
    "._workload": ("Workload", "BodyPool", "InputSpec", "builtin_workloads", "zipf_weights"),
    "._results": ("BenchResult", "SCHEMA_VERSION", "summarize", "percentiles_ms", "write_run",
                  "load_run", "format_summary"),
    "._records": ("COLUMNS", "ERROR_KINDS"),
    "._validity": ("ValidityGates", "check_validity"),
    "._stub_server": ("StubServer",),
    "._wrk": ("wrk_available",),
}

_LAZY: dict[str, str] = {name: module for module, names in _FACE.items() for name in names}

__all__ = list(_LAZY)

if _TYPE_CHECKING:  # what the names resolve to, for type checkers and editors
    from ._engine import prepare, run_bench
    from ._load import LoadSpec, schedule_offsets_ns
    from ._records import COLUMNS, ERROR_KINDS
    from ._results import (SCHEMA_VERSION, BenchResult, format_summary, load_run, percentiles_ms,
                           summarize, write_run)
    from ._stub_server import StubServer
    from ._validity import ValidityGates, check_validity
    from ._workload import BodyPool, InputSpec, Workload, builtin_workloads, zipf_weights
    from ._wrk import wrk_available


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
