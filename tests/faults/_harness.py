"""The fault suite's shared harness: a stack with every layer on, steady load, exact counts.

::

    with FaultStack(repository) as fs:            integrated.yaml (+ overrides), real processes
        with SteadyLoad(fs.gateway_url, ...) as load:   built-in generator, in its own process
            t = fs.kill_model_server(catch=True)  SIGKILL / SIGSTOP / SIGCONT, restart on the
            fs.restart_model_server()             same port (the gateway still points there)
        tally = Tally.of(load.result())           one row per request the generator sent
        tally.reconcile()                         sent == answered + transport failures, exactly
        tally.failed_outside([(t0, t1)])          failures outside the fault's window: none

    books = Books.between(before, after)          a tier's inference books over the run:
    books.reconcile(tally, preflight=1)           received == what clients sent, exactly,
                                                  and each status the clients saw, exactly

    storm = burst(fs.gateway_url, [Shot(path, body, cancel_after_s=0.01), ...])
    storm.reconcile()                             sent == answered + cancelled + transport
    c = server_counts(url)                        a tier's counters, open connections, tasks,
    wait_settled(url, connections=.., tasks=..)   batchers' cancelled/rejected, stream counts

Times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC), shared by every process on the
machine, so the generator's per-request start/end line up with when a fault was injected.
Everything is bounded: the load has a fixed window, each wait here has a deadline.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from optkit._config import ServiceConfig
from optkit.lab._soak import process_figures
from optkit.bench import BenchResult, LoadSpec, run_bench
from optkit.bench._records import ERROR_KINDS, TRANSPORT_ERRORS
from optkit.service import Stack, launch_stack
from optkit.service._launcher import launch_service

__all__ = ["INTEGRATED", "integrated_config", "FaultStack", "SteadyLoad", "Tally", "Books",
           "get_json", "post_json", "wait_until", "Shot", "BurstTally", "burst", "server_counts",
           "wait_settled"]

INTEGRATED = Path(__file__).resolve().parents[2] / "experiments" / "integrated.yaml"
#: how long a kill that must catch a request keeps the model server stopped, at most
CATCH_WAIT_S = 0.5


def integrated_config(**sections: Mapping[str, Any]) -> ServiceConfig:
    """``experiments/integrated.yaml`` (every layer on) with some keys of some sections changed,
    e.g. ``integrated_config(server={"upstream_timeout_s": 1.0})``."""
    base = ServiceConfig.from_yaml(INTEGRATED).to_dict()
    for name, changes in sections.items():
        base[name] = {**base[name], **changes}
    return ServiceConfig.from_dict(base)


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def post_json(url: str, body: bytes = b"", timeout_s: float = 30.0) -> tuple[int, Any]:
    """POST; return (status, decoded JSON body) for any status, errors included."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_until(predicate: Any, what: str, timeout_s: float = 10.0, every_s: float = 0.02) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(every_s)
    raise AssertionError(f"never happened within {timeout_s} s: {what}")


