"""The built-in load generator: callbacks on keep-alive connections, no task per request.

::

    closed loop:  conn ──answer──▶ on_response ──▶ send the next request on the same conn
    open loop:    timetable ──tick──▶ dispatch ──▶ idle conn? send : wait in `pending`
                                        └─ outstanding >= max_in_flight? dropped
                  conn ──answer──▶ on_response ──▶ pending? send the oldest : idle

Every request gets a row in :class:`Records` the moment it is scheduled, so a
stall cannot hide a request (coordinated omission): latency is ``end -
scheduled``. The generator watches itself: its CPU time over the window, the
lag of a 10 ms ticker (is its loop busy?) and, in the open loop, how late the
timetable's wake-ups ran. Runs are bounded: the timetable or the window ends,
outstanding requests get ``timeout_s`` to finish and are then abandoned.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any

import numpy as np

from .._exceptions import BenchError
from .._quantiles import quantiles
from ._client import HttpConnection
from ._load import LoadSpec, schedule_offsets_ns
from ._timer import Alarm
from ._records import CONNECT, DROPPED, HTTP, TIMEOUT, Records

__all__ = ["GeneratorJob", "Generator"]

_TICK_NS = 10_000_000
_MAX_ERROR_SAMPLES = 5


@dataclass(frozen=True, kw_only=True)
class GeneratorJob:
    """Everything the generator process needs; built (and encoded) by the parent."""

    host: str
    port: int
    requests: tuple[bytes, ...]
    models: tuple[int, ...]
    load: LoadSpec
    warmup_s: float
    duration_s: float
    seed: int = 0
    timeout_s: float = 5.0
    max_requests: int = 5_000_000
    connect_timeout_s: float = 2.0
    cpus: tuple[int, ...] = ()
    #: a split run (``_shards``): this generator sends the open-loop timetable's requests
    #: ``shard``, ``shard + shards``, ... and nothing else; ``shards`` 1 is the whole run
    shard: int = 0
    shards: int = 1
    #: wall-clock instant (``time.time_ns``) the shards of a split run agree to start at;
    #: 0 starts as soon as the connections are open
    start_unix_ns: int = 0
    #: "http": ``requests`` are HTTP/1.1 requests, one per keep-alive connection; "grpc":
    #: serialized ``ModelInferRequest`` messages, slots on one channel (``_grpc_client``)
    transport: str = "http"


async def _sleep_until(t_ns: int) -> None:
    """Sleep until the monotonic clock reads ``t_ns``: uvloop's millisecond timers can wake
    up to 1 ms early, and a closed-loop send before the window's start falls out of it."""
    while (left := t_ns - monotonic_ns()) > 0:
        await asyncio.sleep(left / 1e9)


