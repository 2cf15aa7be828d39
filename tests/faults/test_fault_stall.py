"""The model server is stalled (SIGSTOP: sockets open, nothing answers), then continued.

Promised: requests that reach the stalled upstream are answered 504 (JSON) once
``server.upstream_timeout_s`` has passed; a request that queued behind a stalled batch
at the gateway waits at most one more upstream timeout (its own call), so every answer
comes within two (plus scheduling slack); nothing grows without bound meanwhile (the
gateway's batch queue, its upstream connections, its memory and file descriptors are
sampled); after SIGCONT every request succeeds again. Counts reconcile exactly: the client's, and
the gateway's own books with them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from _harness import Books, FaultStack, SteadyLoad, Tally


def _sample(fs: FaultStack) -> dict[str, Any]:
    stats = fs.gateway_stats()
    rss, fds = fs.figures("gateway")
    queued = sum(b["queued"] for b in stats["batching"].values())
    return {"queued": queued, "pool_in_use": stats["pool"]["in_use"],
            "pool_active": stats["pool"]["active"], "in_flight": stats["server"]["in_flight"],
            "rss": rss, "fds": fds}


def _stall(fs: FaultStack, *, duration_s: float, stall_s: float, concurrency: int) -> None:
    before = fs.gateway_stats()["server"]
    samples: list[dict[str, Any]] = []
    with SteadyLoad(fs.gateway_url, concurrency=concurrency, duration_s=duration_s) as load:
        load.wait_sending()
        samples.append(_sample(fs))
        stopped = fs.stall_model_server()
        while time.monotonic_ns() - stopped < stall_s * 1e9:
            time.sleep(0.1)
            samples.append(_sample(fs))
        resumed = fs.resume_model_server()
        result = load.result()
    tally = Tally.of(result)
    after = fs.gateway_stats()["server"]

    books = Books.between(before, after)
    tally.reconcile()
    print("counts:", tally.summary())  # shown with -s: the figures docs/reliability.md cites
    print("gateway books:", books.summary())
    assert tally.by_transport == {}, tally.summary()
    assert set(tally.by_status) <= {200, 504} and tally.by_status.get(504, 0) > 0, tally.summary()
    # a 504 belongs to the stall: the request was under way at some point while stopped
    assert tally.failed_outside([(stopped, resumed)]).size == 0, tally.summary()
    # ... and every answer came within two upstream timeouts (a queue wait behind a stalled
    # batch, then its own call), plus 1 s of slack for a shared machine's scheduling
    bound_ns = (2 * fs.config.server.upstream_timeout_s + 1.0) * 1e9
    slowest = int((tally.end - tally.start).max())
    assert slowest < bound_ns, (slowest / 1e9, tally.summary())
    print(f"slowest {slowest / 1e9:.2f} s; peak queued {max(x['queued'] for x in samples)}, "
          f"pool in use {max(x['pool_in_use'] for x in samples)}, gateway fds "
          f"{samples[0]['fds']}..{max(x['fds'] for x in samples)}, RSS +"
          f"{(max(x['rss'] for x in samples) - samples[0]['rss']) / 2**20:.1f} MiB")
    settled = tally.start > resumed  # the upstream answers again: so does everything
    assert settled.sum() > 0 and np.all(tally.status[settled] == 200), tally.summary()
    # bounded while stalled: the queue never holds more than the clients can send, the
    # pool never more connections than its limit, memory and descriptors stay near start
    limit = fs.config.pooling.limit
    assert max(s["queued"] for s in samples) <= concurrency, samples
    assert max(s["pool_in_use"] for s in samples) <= limit, samples
    assert max(s["fds"] for s in samples) <= samples[0]["fds"] + limit, samples
    assert max(s["rss"] for s in samples) < samples[0]["rss"] + 64 * 2**20, samples
    assert after["server_errors"] - before["server_errors"] == tally.failed
    assert after["cancelled"] == before["cancelled"]
    # the books: every request (and the generator's check) answered as the client saw it,
    # each 504 the upstream call's (or its metadata fetch's, had the cache entry expired)
    books.reconcile(tally, preflight=1)
    assert set(books.by_cause()) <= {"upstream", "metadata"}, books
    final = fs.gateway_stats()
    assert final["server"]["in_flight"] == 1  # this very /stats request
    assert sum(b["queued"] for b in final["batching"].values()) == 0


def test_stall_longer_than_upstream_timeout(fault_stack: FaultStack) -> None:
    timeout = fault_stack.config.server.upstream_timeout_s
    _stall(fault_stack, duration_s=2.5, stall_s=timeout * 1.5, concurrency=16)


@pytest.mark.heavy
def test_long_stall_with_many_clients(fault_stack: FaultStack) -> None:
    """Six upstream timeouts of stall with 64 clients."""
    timeout = fault_stack.config.server.upstream_timeout_s
    _stall(fault_stack, duration_s=12.0, stall_s=timeout * 6, concurrency=64)
