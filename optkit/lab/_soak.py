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
      sampler   every sample_every_s: RSS and open fds of both tiers (/proc/<pid>/fd), the
                fds split into connections and the rest (_descriptors); each minute a
                progress line (minute k of n, requests, errors, RSS, fds)
      drain     after the load: wait until the pools' idle connections have all closed
    ─▶ soak.json, soak.md, soak.png (_soak_report): counts, misattributed answers, the
       gateway's books against the client's counts, slopes of RSS and non-connection fds
       with CI, connections against their pools' bounds

Every answer is checked against what its own request asked (known inputs, a local
call of the same model), so an answer that went to the wrong client is counted
``misattributed``. Flat: after a warm-up, the least-squares slope of a series has a
95 % confidence interval (Newey-West standard error: samples a few seconds apart are
autocorrelated) that includes 0 or lies below a stated bound. Connections are judged
apart (a pool holds as many as the load's highest concurrency so far, and lets them go
only when idle: a staircase while the load lasts, which no slope test tells from a leak):
each within its pool's bound, and none left once the load has stopped.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np
import orjson
import psutil

from .._config import load_config
from ._descriptors import connections
from ._soak_report import TIERS, build_report, trend, write_report
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
    minute are the largest slopes still called flat when the CI excludes 0. A short run
    resolves less: RSS wanders within a band (``rss_band_bytes``: the allocator takes and
    returns memory as large answers come and go; measured up to 0.8 MiB over 10 minutes),
    so the RSS bound of a run is the larger of ``rss_bound_per_min`` and that band spread
    over its measured minutes (4 minutes: 320 KiB/min; 30 minutes: 64 KiB/min).
    ``prime_s``: the first seconds (within the warm-up) are sent closed-loop at the
    concurrency cap, not paced, so the pools and the allocator reach the peak the load
    can drive them to before anything is measured."""

    minutes: float = 10.0
    rate: float = 150.0
    concurrency: int = 16
    reload_every_s: float = 30.0
    sample_every_s: float = 3.0
    warmup_fraction: float = 0.2
    rss_bound_per_min: float = 64 * 1024
    rss_band_bytes: float = 1024 * 1024
    fd_bound_per_min: float = 0.1
    seed: int = 0
    request_timeout_s: float = 30.0
    prime_s: float = 20.0


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
        """Paced arrivals; at most ``concurrency`` under way (a due send with none free waits).
        First the priming: as fast as the slots allow, for ``prime_s`` (within the warm-up)."""
        kinds, weights = list(MIX), np.array(list(MIX.values()))
        slots = asyncio.Semaphore(self.s.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        start, n = time.monotonic(), 0
        paced = start + min(self.s.prime_s, (end - start) * self.s.warmup_fraction)
        primed = 0  # requests sent while priming; pacing starts after them
        while time.monotonic() < end:
            if time.monotonic() < paced:
                primed += 1
            else:
                due = paced + (n - primed) / self.s.rate
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


#: one tier to sample: its process, its own port, its upstream's port (None: it has none)
Tier = tuple[int, int, "int | None"]


def _figures(tiers: dict[str, Tier]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, (pid, port, upstream) in tiers.items():
        held = connections(pid, port, upstream)
        row[f"{name}_rss"] = psutil.Process(pid).memory_info().rss
        row[f"{name}_fds"], row[f"{name}_other"] = held.fds, held.other
        row[f"{name}_in"] = held.inbound
        if upstream is not None:
            row[f"{name}_out"] = held.outbound
    return row


def _progress(soak: _Soak, row: dict[str, Any], minute: int) -> str:
    """One line: minute k of n, the requests so far, the errors, each tier's RSS and fds."""
    c = soak.counts
    tiers = [f"{tier.replace('_', ' ')} {row[f'{tier}_rss'] / MiB:.1f} MiB, "
             f"{row[f'{tier}_fds']} fds ({row[f'{tier}_in']} in"
             + (f", {row[f'{tier}_out']} out" if f"{tier}_out" in row else "")
             + f", {row[f'{tier}_other']} other)" for tier in TIERS]
    return (f"soak: minute {minute} of {soak.s.minutes:g}: {c['sent']:,} sent, "
            f"{c['answered']:,} answered, {c['errors']} errors, {c['misattributed']} "
            f"misattributed, {sum(soak.transport.values())} transport failures | "
            + " | ".join(tiers))