class FaultStack:
    """A launched stack whose model server can be killed, stalled and restarted on its port.

    The gateway is launched once and never touched: what a fault does to the model
    server, the gateway must absorb on its own.
    """

    def __init__(self, repository: str | Path, config: ServiceConfig | None = None) -> None:
        self.config = config or integrated_config()
        self.stack: Stack = launch_stack(self.config, repository=repository)
        self.repository = Path(repository)
        self.port = int(self.stack.model_server_url.rsplit(":", 1)[1])
        self._stopped: list[int] = []
        self.orphans: list[int] = []

    @property
    def gateway_url(self) -> str:
        assert self.stack.gateway_url is not None
        return self.stack.gateway_url

    @property
    def model_server_url(self) -> str:
        return self.stack.model_server_url

    def pid(self, name: str = "model-server") -> int:
        return self.stack.services[name].pid

    def kill_model_server(self, *, catch: bool = False) -> int:
        """SIGKILL the model server alone; return when, in monotonic ns.

        Its children (the loader's worker processes) are not signalled: they must leave
        by themselves. Their pids are kept in ``orphans``; :meth:`close` reaps stragglers.

        ``catch``: make sure the kill catches a client's request on its way. Under load one
        usually is, but not surely: on a busy machine every request a client still waits
        for may already be answered and on its way back (a run once caught none of 16). So
        the server is first stopped (SIGSTOP, at most ``CATCH_WAIT_S``, well within the
        gateway's upstream timeout) until the gateway holds a client request besides the
        /stats read asking: its answer needs the stopped server, so only the kill ends it.
        """
        svc = self.stack.services["model-server"]
        self.orphans += _children(svc.pid)
        try:
            if catch:
                os.kill(svc.pid, signal.SIGSTOP)
                wait_until(lambda: self.gateway_stats()["server"]["in_flight"] >= 2,
                           "a client request held at the gateway by the stopped model server",
                           timeout_s=CATCH_WAIT_S, every_s=0.005)
        finally:  # a failed wait still kills: no stopped server is left behind
            at = time.monotonic_ns()
            svc.process.send_signal(signal.SIGKILL)
            svc.process.wait(5)
        return at

    def orphans_alive(self) -> list[int]:
        """The killed servers' children still running (zombies excluded)."""
        import psutil

        alive = []
        for pid in self.orphans:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.Error:
                pass
        return alive

    def restart_model_server(self, ready_timeout_s: float = 30.0) -> int:
        """Start a model server on the same port again; return when it was ready (ns)."""
        old = self.stack.services["model-server"]
        assert self.stack.workdir is not None
        self.stack.services["model-server"] = launch_service(
            "model-server", ["--repository", str(self.repository.resolve())],
            workdir=self.stack.workdir, config_path=self.stack.workdir / "config.yaml",
            ready_timeout_s=ready_timeout_s, port=self.port)
        assert self.stack.services["model-server"].url == old.url
        return time.monotonic_ns()

    def stall_model_server(self) -> int:
        """SIGSTOP the model server: its sockets stay open, nothing answers."""
        pid = self.pid()
        at = time.monotonic_ns()
        os.kill(pid, signal.SIGSTOP)
        self._stopped.append(pid)
        return at

    def resume_model_server(self) -> int:
        pid = self.pid()
        os.kill(pid, signal.SIGCONT)
        self._stopped.remove(pid)
        return time.monotonic_ns()

    def heal(self) -> None:
        """Undo any fault: continue a stopped model server, restart a dead one."""
        for pid in list(self._stopped):
            os.kill(pid, signal.SIGCONT)
            self._stopped.remove(pid)
        if self.stack.services["model-server"].process.poll() is not None:
            self.restart_model_server()

    def gateway_stats(self) -> dict[str, Any]:
        return get_json(self.gateway_url + "/stats")

    def figures(self, name: str = "gateway") -> tuple[int, int]:
        """(RSS bytes, open file descriptors) of one tier now."""
        return process_figures(self.pid(name))

    def close(self) -> None:
        for pid in self._stopped:  # never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.stack.stop(10)
        for pid in self.orphans_alive():  # a failed test must not leave processes behind
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> "FaultStack":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


