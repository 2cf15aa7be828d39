"""DynamicBatcher: the dispatch rule, backpressure, dropping dead work, fault isolation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from optkit._config import BatchingConfig
from optkit._exceptions import (ConfigError, DeadlineExceeded, InferenceError, ModelNotReady,
                                QueueFull)
from optkit._metrics import iter_families, to_plain
from optkit.layers.batching import BatchStatistics, DynamicBatcher

pytestmark = pytest.mark.timeout(5)  # a regression that hangs fails fast


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Model:
    """A fake ``run``: records each call, waits on ``gate``, fails a batch holding "bad"."""

    def __init__(self, clock: FakeClock | None = None, took: float = 0.0) -> None:
        self.calls: list[list[Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._called = asyncio.Event()
        self._clock, self._took = clock, took

    async def __call__(self, items: Sequence[Any]) -> list[Any]:
        self.calls.append(list(items))
        self._called.set()
        await self.gate.wait()
        if self._clock is not None:
            self._clock.now += self._took
        if "bad" in items:
            raise ValueError("bad item in batch")
        return [f"{x}!" for x in items]

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(1):
            while len(self.calls) < n:
                self._called.clear()
                await self._called.wait()


def batcher(run: Any, clock: FakeClock | None = None, **config: Any) -> DynamicBatcher[Any, Any]:
    extra = {k: config.pop(k) for k in ("max_rows", "split_on_error", "release_first")
             if k in config}
    return DynamicBatcher(run, BatchingConfig(enabled=True, **config), name="m",
                          clock=clock or FakeClock(), **extra)


async def ticks(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def busy(b: DynamicBatcher[Any, Any], model: Model) -> asyncio.Task[Any]:
    """Occupy the model: one item running, held on the gate."""
    model.gate.clear()
    first = asyncio.create_task(b.submit("first"))
    await model.wait_calls(len(model.calls) + 1)
    return first


def held(run: Any) -> Any:
    """Wrap a run function so that an item "hold" blocks the model until ``gate`` is set."""
    gate = asyncio.Event()

    async def wrapped(items: Sequence[Any]) -> list[Any]:
        if list(items) == ["hold"]:
            await gate.wait()
            return ["held"]
        return await run(items)

    wrapped.gate = gate  # type: ignore[attr-defined]
    return wrapped


async def together(b: DynamicBatcher[Any, Any], run: Any, items: Sequence[Any]) -> list[Any]:
    """Submit ``items`` while a held item occupies the model, so they leave as one batch."""
    hold = asyncio.create_task(b.submit("hold"))
    await ticks()
    tasks = [asyncio.create_task(b.submit(x)) for x in items]
    await ticks()
    run.gate.set()
    assert await hold == "held"
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_lone_item_runs_at_once() -> None:
    """A lone item reaches run within three loop iterations, whatever max_delay_ms says."""
    model = Model()
    async with batcher(model, max_delay_ms=60_000) as b:
        task = asyncio.create_task(b.submit("a"))
        await ticks(3)
        assert model.calls == [["a"]]
        assert await task == "a!"
        s = b.statistics()
        assert s.queue_delay_s.count == 1 and s.queue_delay_s.sum == 0.0


async def test_same_tick_submits_share_a_batch() -> None:
    """Items submitted in the same loop iteration as the one that found the model idle ride one bus."""
    model = Model()
    async with batcher(model) as b:
        assert await asyncio.gather(*(b.submit(x) for x in "abcd")) == ["a!", "b!", "c!", "d!"]
        assert model.calls == [["a", "b", "c", "d"]]


async def test_a_lone_item_runs_in_its_callers_task() -> None:
    """Alone with an idle model, an item is run by its own submitter's task: no hop through a new task."""
    seen = []

    async def run(items: Sequence[str]) -> list[str]:
        seen.append(asyncio.current_task())
        return [x + "!" for x in items]

    async with batcher(run) as b:
        async def client() -> tuple[str, Any]:
            return await b.submit("a"), asyncio.current_task()

        answer, task = await asyncio.create_task(client())
        assert answer == "a!" and seen == [task]
        s = b.statistics()
        assert s.batches == 1 and s.queue_delay_s.count == 1 and s.running == 0


