"""Request batching in both tiers, on real servers on 127.0.0.1 with real models.

The synthetic model answers each row with its sum, so every answer can be checked
against its own request's rows: answers must never cross between clients.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from optkit import ServiceConfig, decode_infer_response, encode_infer_request
from optkit.v2._codec import BINARY_HEADER
from optkit.service import GATEWAY_KEY, MODEL_SERVER_KEY, create_gateway, create_model_server

SYN = "/v2/models/synthetic/infer"
POISON = -7.0


def _config(cost_a_us: float = 100.0, **batching: Any) -> ServiceConfig:
    """Pooling + batching; the synthetic model with a poison value and a per-call cost."""
    return ServiceConfig.from_dict({
        "pooling": {"enabled": True},
        "batching": {"enabled": True, **batching},
        "loading": {"models": ["synthetic"],
                    "parameters": {"synthetic": {"poison_value": POISON,
                                                 "cost_a_us": cost_a_us}}},
    })


async def _serve(app: Any) -> TestClient:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def model_server(repository: Path) -> AsyncIterator[TestClient]:
    """A batching model server (model run in a thread, so requests queue behind it)."""
    client = await _serve(create_model_server(repository, _config(executor="thread")))
    yield client
    await client.close()


def _rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 16)).astype(np.float32)


def _body(x: np.ndarray, rid: str, **params: Any) -> bytes:
    doc = orjson.loads(encode_infer_request({"x": x}, request_id=rid))
    if params:
        doc["parameters"] = params
    return orjson.dumps(doc)


def _batch_stats(client: TestClient, model: str = "synthetic") -> Any:
    component = client.server.app.get(MODEL_SERVER_KEY) or client.server.app[GATEWAY_KEY]
    stats = component.statistics().batching
    return stats[model]


async def _concurrently(client: TestClient, n: int, path: str = SYN) -> list[tuple[int, Any, np.ndarray, str]]:
    """n clients at once, each with its own rows and id; returns (status, doc, rows, id)."""
    async def one(i: int) -> tuple[int, Any, np.ndarray, str]:
        x = _rows(i, 1 + i % 3)
        rid = f"req-{i}"
        resp = await client.post(path, data=_body(x, rid))
        return resp.status, orjson.loads(await resp.read()), x, rid
    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_answers_never_cross_under_concurrency(model_server: TestClient) -> None:
    """300 concurrent requests of 1-3 rows: each answer has its own id and its own rows' sums."""
    results = await _concurrently(model_server, 300)
    for status, doc, x, rid in results:
        assert status == 200, doc
        assert doc["id"] == rid
        (out,) = doc["outputs"]
        assert out["shape"] == [len(x), 1]
        np.testing.assert_allclose(out["data"], x.sum(axis=1), rtol=1e-5)
    stats = _batch_stats(model_server)
    assert stats.items == 300 and stats.rows == sum(len(r[2]) for r in results)
    assert stats.batches < 300  # they were coalesced
    assert sum(stats.batch_rows.counts) == stats.batches


async def test_a_failing_row_fails_alone(model_server: TestClient) -> None:
    """A poisoned request inside a batch gets a JSON 500; every other request its answer."""
    async def one(i: int) -> tuple[int, Any, np.ndarray]:
        x = _rows(i, 2)
        if i == 7:
            x[1, 0] = POISON
        resp = await model_server.post(SYN, data=_body(x, str(i)))
        return resp.status, orjson.loads(await resp.read()), x

    results = await asyncio.gather(*(one(i) for i in range(40)))
    for i, (status, doc, x) in enumerate(results):
        if i == 7:
            assert status == 500 and "poison" in doc["error"]
        else:
            assert status == 200, doc
            np.testing.assert_allclose(doc["outputs"][0]["data"], x.sum(axis=1), rtol=1e-5)
    stats = _batch_stats(model_server)
    assert stats.failed == 1
    if stats.split_retries:  # the poisoned one shared a batch: it was isolated
        assert stats.isolated_failures == 1