def _quantiles_ms(values: list[int]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    arr = np.asarray(values, dtype=np.float64) / 1e6
    p50, p99 = quantiles(arr, [0.50, 0.99])
    return {"p50": float(p50), "p99": float(p99), "max": float(arr.max())}


class Generator:
    """Offers one job's load to one target and records every request."""

    def __init__(self, job: GeneratorJob) -> None:
        self.job = job
        self.loop = asyncio.get_running_loop()
        self.rec = Records(capacity=min(job.max_requests, 65536))
        self.requests = job.requests
        self.pool_models = job.models
        self.open_loop = job.load.mode == "open"
        self.timeout_ns = int(job.timeout_s * 1e9)
        # Mutable state, changed only by the callbacks below.
        self.conns: list[HttpConnection] = []
        self.idle: list[HttpConnection] = []
        self.pending: deque[int] = deque()
        self.outstanding = 0
        self.running = False
        self.closing = False
        self.sched: list[int] = []
        self.next_i = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.error_samples: list[str] = []
        self.loop_lags: list[int] = []
        self.wake_lags: list[int] = []
        self.window = (0, 0)
        self.alarm: Alarm | None = None
        self.precise_timer = False
        self.capped = asyncio.Event()  # set when max_requests rows are used up
        self.cpu = [0.0, 0.0]
        self.start_late_ms = 0.0
        self.channel: Any = None  # transport "grpc": the channel every slot shares
        self.grpc_call: Any = None

    def __repr__(self) -> str:
        return (f"<Generator {self.job.load.label} [Requests: {self.outstanding} outstanding, "
                f"{len(self.pending)} waiting | Connections: {len(self.conns)}]>")

    async def _connect(self) -> HttpConnection:
        if self.job.transport == "grpc":
            conn: Any = await self._grpc_slot()
        else:
            _, conn = await self.loop.create_connection(
                lambda: HttpConnection(self), self.job.host, self.job.port)
        self.conns.append(conn)
        return conn  # type: ignore[no-any-return]

    async def _grpc_slot(self) -> Any:
        """A gRPC slot on the run's one channel (opened by the first slot)."""
        from ._grpc_client import MODEL_INFER, GrpcSlot  # grpc only for gRPC runs

        if self.channel is None:
            import grpc

            host = f"[{self.job.host}]" if ":" in self.job.host else self.job.host
            self.channel = grpc.aio.insecure_channel(f"{host}:{self.job.port}")
            # bytes in, bytes out: requests are serialized before the run, answers not parsed
            self.grpc_call = self.channel.unary_unary(MODEL_INFER)
        await self.channel.channel_ready()
        return GrpcSlot(self, self.grpc_call)

    async def _close_channel(self) -> None:
        if self.channel is not None:
            channel, self.channel = self.channel, None
            await channel.close()

    # -- connection callbacks -------------------------------------------------
    def on_response(self, conn: HttpConnection, rid: int, end_ns: int) -> None:
        rec = self.rec
        rec.end[rid] = end_ns
        rec.first[rid] = conn.first_ns
        status = conn.parser.status
        rec.status[rid] = status
        if conn.parser.retried:
            rec.retried[rid] = 1
        self.outstanding -= 1
        if not 200 <= status < 300:
            rec.error[rid] = HTTP
            if len(self.error_samples) < _MAX_ERROR_SAMPLES:
                self.error_samples.append(f"{status}: {conn.parser.sample[:200].decode('utf-8', 'replace')}")
        if not conn.parser.keep_alive:
            conn.transport.close()  # type: ignore[union-attr]  # on_lost replaces it
            return
        self._next(conn)

    def on_failure(self, conn: HttpConnection, rid: int, code: int, end_ns: int) -> None:
        self.rec.end[rid] = end_ns
        self.rec.error[rid] = code
        self.outstanding -= 1

    def on_lost(self, conn: HttpConnection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if not self.closing and (self.running or self.pending):
            self.reconnects += 1
            self.loop.create_task(self._replace())

    async def _replace(self) -> None:
        while not self.closing and (self.running or self.pending):
            try:
                conn = await asyncio.wait_for(self._connect(), self.job.connect_timeout_s)
            except (OSError, asyncio.TimeoutError):
                self.connect_failures += 1
                now = monotonic_ns()
                if self.rec.n < self.job.max_requests:
                    rid = self.rec.add(now, -1)
                    self.rec.end[rid] = now
                    self.rec.error[rid] = CONNECT
                await asyncio.sleep(0.05)
                continue
            self._next(conn)
            return

    # -- sending --------------------------------------------------------------
    def _send(self, conn: HttpConnection, rid: int) -> None:
        self.rec.start[rid] = conn.send(rid, self.requests[rid % len(self.requests)])

    def _next(self, conn: HttpConnection) -> None:
        if self.open_loop:
            if self.pending:
                self._send(conn, self.pending.popleft())
            else:
                self.idle.append(conn)
            return
        now = monotonic_ns()
        rec = self.rec
        if not self.running or now >= self.window[1] or rec.n >= self.job.max_requests:
            self.idle.append(conn)
            if rec.n >= self.job.max_requests:
                self.capped.set()
            return
        rid = rec.add(now, self.pool_models[rec.n % len(self.pool_models)])
        self.outstanding += 1
        start = conn.send(rid, self.requests[rid % len(self.requests)])
        rec.start[rid] = start
        rec.scheduled[rid] = start  # closed loop: the schedule is "now"

    def _dispatch(self, scheduled_ns: int) -> None:
        rec = self.rec
        rid = rec.add(scheduled_ns, self.pool_models[rec.n % len(self.pool_models)])
        if self.outstanding >= self.job.load.max_in_flight:
            rec.error[rid] = DROPPED
            return
        self.outstanding += 1
        if self.idle:
            self._send(self.idle.pop(), rid)
        else:
            self.pending.append(rid)

    def _tick(self) -> None:
        now = monotonic_ns()
        sched, i = self.sched, self.next_i
        if i < len(sched) and sched[i] <= now:
            self.wake_lags.append(now - sched[i])
        while i < len(sched) and sched[i] <= now and self.rec.n < self.job.max_requests:
            self._dispatch(sched[i])
            i += 1
        self.next_i = i
        if self.rec.n >= self.job.max_requests:
            self.capped.set()
        elif i < len(sched):
            self.alarm.at(sched[i])  # type: ignore[union-attr]

    # -- self-measurement and bounds ------------------------------------------
    def _lag_tick(self, expected: int) -> None:
        now = monotonic_ns()
        if self.window[0] <= now < self.window[1]:
            self.loop_lags.append(max(0, now - expected))
        if not self.closing:
            self.loop.call_later(_TICK_NS / 1e9, self._lag_tick, monotonic_ns() + _TICK_NS)

    def _sweep(self) -> None:
        now = monotonic_ns()
        limit = now - self.timeout_ns
        for conn in list(self.conns):
            if conn.req_id >= 0 and conn.start_ns < limit:
                self._expire(conn.abandon(), now)
        while self.pending and self.rec.scheduled[self.pending[0]] < limit:
            self._expire(self.pending.popleft(), now)
        if not self.closing:
            self.loop.call_later(0.05, self._sweep)

    def _expire(self, rid: int, now: int) -> None:
        self.rec.end[rid] = now
        self.rec.error[rid] = TIMEOUT
        self.outstanding -= 1

    def _window_start(self) -> None:
        self.cpu[0] = time.process_time()

    async def run(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Offer the load; return the raw records and the generator's self-measurements."""
        job = self.job
        n_conns = job.load.connections if self.open_loop else job.load.concurrency
        try:
            await asyncio.wait_for(
                asyncio.gather(*(self._connect() for _ in range(n_conns))), job.connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            self._close_all()
            await self._close_channel()
            raise BenchError(f"cannot open {n_conns} connections to {job.host}:{job.port}: "
                             f"{exc or 'timed out'}") from None
        self.idle = list(self.conns)
        t0 = monotonic_ns() + 2_000_000
        if job.start_unix_ns:  # the agreed start, on this process's monotonic clock
            until = job.start_unix_ns - time.time_ns()
            self.start_late_ms = max(0.0, -until / 1e6)
            t0 = max(t0, monotonic_ns() + until)
        ws = t0 + int(job.warmup_s * 1e9)
        we = ws + int(job.duration_s * 1e9)
        self.window = (ws, we)
        self.cpu[0] = time.process_time()  # replaced at ws, unless the row cap ends it sooner
        self.loop.call_later((ws - monotonic_ns()) / 1e9, self._window_start)
        self.loop.call_later(_TICK_NS / 1e9, self._lag_tick, monotonic_ns() + _TICK_NS)
        self.loop.call_later(0.05, self._sweep)
        self.running = True
        if self.open_loop:
            offsets = schedule_offsets_ns(job.load.rate, job.warmup_s + job.duration_s,
                                          job.load.arrival, job.seed)[job.shard::job.shards]
            self.sched = (offsets + t0).tolist()
            self.alarm = Alarm(self.loop, self._tick)
            self.alarm.at(t0)
            self.precise_timer = self.alarm.precise
        else:
            await _sleep_until(t0)
            idle, self.idle = self.idle, []
            for conn in idle:
                self._next(conn)
        try:
            await asyncio.wait_for(self.capped.wait(), max(0.0, (we - monotonic_ns()) / 1e9))
        except asyncio.TimeoutError:
            await _sleep_until(we)
        self.cpu[1] = time.process_time()
        wall_end = monotonic_ns()
        if self.capped.is_set() and wall_end < we:
            we = max(ws + 1, wall_end)  # the row cap ended the window early
        self.running = False
        deadline = monotonic_ns() + self.timeout_ns
        while (self.outstanding > 0 or self._schedule_left()) and monotonic_ns() < deadline:
            await asyncio.sleep(0.005)
        now = monotonic_ns()
        for conn in list(self.conns):
            if conn.req_id >= 0:
                self._expire(conn.abandon(), now)
        while self.pending:
            self._expire(self.pending.popleft(), now)
        self._close_all()
        await asyncio.sleep(0.01)  # let connection_lost callbacks run
        await self._close_channel()
        return self.rec.arrays(), self._stats(t0, ws, we, wall_end)

    def _schedule_left(self) -> bool:
        return self.next_i < len(self.sched) and self.rec.n < self.job.max_requests

    def _close_all(self) -> None:
        self.closing = True
        if self.alarm is not None:
            self.alarm.close()
            self.alarm = None
        for conn in list(self.conns):
            conn.abort()

    def _stats(self, t0: int, ws: int, we: int, wall_end: int) -> dict[str, Any]:
        wall = max(1e-9, (wall_end - ws) / 1e9)
        cpu_s = self.cpu[1] - self.cpu[0]
        return {
            "t0_ns": t0, "window_start_ns": ws, "window_end_ns": we,
            "cpu_s": cpu_s, "cpu_percent": 100.0 * cpu_s / wall,
            "loop_lag_ms": _quantiles_ms(self.loop_lags),
            "schedule_lag_ms": _quantiles_ms(self.wake_lags) if self.open_loop else None,
            "connections": self.job.load.connections if self.open_loop else self.job.load.concurrency,
            "reconnects": self.reconnects, "connect_failures": self.connect_failures,
            "unsent_at_end": len(self.sched) - self.next_i,
            "stopped_by_max_requests": self.capped.is_set(),
            "error_samples": self.error_samples,
            "event_loop": type(self.loop).__module__.split(".")[0],
            "precise_timer": self.open_loop and self.precise_timer,
            "start_late_ms": self.start_late_ms,
        }