@pytest.mark.parametrize("alone", [True, False])
async def test_a_leader_waits_one_iteration_for_company_unless_nobody_can_come(alone: bool) -> None:
    """With ``alone`` saying no other submit can arrive this iteration (no other request held),
    a lone item is run and answered before anything else scheduled gets a turn; otherwise its
    leader yields once, and whatever was scheduled meanwhile runs first."""
    order: list[str] = []

    async def run(items: Sequence[str]) -> list[str]:
        order.append("run")
        return [x + "!" for x in items]

    async with DynamicBatcher(run, BatchingConfig(enabled=True), name="m",
                              alone=lambda: alone) as b:
        asyncio.get_running_loop().call_soon(order.append, "other")
        assert await b.submit("a") == "a!"
        assert order == (["run"] if alone else ["other", "run"])
        assert b.statistics().batches == 1


async def test_alone_still_refuses_an_expired_deadline() -> None:
    """Going at once skips the wait, not the checks: a deadline already passed is expired."""
    model = Model()
    clock = FakeClock()
    async with DynamicBatcher(model, BatchingConfig(enabled=True), name="m", clock=clock,
                              alone=lambda: True) as b:
        with pytest.raises(DeadlineExceeded):
            await b.submit("a", deadline=clock.now)
        assert model.calls == [] and b.statistics().expired == 1


async def test_a_leader_counts_as_queued_while_it_waits_for_company() -> None:
    """During its one-iteration wait the leader holds no queue entry, yet it counts as queued,
    in the statistics and against max_queue."""
    model = Model()
    async with batcher(model, max_queue=1) as b:
        first = asyncio.create_task(b.submit("a"))
        second = asyncio.create_task(b.submit("b"))  # runs while the leader waits
        await asyncio.sleep(0)
        assert b.statistics().queued == 1
        with pytest.raises(QueueFull):
            await second
        assert await first == "a!" and model.calls == [["a"]]
        s = b.statistics()
        assert (s.submitted, s.items, s.rejected, s.queued) == (1, 1, 1, 0)


async def test_a_leader_cancelled_while_waiting_leaves_its_company_to_ride_on() -> None:
    """Cancelled during its wait, the leader is counted cancelled and never runs; the item
    that joined it still leaves."""
    model = Model()
    async with batcher(model) as b:
        leader = asyncio.create_task(b.submit("a"))
        joiner = asyncio.create_task(b.submit("b"))
        await asyncio.sleep(0)  # the leader waits, the joiner queued behind it
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert await joiner == "b!" and model.calls == [["b"]]
        s = b.statistics()
        assert (s.submitted, s.items, s.cancelled, s.queued) == (2, 1, 1, 0)


async def test_items_accumulate_while_busy_then_leave_together() -> None:
    """Items arriving while a batch runs wait, then leave as one batch when it finishes."""
    model = Model()
    async with batcher(model, max_delay_ms=0) as b:
        first = await busy(b, model)
        rest = [asyncio.create_task(b.submit(x)) for x in "bcd"]
        await ticks()
        assert model.calls == [["first"]]
        assert b.statistics().queued == 3
        model.gate.set()
        assert await asyncio.gather(first, *rest) == ["first!", "b!", "c!", "d!"]
        assert model.calls == [["first"], ["b", "c", "d"]]


