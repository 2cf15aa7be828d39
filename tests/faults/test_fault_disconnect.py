"""Client disconnect storms: hundreds of clients give up mid-request, mid-batch, mid-stream.

Promised, with every layer on and the built-in generator's steady load running: no tier
crashes; the steady load is untouched (every one of its requests 200); each tier's
request counters reconcile exactly (accepted = completed + cancelled); nothing leaks (the
gateway's open client connections and asyncio tasks return to their count before the
storm; the model server holds no more than the gateway's pool); and work nobody waits
for is skipped where it can be (the batchers' ``cancelled`` counter grows). The gateway's
inference books hold every request sent, exactly: each answered or cancelled there, and
every client that left either cancelled there or answered after it had gone.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from _harness import Books, FaultStack, Shot, SteadyLoad, Tally, burst, get_json, post_json, \
    server_counts, wait_settled, wait_until
from optkit.v2._codec import BINARY_HEADER, encode_binary_infer_request, encode_infer_request


def _shots(n: int, seed: int) -> list[Shot]:
    """A third each, timed from when the request was on the wire: cancelled mid-request
    (within 5 ms: its body being read, validated or run), mid-batch (50-400 ms: queued
    behind running batches of 64-row calls of another model, ~3 ms each; fewer than
    ``max_queue``, so none is refused), mid-stream (after the first bytes of a large
    answer: 2 rows, 512 KiB, over the streaming threshold)."""
    rng = random.Random(seed)
    slow = encode_infer_request({"x": np.ones((64, 16), np.float32)})
    small = encode_infer_request({"pixels": np.ones((1, 64), np.float32)})
    wide, head_len = encode_binary_infer_request({"x": np.ones((2, 16), np.float32)})
    shots = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            shots.append(Shot("/v2/models/digits-mlp/infer", small,
                              cancel_after_s=rng.uniform(0.0, 0.005)))
        elif kind == 1:
            shots.append(Shot("/v2/models/synthetic/infer", slow,
                              cancel_after_s=rng.uniform(0.05, 0.4)))
        else:
            shots.append(Shot("/v2/models/synthetic-wide/infer", wide,
                              {BINARY_HEADER: str(head_len), "Content-Type": "application/octet-stream"},
                              cancel_after_s=0.0, read_first=True))
    return shots


def _storm(fs: FaultStack, *, clients: int, rounds: int, duration_s: float) -> None:
    status, _ = post_json(fs.model_server_url + "/v2/repository/models/synthetic-wide/load")
    assert status == 200
    wait_until(lambda: post_json(fs.gateway_url + "/v2/models/synthetic-wide/infer",
                                 encode_infer_request({"x": np.ones((1, 16), np.float32)}))[0]
               == 200, "synthetic-wide serving through the gateway", 30)
    gw0, ms0 = server_counts(fs.gateway_url), server_counts(fs.model_server_url)
    books0 = {url: get_json(url + "/stats")["server"] for url in (fs.gateway_url,
                                                                   fs.model_server_url)}
    storms = []
    with SteadyLoad(fs.gateway_url, concurrency=8, duration_s=duration_s) as load:
        load.wait_sending()
        for r in range(rounds):
            storms.append(burst(fs.gateway_url, _shots(clients, seed=r), in_flight=clients))
        steady = Tally.of(load.result())
    pool_limit = fs.config.pooling.limit
    gw1 = wait_settled(fs.gateway_url, connections=gw0["open_connections"],
                       tasks=gw0["tasks"] + 2)
    ms1 = wait_settled(fs.model_server_url, connections=pool_limit + 1,
                       tasks=ms0["tasks"] - ms0["open_connections"] + pool_limit + 3)
    gw_books, ms_books = (Books.between(books0[url], get_json(url + "/stats")["server"])
                          for url in (fs.gateway_url, fs.model_server_url))

    print("steady:", steady.summary())
    print("storms:", storms)
    print("gateway before/after:", gw0, gw1)
    print("model server before/after:", ms0, ms1)
    print("gateway books:", gw_books.summary(), "model server books:", ms_books.summary())
    for tally in storms:
        tally.reconcile()
        assert tally.cancelled >= clients // 3, tally  # the mid-stream third at least
        assert set(tally.by_status) <= {200}, tally  # what was answered was answered right
    steady.reconcile()
    assert steady.ok == steady.sent > 0, steady.summary()  # the storm failed nobody else
    for before, after in ((gw0, gw1), (ms0, ms1)):
        # each tier's requests reconcile: every one accepted was completed or cancelled
        accepted = after["accepted"] - before["accepted"]
        assert accepted == (after["completed"] - before["completed"]
                            + after["cancelled"] - before["cancelled"]), (before, after)
        assert after["server_errors"] == before["server_errors"], (before, after)
    # the gateway's books: every request sent (steady, its check, the storms) received and
    # answered or cancelled; clients who left = cancelled here + answered after they left
    gw_books.reconcile_leavers(steady, *storms, preflight=1)
    assert ms_books.refused == {} and ms_books.in_flight == 0, ms_books
    gone = sum(t.cancelled for t in storms)
    # a tier's handler is cancelled only when its batcher dropped the item (aiohttp lets
    # a handler finish after its client left): never more than the clients who left
    assert 0 <= gw1["cancelled"] - gw0["cancelled"] <= gone
    # queued work whose client left was dropped unrun, at one tier or the other
    skipped = gw1["batch_cancelled"] - gw0["batch_cancelled"] + ms1["batch_cancelled"] \
        - ms0["batch_cancelled"]
    assert skipped > 0, (gw0, gw1, ms0, ms1)
    # the streams whose readers left were stopped, none is still being written
    assert gw1["stream_active"] == ms1["stream_active"] == 0, (gw1, ms1)
    assert gw1["stream_disconnects"] + ms1["stream_disconnects"] \
        > gw0["stream_disconnects"] + ms0["stream_disconnects"], (gw0, gw1, ms0, ms1)
    ok, doc = post_json(fs.gateway_url + "/v2/models/digits-mlp/infer",
                        encode_infer_request({"pixels": np.zeros((1, 64), np.float32)}))
    assert ok == 200 and doc["outputs"], doc


def test_disconnect_storm(fault_stack: FaultStack) -> None:
    """300 clients leaving at once, under steady load (the default run's core)."""
    _storm(fault_stack, clients=300, rounds=1, duration_s=2.0)


@pytest.mark.heavy
def test_disconnect_storms_repeated(fault_stack: FaultStack) -> None:
    """Ten storms of 300 in a row: the counts still reconcile, nothing accumulates."""
    _storm(fault_stack, clients=300, rounds=10, duration_s=20.0)