async def test_queue_overflow_is_503_with_retry_after(repository: Path) -> None:
    """Beyond max_queue waiting requests, 503 with Retry-After at once; nothing else fails."""
    config = _config(executor="thread", max_queue=2, cost_a_us=300_000.0)  # a 0.3 s model call
    client = await _serve(create_model_server(repository, config))
    try:
        first = asyncio.ensure_future(client.post(SYN, data=_body(_rows(0, 1), "a")))
        await _until(lambda: _batch_stats(client).running == 1)
        queued = [asyncio.ensure_future(client.post(SYN, data=_body(_rows(i, 1), f"q{i}")))
                  for i in (1, 2)]
        await _until(lambda: _batch_stats(client).queued == 2)
        refused = await client.post(SYN, data=_body(_rows(3, 1), "over"))
        assert refused.status == 503 and int(refused.headers["Retry-After"]) >= 1
        assert "waiting" in orjson.loads(await refused.read())["error"]
        for task in [first, *queued]:
            assert (await task).status == 200
        assert _batch_stats(client).rejected == 1
    finally:
        await client.close()


async def test_expired_deadline_is_504_and_never_runs(repository: Path) -> None:
    """A queued request whose v2 `timeout` passes before its turn gets 504 and is not run."""
    config = _config(executor="thread", cost_a_us=300_000.0)
    client = await _serve(create_model_server(repository, config))
    try:
        first = asyncio.ensure_future(client.post(SYN, data=_body(_rows(0, 1), "a")))
        await _until(lambda: _batch_stats(client).running == 1)
        late = await client.post(SYN, data=_body(_rows(1, 1), "late", timeout=1000))  # 1 ms
        assert late.status == 504 and "deadline" in orjson.loads(await late.read())["error"]
        assert (await first).status == 200
        stats = _batch_stats(client)
        assert stats.expired == 1 and stats.rows == 1
        bad = await client.post(SYN, data=_body(_rows(1, 1), "bad", timeout="soon"))
        assert bad.status == 400
    finally:
        await client.close()


async def test_a_client_gone_while_queued_is_never_run(repository: Path) -> None:
    """A client that disconnects while its request waits: the request is dropped, counted.

    The first request's model call lasts 2 s so the second surely arrives while it runs and
    queues behind it (with 0.3 s, a CPU-starved test process sometimes sent the second after
    the first had finished: it then ran alone and never queued)."""
    config = _config(executor="thread", cost_a_us=2_000_000.0)
    client = await _serve(create_model_server(repository, config))
    try:
        first = asyncio.ensure_future(client.post(SYN, data=_body(_rows(0, 1), "a")))
        await _until(lambda: _batch_stats(client).running == 1)
        async with aiohttp.ClientSession() as session:
            leaving = asyncio.ensure_future(session.post(client.make_url(SYN),
                                                         data=_body(_rows(1, 4), "gone")))
            await _until(lambda: _batch_stats(client).queued == 1)
            leaving.cancel()  # closes its connection
            with pytest.raises(asyncio.CancelledError):
                await leaving
        assert (await first).status == 200
        await _until(lambda: _batch_stats(client).cancelled == 1)
        stats = _batch_stats(client)
        assert stats.rows == 1 and stats.items == 1  # the 4 rows of the gone client never ran
    finally:
        await client.close()


async def test_bad_request_is_refused_before_it_joins_a_batch(model_server: TestClient) -> None:
    """A malformed request is a 400 and never reaches the batcher."""
    bad = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 15], "datatype": "FP32",
                                    "data": [0.0] * 15}]})
    resp = await model_server.post(SYN, data=bad)
    assert resp.status == 400
    good = await model_server.post(SYN, data=_body(_rows(0, 1), "good"))
    assert good.status == 200
    assert _batch_stats(model_server).submitted == 1


# -- the gateway ------------------------------------------------------------------------------

@pytest.fixture
async def batching_stack(repository: Path) -> AsyncIterator[tuple[TestClient, TestClient]]:
    """A batching gateway in front of a batching model server, both in-process on loopback."""
    config = _config(executor="thread")
    upstream = await _serve(create_model_server(repository, config))
    gateway = await _serve(create_gateway(str(upstream.make_url("")).rstrip("/"), config))
    yield gateway, upstream
    await gateway.close()
    await upstream.close()