@pytest.mark.parametrize("release_first", [False, True])
async def test_release_first_sends_the_next_batch_before_answering(release_first: bool) -> None:
    """``release_first``: a batch done gives its slot back before its items are answered, so
    the next batch's ``run`` starts before the done batch's submitters resume; without it,
    after them. Either way every item gets its own result."""
    log: list[str] = []
    model = Model()

    async def run(items: Sequence[Any]) -> list[Any]:
        log.append(f"run {','.join(items)}")
        return await model(items)

    async def submit(b: DynamicBatcher[Any, Any], x: str) -> Any:
        result = await b.submit(x)
        log.append(f"answered {x}")
        return result

    async with batcher(run, max_delay_ms=0, release_first=release_first) as b:
        model.gate.clear()  # a batch of two (a lone item runs in its caller's own task)
        first = [asyncio.create_task(submit(b, x)) for x in ("a", "c")]
        await model.wait_calls(1)
        second = asyncio.create_task(submit(b, "b"))
        await ticks()
        model.gate.set()
        assert await asyncio.gather(*first, second) == ["a!", "c!", "b!"]
    done = ["answered a", "answered c"]
    order = ["run a,c", "run b", *done] if release_first else ["run a,c", *done, "run b"]
    assert log[:4] == order
    assert log[4:] == ["answered b"]
    s = b.statistics()
    assert (s.batches, s.items, s.running) == (2, 3, 0)


async def test_row_cap_and_oversized_item() -> None:
    """A batch holds at most min(max_batch_size, max_rows) rows; a bigger item rides alone."""
    model = Model()
    async with batcher(model, max_batch_size=8, max_rows=4) as b:
        first = await busy(b, model)
        sizes = {"a": 2, "b": 2, "c": 1, "d": 9, "e": 3, "f": 1}
        tasks = [asyncio.create_task(b.submit(x, rows=n)) for x, n in sizes.items()]
        await ticks()
        assert b.statistics().queued_rows == 18
        model.gate.set()
        await asyncio.gather(first, *tasks)
        assert model.calls == [["first"], ["a", "b"], ["c"], ["d"], ["e", "f"]]
        s = b.statistics()
        assert (s.batches, s.rows, s.items) == (5, 19, 7)


async def test_fifo_and_no_cross_talk() -> None:
    """Items run in submit order and each submitter gets the result for its own item."""
    model = Model()
    async with batcher(model, max_batch_size=3) as b:
        first = await busy(b, model)
        items = [f"i{k}" for k in range(10)]
        tasks = [asyncio.create_task(b.submit(x)) for x in items]
        await ticks()
        model.gate.set()
        assert await asyncio.gather(*tasks) == [f"{x}!" for x in items]
        await first
        assert [x for call in model.calls[1:] for x in call] == items
        assert [len(call) for call in model.calls[1:]] == [3, 3, 3, 1]


async def test_fault_isolation_splits_until_the_bad_item_is_alone() -> None:
    """A raising batch is re-run in halves: only the bad item fails, the rest are answered."""
    model = Model()
    async with batcher(model) as b:
        first = await busy(b, model)
        items = ["a", "b", "c", "d", "bad", "f", "g", "h"]
        tasks = [asyncio.create_task(b.submit(x)) for x in items]
        await ticks()
        model.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await first
        assert isinstance(results[4], ValueError)
        assert [r for k, r in enumerate(results) if k != 4] == [
            f"{x}!" for x in items if x != "bad"]
        # 8 fail -> [a..d] ok, [bad..h] fail -> [bad, f] fail, [g, h] ok -> [bad] fail, [f] ok
        assert model.calls[1:] == [items, items[:4], items[4:], ["bad", "f"], ["bad"], ["f"],
                                   ["g", "h"]]
        s = b.statistics()
        assert (s.split_retries, s.isolated_failures, s.failed) == (6, 1, 1)
        assert s.batches == 2


async def test_caller_tells_a_rerun_by_counting_run_calls() -> None:
    """Items answered after a split were passed to run more than once; the others once."""

    class Req:
        def __init__(self, bad: bool) -> None:
            self.bad, self.runs = bad, 0

    async def run(items: Sequence[Req]) -> list[str]:
        for item in items:
            item.runs += 1
        if any(item.bad for item in items):
            raise ValueError("poisoned")
        return ["ok"] * len(items)

    run = held(run)
    async with batcher(run) as b:
        reqs = [Req(False), Req(False), Req(True), Req(False)]
        results = await together(b, run, reqs)
        assert results[:2] == ["ok", "ok"] and isinstance(results[2], ValueError)
        assert [r.runs for r in reqs] == [2, 2, 3, 3]