async def _sample(soak: _Soak, tiers: dict[str, Tier], end: float, out: list[dict[str, Any]],
                  log: Callable[[str], None] | None) -> None:
    t0, minute = time.monotonic(), 0
    while time.monotonic() < end:
        row: dict[str, Any] = {"t_s": time.monotonic() - t0, **_figures(tiers)}
        out.append(row)
        if log is not None and row["t_s"] >= 60 * (minute + 1):
            minute = int(row["t_s"] // 60)
            log(_progress(soak, row, minute))
        await asyncio.sleep(soak.s.sample_every_s)


async def _books(session: Any, url: str) -> dict[str, Any]:
    async with session.get(url + "/stats") as resp:
        return orjson.loads(await resp.read())["server"]


def _books_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The gateway's inference books over the load: received, by status, refused by cause."""
    by_status: collections.Counter[str] = collections.Counter()
    refused: dict[str, int] = {}
    ok = after["infer_ok"] - before["infer_ok"]
    if ok:
        by_status["200"] = ok
    for cause, statuses in after["infer_refused"].items():
        for status, n in statuses.items():
            n -= before["infer_refused"].get(cause, {}).get(status, 0)
            if n:
                refused[f"{cause}/{status}"] = n
                by_status[status] += n
    return {"received": after["infer_requests"] - before["infer_requests"],
            "by_status": dict(sorted(by_status.items())), "refused": refused,
            "cancelled": after["infer_cancelled"] - before["infer_cancelled"]}


async def _drain(tiers: dict[str, Tier], bound_s: float,
                 log: Callable[[str], None] | None) -> dict[str, Any]:
    """After the load: wait (at most ``bound_s``) until no tier holds a connection."""
    if log is not None:
        log(f"soak: load done; waiting up to {bound_s:g} s for the pools' idle connections "
            "to close")
    t0 = time.monotonic()
    while True:
        row = _figures(tiers)
        left = {k: row[k] for k in row if k.endswith(("_in", "_out"))}
        waited = time.monotonic() - t0
        if not any(left.values()) or waited > bound_s:
            return {"seconds": round(waited, 1), "bound_s": bound_s, "left": left,
                    "fds": {t: row[f"{t}_fds"] for t in TIERS}}
        await asyncio.sleep(0.5)


async def _run(url: str, tiers: dict[str, Tier], repo: Path, settings: SoakSettings,
               drain_s: float, log: Callable[[str], None] | None,
               ) -> tuple[_Soak, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    import aiohttp

    soak = _Soak(url, repo, settings)
    samples: list[dict[str, Any]] = []
    end = time.monotonic() + settings.minutes * 60
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=settings.concurrency + 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        before = await _books(session, url)
        await asyncio.gather(soak.drive(session, end), soak.reload(session, end),
                             _sample(soak, tiers, end, samples, log))
        books = _books_between(before, await _books(session, url))
    return soak, samples, books, await _drain(tiers, drain_s, log)


def _bounds(config: dict[str, Any], s: SoakSettings) -> dict[str, tuple[int, str]]:
    """Each connection series' bound, and why (see optkit.lab._descriptors)."""
    clients = s.concurrency + 2
    pooling = config["pooling"]
    upstream = min(clients, pooling["limit"]) if pooling["enabled"] and pooling["limit"] \
        else clients
    why_up = (f"one upstream call at a time per client request, so no more than the client's "
              f"connections ({clients})" + (f" and the pool's limit ({pooling['limit']})"
                                            if pooling["enabled"] and pooling["limit"] else ""))
    return {"gateway_in": (clients, f"the soak client's connector limit (concurrency "
                                    f"{s.concurrency} + 2: a reload and a /stats read)"),
            "gateway_out": (upstream, why_up),
            "model_server_in": (upstream, "its only client is the gateway's pool (same bound)")}


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def run_soak(repository: str | Path, out_dir: str | Path, *,
             config: str | Path | None = None, settings: SoakSettings | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one soak and write ``soak.json``, ``soak.md`` and ``soak.png`` to ``out_dir``.

    ``log``, if given, gets a progress line each minute and one when the load is done.
    Returns the report; ``report["ok"]`` is False when any answer was lost, wrong or
    failed, the gateway's books disagree with the client, a series is not flat, or a
    pool held more connections than its bound or kept one after the load.
    """
    s = settings or SoakSettings()
    out = Path(out_dir)
    repo = out / "repository"
    _prepare_repository(Path(repository), repo)
    base = load_config(config).to_dict()
    base["loading"]["models"] = ["digits-mlp", "synthetic", "synthetic-wide", SWAP]
    started = time.time()
    pooling = base["pooling"]
    # idle pooled connections close after keepalive_timeout, found by a sweep that runs
    # every keepalive_timeout: gone within two of them
    drain_s = 2 * float(pooling["keepalive_timeout"] or 0) + 5 if pooling["enabled"] else 5.0
    with launch_stack(base, repository=repo, workdir=out / "stack") as stack:
        gw, ms = stack.services["gateway"], stack.services["model-server"]
        tiers: dict[str, Tier] = {"gateway": (gw.pid, _port(gw.url), _port(ms.url)),
                                  "model_server": (ms.pid, _port(ms.url), None)}
        soak, samples, books, drain = asyncio.run(_run(stack.url, tiers, repo, s, drain_s, log))
    report = build_report(soak, samples, s, base.get("name", "config"), started, books,
                          _bounds(base, s), drain)
    write_report(out, report, samples)
    return report