async def test_gateway_merges_concurrent_requests_and_splits_answers(
        batching_stack: tuple[TestClient, TestClient]) -> None:
    """Concurrent clients share upstream calls; each still gets its own id and rows."""
    gateway, upstream = batching_stack
    results = await _concurrently(gateway, 200)
    for status, doc, x, rid in results:
        assert status == 200, doc
        assert doc["id"] == rid and doc["model_name"] == "synthetic"
        np.testing.assert_allclose(doc["outputs"][0]["data"], x.sum(axis=1), rtol=1e-5)
    stats = gateway.server.app[GATEWAY_KEY].statistics()
    upstream_stats = upstream.server.app[MODEL_SERVER_KEY].statistics()
    assert stats.merged_calls > 0
    # fewer upstream inference calls than clients: merging happened on the wire
    assert upstream_stats.server.infer_requests < 200
    assert upstream_stats.server.infer_rows == sum(len(r[2]) for r in results)


async def test_gateway_answers_each_client_in_the_format_it_asked(
        batching_stack: tuple[TestClient, TestClient]) -> None:
    """Merged clients asking JSON or binary output each get their own format back."""
    gateway, _ = batching_stack

    async def one(i: int) -> tuple[bytes, Any, np.ndarray, bool]:
        x = _rows(100 + i, 2)
        binary = i % 2 == 0
        doc = orjson.loads(encode_infer_request({"x": x}, request_id=f"f{i}", outputs=["y"]))
        if binary:
            doc["outputs"][0]["parameters"] = {"binary_data": True}
        resp = await gateway.post(SYN, data=orjson.dumps(doc))
        assert resp.status == 200
        return await resp.read(), resp.headers.get(BINARY_HEADER), x, binary

    for body, head, x, binary in await asyncio.gather(*(one(i) for i in range(60))):
        assert (head is not None) == binary
        out = decode_infer_response(body, None if head is None else int(head))
        np.testing.assert_allclose(out["y"].reshape(-1), x.sum(axis=1), rtol=1e-5)


async def test_gateway_isolates_a_failing_item_and_marks_the_fallback(
        batching_stack: tuple[TestClient, TestClient]) -> None:
    """An upstream refusal of a merged call: only the bad client fails, the rest are answered."""
    gateway, _ = batching_stack

    async def one(i: int) -> tuple[int, Any, np.ndarray, str | None]:
        x = _rows(200 + i, 1)
        if i == 3:
            x[0, 0] = POISON
        resp = await gateway.post(SYN, data=_body(x, str(i)))
        return resp.status, orjson.loads(await resp.read()), x, resp.headers.get(
            "optkit-batch-fallback")

    results = await asyncio.gather(*(one(i) for i in range(50)))
    for i, (status, doc, x, _) in enumerate(results):
        if i == 3:
            assert status == 500 and "poison" in doc["error"]
        else:
            assert status == 200, doc
            np.testing.assert_allclose(doc["outputs"][0]["data"], x.sum(axis=1), rtol=1e-5)
    stats = gateway.server.app[GATEWAY_KEY].statistics()
    marked = sum(1 for r in results if r[3] == "1")
    # 50 at once: the first goes alone, the rest wait for it and merge, the poisoned one with them
    assert stats.merged_calls >= 1 and marked >= 1
    assert stats.fallback_answers == marked


async def test_gateway_refuses_unknown_outputs_like_the_model_server(
        batching_stack: tuple[TestClient, TestClient]) -> None:
    """Both tiers answer a request for an output the model lacks with the same 400."""
    gateway, upstream = batching_stack
    body = encode_infer_request({"x": _rows(1, 1)}, outputs=["nope"])
    answers = [await c.post(SYN, data=body) for c in (gateway, upstream)]
    assert [a.status for a in answers] == [400, 400]
    errors = [orjson.loads(await a.read())["error"] for a in answers]
    assert errors[0] == errors[1] and "nope" in errors[0]


async def test_stats_and_metrics_show_the_batchers(
        batching_stack: tuple[TestClient, TestClient]) -> None:
    """/stats has each tier's batcher statistics; /metrics exports them with a model label."""
    gateway, upstream = batching_stack
    await _concurrently(gateway, 20)
    for client, prefix in ((gateway, "optkit_gateway"), (upstream, "optkit_model_server")):
        stats = orjson.loads(await (await client.get("/stats")).read())
        assert stats["batching"]["synthetic"]["items"] >= 1
        text = await (await client.get("/metrics")).text()
        assert f'# TYPE {prefix}_batching_batch_rows histogram' in text
        assert f'{prefix}_batching_queued{{model="synthetic"}}' in text