async def test_no_split_when_split_on_error_says_no() -> None:
    """split_on_error False fails every item of the batch with run's error, no re-run."""
    model = Model()
    async with batcher(model, split_on_error=lambda exc: not isinstance(exc, ValueError)) as b:
        first = await busy(b, model)
        tasks = [asyncio.create_task(b.submit(x)) for x in ("a", "bad", "c")]
        await ticks()
        model.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await first
        assert all(isinstance(r, ValueError) for r in results)
        assert len({id(r) for r in results}) == 1
        assert len(model.calls) == 2
        s = b.statistics()
        assert (s.failed, s.split_retries, s.isolated_failures) == (3, 0, 0)


async def test_per_item_exception_goes_to_its_submitter_only() -> None:
    """An exception returned in run's results is raised to that item's submitter alone."""
    calls = []

    async def run(items: Sequence[int]) -> list[Any]:
        calls.append(list(items))
        return [KeyError(x) if x == 2 else x * 10 for x in items]

    run = held(run)
    async with batcher(run) as b:
        results = await together(b, run, (1, 2, 3))
        assert results[0] == 10 and results[2] == 30 and isinstance(results[1], KeyError)
        assert calls == [[1, 2, 3]]
        assert b.statistics().failed == 1


async def test_wrong_result_count_fails_every_item() -> None:
    """run returning too few results fails each item with InferenceError, nobody hangs."""

    async def run(items: Sequence[str]) -> list[str]:
        return []

    run = held(run)
    async with batcher(run) as b:
        results = await together(b, run, "ab")
        assert all(isinstance(r, InferenceError) for r in results)
        assert "0 results for 2 items" in str(results[0])
        assert b.statistics().failed == 2
        with pytest.raises(InferenceError, match="0 results for 1 item"):
            await b.submit("alone")  # the idle fast path checks the count too
        assert b.statistics().failed == 3


async def test_cancelled_run_is_not_split_and_cancels_its_items() -> None:
    """CancelledError from run is never swallowed or split: its submitters are cancelled."""
    calls = []

    async def run(items: Sequence[str]) -> list[str]:
        calls.append(list(items))
        raise asyncio.CancelledError

    run = held(run)
    async with batcher(run) as b:
        results = await together(b, run, "ab")
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert calls == [["a", "b"]]
        assert b.statistics().split_retries == 0 and b.statistics().running == 0


async def test_cancelled_while_queued_never_runs() -> None:
    """Cancelling a waiting submitter removes its item: run never sees it."""
    model = Model()
    async with batcher(model) as b:
        first = await busy(b, model)
        doomed = asyncio.create_task(b.submit("doomed", rows=3))
        kept = asyncio.create_task(b.submit("kept"))
        await ticks()
        doomed.cancel()
        await ticks()
        assert doomed.cancelled()
        s = b.statistics()
        assert (s.queued, s.queued_rows, s.cancelled) == (1, 1, 1)
        model.gate.set()
        assert await kept == "kept!"
        await first
        assert model.calls == [["first"], ["kept"]]


async def test_cancelled_in_a_running_batch_does_not_cancel_the_others() -> None:
    """A submitter cancelled after dispatch leaves run and the rest of its batch alone."""
    model = Model()
    async with batcher(model) as b:
        first = await busy(b, model)
        a, c = asyncio.create_task(b.submit("a")), asyncio.create_task(b.submit("c"))
        await ticks()
        model.gate.set()
        model.gate.clear()
        await first
        await model.wait_calls(2)
        a.cancel()
        await ticks()
        model.gate.set()
        assert await c == "c!"
        assert a.cancelled()
        assert model.calls[1] == ["a", "c"]
        assert b.statistics().cancelled == 0