class SteadyLoad:
    """A closed-loop run of the built-in generator in a background thread.

    ``run_bench`` blocks while its generator process runs; the thread lets the test
    inject faults meanwhile. Warm-up is 0, so every request sent is in the records.
    """

    def __init__(self, target: str, *, model: str = "digits-mlp", concurrency: int = 16,
                 duration_s: float = 4.0, timeout_s: float = 5.0,
                 workload: Any = None) -> None:
        self._kwargs: dict[str, Any] = dict(
            workload=workload, model=model, warmup_s=0.0, duration_s=duration_s,
            timeout_s=timeout_s, probe_timeout_s=5.0)
        self._target = target
        self._load = LoadSpec(mode="closed", concurrency=concurrency)
        self._result: BenchResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started_ns = 0
        self._base = 0

    def _run(self) -> None:
        try:
            self._result = run_bench(self._target, self._load, **self._kwargs)
        except BaseException as exc:  # handed to the test thread by result()
            self._error = exc

    def start(self) -> "SteadyLoad":
        self._base = _infer_count(self._target)
        self.started_ns = time.monotonic_ns()
        self._thread.start()
        return self

    def wait_sending(self, minimum: int = 50, timeout_s: float = 20.0) -> None:
        """Block until the target has counted ``minimum`` inferences since :meth:`start`.

        The generator reports nothing while it runs and its probes take a moment;
        the target's own count is the honest signal that the load is on.
        """
        wait_until(lambda: _infer_count(self._target) - self._base >= minimum,
                   f"{minimum} inferences under load at {self._target}", timeout_s)

    def result(self) -> BenchResult:
        self._thread.join(self._kwargs["duration_s"] + self._kwargs["timeout_s"] + 60)
        if self._error is not None:
            raise self._error
        assert self._result is not None, "the load thread did not finish"
        return self._result

    def __enter__(self) -> "SteadyLoad":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self._thread.join(self._kwargs["duration_s"] + self._kwargs["timeout_s"] + 60)


def _infer_count(url: str) -> int:
    return int(get_json(url + "/stats")["server"]["infer_requests"])


@dataclass
class Tally:
    """Every request the generator sent, counted one way only.

    ``sent`` rows left for the socket; each is either ``answered`` (an HTTP status came
    back) or a transport failure (reset, timeout, protocol). Nothing else exists.
    """

    start: np.ndarray
    end: np.ndarray
    status: np.ndarray
    error: np.ndarray
    by_status: dict[int, int] = field(default_factory=dict)
    by_transport: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, result: BenchResult) -> "Tally":
        raw = result.records
        sent = raw["start_ns"] > 0
        tally = cls(raw["start_ns"][sent], raw["end_ns"][sent], raw["status"][sent].astype(int),
                    raw["error_code"][sent].astype(int))
        tally.by_status = dict(sorted(collections.Counter(
            int(s) for s in tally.status if s > 0).items()))
        tally.by_transport = {ERROR_KINDS[k]: int((tally.error == k).sum())
                              for k in TRANSPORT_ERRORS if (tally.error == k).any()}
        return tally

    @property
    def sent(self) -> int:
        return int(self.start.size)

    @property
    def answered(self) -> int:
        return int((self.status > 0).sum())

    @property
    def ok(self) -> int:
        return int((self.status == 200).sum())

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    def reconcile(self) -> None:
        """sent == answered + transport failures, and answered == the sum over statuses."""
        transport = sum(self.by_transport.values())
        assert self.sent == self.answered + transport, self.summary()
        assert self.answered == sum(self.by_status.values()), self.summary()

    def failed_outside(self, windows: Iterable[tuple[int, int]]) -> np.ndarray:
        """Indices of failed requests whose life [start, end] touches none of ``windows``."""
        bad = self.status != 200
        touches = np.zeros_like(bad)
        for lo, hi in windows:
            touches |= (self.start <= hi) & (self.end >= lo)
        return np.flatnonzero(bad & ~touches)

    def in_flight_at(self, t_ns: int) -> np.ndarray:
        """Indices of requests sent before ``t_ns`` and finished after it."""
        return np.flatnonzero((self.start < t_ns) & (self.end > t_ns))

    def summary(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered, "ok": self.ok,
                "failed": self.failed, "by_status": self.by_status,
                "transport": self.by_transport}


