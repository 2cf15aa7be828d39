"""``optkit bench``: one measured run from the command line.

::

    optkit bench --target http://127.0.0.1:8000 --model digits-mlp --mode closed --concurrency 32
    optkit bench --target http://127.0.0.1:8000 --workload catalog-zipf --mode open --rate 2000 \\
                 --arrival poisson --duration 10 --out runs/zipf-2000
    optkit bench --target http://127.0.0.1:8080 --model digits-sklearn --input pixels:FP32:64
                 (a server whose metadata lists no inputs, e.g. MLServer; or --body FILE)
    optkit bench --target grpc://127.0.0.1:8011 --model digits-mlp --concurrency 32
                 (the v2 gRPC service of a tier started with --grpc-port)

Prints the summary; ``--out`` keeps ``summary.json`` and ``records.npz``, and writes
``perf_analyzer.csv``: perf_analyzer's ``-f`` columns, with the server's queue and compute
times when it answers Triton's statistics (``/v2/models/stats``, polled through the run;
see ``_perf_csv.py`` and docs/measurement.md).
Exit status: 0 run done (valid or not; ``--strict`` makes an invalid run 3),
1 the run could not be done (bad target, not v2, generator failure), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import orjson

from .._exceptions import BenchError, ConfigError
from ._engine import run_bench
from ._load import LoadSpec
from ._perf_csv import perf_analyzer_csv
from ._results import format_summary
from ._server_stats import StatsPoller, poll_interval_s
from ._workload import InputSpec, builtin_workloads

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "bench", help="offer a load to a loopback v2 service and measure it",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True,
                   help="base URL, http://HOST:PORT or grpc://HOST:PORT (loopback only)")
    p.add_argument("--model", help="model to hit (overrides the workload's models)")
    p.add_argument("--workload", help=f"YAML file or built-in name "
                                      f"({', '.join(sorted(builtin_workloads()))}); default digits")
    p.add_argument("--mode", choices=("closed", "open"), default="closed")
    p.add_argument("--concurrency", type=int, default=1, help="closed loop: connections")
    p.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--arrival", choices=("constant", "poisson"), default="constant")
    p.add_argument("--connections", type=int, default=64, help="open loop: connections")
    p.add_argument("--max-in-flight", type=int, default=1024,
                   help="open loop: outstanding cap; beyond it requests are dropped")
    p.add_argument("--engine", choices=("builtin", "wrk", "ray"), default="builtin",
                   help="ray: the built-in generator split over Ray actors "
                        "(pip install 'optkit[ray]')")
    p.add_argument("--ray-actors", type=int, default=2,
                   help="engine ray: generator processes (each a Ray actor)")
    p.add_argument("--ray-address",
                   help="engine ray: an existing Ray cluster this machine is a node of "
                        "(default: a local instance on 127.0.0.1 for this run)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds, discarded")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    p.add_argument("--batch-size", type=int, help="rows per request (overrides the workload)")
    p.add_argument("--input", action="append", metavar="NAME:DATATYPE:WIDTH",
                   help="a model input to send, e.g. predict:FP32:64 (repeatable); replaces the "
                        "model's v2 metadata, for servers whose metadata lists no inputs")
    p.add_argument("--body", metavar="FILE",
                   help="a JSON request body sent as-is on every request to --model (a "
                        "service with its own tensor names or fields); metadata is not read")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, seconds")
    p.add_argument("--late-threshold-ms", type=float, default=1.0)
    p.add_argument("--max-requests", type=int, default=5_000_000)
    p.add_argument("--out", help="folder for summary.json, records.npz and perf_analyzer.csv")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--strict", action="store_true", help="exit 3 when the run is invalid")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute ``optkit bench`` with parsed arguments; return the exit status."""
    try:
        if args.mode == "open" and args.rate is None:
            raise ConfigError("--mode open needs --rate")
        load = LoadSpec(mode=args.mode, concurrency=args.concurrency,
                        rate=args.rate or 0.0, arrival=args.arrival,
                        connections=args.connections, max_in_flight=args.max_in_flight,
                        engine=args.engine)
        # --out: the server's statistics through the run, for perf_analyzer's server columns
        poller = StatsPoller(args.target, poll_interval_s(args.duration)) if args.out else None
        with poller or contextlib.nullcontext():
            result = run_bench(args.target, load, args.workload, model=args.model,
                               batch_size=args.batch_size, warmup_s=args.warmup,
                               duration_s=args.duration, seed=args.seed, out_dir=args.out,
                               timeout_s=args.timeout, late_threshold_ms=args.late_threshold_ms,
                               max_requests=args.max_requests, ray_actors=args.ray_actors,
                               ray_address=args.ray_address,
                               inputs=[InputSpec.parse(t) for t in args.input or ()],
                               body=args.body)
        if args.out:
            perf_analyzer_csv(result, poller, f"{args.out}/perf_analyzer.csv")
    except ConfigError as exc:
        print(f"optkit bench: error: {exc}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"optkit bench: error: {exc}", file=sys.stderr)
        return 1
    summary = result.summary
    if summary.get("engine") != summary.get("engine_requested"):
        print("optkit bench: note: wrk is not installed; ran the builtin engine", file=sys.stderr)
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_summary(summary))
        if result.path is not None:
            print(f"  records      {result.path}")
            print(f"  perf_analyzer CSV  {result.path / 'perf_analyzer.csv'}")
    return 3 if args.strict and not result.valid else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m optkit.bench``) until ``optkit.cli`` wires it in."""
    parser = argparse.ArgumentParser(prog="optkit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))