async def test_not_alive_at_dispatch_is_dropped() -> None:
    """An item whose alive() is False at dispatch is dropped: submit raises CancelledError."""
    model = Model()
    async with batcher(model) as b:
        first = await busy(b, model)
        gone = asyncio.create_task(b.submit("gone", alive=lambda: False))
        here = asyncio.create_task(b.submit("here", alive=lambda: True))
        await ticks()
        model.gate.set()
        assert await here == "here!"
        with pytest.raises(asyncio.CancelledError):
            await gone
        await first
        assert model.calls == [["first"], ["here"]]
        assert b.statistics().cancelled == 1


async def test_expired_deadline_raises_and_never_runs() -> None:
    """An item whose deadline passed before dispatch gets DeadlineExceeded and is not run."""
    clock, model = FakeClock(), Model()
    async with batcher(model, clock) as b:
        first = await busy(b, model)
        late = asyncio.create_task(b.submit("late", deadline=clock.now + 1.0))
        fine = asyncio.create_task(b.submit("fine", deadline=clock.now + 10.0))
        await ticks()
        clock.now += 2.0
        model.gate.set()
        with pytest.raises(DeadlineExceeded):
            await late
        assert await fine == "fine!"
        await first
        assert model.calls == [["first"], ["fine"]]
        s = b.statistics()
        assert s.expired == 1 and s.queue_delay_s.sum == 2.0


async def test_queue_overflow_raises_queue_full() -> None:
    """Beyond max_queue waiting items submit raises QueueFull with a whole-second retry-after."""
    clock = FakeClock()
    model = Model(clock, took=3.0)
    async with batcher(model, clock, max_queue=2) as b:
        await b.submit("warm-up")
        first = await busy(b, model)
        waiting = [asyncio.create_task(b.submit(x)) for x in "ab"]
        await ticks()
        with pytest.raises(QueueFull) as caught:
            await b.submit("c")
        assert caught.value.retry_after_s >= 1.0
        assert float(caught.value.retry_after_s).is_integer()
        s = b.statistics()
        assert (s.rejected, s.submitted, s.queued) == (1, 4, 2)
        model.gate.set()
        await asyncio.gather(first, *waiting)


async def test_aclose_fails_waiting_items_and_waits_for_running_ones() -> None:
    """aclose fails what waits with ModelNotReady, lets the running batch finish, refuses more."""
    model = Model()
    b = batcher(model)
    first = await busy(b, model)
    waiting = asyncio.create_task(b.submit("w"))
    await ticks()
    closing = asyncio.create_task(b.aclose())
    await ticks()
    with pytest.raises(ModelNotReady):
        await waiting
    assert not closing.done() and not first.done()
    model.gate.set()
    await closing
    assert await first == "first!"
    with pytest.raises(ModelNotReady):
        await b.submit("late")
    assert model.calls == [["first"]]
    assert b.statistics().cancelled == 1
    await b.aclose()


async def test_statistics_add_up() -> None:
    """batch_rows counts equal batches, its sum equals rows, every submit is accounted for."""
    clock = FakeClock()
    model = Model(clock, took=0.002)
    async with batcher(model, clock, max_batch_size=4) as b:
        first = await busy(b, model)
        tasks = [asyncio.create_task(b.submit(k, rows=1 + k % 3)) for k in range(20)]
        gone = asyncio.create_task(b.submit("gone", alive=lambda: False))
        await ticks()
        model.gate.set()
        await asyncio.gather(first, *tasks)
        await asyncio.gather(gone, return_exceptions=True)
        s = b.statistics()
        assert sum(s.batch_rows.counts) == s.batch_rows.count == s.batches
        assert s.batch_rows.sum == s.rows == 1 + sum(1 + k % 3 for k in range(20))
        assert s.submitted == s.items + s.cancelled + s.expired + s.queued == 22
        assert s.queue_delay_s.count == s.items == 21
        assert s.batch_duration_s.count == s.batches and s.running == 0
        assert s.mean_batch_rows == pytest.approx(s.rows / s.batches)
        assert to_plain(s)["mean_batch_rows"] == s.mean_batch_rows


