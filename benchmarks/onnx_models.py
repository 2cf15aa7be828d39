"""The ONNX models measured: their cost per call, scikit-learn vs ONNX Runtime on one network,
and batching on a model heavy enough that a row costs milliseconds.

::

    cost       in-process, no server: each digits model's predict at batch 1 and 32
               (median of --rounds timings of >= 0.2 s each)
    vs         optkit.lab.compare(A = digits-sklearn, B = digits-onnx) through the model server
               alone: the same trained network, the same name ("digits") in two repositories
               (build/onnx-vs/{sklearn,onnx}), the baseline config, closed:32, --pairs pairs
    batching   Tuesday's comparison on digits-cnn: compare(A = pooling, B = pooling + batching),
               both tiers, closed:32, --pairs pairs: the verdict with p99
    knee       the batching arm at max_batch_size 1, 2, 4, ... 64 (both tiers), --rounds
               rounds in a shuffled order each: throughput and p99 per size; the knee is the
               smallest size within 5 % of the best median throughput
    threads    the model server alone (batching on) serving digits-cnn with intra-op threads
               x --workers on this machine's cores, --rounds shuffled rounds; then
               compare(A = 1 thread 1 worker, B = the best other cell) if one is faster

Every trial is a fresh service (the lab's run_trial): warm-up --warmup s discarded, a
--duration s window, the lab's validity gates. Results go to --out (summary.md, summary.json,
each session's folder). Run it alone on the machine (make test and it would share the cores):

    .venv/bin/python benchmarks/onnx_models.py [--steps cost,vs,batching,knee,threads]
        [--pairs 16] [--rounds 3] [--warmup 1] [--duration 3] [--seed 0] [--out runs/onnx-...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import optkit.lab as lab
from optkit import OptkitError, build_repository, digits_split, load_config, load_model

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "onnx"
LOAD = "closed:32"
STEPS = ("cost", "vs", "batching", "knee", "threads")
KNEE_SIZES = (1, 2, 4, 8, 16, 32, 64)
#: (intra-op threads, spinning, model-server workers) cells of the threads step
CELLS = ((1, True, 1), (2, True, 1), (2, False, 1), (1, True, 2), (2, True, 2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--repository", type=Path, default=REPO / "build" / "models")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.steps = [s for s in args.steps.split(",") if s]
    if unknown := set(args.steps) - set(STEPS):
        ap.error(f"unknown step(s) {sorted(unknown)}; known: {list(STEPS)}")
    args.out = args.out or REPO / "runs" / f"onnx-models-{time.strftime('%Y%m%d-%H%M%S')}"
    return args


# -- cost -------------------------------------------------------------------------------
def call_cost(model: Any, x: np.ndarray, rounds: int) -> float:
    """Median seconds per predict call over ``rounds`` timings of at least 0.2 s each."""
    feed = {"pixels": x}
    model.predict(feed)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.05:
        model.predict(feed)
        n += 1
    calls = max(1, int(n * 0.2 / (time.perf_counter() - start)))
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            model.predict(feed)
        times.append((time.perf_counter() - t) / calls)
    return statistics.median(times)


def step_cost(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    _, xte, _, _ = digits_split()
    rows = []
    for name in ("digits-mlp", "digits-sklearn", "digits-onnx", "digits-cnn"):
        folder = args.repository / name / "1"
        model = load_model(folder)
        cfg = model.config
        weights = sum(p.stat().st_size for p in folder.iterdir() if p.name != "config.yaml")
        b1, b32 = call_cost(model, xte[:1], 2 * args.rounds + 1), \
            call_cost(model, xte[:32], 2 * args.rounds + 1)
        rows.append({"model": name, "backend": cfg.backend, "file_bytes": weights,
                     "accuracy": cfg.metrics.get("accuracy"), "batch1_ms": b1 * 1e3,
                     "batch32_ms": b32 * 1e3, "batch32_ms_per_row": b32 * 1e3 / 32})
    doc["cost"] = rows
    lines = ["| model | backend | file | held-out accuracy | batch 1 ms/call | batch 32 ms/call "
             "| batch 32 ms/row |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['file_bytes'] / 1e6:.2f} MB | "
                     f"{r['accuracy']} | {r['batch1_ms']:.3f} | {r['batch32_ms']:.3f} | "
                     f"{r['batch32_ms_per_row']:.4f} |")
    return "\n".join(lines)


# -- sessions ---------------------------------------------------------------------------
def settings(args: argparse.Namespace, workload: Path, pairs: int | None = None
             ) -> lab.CompareSettings:
    return dataclasses.replace(lab.STANDARD, pairs=pairs or args.pairs, warmup_s=args.warmup,
                               duration_s=args.duration, loads=(LOAD,), workload=str(workload),
                               seed=args.seed)


def headline(cmp: lab.Comparison) -> dict[str, Any]:
    trials = cmp.trials[cmp.trials["valid"].astype(bool) & (cmp.trials["pair"] >= 0)]
    out: dict[str, Any] = {"a": cmp.a.name, "b": cmp.b.name, "trials": int(len(cmp.trials)),
                           "invalid_trials": int((~cmp.trials["valid"].astype(bool)).sum()),
                           "elapsed_s": round(cmp.elapsed_s, 1),
                           "deltas_source": cmp.deltas_source, "metrics": {}}
    for metric in ("throughput_rps", "p50_ms", "p99_ms"):
        v = cmp.verdict(metric)
        med = trials.groupby("arm")[metric].median()
        out["metrics"][metric] = {
            "pairs": v.n_pairs, "ratio": float(np.exp(v.mean_d)),
            "ci": [float(np.exp(v.ci_low)), float(np.exp(v.ci_high))],
            "p_adjusted": v.p_adjusted, "verdict": v.verdict, "delta": v.delta,
            "median_a": float(med["A"]), "median_b": float(med["B"])}
    return out


def describe(h: dict[str, Any]) -> str:
    lines = [f"**{h['b']} / {h['a']}**, {LOAD}, {h['trials']} trials ({h['invalid_trials']} "
             f"invalid), {h['elapsed_s']:.0f} s; noise band: {h['deltas_source']}", "",
             f"| metric | ratio B/A | 95 % BCa CI | pairs | Holm p | verdict | B median | "
             f"A median |", "|---|---|---|---|---|---|---|---|"]
    for metric, m in h["metrics"].items():
        fmt = "{:,.0f}" if metric == "throughput_rps" else "{:.2f}"
        lines.append(f"| {metric} | {m['ratio']:.3g}x | {m['ci'][0]:.3g}x-{m['ci'][1]:.3g}x | "
                     f"{m['pairs']} | {m['p_adjusted']:.2g} | {m['verdict']} | "
                     f"{fmt.format(m['median_b'])} | {fmt.format(m['median_a'])} |")
    return "\n".join(lines)


def session(args: argparse.Namespace, a: Any, b: Any, workload: Path, name: str,
            repository: Path, doc: dict[str, Any]) -> str:
    cmp = lab.compare(a, b, repository=repository, settings=settings(args, workload),
                      out_dir=args.out / name, log=print)
    h = headline(cmp)
    doc.setdefault("sessions", {})[name] = h
    return describe(h)


def arm_server(name: str, repository: Path, config: Path, workers: int = 1,
               model: str = "digits-cnn") -> dict[str, Any]:
    """A ``kind: command`` arm: optkit's model server alone, fresh per trial."""
    return {"kind": "command", "name": name,
            "command": [sys.executable, "-m", "optkit", "serve", "model-server",
                        "--repository", str(repository), "--port", "{port}",
                        "--config", str(config), "--workers", str(workers)],
            "url": "http://127.0.0.1:{port}",
            "ready_url": f"http://127.0.0.1:{{port}}/v2/models/{model}/ready",
            "startup_timeout_s": 60}


