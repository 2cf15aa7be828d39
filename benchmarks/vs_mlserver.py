"""optkit's model server against MLServer (and Triton, and the bare probe) on one artefact.

::

    benchmarks/vs-mlserver/           the arms, as data (``kind: command`` arm files)
      optkit-2w-batching.yaml         optkit serve model-server --workers 2, batching on
      mlserver-<preset>.yaml          MLServer 1.7.1 from .venv-mlserver, its settings.json and
      mlserver-<preset>/                digits-sklearn/model-settings.json in the folder
      bare-probe-2w.yaml              the yardstick: benchmarks/bare_probe.py, 2 processes
      workload.yaml                   one real digits row per request (FP32 [1, 64])
    experiments/external/triton.yaml  Triton 2.51 via pytriton (``make triton``)

    --yardsticks: one run, three paired sessions: optkit against the bare probe, Triton's best
    and MLServer's best (issue 28's targets: >= 0.95x, >= 6x, >= 8x at p99 <= 5 ms), each
    with the breakdown of every arm's mean request time (Triton's statistics, where served).

    1. screening (--screen R, optional): every MLServer preset R times, a shuffled order per
       round ──▶ "MLServer's best" = the highest median req/s. Its trials are thrown away.
    2. the verdict: optkit.lab.compare(A = MLServer preset, B = optkit), wrk closed:32, n pairs
       fixed before the first trial ──▶ per pair d = ln(B/A) ──▶ ratio exp(mean d), BCa CI,
       sign-flip p with Holm over the session's metrics, verdict against the noise band δ.

Every trial starts a fresh server, so the pairs are independent; everything each trial
measured is kept in ``--out`` (trials.csv, verdict.json, each trial's service.log and manifest).
Needs ``wrk`` (``make wrk``), the models (``make models``) and MLServer's venv
(``make mlserver``); ``make vs-mlserver`` does all three and runs the defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import optkit.lab as lab
from optkit import OptkitError
from optkit.bench import wrk_available

REPO = Path(__file__).resolve().parent.parent
ARMS = REPO / "benchmarks" / "vs-mlserver"
WORKLOAD = ARMS / "workload.yaml"
OPTKIT_ARM = ARMS / "optkit-2w-batching.yaml"
PROBE_ARM = ARMS / "bare-probe-2w.yaml"
TRITON_ARM = REPO / "experiments" / "external" / "triton.yaml"
#: --against names that are not MLServer presets
NAMED = {"bare-probe": PROBE_ARM, "triton": TRITON_ARM}
#: issue 28: optkit's throughput over each yardstick's (by arm-name prefix), at p99 <= P99_MS
TARGETS = {"bare-probe": 0.95, "triton": 6.0, "mlserver": 8.0}
P99_MS = 5.0
#: MLServer's best in every screening so far (benchmarks/README.md); --screen re-decides it
BEST_KNOWN = "pw0-batch-lean"
LOAD = "closed:32"  # wrk -t1 -c32: the engine's one thread drives 32 connections


class SetupError(Exception):
    """What is missing before any trial can run; the message says how to get it."""


def arm_path(name: str) -> Path:
    """A preset name (``default``), ``bare-probe``, ``triton`` or an arm file's path -> the
    arm file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path.resolve()
    if name in NAMED:
        return NAMED[name]
    path = ARMS / f"mlserver-{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem[len("mlserver-"):] for p in presets())
        raise SetupError(f"no MLServer preset {name!r} in {ARMS} (known: {known})")
    return path


def presets() -> list[Path]:
    """Every MLServer arm file, sorted by name."""
    return sorted(ARMS.glob("mlserver-*.yaml"))


