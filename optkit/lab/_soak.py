"""Soak: minutes of mixed, checked load on a stack with every layer on; is it flat?

::

    private repository (digits-mlp, synthetic, synthetic-wide, soak-swap v1) ─▶ launch_stack
      paced client (rate, bounded concurrency) ─▶ gateway, a mix of:
        json     digits-mlp, JSON, 1-4 held-out images      outputs == a local predict
        binary   the same, binary tensors both ways         outputs == a local predict
        wide     synthetic-wide, a 65,536-wide answer       streamed; every value == row sum
        stream   generate_stream on synthetic, 300-600 rows  every event's rows == row sums
        swap     soak-swap, version v answers v columns      version one that served meanwhile
      reloader  every reload_every_s: soak-swap v+1 written, loaded through the gateway
      sampler   every sample_every_s: RSS and open fds of both tiers (/proc/<pid>/fd)
    ─▶ soak.json, soak.md, soak.png: counts, misattributed answers, slope of RSS/fds with CI

Every answer is checked against what its own request asked (known inputs, a local
call of the same model), so an answer that went to the wrong client is counted
``misattributed``. Flat: after a warm-up, the least-squares slope of a series has a
95 % confidence interval (Newey-West standard error: samples a few seconds apart are
autocorrelated) that includes 0 or lies below a stated bound.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
from scipy import stats as st

from .._config import load_config
from ..models import ModelConfig, digits_split, load_model
from ..service import launch_stack
from ..v2 import (BINARY_HEADER, TensorSpec, decode_infer_result, encode_binary_infer_request,
                  encode_infer_request)

__all__ = ["SoakSettings", "process_figures", "trend", "run_soak", "MIX"]

SWAP = "soak-swap"
#: request kinds and their share of the load
MIX = {"json": 0.35, "binary": 0.25, "swap": 0.2, "stream": 0.1, "wide": 0.1}
MiB = 2**20


def process_figures(pid: int) -> tuple[int, int]:
    """(resident set size in bytes, open file descriptors) of a process now."""
    rss = psutil.Process(pid).memory_info().rss
    return int(rss), len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class SoakSettings:
    """One soak run. Bounds: ``rss_bound_per_min`` bytes and ``fd_bound_per_min`` fds per
    minute are the largest slopes still called flat when the CI excludes 0."""

    minutes: float = 10.0
    rate: float = 150.0
    concurrency: int = 16
    reload_every_s: float = 30.0
    sample_every_s: float = 3.0
    warmup_fraction: float = 0.2
    rss_bound_per_min: float = 64 * 1024
    fd_bound_per_min: float = 0.1
    seed: int = 0
    request_timeout_s: float = 30.0


def trend(t_s: np.ndarray, y: np.ndarray, bound_per_min: float) -> dict[str, Any]:
    """Least-squares slope of ``y`` per minute with a 95 % CI (Newey-West, Bartlett lags).

    ``flat``: the CI includes 0, or its upper end is below ``bound_per_min``.
    """
    t = np.asarray(t_s, np.float64) / 60.0
    y = np.asarray(y, np.float64)
    n = t.size
    if n < 4:
        raise ValueError(f"need at least 4 samples for a slope, got {n}")
    tc = t - t.mean()
    sxx = float(tc @ tc)
    slope = float(tc @ (y - y.mean()) / sxx) if sxx > 0 else 0.0
    resid = y - y.mean() - slope * tc
    u = tc * resid
    lags = int(math.floor(4 * (n / 100.0) ** (2 / 9)))
    s = float(u @ u)
    for lag in range(1, lags + 1):
        s += 2 * (1 - lag / (lags + 1)) * float(u[lag:] @ u[:-lag])
    se = math.sqrt(max(s, 0.0)) / sxx if sxx > 0 else 0.0
    half = float(st.t.ppf(0.975, n - 2)) * se
    lo, hi = slope - half, slope + half
    return {"slope_per_min": slope, "ci95": [lo, hi], "samples": n, "nw_lags": lags,
            "bound_per_min": bound_per_min, "first": float(y[0]), "last": float(y[-1]),
            "min": float(y.min()), "max": float(y.max()),
            "flat": bool(lo <= 0.0 <= hi or hi < bound_per_min)}


# -- the private repository and the oracle ------------------------------------------------------
def _swap_version(root: Path, version: int) -> None:
    """soak-swap version v: a synthetic model answering row sums in v columns."""
    ModelConfig(name=SWAP, version=str(version), backend="synthetic",
                inputs=(TensorSpec("x", "FP32", (-1, 16)),),
                outputs=(TensorSpec("y", "FP32", (-1, version)),), max_batch_size=256,
                parameters={"cost_a_us": 20.0, "cost_b_us": 2.0, "output_width": version,
                            "load_cost_s": 0.2}).write(root / SWAP / str(version))


def _prepare_repository(source: Path, root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name in ("digits-mlp", "synthetic", "synthetic-wide"):
        if not (source / name).is_dir():
            raise FileNotFoundError(f"{source / name} missing; run `optkit models build`")
        shutil.copytree(source / name, root / name)
    _swap_version(root, 1)


@dataclass
class _Oracle:
    """Known inputs and what the model says for each of them (computed here, directly)."""

    pixels: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray

    @classmethod
    def build(cls, repo: Path) -> "_Oracle":
        _, xte, _, _ = digits_split()
        out = load_model(repo / "digits-mlp" / "1").predict({"pixels": xte})
        return cls(xte, out["probabilities"], out["label"])


# -- the client ---------------------------------------------------------------------------------
class _Soak:
    def __init__(self, url: str, repo: Path, settings: SoakSettings) -> None:
        self.url, self.repo, self.s = url, repo, settings
        self.rng = np.random.default_rng(settings.seed)
        self.oracle = _Oracle.build(repo)
        self.counts: collections.Counter[str] = collections.Counter()
        self.by_status: collections.Counter[int] = collections.Counter()
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.transport: collections.Counter[str] = collections.Counter()
        self.mismatch_samples: list[str] = []
        self.version = 1          # the newest soak-swap version whose load answered 200
        self.requested = 1        # the newest version asked for
        self.reloads: list[dict[str, Any]] = []

    # each check returns None when the answer is right, else what was wrong
    async def _json(self, session: Any, n: int) -> str | None:
        idx = self.rng.choice(len(self.oracle.pixels), int(self.rng.integers(1, 5)))
        body = encode_infer_request({"pixels": self.oracle.pixels[idx]}, request_id=f"r{n}",
                                    outputs=["probabilities", "label"])
        status, raw, head = await self._post(session, "digits-mlp/infer", body, {})
        return status if isinstance(status, str) else self._check_digits(raw, head, idx, f"r{n}")

    async def _binary(self, session: Any, n: int) -> str | None:
        idx = self.rng.choice(len(self.oracle.pixels), int(self.rng.integers(1, 5)))
        body, head_len = encode_binary_infer_request({"pixels": self.oracle.pixels[idx]})
        status, raw, head = await self._post(
            session, "digits-mlp/infer", body,
            {"Content-Type": "application/octet-stream", BINARY_HEADER: str(head_len)})
        return status if isinstance(status, str) else self._check_digits(raw, head, idx, None)

    def _check_digits(self, raw: bytes, head: int | None, idx: np.ndarray,
                      rid: str | None) -> str | None:
        res = decode_infer_result(raw, head)
        if rid is not None and res.id != rid:
            return f"id {res.id!r} != {rid!r}"
        labels = res.outputs["label"].reshape(-1)
        if not np.array_equal(labels, self.oracle.labels[idx].reshape(-1)):
            return f"labels {labels.tolist()} != {self.oracle.labels[idx].reshape(-1).tolist()}"
        if not np.allclose(res.outputs["probabilities"], self.oracle.probabilities[idx],
                           rtol=1e-4, atol=1e-6):
            return "probabilities differ from a direct call"
        return None

    def _rows(self, n_rows: int) -> np.ndarray:
        return self.rng.integers(0, 1000, (n_rows, 16)).astype(np.float32)

    async def _swap(self, session: Any, n: int) -> str | None:
        x = self._rows(2)
        low = self.version
        status, raw, head = await self._post(session, f"{SWAP}/infer",
                                             encode_infer_request({"x": x}, request_id=f"s{n}"), {})
        if isinstance(status, str):
            return status
        res = decode_infer_result(raw, head)
        v = int(res.model_version or 0)
        y = res.outputs["y"]
        if not low <= v <= self.requested:
            return f"version {v} outside [{low}, {self.requested}] that served meanwhile"
        expect = np.repeat(x.sum(axis=1, dtype=np.float32).reshape(-1, 1), v, axis=1)
        if res.id != f"s{n}" or y.shape != expect.shape or not np.array_equal(y, expect):
            return f"swap answer of version {v} does not match its rows"
        return None

    async def _wide(self, session: Any, n: int) -> str | None:
        x = self._rows(1)
        status, raw, head = await self._post(session, "synthetic-wide/infer",
                                             encode_infer_request({"x": x}, request_id=f"w{n}"),
                                             {})
        if isinstance(status, str):
            return status
        res = decode_infer_result(raw, head)
        y = res.outputs["y"]
        if res.id != f"w{n}" or y.shape != (1, 65536) or not np.all(y == x.sum(dtype=np.float32)):
            return "wide answer does not match its row"
        return None

    async def _stream(self, session: Any, n: int) -> str | None:
        x = self._rows(int(self.rng.integers(300, 601)))
        status, raw, _ = await self._post(session, "synthetic/generate_stream",
                                          orjson.dumps({"x": x.tolist()}), {})
        if isinstance(status, str):
            return status
        events = [orjson.loads(b[6:]) for b in raw.split(b"\n\n") if b]
        if not events or not events[-1].get("done") or events[-1].get("rows_scored") != len(x):
            last = events[-1] if events else None
            return f"stream did not end with done for {len(x)} rows: {last}"
        got = np.concatenate([np.asarray(e["outputs"]["y"], np.float32) for e in events[:-1]])
        if not np.array_equal(got.reshape(-1), x.sum(axis=1, dtype=np.float32)):
            return "streamed rows do not match their inputs"
        return None

    async def _post(self, session: Any, path: str, body: bytes,
                    headers: dict[str, str]) -> tuple[Any, bytes, int | None]:
        """POST; a non-200 answer is returned as its status text, counted by the caller."""
        async with session.post(f"{self.url}/v2/models/{path}", data=body,
                                headers=headers or {"Content-Type": "application/json"}) as resp:
            raw = await resp.read()
            self.by_status[resp.status] += 1
            self.counts["answered"] += 1
            if resp.status != 200:
                return f"status {resp.status}: {raw[:200]!r}", raw, None
            head = resp.headers.get(BINARY_HEADER)
            return resp.status, raw, None if head is None else int(head)

    async def one(self, session: Any, kind: str, n: int) -> None:
        import aiohttp

        self.counts["sent"] += 1
        self.by_kind[kind] += 1
        try:
            problem = await getattr(self, "_" + kind)(session, n)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.transport[type(exc).__name__] += 1
            return
        except Exception as exc:  # a malformed answer is a wrong answer, and is kept
            problem = f"undecodable answer: {exc!r}"
        if problem is None:
            self.counts["correct"] += 1
        elif problem.startswith("status "):
            self.counts["errors"] += 1
        else:
            self.counts["misattributed"] += 1
            if len(self.mismatch_samples) < 10:
                self.mismatch_samples.append(f"{kind}: {problem}")

    async def drive(self, session: Any, end: float) -> None:
        """Paced arrivals; at most ``concurrency`` under way (a due send with none free waits)."""
        kinds, weights = list(MIX), np.array(list(MIX.values()))
        slots = asyncio.Semaphore(self.s.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        start, n = time.monotonic(), 0
        while time.monotonic() < end:
            due = start + n / self.s.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await slots.acquire()
            kind = kinds[int(self.rng.choice(len(kinds), p=weights / weights.sum()))]
            task = asyncio.ensure_future(self.one(session, kind, n))
            task.add_done_callback(lambda t: (slots.release(), tasks.discard(t)))
            tasks.add(task)
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=self.s.request_timeout_s + 5)

    async def reload(self, session: Any, end: float) -> None:
        """Every ``reload_every_s``: write soak-swap v+1 and load it through the gateway."""
        while time.monotonic() + self.s.reload_every_s < end:
            await asyncio.sleep(self.s.reload_every_s)
            nxt = self.requested + 1
            await asyncio.to_thread(_swap_version, self.repo, nxt)
            self.requested = nxt
            t0 = time.monotonic()
            async with session.post(f"{self.url}/v2/repository/models/{SWAP}/load") as resp:
                await resp.read()
                ok = resp.status == 200
            if ok:
                self.version = nxt
            self.reloads.append({"version": nxt, "status": resp.status,
                                 "seconds": round(time.monotonic() - t0, 3)})


async def _sample(pids: dict[str, int], every_s: float, end: float,
                  out: list[dict[str, Any]]) -> None:
    t0 = time.monotonic()
    while time.monotonic() < end:
        row: dict[str, Any] = {"t_s": time.monotonic() - t0}
        for name, pid in pids.items():
            row[f"{name}_rss"], row[f"{name}_fds"] = process_figures(pid)
        out.append(row)
        await asyncio.sleep(every_s)


async def _run(url: str, pids: dict[str, int], repo: Path,
               settings: SoakSettings) -> tuple[_Soak, list[dict[str, Any]]]:
    import aiohttp

    soak = _Soak(url, repo, settings)
    samples: list[dict[str, Any]] = []
    end = time.monotonic() + settings.minutes * 60
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=settings.concurrency + 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(soak.drive(session, end), soak.reload(session, end),
                             _sample(pids, settings.sample_every_s, end, samples))
    return soak, samples


def run_soak(repository: str | Path, out_dir: str | Path, *,
             config: str | Path | None = None,
             settings: SoakSettings | None = None) -> dict[str, Any]:
    """Run one soak and write ``soak.json``, ``soak.md`` and ``soak.png`` to ``out_dir``.

    Returns the report; ``report["ok"]`` is False when any answer was lost, wrong or
    failed, or a series is not flat.
    """
    s = settings or SoakSettings()
    out = Path(out_dir)
    repo = out / "repository"
    _prepare_repository(Path(repository), repo)
    base = load_config(config).to_dict()
    base["loading"]["models"] = ["digits-mlp", "synthetic", "synthetic-wide", SWAP]
    started = time.time()
    with launch_stack(base, repository=repo, workdir=out / "stack") as stack:
        pids = {"gateway": stack.services["gateway"].pid,
                "model_server": stack.services["model-server"].pid}
        soak, samples = asyncio.run(_run(stack.url, pids, repo, s))
    report = _report(soak, samples, s, base.get("name", "config"), started)
    _write(out, report, samples)
    return report


def _report(soak: _Soak, samples: list[dict[str, Any]], s: SoakSettings, config: str,
            started: float) -> dict[str, Any]:
    c = soak.counts
    transport = sum(soak.transport.values())
    counts = {"sent": c["sent"], "answered": c["answered"], "correct": c["correct"],
              "errors": c["errors"], "misattributed": c["misattributed"],
              "transport_failures": transport,
              "unaccounted": c["sent"] - c["answered"] - transport,
              "by_status": {str(k): v for k, v in sorted(soak.by_status.items())},
              "by_kind": dict(soak.by_kind), "transport": dict(soak.transport)}
    t = np.array([r["t_s"] for r in samples])
    keep = t >= t[-1] * s.warmup_fraction if t.size else t
    trends: dict[str, Any] = {}
    for tier in ("gateway", "model_server"):
        for what, bound in (("rss", s.rss_bound_per_min), ("fds", s.fd_bound_per_min)):
            y = np.array([r[f"{tier}_{what}"] for r in samples])
            trends[f"{tier}_{what}"] = (trend(t[keep], y[keep], bound) if keep.sum() >= 4
                                        else {"flat": False, "error": "too few samples"})
    ok = (c["correct"] == c["sent"] and counts["unaccounted"] == 0
          and all(tr["flat"] for tr in trends.values()))
    return {"ok": ok, "config": config, "started_utc": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "settings": asdict(s), "counts": counts, "trends": trends,
            "reloads": soak.reloads, "final_swap_version": soak.version,
            "mismatch_samples": soak.mismatch_samples, "cpus": os.cpu_count()}


def _write(out: Path, report: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_bytes(orjson.dumps({**report, "samples": samples},
                                                 option=orjson.OPT_INDENT_2))
    c = report["counts"]
    lines = [f"# Soak: {report['settings']['minutes']:g} min, config `{report['config']}`, "
             f"started {report['started_utc']}", "",
             f"**{'PASS' if report['ok'] else 'FAIL'}**: sent {c['sent']}, answered "
             f"{c['answered']}, correct {c['correct']}, errors {c['errors']} "
             f"(by status {c['by_status']}), transport failures {c['transport_failures']}, "
             f"misattributed {c['misattributed']}, unaccounted {c['unaccounted']}; "
             f"reloads {len(report['reloads'])} (final soak-swap version "
             f"{report['final_swap_version']}).", "",
             "| series | first | last | slope / min | 95 % CI | bound / min | flat |",
             "|---|---|---|---|---|---|---|"]
    for name, tr in report["trends"].items():
        if "slope_per_min" not in tr:
            lines.append(f"| {name} | | | | | | {tr.get('error')} |")
            continue
        scale, unit = (MiB, " MiB") if name.endswith("rss") else (1, "")
        lo, hi = tr["ci95"]
        lines.append(f"| {name} | {tr['first'] / scale:.2f}{unit} | {tr['last'] / scale:.2f}{unit} "
                     f"| {tr['slope_per_min'] / scale:+.4f} "
                     f"| [{lo / scale:+.4f}, {hi / scale:+.4f}] "
                     f"| {tr['bound_per_min'] / scale:.4f} | {'yes' if tr['flat'] else 'NO'} |")
    lines += ["", f"Slopes after the first {report['settings']['warmup_fraction']:.0%} of the run "
              "(warm-up); CI: least squares with Newey-West standard errors. ![](soak.png)", ""]
    (out / "soak.md").write_text("\n".join(lines))
    _plot(out / "soak.png", samples)


def _plot(path: Path, samples: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not samples:
        return
    t = np.array([r["t_s"] for r in samples]) / 60
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for tier in ("gateway", "model_server"):
        ax1.plot(t, np.array([r[f"{tier}_rss"] for r in samples]) / MiB, label=tier)
        ax2.plot(t, [r[f"{tier}_fds"] for r in samples], label=tier)
    ax1.set_ylabel("RSS (MiB)")
    ax2.set_ylabel("open fds")
    ax2.set_xlabel("minutes")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