def step_vs(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    """digits-sklearn and digits-onnx under one name, each in a repository of its own."""
    arms = []
    for kind, source in (("sklearn", "digits-sklearn"), ("onnx", "digits-onnx")):
        root = REPO / "build" / "onnx-vs" / kind
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(args.repository / source, root / "digits")
        cfg = yaml.safe_load((root / "digits" / "1" / "config.yaml").read_text())
        cfg["name"] = "digits"
        (root / "digits" / "1" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        arms.append(arm_server(f"{source}", root, HERE / "model-server-baseline.yaml",
                               model="digits"))
    return session(args, arms[0], arms[1], HERE / "digits.yaml", "sklearn-vs-onnx",
                   args.repository, doc)


def cnn_config(source: str, **batching: Any) -> Any:
    """An experiment config serving only digits-cnn (batching fields replaced if given)."""
    cfg = load_config(REPO / "experiments" / source)
    cfg = dataclasses.replace(cfg, loading=dataclasses.replace(cfg.loading, models=("digits-cnn",)))
    if batching:
        cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{'-'.join(map(str, batching.values()))}",
                                  batching=dataclasses.replace(cfg.batching, **batching))
    return cfg


def step_batching(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    return session(args, cnn_config("pooling.yaml"), cnn_config("batching.yaml"),
                   HERE / "digits-cnn.yaml", "cnn-batching", args.repository, doc)


def rounds(args: argparse.Namespace, arms: dict[str, Any], workload: Path, name: str,
           doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every arm once per round, in an order shuffled per round; one row per trial."""
    rng = np.random.default_rng(args.seed + 1)
    load = lab.parse_load(LOAD)
    rows = []
    for rnd in range(args.rounds):
        for i in rng.permutation(len(arms)):
            label, arm = list(arms.items())[i]
            try:
                t = lab.run_trial(arm, repository=args.repository, load=load,
                                  workload=str(workload), warmup_s=args.warmup,
                                  duration_s=args.duration, seed=args.seed + rnd,
                                  out_dir=args.out / name / f"r{rnd}-{label}")
                s = t.bench.summary
                row = {"round": rnd, "arm": label, "valid": t.valid,
                       "throughput_rps": s.get("throughput_rps"), "p50_ms": s.get("p50_ms"),
                       "p99_ms": s.get("p99_ms"), "invalid": "; ".join(t.invalid_reasons)}
            except OptkitError as exc:
                row = {"round": rnd, "arm": label, "valid": False, "invalid": str(exc)[:300]}
            print(f"  {name} round {rnd + 1}/{args.rounds}: {row}")
            rows.append(row)
    doc[name] = rows
    return rows


def medians(rows: list[dict[str, Any]], arm: str) -> tuple[float, float, int]:
    valid = [r for r in rows if r["arm"] == arm and r["valid"]]
    if not valid:
        return float("nan"), float("nan"), 0
    return (statistics.median(r["throughput_rps"] for r in valid),
            statistics.median(r["p99_ms"] for r in valid), len(valid))


def step_knee(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    arms = {f"max_batch_size {b}": cnn_config("batching.yaml", max_batch_size=b)
            for b in KNEE_SIZES}
    rows = rounds(args, arms, HERE / "digits-cnn.yaml", "cnn-knee", doc)
    table = {label: medians(rows, label) for label in arms}
    best = max(rps for rps, _, n in table.values() if n)
    knee = next(label for label, (rps, _, n) in table.items() if n and rps >= 0.95 * best)
    doc["knee"] = knee
    lines = ["| max_batch_size | req/s median | p99 ms median | valid trials |",
             "|---|---|---|---|"]
    for label, (rps, p99, n) in table.items():
        lines.append(f"| {label.split()[-1]} | {rps:,.0f} | {p99:.1f} | {n}/{args.rounds} |")
    return "\n".join(lines) + f"\n\nknee (smallest within 5 % of the best median req/s): {knee}"


def step_threads(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    folder = args.out / "threads-configs"
    folder.mkdir(parents=True, exist_ok=True)
    arms = {}
    for threads, spinning, workers in CELLS:
        label = f"threads {threads}{'' if spinning else ' no-spin'} x workers {workers}"
        config = folder / f"t{threads}{'' if spinning else 'n'}.yaml"
        base = yaml.safe_load((HERE / "model-server-batching.yaml").read_text())
        base["loading"]["parameters"] = {"digits-cnn": {"intra_op_threads": threads,
                                                        "intra_op_spinning": spinning}}
        config.write_text(yaml.safe_dump(base, sort_keys=False))
        arms[label] = arm_server(label.replace(" ", "-"), args.repository, config, workers)
    rows = rounds(args, arms, HERE / "digits-cnn.yaml", "cnn-threads", doc)
    table = {label: medians(rows, label) for label in arms}
    lines = [f"| cell (on {os.cpu_count()} cores) | req/s median | p99 ms median | valid |",
             "|---|---|---|---|"]
    for label, (rps, p99, n) in table.items():
        lines.append(f"| {label} | {rps:,.0f} | {p99:.1f} | {n}/{args.rounds} |")
    default = next(iter(arms))
    best = max((l for l in table if table[l][2]), key=lambda l: table[l][0])
    text = "\n".join(lines)
    if best != default:
        text += "\n\n" + session(args, arms[default], arms[best], HERE / "digits-cnn.yaml",
                                 "cnn-threads-verdict", args.repository, doc)
    else:
        text += f"\n\nthe default cell ({default}) had the highest median: no session run"
    return text


def run(args: argparse.Namespace) -> int:
    build_repository(args.repository, models=["digits-onnx", "digits-cnn"])
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"command": sys.argv, "manifest": lab.environment_manifest()}
    parts: list[str] = []
    steps = {"cost": step_cost, "vs": step_vs, "batching": step_batching, "knee": step_knee,
             "threads": step_threads}
    started = time.perf_counter()
    for step in args.steps:
        t = time.perf_counter()
        print(f"== {step}")
        text = steps[step](args, doc)
        parts.append(f"## {step} ({time.perf_counter() - t:.0f} s)\n\n{text}")
        print(text)
        (args.out / "summary.md").write_text("\n\n".join(parts) + "\n")
        (args.out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"results in {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run(parse_args(None)))
