"""Dynamic batching: concurrent requests for one model become one call.

::

    submit ─▶ waiting (FIFO, ≤ max_queue items)  ─▶  on the road (≤ max_concurrent_batches)
              [e][d][c][b·b][a]  ── bus ≤ cap rows ──▶  run([a, b, c]) ─▶ a: r1  b: r2  c: r3

A batch is a bus. It leaves at once if the road is clear; while buses are on
the road, passengers accumulate; a bus leaves when full or when its first
passenger has waited ``max_delay_ms``. Exactly: a bus leaves whenever a slot is
free (fewer than ``max_concurrent_batches`` batches running) and

1. no batch is running (the model is idle: no timer, no added latency), or
2. the waiting items hold at least ``cap`` rows (a full bus), or
3. the oldest waiting item has waited ``max_delay_ms`` (by ``clock``).

With ``max_concurrent_batches=1`` (the default) a free slot means an idle model,
so only rule 1 applies: a lone request goes at once, and under load each batch
takes everything that arrived while the previous one ran (up to ``cap``). An item
that finds the model idle and nobody waiting leads: it yields one loop iteration,
so the items submitted in the same tick ride with it, then runs in its caller's
own task, with no queue or task in between (measured: that hop cost a lone client
about 5 % of its latency through both tiers). The leader joins the queue only if
company came; alone, it holds no queue entry or future at all. (Skipping the
yield for a lone client cannot be decided safely: tried, "the last batch rode
alone and the model has been idle 100 µs" let singletons chain under load, 1-2.6
rows per batch instead of ~9, and so did "the server holds one request in flight";
the loop's ready queue would tell, but uvloop does not expose it.) What can be known
is that nobody else is there: the caller passes ``alone`` (the tiers: "the server holds
no request read and unanswered but this one", which counts requests parsed in this
iteration too), and a leader then runs at once (measured, pooling vs batching through
both tiers, one client: p50 +7.5 % with the yield, +1.0 % [-1.6, +5.0] without). Otherwise the
check runs
one loop iteration after a submit (``call_soon``, so items submitted in the same
tick share a bus),
at once when a batch finishes, and from one timer (the loop's) armed for rule 3.
``cap = min(max_batch_size, max_rows)`` rows; items are never split, so an item
over the cap rides alone.

Before a bus leaves, items whose submitter was cancelled or whose ``alive()`` is
False are dropped (``cancelled``; their ``submit`` raises ``CancelledError``) and
items whose ``deadline`` has passed are dropped (``expired``; ``DeadlineExceeded``):
such work never reaches ``run``.

Fault isolation. If ``run`` raises for a batch of several items and
``split_on_error(exc)`` is true (default: always), the batch is run again in
halves, recursively, so a poisoned item ends up alone and fails alone while every
other item gets its answer. Re-runs happen in the same slot, one after another.
An item answered after a split was passed to ``run`` more than once: a caller who
must say so (a response header) counts the calls, e.g. items are small records
and ``run`` increments ``item.runs``. ``split_on_error(exc)`` false (the upstream
is down) fails the whole batch with ``exc`` without re-running it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .._checks import check_int
from ._base import Layer
from .._config import BatchingConfig
from .._exceptions import DeadlineExceeded, InferenceError, ModelNotReady, QueueFull
from .._metrics import Histogram, HistogramSnapshot, counter, gauge, histogram_field

__all__ = ["BatchStatistics", "DynamicBatcher"]

T = TypeVar("T")
R = TypeVar("R")

_ROW_BOUNDS = tuple(2.0 ** k for k in range(13))  # 1 .. 4096 rows
_DELAY_BOUNDS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
                 100e-3, 250e-3, 1.0)
_DURATION_BOUNDS = (100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
                    250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class BatchStatistics:
    """A snapshot of a batcher: ``submitted == items + cancelled + expired + queued``."""

    __derived__ = ("mean_batch_rows",)

    submitted: int = counter("items accepted by submit (rejected ones excluded)")
    batches: int = counter("batches sent to run (split re-runs excluded)")
    rows: int = counter("rows in those batches")
    items: int = counter("items in those batches")
    queued: int = gauge("items waiting now")
    queued_rows: int = gauge("rows waiting now")
    running: int = gauge("batches in flight now")
    cancelled: int = counter("items dropped unrun: submitter cancelled, alive() false, closed")
    expired: int = counter("items dropped unrun: deadline passed before dispatch")
    rejected: int = counter("submits refused because max_queue items were waiting")
    failed: int = counter("items answered with an exception")
    isolated_failures: int = counter("items that failed alone after a split")
    split_retries: int = counter("extra run calls made to isolate a failure")
    batch_rows: HistogramSnapshot = histogram_field("rows per batch")
    queue_delay_s: HistogramSnapshot = histogram_field("seconds from submit to dispatch")
    batch_duration_s: HistogramSnapshot = histogram_field(
        "seconds a batch held its slot, split re-runs included")

    @property
    def mean_batch_rows(self) -> float:
        """Rows per batch on average (0 before the first batch)."""
        return self.rows / self.batches if self.batches else 0.0


class _Item:
    """One submitted item while the batcher holds it."""

    __slots__ = ("value", "rows", "future", "t", "deadline", "alive", "queued")

    def __init__(self, value: Any, rows: int, future: asyncio.Future[Any], t: float,
                 deadline: float | None, alive: Callable[[], bool] | None) -> None:
        self.value, self.rows, self.future, self.t = value, rows, future, t
        self.deadline, self.alive, self.queued = deadline, alive, True


class DynamicBatcher(Layer, Generic[T, R]):
    """Coalesce concurrent ``submit`` calls into calls of ``run`` (see the module docstring).

    Args:
        run: called with a list of items; returns one result per item, in order. A
            result that is an exception instance is raised to that item's submitter
            only. Returning the wrong number of results fails every item of the batch
            with :class:`InferenceError`.
        config: ``max_batch_size``, ``max_delay_ms``, ``max_queue``,
            ``max_concurrent_batches`` (``enabled`` is the service's business).
        max_rows: a further cap on rows per batch (the model's largest batch).
        name: shown in ``repr`` and error messages (the model's name, say).
        split_on_error: whether a batch whose ``run`` raised ``exc`` should be run
            again in halves; default: always.
        clock: the time source for queue delays, deadlines and rule 3.
        alone: says, when asked, that no other submit can arrive in this loop iteration
            (the server holds no other request, read or in progress); a leader then runs
            at once instead of yielding for company. None: always yield.
    """

    def __init__(self, run: Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]],
                 config: BatchingConfig, *, max_rows: int | None = None, name: str = "",
                 split_on_error: Callable[[BaseException], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 alone: Callable[[], bool] | None = None, release_first: bool = False) -> None:
        if max_rows is not None:
            check_int("max_rows", max_rows)
        self._run, self._name, self._clock, self._alone = run, name, clock, alone
        self._split = split_on_error or (lambda exc: True)
        self._release_first = release_first
        self._cap = min(config.max_batch_size, max_rows or config.max_batch_size)
        self._delay = config.max_delay_ms / 1000.0
        self._max_queue = config.max_queue
        self._slots = config.max_concurrent_batches
        self._loop: asyncio.AbstractEventLoop | None = None  # bound at the first submit
        self._leading = 0  # a leader waiting one iteration for company (not in the queue)
        # Mutable state: the queue and its rows change in submit, _take and aclose only.
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()  # one per running batch
        self._drained: asyncio.Future[None] | None = None  # aclose waits on it for running == 0
        self._scheduled = False  # a call_soon(_pump_soon) is pending
        self._timer: asyncio.TimerHandle | None = None  # rule 3
        self._closed = False
        self._mean_duration = 0.0  # moving average of batch_duration_s, for Retry-After
        self._submitted = self._batches = self._rows = self._items = 0
        self._cancelled = self._expired = self._rejected = self._failed = 0
        self._isolated = self._split_retries = 0
        self._batch_rows = Histogram(_ROW_BOUNDS)
        self._queue_delay = Histogram(_DELAY_BOUNDS)
        self._duration = Histogram(_DURATION_BOUNDS)

    async def submit(self, item: T, *, rows: int = 1, deadline: float | None = None,
                     alive: Callable[[], bool] | None = None) -> R:
        """Queue ``item`` (carrying ``rows`` rows) and return its result from ``run``.

        Args:
            deadline: a ``clock()`` value; at dispatch, ``clock() >= deadline`` drops it.
            alive: asked at dispatch; False (the client left) drops the item.

        Raises:
            QueueFull: ``max_queue`` items are waiting; ``retry_after_s`` is the time
                to run them at the recent batch duration, rounded up, at least 1 s.
            DeadlineExceeded: the deadline passed before the item was dispatched.
            asyncio.CancelledError: ``alive()`` was False at dispatch (or the awaiting
                task was cancelled).
            ModelNotReady: the batcher is closed (503: the service is going away).
            Exception: whatever ``run`` raised for, or returned as, this item.
        """
        if self._closed:
            raise ModelNotReady(f"{self._label()} is closed")
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows!r}")
        queue = self._queue
        if len(queue) + self._leading >= self._max_queue:
            self._rejected += 1
            raise QueueFull(f"{self._label()}: {len(queue)} items waiting",
                            retry_after_s=self._retry_after())
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = self._clock()
        self._submitted += 1
        if not queue and not self._running and not self._scheduled:
            # The model is idle: this submitter leads. It yields once, so the requests
            # parsed in the same loop iteration join it, then sends the bus itself; unless
            # nobody else can come (``alone``): then it goes at once.
            if self._alone is not None and self._alone():
                if deadline is not None and now >= deadline:
                    self._expired += 1
                    raise self._late(now, deadline)
                return await self._run_alone(item, rows, now, now)
            return await self._lead(item, rows, now, deadline)
        entry = _Item(item, rows, loop.create_future(), now, deadline, alive)
        queue.append(entry)
        self._queued_rows += rows
        if self._running < self._slots and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._pump_soon)
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._withdraw(entry)
            raise

    def idle(self) -> bool:
        """Nothing waits, runs or is about to leave, and (``alone``) no other submit can come
        this loop iteration: the caller may run its item itself, inside :meth:`hold`, instead
        of submitting it."""
        return (not self._queue and not self._running and not self._scheduled
                and not self._closed and self._alone is not None and self._alone())

    @contextlib.contextmanager
    def hold(self, rows: int = 1) -> Iterator[None]:
        """Run one item in the caller's own frame as a batch of one, the batcher :meth:`idle`.

        The slot is held until the block ends, so items submitted meanwhile (the caller
        awaited an upstream) queue and leave as the next batch when it ends, as behind any
        batch; the statistics count it like one. It skips the submit path's layers of
        coroutines and callbacks: for a lone client that is the whole cost of batching.
        """
        start = self._clock()
        self._submitted += 1
        self._start(1, rows)
        self._queue_delay.observe(0.0)
        try:
            yield
        except Exception:
            self._failed += 1
            raise
        finally:
            self._finish(start)

    def _withdraw(self, entry: _Item) -> None:
        """A submitter was cancelled: if its item still waits, it leaves the queue, unrun."""
        if entry.queued:
            self._queue.remove(entry)
            entry.queued = False
            self._queued_rows -= entry.rows
            self._cancelled += 1

    async def _lead(self, item: Any, rows: int, t: float, deadline: float | None) -> Any:
        """Send the bus from the leader's own task once this loop iteration's items joined.

        Alone (the common case for a lone client), the leader runs its item right
        here: no queue entry, task or future, one loop iteration in all (measured:
        the two-iteration hop through ``call_soon`` and a new task cost a lone client
        about 5 % of its latency through both tiers). With company, it takes the
        front of the queue and the bus leaves as a task, as from :meth:`_pump`, so no
        submitter's cancellation can cancel a run that carries others. While it
        waits, it counts as queued (``max_queue``, ``statistics``).
        """
        self._scheduled = True  # others queue behind the leader instead of pumping
        self._leading += 1
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self._scheduled = False
            self._leading -= 1
            self._cancelled += 1
            if self._queue:
                self._pump()  # the leader left: the company it gathered goes on
            raise
        self._scheduled = False
        self._leading -= 1
        if self._closed:
            self._cancelled += 1
            raise ModelNotReady(f"{self._label()} is closed")
        now = self._clock()
        if deadline is not None and now >= deadline:
            self._expired += 1
            raise self._late(now, deadline)
        queue = self._queue
        if not queue and not self._running:
            return await self._run_alone(item, rows, t, now)
        entry = _Item(item, rows, self._loop.create_future(),  # type: ignore[union-attr]
                      t, deadline, None)
        queue.appendleft(entry)  # it came first
        self._queued_rows += rows
        self._pump()
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._withdraw(entry)
            raise

    async def _run_alone(self, value: Any, rows: int, submitted: float, start: float) -> Any:
        """Run one item as its own batch in the caller's task (``aclose`` waits for it
        like for a batch task: both hold a slot until ``_finish``)."""
        self._start(1, rows)
        self._queue_delay.observe(start - submitted)
        try:
            results = await self._run((value,))
            if len(results) != 1:
                raise InferenceError(f"{self._label()}: run returned {len(results)} results "
                                     "for 1 item")
        except Exception:
            self._failed += 1
            raise
        finally:
            self._finish(start)
        result = results[0]
        if isinstance(result, BaseException):
            self._failed += 1
            raise result
        return result

    def _pump_soon(self) -> None:
        self._scheduled = False
        self._pump()

    def _pump(self) -> None:
        """Send off every batch the rule allows now; arm the timer for rule 3."""
        queue, loop = self._queue, self._loop
        while queue and self._running < self._slots and not self._closed and loop:
            if self._running and self._queued_rows < self._cap:
                wait = queue[0].t + self._delay - self._clock()
                if wait > 0:
                    if self._timer is None and wait != math.inf:
                        self._timer = loop.call_later(wait, self._on_timer)
                    return
            batch, rows = self._take()
            if batch:
                self._start(len(batch), rows)
                task = loop.create_task(self._run_batch(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _start(self, items: int, rows: int) -> None:
        """Count a batch leaving: it holds a slot until ``_run_batch`` ends."""
        self._running += 1
        self._batches += 1
        self._items += items
        self._rows += rows
        self._batch_rows.observe(rows)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _take(self) -> tuple[list[_Item], int]:
        """Pop the next batch (FIFO, ≤ cap rows), dropping dead and expired items."""
        queue, cap, now = self._queue, self._cap, self._clock()
        batch: list[_Item] = []
        rows = 0
        observe = self._queue_delay.observe
        while queue:
            entry = queue[0]
            if batch and rows + entry.rows > cap:
                break
            queue.popleft()
            entry.queued = False
            self._queued_rows -= entry.rows
            if entry.future.done() or (entry.alive is not None and not entry.alive()):
                entry.future.cancel()  # submitter gone (cancelled, or its client left)
                self._cancelled += 1
            elif entry.deadline is not None and now >= entry.deadline:
                entry.future.set_exception(self._late(now, entry.deadline))
                self._expired += 1
            else:
                observe(now - entry.t)
                batch.append(entry)
                rows += entry.rows
        return batch, rows

    async def _run_batch(self, batch: list[_Item]) -> None:
        """Hold a slot while ``batch`` runs (and is split); answer every item."""
        start = self._clock()
        released = False
        try:
            released = await self._attempt(batch, split=False, start=start)
        except Exception as exc:  # a bug around run (split_on_error raised): nobody hangs
            self._fail(batch, exc, isolated=False)
        except BaseException:
            for entry in batch:
                entry.future.cancel()
            raise
        finally:
            if not released:
                self._finish(start)

    def _finish(self, start: float) -> None:
        """A batch gave its slot back: record how long it held it; the next bus leaves now."""
        took = self._clock() - start
        self._duration.observe(took)
        self._mean_duration += 0.2 * (took - self._mean_duration)
        self._running -= 1
        if self._queue:
            self._pump()  # not a tick later
        elif not self._running and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def _attempt(self, batch: list[_Item], *, split: bool,
                       start: float | None = None) -> bool:
        """Run ``batch``, splitting it on failure; ``split``: it is a half of a failed one.

        True: the slot was given back here (``release_first``, a whole batch answered)."""
        try:
            results = await self._run([entry.value for entry in batch])
        except Exception as exc:
            if len(batch) == 1 or not self._split(exc):
                self._fail(batch, exc, isolated=split and len(batch) == 1)
                return False
            live = [entry for entry in batch if not entry.future.done()]
            middle = (len(live) + 1) // 2
            for half in (live[:middle], live[middle:]):
                if half:
                    self._split_retries += 1
                    await self._attempt(half, split=True)
            return False
        if len(results) != len(batch):
            self._fail(batch, InferenceError(
                f"{self._label()}: run returned {len(results)} results for "
                f"{len(batch)} items"), isolated=False)
            return False
        released = self._release_first and start is not None
        if released:  # the next bus is on its way before this one's passengers are answered
            self._finish(start)  # type: ignore[arg-type]
        for entry, result in zip(batch, results):
            future = entry.future
            if future.done():
                continue  # its submitter was cancelled while the batch ran
            if isinstance(result, BaseException):
                self._failed += 1
                future.set_exception(result)
            else:
                future.set_result(result)
        return released

    def _fail(self, batch: list[_Item], exc: BaseException, *, isolated: bool) -> None:
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(exc)
                self._failed += 1
                self._isolated += int(isolated)

    def _late(self, now: float, deadline: float) -> DeadlineExceeded:
        late_ms = (now - deadline) * 1e3
        return DeadlineExceeded(f"{self._label()}: deadline passed {late_ms:.1f} ms before dispatch")

    def _retry_after(self) -> float:
        batches_ahead = math.ceil(self._queued_rows / self._cap) / self._slots
        return float(max(1, math.ceil(batches_ahead * self._mean_duration)))

    def _label(self) -> str:
        return f"batcher {self._name!r}" if self._name else "batcher"

    def statistics(self) -> BatchStatistics:
        """The counters and histograms now."""
        return BatchStatistics(
            submitted=self._submitted, batches=self._batches, rows=self._rows,
            items=self._items, queued=len(self._queue) + self._leading,
            queued_rows=self._queued_rows,
            running=self._running, cancelled=self._cancelled, expired=self._expired,
            rejected=self._rejected, failed=self._failed, isolated_failures=self._isolated,
            split_retries=self._split_retries, batch_rows=self._batch_rows.snapshot(),
            queue_delay_s=self._queue_delay.snapshot(),
            batch_duration_s=self._duration.snapshot(),
        )

    async def aclose(self) -> None:
        """Refuse new submits, fail waiting items, wait for running batches. Idempotent.

        Waiting items and later submits get :class:`ModelNotReady` (503); dropped
        waiting items count as ``cancelled``. Cancelling ``aclose`` does not cancel
        the running batches.
        """
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            entry = self._queue.popleft()
            entry.queued = False
            if not entry.future.done():
                entry.future.set_exception(ModelNotReady(f"{self._label()} is closed"))
            self._cancelled += 1
        self._queued_rows = 0
        if self._running:
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {self._name}" if self._name else ""
        return (f"<DynamicBatcher{name} [queued: {s.queued} items/{s.queued_rows} rows | "
                f"running: {s.running} batch{'es' if s.running != 1 else ''} | "
                f"{s.batches} batches, mean {s.mean_batch_rows:.1f} rows]>")
