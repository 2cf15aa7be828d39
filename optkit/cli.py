"""The ``optkit`` command line.

::

    optkit serve model-server --repository DIR [--host H] [--port P] [--config FILE] [--workers N]
                              [--grpc-port G]
    optkit serve gateway --upstream URL[,URL...] [--host H] [--port P] [--config FILE]
                         [--grpc-port G]      (URL: http://host:port, or grpc://host:port)
    optkit models build --repository DIR [--models a,b] [--seed S] [--force]
    optkit bench ...        (see optkit bench --help)
      the lab (pip install 'optkit[lab]'):
    optkit smoke --repository DIR [--duration S]
    optkit soak [--minutes N] ...
    optkit compare A.yaml B.yaml [--pairs N] [--load closed:32] [--load open:2000] [--quick] [--out DIR]
    optkit calibrate CONFIG.yaml [--pairs N] [--load ...] [--out FILE]
    optkit tune BASE.yaml --space SPACE.yaml --slo p99<=10ms [--load closed:32|open:R]
                [--budget 15m] [--trials N] [--pairs N] [--out DIR] [--resume] [--quick]
                (0: the winner validated; 1: none met the SLO, or no verdict; 130: Ctrl-C)
                BASE.yaml may be an arm file (kind: command) with parameters: (arm.NAME)
    optkit gate --base REF --head REF [--spec perf-gate.yaml] [--out DIR]  (1: regressed)
    optkit gate --arms A.yaml B.yaml [--spec ...]  |  optkit gate --simulate [--spec ...]
    optkit week [--days mon,tue] [--quick] [--out DIR]
    optkit week --service ARM.yaml [--fronted ARM.yaml] [--quick] [--out DIR]
                                   (your server, alone vs behind the gateway)
    optkit check-reports RUN_FOLDER [--screenshots DIR]   (the HTML reports, in headless Chromium)

The serving commands need only the serving install; a lab command imports the lab in one
place (``_lab``), which says what to install where it is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import signal
import sys
import time
import types
from pathlib import Path
from typing import Any, Sequence

from ._config import load_config
from ._exceptions import OptkitError
from .bench._cli import add_parser as add_bench_parser
from .models import ModelRepository, build_repository
from .service import GRPC_PORT_FILE_KEY, create_gateway, create_model_server, run_workers, serve

__all__ = ["main", "build_parser"]

MAX_WORKERS = 64  # --workers: processes, each holding every model


def _lab() -> types.ModuleType:
    """The measurement lab; where only the serving part is installed, a clear error (exit 2)."""
    try:
        from . import lab
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("optkit"):
            raise
        print(f"optkit: this command is part of the measurement lab, which needs {exc.name}: "
              f"pip install 'optkit[lab]'", file=sys.stderr)
        raise SystemExit(2) from exc
    return lab


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.grpc_port is not None:  # the flag over the config's server.grpc_port
        config = dataclasses.replace(config, server=dataclasses.replace(
            config.server, grpc_port=None if args.grpc_port < 0 else args.grpc_port))
    host = args.host or config.server.host
    if not _is_loopback(host):
        print(f"optkit: warning: binding {host}, which is not loopback", file=sys.stderr)
    if args.kind == "model-server" and not 1 <= args.workers <= MAX_WORKERS:
        print(f"optkit: --workers must be 1..{MAX_WORKERS}, got {args.workers}", file=sys.stderr)
        return 2
    if args.kind == "model-server" and args.workers > 1 and config.server.grpc_port is not None:
        print("optkit: gRPC (server.grpc_port) serves one process; not with --workers > 1",
              file=sys.stderr)
        return 2
    if args.kind == "model-server" and args.workers > 1 and args.worker_id is None:
        child = ["--repository", args.repository]
        child += ["--config", args.config] if args.config else []
        return run_workers(args.workers, child, host=host, port=args.port,
                           port_file=args.port_file,
                           shutdown_timeout_s=config.server.shutdown_timeout_s)
    if args.kind == "model-server":
        app = create_model_server(args.repository, config)
    else:
        app = create_gateway(args.upstream, config)
    if args.grpc_port_file:
        app[GRPC_PORT_FILE_KEY] = args.grpc_port_file
    serve(app, host=host, port=args.port, port_file=args.port_file,
          shutdown_timeout=config.server.shutdown_timeout_s, access_log=config.server.access_log,
          worker=getattr(args, "worker_id", None), channel_fd=getattr(args, "channel_fd", None))
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _models_build(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    models = args.models.split(",") if args.models else None
    built = build_repository(args.repository, models=models, seed=args.seed, force=args.force)
    repo = ModelRepository(args.repository)
    for name in repo.names():
        cfg = repo.config(name)
        acc = cfg.metrics.get("accuracy")
        print(f"  {name:<16} {cfg.backend:<10} " + (f"accuracy {acc:.4f}" if acc else ""))
    print(f"built {len(built)} model group(s) in {time.perf_counter() - started:.1f} s "
          f"into {Path(args.repository).resolve()}")
    return 0


def _smoke(args: argparse.Namespace) -> int:
    return _lab().run_smoke(args.repository, duration_s=args.duration, config=args.config)


def _soak(args: argparse.Namespace) -> int:
    lab = _lab()
    settings = lab.SoakSettings(minutes=args.minutes, rate=args.rate,
                                concurrency=args.concurrency, reload_every_s=args.reload_every,
                                sample_every_s=args.sample_every)
    report = lab.run_soak(args.repository, args.out, config=args.config, settings=settings,
                          log=lambda line: print(line, flush=True))  # a line a minute
    print(Path(args.out, "soak.md").read_text())
    return 0 if report["ok"] else 1


def _session_settings(lab: types.ModuleType, args: argparse.Namespace) -> Any:
    base = lab.QUICK if args.quick else lab.STANDARD
    changes = {k: v for k, v in {"pairs": args.pairs, "warmup_s": args.warmup,
                                 "duration_s": args.duration, "seed": args.seed,
                                 "workload": args.workload, "engine": args.engine,
                                 "max_reruns": args.max_reruns,
                                 "transport": getattr(args, "transport", None)}.items()
               if v is not None}
    if args.load:
        changes["loads"] = tuple(args.load)
    return dataclasses.replace(base, **changes)


def _compare(args: argparse.Namespace) -> int:
    lab = _lab()
    out = args.out or f"runs/compare-{Path(args.a).stem}-vs-{Path(args.b).stem}"
    settings = _session_settings(lab, args)
    cmp = lab.compare(args.a, args.b, repository=args.repository, settings=settings,
                      calibration=args.calibration, out_dir=out, log=print)
    table = cmp.verdict_table()
    cols = ["load", "metric", "change_pct", "ci_low_pct", "ci_high_pct", "p_adjusted", "delta",
            "verdict"]
    print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(lab.week.conclusion(cmp))
    for arm, independent in cmp.independent_trials().items():
        if not independent:
            print(f"note: arm {arm} is a fixed URL: its trials share one service process and "
                  f"are not independent")
    lost = [load for load, n in cmp.pairs_lost().items() if cmp.settings.pairs - n < 2]
    if lost:  # all (or all but one) pairs lost: no verdict could be reached
        print(f"optkit compare: error: fewer than 2 valid pairs at {', '.join(lost)} (pairs "
              f"lost to invalid trials): no verdict; see {out}/trials.csv", file=sys.stderr)
        return 1
    if args.slo:
        verdict, searches, steps = lab.compare_at_slo(
            args.a, args.b, repository=args.repository, pairs=settings.pairs, slo_ms=args.slo,
            seed=settings.seed, workload=settings.workload, warmup_s=settings.warmup_s,
            step_s=settings.duration_s)
        searches.to_csv(Path(out) / "slo_searches.csv", index=False)
        steps.to_csv(Path(out) / "slo_steps.csv", index=False)
        lab.plotting.latency_vs_load(steps, slo_ms=args.slo).savefig(
            Path(out) / "figures" / "latency-vs-load.png", dpi=110, bbox_inches="tight")
        print(f"throughput at p99 <= {args.slo:g} ms: {verdict.change_pct:+.1f} % "
              f"[{verdict.ci_low_pct:+.1f}, {verdict.ci_high_pct:+.1f}], Holm p "
              f"{verdict.p_adjusted:.3g}: {verdict.verdict}")
        print(searches.groupby("label")["slo_rps"].describe().to_string())
    print(f"results in {out}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    lab = _lab()
    doc = lab.calibrate(args.config, repository=args.repository,
                        settings=_session_settings(lab, args), out=args.out)
    for metric, record in doc["deltas"].items():
        print(f"  {metric:<20} delta {record['delta']:.4f} (~{100 * record['delta']:.1f} %) "
              f"from {record['n_pairs']} A/A pairs at {record['load']}")
    print(f"calibration written to {args.out}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    """Search, validate, write: exit 0 with a verdict, 1 when no candidate met the SLO or the
    validation reached no verdict, 2 for bad input, 130 when interrupted (results written)."""
    lab = _lab()
    try:
        import optuna  # noqa: F401 - the search engine; said here, before anything starts
    except ModuleNotFoundError:
        print("optkit: tune needs optuna: pip install 'optkit[lab]'", file=sys.stderr)
        return 2

    def interrupted(signum: int, frame: Any) -> None:  # SIGTERM stops it like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    out = args.out or f"runs/tune-{Path(args.base).stem}"
    try:
        result = lab.tune(args.base, args.space, slo=args.slo, repository=args.repository,
                          load=args.load, trials=args.trials, budget=args.budget, out_dir=out,
                          workload=args.workload, pairs=args.pairs, warmup_s=args.warmup,
                          duration_s=args.duration, seed=args.seed,
                          calibration=args.calibration,
                          quick=args.quick, resume=args.resume,
                          validate=not args.no_validate, log=lambda line: print(line, flush=True))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"stopped: {result.stopped}")
    if len(result.importances):
        print("importances: " + ", ".join(f"{r.parameter} {r.importance:.2f}"
                                          for r in result.importances.itertuples()))
    print(f"results in {out} (history.csv, pareto.csv, importances.csv, tune.md"
          + (", tuned.yaml" if result.tuned_path else "") + ")")
    if result.interrupted:
        return 130
    if result.best is None:
        print(f"optkit tune: no candidate met {result.slo}", file=sys.stderr)
        return 1
    if not args.no_validate and not result.validated:  # (a base that won needs no session)
        print("optkit tune: the validation reached no verdict", file=sys.stderr)
        return 1
    return 0


def _gate(args: argparse.Namespace) -> int:
    """A performance gate: exit 0 passed, 1 a gated metric regressed, 2 could not judge."""
    lab = _lab()
    from .lab import _gate_report as report

    spec = None

    def interrupted(signum: int, frame: Any) -> None:  # CI cancels with SIGTERM: clean up
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # worktrees removed, services stopped
    try:
        spec = lab.load_gate_spec(args.spec or Path(args.repo) / "perf-gate.yaml",
                                  quick=args.quick)
        if args.pairs is not None:
            spec = dataclasses.replace(spec, settings=dataclasses.replace(spec.settings,
                                                                          pairs=args.pairs))
        if args.calibrate_pairs is not None:
            spec = dataclasses.replace(spec, calibrate_pairs=args.calibrate_pairs)
        if args.simulate:
            rates = lab.gate_error_rates(spec, sessions=args.simulate_sessions or 300)
            print(rates.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
            return 0
        if args.arms is None and (args.base is None or args.head is None):
            raise lab.GateError("give --base REF and --head REF (git refs of --repo), or "
                                "--arms A B (arm files or optkit configs)")
        result = lab.run_gate(spec, base=args.base, head=args.head, arms=args.arms,
                              repo=args.repo, repository=args.repository, out_dir=args.out,
                              work_dir=args.work_dir, keep=args.keep,
                              simulate_sessions=200 if args.simulate_sessions is None
                              else args.simulate_sessions,
                              progress=sys.stderr.isatty(),
                              log=lambda line: print(line, file=sys.stderr, flush=True))
    except OptkitError as exc:
        message = f"optkit gate: error: {exc}"
        print(message, file=sys.stderr)
        report.write_outputs(args.out, report.error_markdown(spec, str(exc)),
                             {"schema_version": 1, "status": "error", "exit_code": 2,
                              "error": str(exc)})
        return 2
    md = report.markdown(result)
    report.write_outputs(args.out, md, report.to_json(result), report.junit_xml(result))
    print(md)
    print(f"optkit gate: {result.status} (exit {result.exit_code}); {args.out}/gate.md, "
          f"gate.json, gate-junit.xml", file=sys.stderr)
    return result.exit_code


def _week(args: argparse.Namespace) -> int:
    week = _lab().week
    days = args.days.split(",") if args.days else None
    summary = week.run_week(days, quick=args.quick, out=args.out, repository=args.repository,
                            service=args.service, fronted=args.fronted)
    print(week.week_summary(summary), flush=True)
    failed = summary[summary["status"] != "ok"]
    for row in failed.itertuples():
        print(f"optkit week: {row.day} {row.status}: {getattr(row, 'error', '') or ''}",
              file=sys.stderr)
    return 0 if failed.empty else 1


def _check_reports(args: argparse.Namespace) -> int:
    return _lab().week.check_report_folder(args.folder, screenshots=args.screenshots)


def _add_session_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", default="build/models")
    p.add_argument("--pairs", type=int, default=None)
    p.add_argument("--load", action="append", default=None,
                   help="closed:N or open:RATE; repeat for several (default closed:32)")
    p.add_argument("--warmup", type=float, default=None, help="seconds discarded per trial")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per trial")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workload", default=None, help="built-in workload name or YAML file")
    p.add_argument("--engine", default=None, choices=["auto", "builtin", "wrk"])
    p.add_argument("--transport", default=None, choices=["http", "grpc"],
                   help="how the load reaches an optkit config's stack: REST (default) or its "
                        "front tier's v2 gRPC service; an arm file's url decides its own")
    p.add_argument("--max-reruns", type=int, default=None,
                   help="times an invalid pair is run again (default 3)")
    p.add_argument("--quick", action="store_true", help="few short trials; provisional verdicts")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optkit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a server (model-server or gateway)")
    serve_sub = serve.add_subparsers(dest="kind", required=True)
    for kind in ("model-server", "gateway"):
        p = serve_sub.add_parser(kind)
        if kind == "model-server":
            p.add_argument("--repository", required=True, help="model repository folder")
            p.add_argument("--workers", type=int, default=1,
                           help="processes sharing the port (connections dealt to them in "
                                "turn), each with its own loop and models (default 1)")
            p.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
            p.add_argument("--channel-fd", type=int, default=None, help=argparse.SUPPRESS)
        else:
            p.add_argument("--upstream", required=True,
                           help="URL[,URL...] of v2 server(s): http(s)://host:port, or "
                                "grpc://host:port (their v2 gRPC service)")
        p.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
        p.add_argument("--port", type=int, default=8000 if kind == "gateway" else 8001)
        p.add_argument("--config", default=None, help="service config YAML")
        p.add_argument("--port-file", default=None, help="write the bound port here once listening")
        p.add_argument("--grpc-port", type=int, default=None,
                       help="also serve v2 over gRPC on this port (0: a free one; -1: off; "
                            "default: the config's server.grpc_port, off unless set)")
        p.add_argument("--grpc-port-file", default=None,
                       help="write the bound gRPC port here once listening")
        p.set_defaults(func=_serve)

    models = sub.add_parser("models", help="build the model repository")
    models_sub = models.add_subparsers(dest="action", required=True)
    build = models_sub.add_parser("build")
    build.add_argument("--repository", required=True)
    build.add_argument("--models", default=None, help="comma-separated names (default: all)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="rebuild models that exist")
    build.set_defaults(func=_models_build)

    smoke = sub.add_parser("smoke", help="start the stack and benchmark it briefly")
    smoke.add_argument("--repository", required=True)
    smoke.add_argument("--duration", type=float, default=5.0)
    smoke.add_argument("--config", default=None)
    smoke.set_defaults(func=_smoke)

    soak = sub.add_parser("soak", help="minutes of mixed checked load with reloads; is memory flat?")
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--repository", default="build/models")
    soak.add_argument("--config", default="experiments/integrated.yaml")
    soak.add_argument("--out", default="runs/soak")
    soak.add_argument("--rate", type=float, default=150.0, help="requests per second offered")
    soak.add_argument("--concurrency", type=int, default=16, help="most requests under way")
    soak.add_argument("--reload-every", type=float, default=30.0, help="seconds between swaps")
    soak.add_argument("--sample-every", type=float, default=3.0, help="seconds between samples")
    soak.set_defaults(func=_soak)

    cmp = sub.add_parser("compare", help="paired randomized A/B trials and a verdict")
    cmp.add_argument("a", help="config A (YAML), e.g. experiments/baseline.yaml")
    cmp.add_argument("b", help="config B (YAML)")
    _add_session_options(cmp)
    cmp.add_argument("--calibration", default="runs/calibration.json",
                     help="noise thresholds from `optkit calibrate` (defaults if absent)")
    cmp.add_argument("--out", default=None)
    cmp.add_argument("--slo", type=float, default=None, metavar="MS",
                     help="also compare throughput at p99 <= MS (paired bisection searches)")
    cmp.set_defaults(func=_compare)

    cal = sub.add_parser("calibrate", help="A/A trials of one config: the noise threshold per metric")
    cal.add_argument("config")
    _add_session_options(cal)
    cal.add_argument("--out", default="runs/calibration.json")
    cal.set_defaults(func=_calibrate)

    tn = sub.add_parser("tune", help="search a config space for the best throughput at a "
                        "latency SLO (Optuna), then validate the winner against the base, paired")
    tn.add_argument("base", help="the starting config, e.g. experiments/integrated.yaml, or "
                    "an arm file (kind: command) whose parameters: the space names as arm.NAME")
    tn.add_argument("--space", required=True, help="the space file: dotted config keys (or "
                    "arm.NAME) -> {int: [lo, hi]} | {float: [lo, hi], log: true} | "
                    "{choices: [...]}")
    tn.add_argument("--slo", required=True, help="the objective, e.g. p99<=10ms")
    tn.add_argument("--load", default="closed:32", help="closed:N or open:RATE (default closed:32)")
    tn.add_argument("--budget", default=None, help="wall clock for the whole job, validation "
                    "included: 15m, 900s, 1h (default 15m when --trials is not given)")
    tn.add_argument("--trials", type=int, default=None, help="the most candidates this run adds")
    tn.add_argument("--pairs", type=int, default=16, help="pairs of the validation session")
    tn.add_argument("--warmup", type=float, default=1.0, help="seconds discarded per trial")
    tn.add_argument("--duration", type=float, default=2.0, help="measured seconds per trial")
    tn.add_argument("--seed", type=int, default=0)
    tn.add_argument("--workload", default="digits", help="built-in workload name or YAML file")
    tn.add_argument("--repository", default="build/models")
    tn.add_argument("--calibration", default="runs/calibration.json",
                    help="noise bands for the validation (defaults if absent)")
    tn.add_argument("--out", default=None, help="the study (study.db) and results "
                    "(default runs/tune-<base>)")
    tn.add_argument("--resume", action="store_true", help="continue the study in --out")
    tn.add_argument("--no-validate", action="store_true", help="search only (no verdict)")
    tn.add_argument("--quick", action="store_true",
                    help="0.4 + 0.8 s trials, 2 validation pairs: provisional")
    tn.set_defaults(func=_tune)

    gate = sub.add_parser("gate", help="base vs head on this runner, paired: exit 1 when "
                          "a gated metric regressed beyond its band, 2 when it could not judge")
    gate.add_argument("--spec", default=None, help="the gate file: service, loads, pairs, "
                      "gated metrics and bands (default: perf-gate.yaml in --repo)")
    gate.add_argument("--base", default=None, help="git ref of the base (e.g. origin/main)")
    gate.add_argument("--head", default=None, help="git ref of the head (e.g. HEAD)")
    gate.add_argument("--repo", default=".", help="the git repository of the refs")
    gate.add_argument("--arms", nargs=2, default=None, metavar=("A", "B"),
                      help="instead of refs: two arm files or optkit configs")
    gate.add_argument("--repository", default="build/models",
                      help="model repository for optkit-config arms")
    gate.add_argument("--out", default="runs/gate", help="gate.md, gate.json, gate-junit.xml "
                      "and the session's files")
    gate.add_argument("--pairs", type=int, default=None, help="override the file's pairs")
    gate.add_argument("--calibrate-pairs", type=int, default=None, metavar="N",
                      help="first N A/A pairs of base vs base: this runner's noise bands")
    gate.add_argument("--quick", action="store_true",
                      help="short trials (a smoke of the gate itself): provisional")
    gate.add_argument("--work-dir", default=None, help="where the checkouts go (default: tmp)")
    gate.add_argument("--keep", action="store_true", help="keep the checkouts after")
    gate.add_argument("--simulate", action="store_true",
                      help="print the gate's simulated false-alarm rate and power; run nothing")
    gate.add_argument("--simulate-sessions", type=int, default=None,
                      help="simulated gates behind the rates (default 200; 0: skip)")
    gate.set_defaults(func=_gate)

    wk = sub.add_parser("week", help="execute the day notebooks into a run folder")
    wk.add_argument("--days", default=None, help="comma-separated, e.g. mon,tue (default: all)")
    wk.add_argument("--quick", action="store_true")
    wk.add_argument("--out", default=None)
    wk.add_argument("--repository", default="build/models")
    wk.add_argument("--service", default=None, metavar="ARM.yaml",
                    help="run notebook 06 on your server (an arm file: kind command or url): "
                    "alone, then behind optkit's gateway layer by layer; only it unless "
                    "--days names days too; exit 1 if it fails")
    wk.add_argument("--fronted", default=None, metavar="ARM.yaml",
                    help="with --service: the setting of your server to put behind the gateway "
                    "(another arm file, e.g. its batching off), measured against --service "
                    "alone; default: the service arm's fronted: key, else the service itself")
    wk.set_defaults(func=_week)

    chk = sub.add_parser("check-reports", help="render a run folder's HTML reports in headless "
                         "Chromium: images loaded, no stderr, headline present")
    chk.add_argument("folder", help="a week's run folder (or one .html report)")
    chk.add_argument("--screenshots", default=None, metavar="DIR",
                     help="save a full-page PNG of each report here")
    chk.set_defaults(func=_check_reports)

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except OptkitError as exc:
        print(f"optkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
