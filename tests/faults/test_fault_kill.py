"""The model server is killed (SIGKILL) under load and restarted on its port.

Promised: requests in flight at the kill are answered 502 (JSON) by the gateway (or 200
when the server had answered before it died), never left hanging or reset; while the
upstream is gone or still loading its models the gateway answers 502 / 503 at once;
once it is back the gateway recovers by itself and every request succeeds. The killed
server's loader worker processes exit by themselves (before this suite they lingered,
orphaned, one set per kill). Counted exactly: every request the generator sent got an
HTTP answer, the statuses add up to what was sent, and the gateway's own books agree
request for request and status for status, each refusal under its cause: the metadata
fetch (the upstream gone when its cache entry expired), the upstream call, or the
upstream's own answer (503 while the new server loads). Before the books counted
every step, the refusals at the metadata step were missing from them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from _harness import Books, FaultStack, SteadyLoad, Tally, wait_until


def _kill_and_restart(fs: FaultStack, *, duration_s: float, down_s: float,
                      kills: int = 1) -> None:
    before = fs.gateway_stats()["server"]
    windows: list[tuple[int, int]] = []
    kill_times: list[int] = []
    with SteadyLoad(fs.gateway_url, concurrency=16, duration_s=duration_s) as load:
        load.wait_sending()
        for _ in range(kills):
            kill_times.append(fs.kill_model_server(catch=True))
            time.sleep(down_s)
            windows.append((kill_times[-1], fs.restart_model_server()))
            time.sleep(0.3)  # some load on the new server before the next kill
        last_ready = windows[-1][1]
        result = load.result()
    tally = Tally.of(result)
    after = fs.gateway_stats()["server"]

    books = Books.between(before, after)
    tally.reconcile()
    print("counts:", tally.summary())  # shown with -s: the figures docs/reliability.md cites
    print("gateway books:", books.summary())
    assert tally.by_transport == {}, tally.summary()  # every request got an HTTP answer
    assert set(tally.by_status) <= {200, 502, 503}, tally.summary()
    for at in kill_times:  # in flight at the kill: 502, the upstream died under them (or
        caught = tally.in_flight_at(at)  # 200: it had answered, the gateway was relaying);
        statuses = set(tally.status[caught].tolist())  # each kill caught one at the server
        assert caught.size > 0 and 502 in statuses and statuses <= {200, 502}, tally.summary()
    outside = tally.failed_outside(windows)
    assert outside.size == 0, (tally.summary(), tally.status[outside][:10])
    after_ready = tally.start > last_ready
    assert np.all(tally.status[after_ready] == 200), tally.summary()
    if after_ready.sum() < 50:  # a slow restart outlasted the window: recovery on its own run
        rerun = SteadyLoad(fs.gateway_url, concurrency=16, duration_s=1.0).start()
        again = Tally.of(rerun.result())
        assert again.sent > 0 and again.ok == again.sent, again.summary()
    # the gateway's books: every request the client sent (and the generator's one check
    # before its window) received, and answered as the client saw it, status for status
    books.reconcile(tally, preflight=1)
    assert set(books.by_cause()) <= {"metadata", "upstream", "upstream_answer"}, books
    assert {s for (c, s) in books.refused if c != "upstream_answer"} <= {502}, books
    assert after["server_errors"] - before["server_errors"] == tally.failed
    assert after["cancelled"] == before["cancelled"]
    sample = result.summary["generator"]["error_samples"]
    assert sample and all(s.split(": ", 1)[1].startswith('{"error":') for s in sample), sample
    # the killed server's loader workers left by themselves (they used to linger for good)
    assert fs.orphans, "the integrated config loads in worker processes: there were some"
    wait_until(lambda: not fs.orphans_alive(), "the killed server's workers exited", 10)


def test_kill_mid_run_then_restart_on_same_port(fault_stack: FaultStack) -> None:
    _kill_and_restart(fault_stack, duration_s=3.5, down_s=0.2)


@pytest.mark.heavy
def test_repeated_kills_under_longer_load(fault_stack: FaultStack) -> None:
    """Three kills in one run, each followed by a restart and a spell of load."""
    _kill_and_restart(fault_stack, duration_s=12.0, down_s=1.0, kills=3)
