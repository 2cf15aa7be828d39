"""Queue overflow: a flood of clients beyond ``batching.max_queue`` for one model.

Promised, with every layer on and the built-in generator's steady load on another
model: every flooding request is answered, either 200 or 503 with ``Retry-After`` and
a JSON error, nothing else; the 503s are exactly the batchers' ``rejected`` count; the
steady load is untouched (its queue is another model's); the tiers' memory stays
bounded (RSS sampled from ``/proc/<pid>/status`` before, at the peak and after); and
once the flood is gone the flooded model serves again at once. The gateway's books hold
every request exactly, each 503 under its cause: its own queue (``queue``) or the
model server's, passed through (``upstream_answer``), matching each tier's ``rejected``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from _harness import Books, FaultStack, Shot, SteadyLoad, Tally, burst, get_json, post_json, \
    server_counts
from optkit.v2._codec import encode_infer_request

#: the most the gateway's or model server's RSS may grow through a flood: the flood's
#: bodies are ~10 KB each, a few MB for all of them; a queue without a bound would hold
#: every one of them and their answers, round after round
RSS_BOUND = 64 * 2**20


def _flood(fs: FaultStack, *, clients: int, rounds: int, duration_s: float) -> None:
    max_queue = fs.config.batching.max_queue
    assert clients > 2 * max_queue  # more than one tier's queue can hold
    body = encode_infer_request({"x": np.ones((64, 16), np.float32)})
    shots = [Shot("/v2/models/synthetic/infer", body) for _ in range(clients)]
    names = ("gateway", "model-server")
    rss0 = {n: fs.figures(n)[0] for n in names}
    peak = dict(rss0)
    sampling = threading.Event()

    def sample() -> None:  # the peak, while the flood is on
        while not sampling.wait(0.05):
            for n in names:
                peak[n] = max(peak[n], fs.figures(n)[0])

    gw0, ms0 = server_counts(fs.gateway_url), server_counts(fs.model_server_url)
    books0 = {url: get_json(url + "/stats")["server"] for url in (fs.gateway_url,
                                                                   fs.model_server_url)}
    sampler = threading.Thread(target=sample, daemon=True)
    floods = []
    with SteadyLoad(fs.gateway_url, concurrency=8, duration_s=duration_s) as load:
        load.wait_sending()
        sampler.start()
        for _ in range(rounds):
            floods.append(burst(fs.gateway_url, shots, in_flight=clients))
        sampling.set()
        steady = Tally.of(load.result())
    sampler.join(5)
    gw1, ms1 = server_counts(fs.gateway_url), server_counts(fs.model_server_url)
    gw_books, ms_books = (Books.between(books0[url], get_json(url + "/stats")["server"])
                          for url in (fs.gateway_url, fs.model_server_url))
    rss1 = {n: fs.figures(n)[0] for n in names}
    print("steady:", steady.summary())
    print("floods:", floods)
    print("rejected: gateway", gw1["batch_rejected"] - gw0["batch_rejected"], "model server",
          ms1["batch_rejected"] - ms0["batch_rejected"])
    print("gateway books:", gw_books.summary(), "model server books:", ms_books.summary())
    print("RSS MiB before/peak/after:",
          {n: [round(x[n] / 2**20, 1) for x in (rss0, peak, rss1)] for n in names})

    refused = 0
    for tally in floods:
        tally.reconcile()
        assert tally.cancelled == tally.transport == 0, tally  # every request answered
        assert set(tally.by_status) == {200, 503}, tally  # served or refused, both happened
        n503 = tally.by_status[503]
        assert tally.retry_after == tally.json_errors == n503, tally  # each 503 says when
        refused += n503
    # every 503 is a refusal a batcher counted: nothing refused silently, nothing else failed
    assert refused == (gw1["batch_rejected"] - gw0["batch_rejected"]
                       + ms1["batch_rejected"] - ms0["batch_rejected"]), (gw0, gw1, ms0, ms1)
    assert gw1["server_errors"] - gw0["server_errors"] == refused
    # the books: every request of the floods, the steady load and its check, answered as
    # the clients saw it; each 503 under the queue that refused it, as that queue counted
    gw_books.reconcile(steady, *floods, preflight=1)
    assert gw_books.refused.get(("queue", 503), 0) == gw1["batch_rejected"] - gw0["batch_rejected"]
    assert gw_books.refused.get(("upstream_answer", 503), 0) == \
        ms_books.refused.get(("queue", 503), 0) == ms1["batch_rejected"] - ms0["batch_rejected"]
    assert set(gw_books.refused) <= {("queue", 503), ("upstream_answer", 503)}, gw_books
    steady.reconcile()
    assert steady.ok == steady.sent > 0, steady.summary()  # another model's queue: untouched
    for n in names:
        assert peak[n] - rss0[n] < RSS_BOUND and rss1[n] - rss0[n] < RSS_BOUND, (n, rss0, peak, rss1)
    # recovery: the flooded model answers at once, no 503 left behind
    t0 = time.monotonic()
    status, doc = post_json(fs.gateway_url + "/v2/models/synthetic/infer", body)
    assert status == 200 and doc["outputs"][0]["shape"] == [64, 1], (status, doc)
    assert time.monotonic() - t0 < 5.0


def test_queue_overflow(fault_stack: FaultStack) -> None:
    """A flood of 400 clients (the default run's core)."""
    _flood(fault_stack, clients=400, rounds=1, duration_s=2.0)


@pytest.mark.heavy
def test_queue_overflow_repeated(fault_stack: FaultStack) -> None:
    """Ten floods of 600 in a row: RSS still within the bound of the first sample."""
    _flood(fault_stack, clients=600, rounds=10, duration_s=20.0)