@dataclass
class Books:
    """One tier's inference books between two ``/stats`` snapshots (``server`` sections).

    ``requests`` every inference request the tier received; each ended ``ok`` (2xx),
    ``refused`` (by cause, the step that refused it, and status) or ``cancelled`` (its
    client left first), or is still in flight.
    """

    requests: int
    ok: int
    cancelled: int
    refused: dict[tuple[str, int], int]

    @classmethod
    def between(cls, before: Mapping[str, Any], after: Mapping[str, Any]) -> "Books":
        def flat(server: Mapping[str, Any]) -> dict[tuple[str, int], int]:
            return {(cause, int(status)): int(n)
                    for cause, by_status in server["infer_refused"].items()
                    for status, n in by_status.items()}

        old, new = flat(before), flat(after)
        refused = {k: n - old.get(k, 0) for k, n in new.items() if n != old.get(k, 0)}
        return cls(*(int(after[k]) - int(before[k])
                     for k in ("infer_requests", "infer_ok", "infer_cancelled")), refused)

    @property
    def in_flight(self) -> int:
        return self.requests - self.ok - self.cancelled - sum(self.refused.values())

    def by_status(self) -> dict[int, int]:
        """What the tier answered, by status (2xx counted as 200), as a client counts."""
        out: collections.Counter[int] = collections.Counter({200: self.ok} if self.ok else {})
        for (_, status), n in self.refused.items():
            out[status] += n
        return dict(sorted(out.items()))

    def by_cause(self) -> dict[str, int]:
        out: collections.Counter[str] = collections.Counter()
        for (cause, _), n in self.refused.items():
            out[cause] += n
        return dict(sorted(out.items()))

    def reconcile(self, *tallies: "Tally | BurstTally", preflight: int = 0,
                  others: Mapping[int, int] | None = None) -> None:
        """The books agree exactly with what the clients saw, every client answered.

        ``tallies``: every client's count over the same span (generator runs, bursts);
        ``preflight``: requests the generator sent before its window (its ``check_infer``,
        one per model, answered 200); ``others``: any further inference requests sent
        over the span, by the status their client saw.
        """
        seen: collections.Counter[int] = collections.Counter({200: preflight} if preflight
                                                             else {})
        seen.update(others or {})
        for tally in tallies:
            assert not isinstance(tally, BurstTally) or tally.cancelled == 0, tally
            seen.update(tally.by_status)
            assert sum(tally.by_status.values()) == tally.sent, tally  # each one answered
        assert self.in_flight == 0 and self.cancelled == 0, self
        assert self.requests == sum(seen.values()), (self, dict(seen))
        assert self.by_status() == dict(sorted(seen.items())), (self, dict(seen))

    def reconcile_leavers(self, *tallies: "Tally | BurstTally", preflight: int = 0) -> None:
        """As :meth:`reconcile` where some clients left before their answer (bursts with
        ``cancel_after_s``): every request sent was received; the tier answered or cancelled
        each; a client that left was either cancelled here or answered after it had gone."""
        sent = preflight + sum(t.sent for t in tallies)
        answered = preflight + sum(sum(t.by_status.values()) for t in tallies)
        left = sum(getattr(t, "cancelled", 0) for t in tallies)
        assert all(not getattr(t, "transport", 0) for t in tallies), tallies
        assert self.in_flight == 0 and self.refused == {}, self
        assert self.requests == sent, (self, sent)
        assert self.ok - answered == left - self.cancelled >= 0, (self, answered, left)

    def summary(self) -> dict[str, Any]:
        return {"received": self.requests, "ok": self.ok, "cancelled": self.cancelled,
                "refused": {f"{c}/{s}": n for (c, s), n in sorted(self.refused.items())}}


# -- bursts of raw clients: storms of cancellations, floods beyond a queue ----------------

@dataclass
class Shot:
    """One request of a :func:`burst`: where, what, and when its client gives up.

    ``cancel_after_s`` None: wait for the whole answer. ``read_first`` with a cancel time:
    cancel only once the answer's first bytes arrived (a client leaving mid-stream).
    """

    path: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    cancel_after_s: float | None = None
    read_first: bool = False


@dataclass
class BurstTally:
    """What the clients of a burst saw, each request counted exactly once."""

    sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    cancelled: int = 0  # the client gave up before the answer was whole
    transport: int = 0  # reset, refused, timed out
    retry_after: int = 0  # answers carrying Retry-After
    json_errors: int = 0  # error answers whose body is a JSON {"error": str}

    @property
    def answered(self) -> int:
        return sum(self.by_status.values())

    def reconcile(self) -> None:
        """sent == answered + cancelled + transport failures, exactly."""
        assert self.sent == self.answered + self.cancelled + self.transport, self