async def test_second_slot_leaves_when_full() -> None:
    """With two slots and one busy, a full batch leaves at once, before any delay."""
    model = Model()
    async with batcher(model, max_concurrent_batches=2, max_batch_size=2,
                       max_delay_ms=60_000) as b:
        first = await busy(b, model)
        one = asyncio.create_task(b.submit("a"))
        await ticks()
        assert len(model.calls) == 1
        two = asyncio.create_task(b.submit("b"))
        await model.wait_calls(2)
        assert model.calls[1] == ["a", "b"] and b.statistics().running == 2
        model.gate.set()
        await asyncio.gather(first, one, two)


async def test_second_slot_leaves_after_max_delay() -> None:
    """With two slots and one busy, a lone item waits max_delay_ms (by the clock), then goes."""
    clock, model = FakeClock(), Model()
    async with batcher(model, clock, max_concurrent_batches=2, max_delay_ms=1) as b:
        first = await busy(b, model)
        one = asyncio.create_task(b.submit("a"))
        await ticks()
        assert len(model.calls) == 1
        clock.now += 0.002
        await model.wait_calls(2)
        assert model.calls[1] == ["a"]
        assert b.statistics().queue_delay_s.sum == pytest.approx(0.002)
        model.gate.set()
        await asyncio.gather(first, one)


def test_repr_is_one_live_line() -> None:
    """repr names the batcher and shows queue, running and batch counts on one line."""
    b = batcher(Model())
    assert repr(b) == ("<DynamicBatcher m [queued: 0 items/0 rows | running: 0 batches | "
                       "0 batches, mean 0.0 rows]>")


async def test_every_statistic_is_typed_for_prometheus() -> None:
    """iter_families exports the record without a TypeError (every field declares its kind)."""
    async with batcher(Model()) as b:
        await b.submit("a")
        stats = b.statistics()
    assert isinstance(stats, BatchStatistics)
    names = {family.name for family in iter_families("x", stats)}
    assert {"x_submitted", "x_queued", "x_batch_rows", "x_queue_delay_s"} <= names


def test_config_validates_the_new_setting() -> None:
    """BatchingConfig can be enabled and rejects a non-positive max_concurrent_batches by name."""
    assert BatchingConfig(enabled=True).max_concurrent_batches == 1
    with pytest.raises(ConfigError, match="batching.max_concurrent_batches"):
        BatchingConfig(max_concurrent_batches=0)
    with pytest.raises(ConfigError, match="max_rows"):
        batcher(Model(), max_rows=0)


async def test_hold_runs_a_lone_item_in_the_callers_frame_and_others_queue_behind() -> None:
    """idle() only with nobody around (alone); hold() counts a batch of one and keeps the
    slot, so a submit made while it is held waits, then leaves as the next batch."""
    calls: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        return [i * 10 for i in items]

    others = {"n": 0}
    b = DynamicBatcher(run, BatchingConfig(enabled=True), alone=lambda: others["n"] == 0)
    assert b.idle()
    others["n"] = 1
    assert not b.idle()  # someone else is in the server: submit, don't hold
    others["n"] = 0
    with b.hold(rows=2):
        assert not b.idle() and b.statistics().running == 1
        queued = asyncio.ensure_future(b.submit(7))
        await asyncio.sleep(0.01)
        assert not queued.done() and calls == []  # the held slot keeps it waiting
    assert await queued == 70 and calls == [[7]]
    s = b.statistics()
    assert (s.submitted, s.batches, s.items, s.rows, s.running, s.failed) == (2, 2, 2, 3, 0, 0)
    with pytest.raises(ValueError), b.hold():
        raise ValueError("the caller's own failure")
    assert b.statistics().failed == 1 and b.statistics().running == 0
    assert not DynamicBatcher(run, BatchingConfig(enabled=True)).idle()  # alone unknown
    await b.aclose()
