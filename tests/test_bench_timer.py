"""The open-loop alarm wakes at absolute monotonic times, and the generator runs from a loop."""

from __future__ import annotations

import asyncio
from time import monotonic_ns

from optkit.bench import LoadSpec, StubServer, run_bench
from optkit.bench._timer import Alarm


async def test_alarm_fires_at_the_requested_time_and_rearms() -> None:
    """Each at() fires once, not early, and a few ms late at most on an idle machine."""
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    done = asyncio.Event()

    def wake() -> None:
        fired.append(monotonic_ns())
        if len(fired) < 3:
            alarm.at(targets[len(fired)])
        else:
            done.set()

    alarm = Alarm(loop, wake)
    start = monotonic_ns()
    targets = [start + k * 3_000_000 for k in (1, 2, 3)]
    alarm.at(targets[0])
    await asyncio.wait_for(done.wait(), 2)
    alarm.close()
    lags = [f - t for f, t in zip(fired, targets)]
    assert all(0 <= lag < 20_000_000 for lag in lags)


async def test_run_bench_works_inside_a_running_event_loop() -> None:
    """run_bench is synchronous and needs no loop, so a notebook's running loop is fine."""
    with StubServer() as server:
        result = run_bench(server.url, LoadSpec.open(50), warmup_s=0, duration_s=0.4)
    assert result.summary["requests"] == 20 and result.summary["errors"] == {}