async def _until(check: Any, timeout: float = 5.0) -> None:
    """Wait (bounded) until check() holds; a test's hang guard, not a timing assertion."""
    def holds() -> bool:
        try:
            return bool(check())
        except KeyError:  # the batcher is made by the first request
            return False

    async with asyncio.timeout(timeout):
        while not holds():
            await asyncio.sleep(0.005)


async def test_busy_counts_the_requests_the_server_holds() -> None:
    """What the batchers' ``alone()`` reads: requests read and not yet answered, over every
    connection of a real server. 1 for a lone request (idle keep-alive connections do not
    count), 2 while another connection's request is still being handled."""
    from aiohttp import web

    from optkit.service._http import ServerCounters, guard
    from optkit.service._runner import watch_server

    counters = ServerCounters()
    assert counters.busy() == -1  # unknown until a runner is watched: never "alone"
    gate, seen = asyncio.Event(), []

    async def handler(request: web.Request) -> web.Response:
        seen.append(counters.busy())
        if request.query.get("hold"):
            await gate.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/", guard(handler, counters))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    watch_server(runner, counters)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as one, aiohttp.ClientSession() as two:
            async with one.get(url) as r:
                assert r.status == 200
            held = asyncio.create_task(one.get(url + "?hold=1"))
            async with asyncio.timeout(5):
                while len(seen) < 2:
                    await asyncio.sleep(0.01)
            async with two.get(url) as r:  # another connection, while the first is held
                assert r.status == 200
            gate.set()
            (await held).release()
            async with two.get(url) as r:  # both connections open and idle but this one
                assert r.status == 200
        assert seen == [1, 1, 2, 1]
    finally:
        await runner.cleanup()


async def test_a_lone_request_on_an_idle_loop_model_runs_inline_and_is_counted(
        repository: Path) -> None:
    """executor: loop, nobody else in the server: the request is computed in its own handler
    (a batch of one in the statistics), with the same answer; concurrent ones still merge."""
    client = await _serve(create_model_server(repository, _config(executor="loop")))
    try:
        for i in range(3):
            x = _rows(i, 2)
            resp = await client.post(SYN, data=_body(x, f"lone-{i}"))
            doc = orjson.loads(await resp.read())
            assert resp.status == 200 and doc["id"] == f"lone-{i}"
            np.testing.assert_allclose(doc["outputs"][0]["data"], x.sum(axis=1), rtol=1e-5)
        stats = _batch_stats(client)
        assert (stats.submitted, stats.items, stats.batches, stats.rows, stats.running) == \
            (3, 3, 3, 6, 0)
        assert stats.queue_delay_s.count == 3 and stats.batch_duration_s.count == 3
        results = await _concurrently(client, 60)
        assert all(status == 200 and doc["id"] == rid for status, doc, _, rid in results)
        stats = _batch_stats(client)
        assert stats.items == 63 and stats.batches < 63  # the concurrent ones merged
        # a request with a deadline goes through the batcher, which checks it at dispatch
        resp = await client.post(SYN, data=_body(_rows(9, 1), "late", timeout=1))
        assert resp.status == 504
    finally:
        await client.close()


async def test_a_lone_request_through_the_gateway_holds_the_batch_slot(
        batching_stack: tuple[TestClient, TestClient]) -> None:
    """The gateway forwards a lone request as it came, holding its batcher's slot (a batch of
    one in the statistics); requests that arrive meanwhile still queue and merge."""
    gateway, _ = batching_stack
    for i in range(4):
        x = _rows(100 + i, 1)
        resp = await gateway.post(SYN, data=_body(x, f"lone-{i}"))
        doc = orjson.loads(await resp.read())
        assert resp.status == 200 and doc["id"] == f"lone-{i}"
        np.testing.assert_allclose(doc["outputs"][0]["data"], x.sum(axis=1), rtol=1e-5)
    (stats,) = gateway.server.app[GATEWAY_KEY].statistics().batching.values()
    assert (stats.submitted, stats.items, stats.batches, stats.running, stats.queued) == \
        (4, 4, 4, 0, 0)
    results = await _concurrently(gateway, 40)
    assert all(status == 200 and doc["id"] == rid for status, doc, _, rid in results)
    assert gateway.server.app[GATEWAY_KEY].statistics().merged_calls > 0