def mlserver_versions(arm: Any) -> dict[str, str]:
    """The versions in the venv an MLServer arm runs from; SetupError if it cannot be used."""
    python = Path(arm.cwd or ".") / Path(arm.command[0]).parent / "python"
    probe = ("import importlib.metadata as m, json; print(json.dumps({k: m.version(k) for k in "
             "('mlserver', 'mlserver-sklearn', 'scikit-learn', 'uvloop')}))")
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                              timeout=60)
    except OSError:
        raise SetupError(f"arm {arm.name}: no MLServer venv at {python.parent.parent.resolve()}; "
                         "create it with `make mlserver` (benchmarks/README.md)") from None
    if done.returncode != 0:
        raise SetupError(f"arm {arm.name}: {python} is broken:\n{done.stderr[-1500:]}")
    found: dict[str, str] = json.loads(done.stdout)
    from importlib.metadata import version

    if found["scikit-learn"] != version("scikit-learn"):  # the pickle must load the same way
        raise SetupError(f"MLServer's venv has scikit-learn {found['scikit-learn']}, optkit's "
                         f"{version('scikit-learn')}: delete it and run `make mlserver`")
    return found


def plan_against(names: list[str], *, yardsticks: bool, screen: bool) -> list[Path]:
    """The A arms, in the order their sessions run: ``--against`` as given, or with
    ``--yardsticks`` the bare probe, Triton, then MLServer's best (the screening's winner is
    added after screening; otherwise BEST_KNOWN unless an MLServer preset is named)."""
    against = [arm_path(name) for name in names]
    if not yardsticks:
        return against
    against = [PROBE_ARM, TRITON_ARM, *[p for p in against if p not in (PROBE_ARM, TRITON_ARM)]]
    if not screen and not any(p.stem.startswith("mlserver-") for p in against):
        against.append(arm_path(BEST_KNOWN))
    return against


def triton_ready(arm: Any) -> None:
    """SetupError unless the Triton arm's two virtualenvs exist (``make triton``)."""
    failed = REPO / "build" / "third-party" / "triton.failed"
    python = Path(arm.cwd or ".") / arm.command[0]
    if failed.exists() or not python.exists() or not (REPO / ".venv-triton-stub").is_dir():
        why = failed.read_text().strip()[:300] if failed.exists() else f"no {python}"
        raise SetupError(f"arm {arm.name}: Triton is not installed ({why}); `make triton` "
                         "builds .venv-triton and .venv-triton-stub (benchmarks/README.md)")


def screen(arms: list[Path], *, rounds: int, settings: lab.CompareSettings,
           repository: Path, out: Path | None, log: Any = print) -> tuple[Path, list[dict]]:
    """Run every arm ``rounds`` times (shuffled per round); the best by median req/s, and rows.

    A separate, declared step: its trials choose the arm the verdict measures and are never
    part of the verdict's pairs (choosing and judging on the same data would flatter it).
    """
    rng = np.random.default_rng(settings.seed + 1)  # not the verdict's coin flips
    load = lab.parse_load(LOAD, engine="wrk")
    rows, paths = [], {}
    for rnd in range(rounds):
        for i in rng.permutation(len(arms)):
            arm = lab.load_arm(arms[i])
            paths[arm.name] = arms[i]
            try:
                trial = lab.run_trial(arm, repository=repository, load=load,
                                      workload=settings.workload, warmup_s=settings.warmup_s,
                                      duration_s=settings.duration_s, seed=settings.seed + rnd,
                                      out_dir=out / f"r{rnd}-{arm.name}" if out else None)
            except OptkitError as exc:  # a trial that could not run is an invalid trial
                rows.append({"round": rnd, "arm": arm.name, "valid": False,
                             "invalid_reasons": f"trial failed: {exc}"[:500]})
                log(f"  screening round {rnd + 1}/{rounds}: {arm.name} FAILED: {exc}")
                continue
            s = trial.bench.summary
            rows.append({"round": rnd, "arm": arm.name, "valid": trial.valid,
                         "throughput_rps": s.get("throughput_rps"), "p99_ms": s.get("p99_ms"),
                         "invalid_reasons": "; ".join(trial.invalid_reasons)})
            log(f"  screening round {rnd + 1}/{rounds}: {trial!r}")
    medians = {}
    for name in dict.fromkeys(r["arm"] for r in rows):
        rps = [r["throughput_rps"] for r in rows if r["arm"] == name and r["valid"]]
        if 2 * len(rps) > rounds:  # a preset valid in at most half its rounds is not ranked
            medians[name] = statistics.median(rps)
    if not medians:
        raise SetupError("screening: no preset had a valid trial in most rounds")
    return paths[max(medians, key=medians.__getitem__)], rows