def burst(base_url: str, shots: list[Shot], *, in_flight: int = 256,
          timeout_s: float = 30.0) -> BurstTally:
    """Fire ``shots`` at ``base_url`` (at most ``in_flight`` at once); bounded by ``timeout_s``.

    A shot's ``cancel_after_s`` counts from when its whole request was on the wire (so
    the server has it, however slow the connecting was), or, with ``read_first``, from
    the first bytes of its answer. A request that outlives ``timeout_s`` is a transport
    failure, never counted as cancelled.
    """
    import asyncio

    import aiohttp

    tally = BurstTally()

    async def on_sent(_: Any, ctx: Any, __: Any) -> None:
        ctx.trace_request_ctx["sent"].set()

    async def exchange(session: aiohttp.ClientSession, shot: Shot, sent: asyncio.Event) -> None:
        async with session.post(base_url + shot.path, data=shot.body, headers=dict(shot.headers),
                                trace_request_ctx={"sent": sent}) as resp:
            if shot.read_first and resp.status == 200:  # an error answer is read whole
                await resp.content.readany()
                if shot.cancel_after_s is not None:
                    await asyncio.sleep(shot.cancel_after_s)
                    raise asyncio.CancelledError  # leave mid-body: the connection is dropped
            body = await resp.read()
            if resp.status >= 400 and _is_json_error(body):
                tally.json_errors += 1
            if "Retry-After" in resp.headers:
                tally.retry_after += 1
            tally.by_status[resp.status] = tally.by_status.get(resp.status, 0) + 1

    async def one(session: aiohttp.ClientSession, sem: asyncio.Semaphore, shot: Shot) -> None:
        async with sem:
            tally.sent += 1
            sent = asyncio.Event()
            task = asyncio.create_task(exchange(session, shot, sent))
            if shot.cancel_after_s is not None and not shot.read_first:
                waiter = asyncio.create_task(sent.wait())
                await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                await asyncio.wait([task], timeout=shot.cancel_after_s)
                task.cancel()  # a no-op if it was answered in time
            try:
                await task
            except asyncio.CancelledError:
                tally.cancelled += 1
            except (aiohttp.ClientError, TimeoutError):
                tally.transport += 1

    async def run() -> None:
        sem = asyncio.Semaphore(in_flight)
        connector = aiohttp.TCPConnector(limit=in_flight, force_close=True)
        trace = aiohttp.TraceConfig()
        trace.on_request_chunk_sent.append(on_sent)
        async with aiohttp.ClientSession(connector=connector, trace_configs=[trace],
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            await asyncio.gather(*(one(s, sem, shot) for shot in shots))

    asyncio.run(run())
    tally.by_status = dict(sorted(tally.by_status.items()))
    return tally


def _is_json_error(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body).get("error"), str)
    except (ValueError, AttributeError):
        return False


def server_counts(url: str) -> dict[str, int]:
    """A tier's request counters, open connections and tasks, and its batchers' totals."""
    stats = get_json(url + "/stats")
    server = stats["server"]
    out = {k: int(server[k]) for k in ("accepted", "completed", "in_flight", "cancelled",
                                       "open_connections", "tasks", "server_errors")}
    for key in ("cancelled", "rejected", "queued", "expired"):
        out["batch_" + key] = sum(int(b[key]) for b in stats.get("batching", {}).values())
    streaming = stats.get("streaming") or {}
    for key in ("streamed", "disconnects", "active"):
        out["stream_" + key] = int(streaming.get(key, 0))
    return out


def wait_settled(url: str, *, connections: int, tasks: int, timeout_s: float = 10.0) -> dict[str, int]:
    """Wait until a tier has nothing in flight and at most this many connections and tasks
    (the counts before a fault, plus the probe's own); return its counts then."""
    wait_until(lambda: (lambda c: c["in_flight"] <= 1 and c["open_connections"] <= connections
                        and c["tasks"] <= tasks)(server_counts(url)),
               f"{url} back to <= {connections} connections, {tasks} tasks, nothing in flight",
               timeout_s)
    return server_counts(url)