def headline(cmp: lab.Comparison) -> dict[str, Any]:
    """The session as the claim: ratio B/A = exp(mean ln(B/A)) with its BCa CI, per metric."""
    trials = cmp.trials[cmp.trials["valid"].astype(bool) & (cmp.trials["pair"] >= 0)]
    out: dict[str, Any] = {
        "a": cmp.a.name, "b": cmp.b.name, "pairs_planned": cmp.settings.pairs,
        "trials": int(len(cmp.trials)),
        "invalid_trials": int((~cmp.trials["valid"].astype(bool)).sum()),
        "elapsed_s": round(cmp.elapsed_s, 1), "deltas_source": cmp.deltas_source}
    for metric in ("throughput_rps", "p50_ms", "p99_ms"):
        try:
            v = cmp.verdict(metric)
        except (KeyError, StopIteration):
            continue
        by_arm = trials.groupby("arm")[metric]
        out[metric] = {
            "pairs": v.n_pairs, "ratio": float(np.exp(v.mean_d)),
            "ci": [float(np.exp(v.ci_low)), float(np.exp(v.ci_high))],
            "p_adjusted": v.p_adjusted, "verdict": v.verdict, "delta": v.delta,
            "median": {cmp.a.name: float(by_arm.median()["A"]),
                       cmp.b.name: float(by_arm.median()["B"])},
            "range": {cmp.a.name: [float(by_arm.min()["A"]), float(by_arm.max()["A"])],
                      cmp.b.name: [float(by_arm.min()["B"]), float(by_arm.max()["B"])]}}
    # where each arm's mean request time goes (median over its trials; NaN: no statistics)
    out["breakdown"] = [{"arm": label, **{k: (None if pd.isna(v) else round(float(v), 4))
                                          for k, v in row.items()}}
                        for (_, label), row in cmp.breakdown().iterrows()]
    return out


def target_of(name: str) -> float | None:
    """Issue 28's throughput target against the arm called ``name`` (None: none set)."""
    return next((t for prefix, t in TARGETS.items() if name.startswith(prefix)), None)


def describe_targets(verdicts: list[dict[str, Any]]) -> str:
    """Issue 28's targets, one row per yardstick: met when the throughput ratio's whole CI is
    at or above the target and optkit's median p99 is at most P99_MS."""
    lines = ["| optkit vs | target | throughput ratio (95 % CI) | verdict | optkit p99 ms | met |",
             "|---|---|---|---|---|---|"]
    for h in verdicts:
        target, m, p99 = target_of(h["a"]), h.get("throughput_rps"), h.get("p99_ms")
        if target is None or m is None or p99 is None:
            continue
        mine = p99["median"][h["b"]]
        met = m["ci"][0] >= target and mine <= P99_MS
        lines.append(f"| {h['a']} | >= {target:g}x at p99 <= {P99_MS:g} ms | {m['ratio']:.3g}x "
                     f"({m['ci'][0]:.3g}-{m['ci'][1]:.3g}) | {m['verdict']} | {mine:.2f} | "
                     f"{'yes' if met else 'no'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def describe_breakdown(h: dict[str, Any]) -> str:
    """The arms' breakdown as a Markdown table (ms per request, medians over trials)."""
    cols = ("mean_ms", "queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms",
            "rest_ms")
    lines = ["| arm | mean | queue | decode | model | encode | rest |", "|---|---|---|---|---|---|---|"]
    for row in h.get("breakdown") or []:
        cells = ["-" if row.get(c) is None else f"{row[c]:.3f}" for c in cols]
        lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def describe(h: dict[str, Any]) -> str:
    """The headline as Markdown lines: one per metric, ratio and CI first."""
    lines = [f"**{h['b']} / {h['a']}**, {LOAD} (wrk), {h['trials']} trials "
             f"({h['invalid_trials']} invalid), {h['elapsed_s']:.0f} s; δ: {h['deltas_source']}",
             "", f"| metric | ratio {h['b']} / {h['a']} | 95 % BCa CI | pairs | Holm p | "
             f"verdict | {h['b']} median (min-max) | {h['a']} median (min-max) |",
             "|---|---|---|---|---|---|---|---|"]
    for metric in ("throughput_rps", "p50_ms", "p99_ms"):
        m = h.get(metric)
        if m is None:
            continue
        fmt = "{:,.0f}" if metric == "throughput_rps" else "{:.2f}"
        cells = [f"{fmt.format(m['median'][k])} ({fmt.format(m['range'][k][0])}-"
                 f"{fmt.format(m['range'][k][1])})" for k in (h["b"], h["a"])]
        lines.append(f"| {metric} | {m['ratio']:.3g}x | {m['ci'][0]:.3g}x-{m['ci'][1]:.3g}x | "
                     f"{m['pairs']} | {m['p_adjusted']:.2g} | {m['verdict']} | "
                     f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def describe_screening(rows: list[dict]) -> str:
    """The screening as a Markdown table, fastest preset first (median req/s, valid trials)."""
    table: dict[str, list[dict]] = {}
    for r in rows:
        table.setdefault(r["arm"], []).append(r)

    def median(rs: list[dict], key: str) -> float:
        return statistics.median([r[key] for r in rs if r["valid"]] or [0.0])

    lines = ["| preset | valid | req/s median (min-max) | p99 ms median |", "|---|---|---|---|"]
    for name, rs in sorted(table.items(), key=lambda kv: -median(kv[1], "throughput_rps")):
        rps = [r["throughput_rps"] for r in rs if r["valid"]] or [0.0]
        lines.append(f"| {name} | {sum(r['valid'] for r in rs)}/{len(rs)} | "
                     f"{median(rs, 'throughput_rps'):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                     f"{median(rs, 'p99_ms'):.1f} |")
    return "\n".join(lines)


def write(out: Path, doc: dict[str, Any]) -> None:
    """summary.json (everything) and summary.md (the tables), rewritten after every step."""
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    targets = describe_targets(doc["verdicts"])
    parts = [f"Issue 28's targets:\n\n{targets}"] if targets else []
    for h in doc["verdicts"]:
        parts.append(describe(h))
        if describe_breakdown(h):
            parts.append("Where the mean request time goes (ms, median over trials; `-`: the "
                         "server keeps no statistics):\n\n" + describe_breakdown(h))
    if doc["screening"]:
        parts.append(f"Screening ({doc['screening']['rounds']} round(s), best: "
                     f"{doc['screening']['best']}):\n\n" + describe_screening(
                         doc["screening"]["trials"]))
    (out / "summary.md").write_text("\n\n".join(parts) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", action="append", default=[], metavar="PRESET|ARM.yaml",
                   help=f"arm A, one verdict each; repeatable (default {BEST_KNOWN}, or the "
                        "screening's winner with --screen); also bare-probe or triton")
    p.add_argument("--yardsticks", action="store_true",
                   help="against the bare probe, Triton's best and MLServer's best (the "
                        f"screening's winner with --screen, else {BEST_KNOWN}), in that order")
    p.add_argument("--optkit", default=str(OPTKIT_ARM), metavar="ARM.yaml", help="arm B")
    p.add_argument("--screen", type=int, default=0, metavar="ROUNDS",
                   help="first pick MLServer's best from every preset, ROUNDS trials each")
    p.add_argument("--pairs", type=int, default=24, help="fixed in advance (>= 8 for Holm)")
    p.add_argument("--warmup", type=float, default=2.0, help="discarded s per trial (whole s)")
    p.add_argument("--duration", type=float, default=8.0, help="measured s per trial (whole s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the A/B order and screening")
    p.add_argument("--calibration", default=None, help="noise bands δ (optkit calibrate)")
    p.add_argument("--repository", type=Path, default=REPO / "build" / "models")
    p.add_argument("--out", type=Path, default=None,
                   help="default runs/vs-mlserver-<timestamp>/")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if wrk_available() is None:
        raise SetupError("wrk is not on PATH: `make wrk` (Debian: apt-get install -y wrk)")
    if not (args.repository / "digits-sklearn" / "1" / "model.joblib").is_file():
        raise SetupError(f"{args.repository} lacks digits-sklearn's joblib: `make models`")
    settings = lab.CompareSettings(pairs=args.pairs, warmup_s=args.warmup,
                                   duration_s=args.duration, loads=(LOAD,), engine="wrk",
                                   workload=str(WORKLOAD), seed=args.seed)
    least = lab.stats.min_pairs_for(0.05, len(settings.analysed_metrics()))
    if args.pairs < least:
        print(f"warning: {args.pairs} pairs: Holm over {len(settings.analysed_metrics())} "
              f"metrics needs >= {least} to reach 0.05: no verdict can be significant")
    optkit_arm = lab.load_arm(Path(args.optkit).resolve())
    against = plan_against(args.against, yardsticks=args.yardsticks, screen=bool(args.screen))
    mlservers = {p: lab.load_arm(p) for p in (presets() if args.screen else [])}
    mlservers.update({p: lab.load_arm(p) for p in against})
    versions = {}
    for arm in mlservers.values():
        if arm.kind == "command" and Path(arm.command[0]).name == "mlserver":
            versions = mlserver_versions(arm)  # one venv behind every preset
        if arm.name.startswith("triton"):
            triton_ready(arm)
    out = (args.out or REPO / "runs" / time.strftime("vs-mlserver-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    git = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                         text=True)
    doc: dict[str, Any] = {
        "command": [sys.executable, *sys.argv], "settings": settings.to_dict(),
        "manifest": lab.environment_manifest(git_dirty=bool(git.stdout.strip())),
        "mlserver_venv": versions, "screening": None, "verdicts": []}
    started = time.perf_counter()
    if args.screen:
        print(f"screening {len(mlservers)} MLServer presets, {args.screen} round(s) each")
        best, rows = screen(presets(), rounds=args.screen, settings=settings,
                            repository=args.repository, out=out / "screening")
        doc["screening"] = {"rule": "highest median req/s over valid trials, valid in most "
                                    "rounds; these trials are not reused by the verdict",
                            "rounds": args.screen, "best": best.stem, "trials": rows}
        print(describe_screening(rows))
        print(f"screening: MLServer's best is {best.stem}")
        write(out, doc)
        against = ([*[p for p in against if p != best], best] if args.yardsticks
                   else [best, *[p for p in against if p != best]])
    against = against or [arm_path(BEST_KNOWN)]
    status = 0
    for path in against:
        cmp = lab.compare(path, optkit_arm, repository=args.repository, settings=settings,
                          calibration=args.calibration, log=print,
                          out_dir=out / f"{optkit_arm.name}-vs-{lab.load_arm(path).name}")
        h = headline(cmp)
        doc["verdicts"].append(h)
        print(describe(h))
        write(out, doc)
        if any(settings.pairs - lost < 2 for lost in cmp.pairs_lost().values()):
            print(f"vs_mlserver: fewer than 2 valid pairs against {cmp.a.name}: no verdict",
                  file=sys.stderr)
            status = 1
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    write(out, doc)
    print(f"results in {out} ({doc['elapsed_s']:.0f} s)")
    return status


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except (SetupError, OptkitError) as exc:
        print(f"vs_mlserver: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
