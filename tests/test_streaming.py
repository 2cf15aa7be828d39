"""Response streaming in the layer and both tiers, on real servers on 127.0.0.1.

The synthetic models answer each row with its sum (synthetic-wide: repeated 65,536
times), so every streamed answer can be checked against the buffered one.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from optkit import ServiceConfig, StreamingConfig, encode_infer_request
from optkit.v2._codec import BINARY_HEADER, decode_infer_result, encode_binary_infer_request
from optkit.layers import ResponseStreamer
from optkit.service import GATEWAY_KEY, MODEL_SERVER_KEY, create_gateway, create_model_server

WIDE = "/v2/models/synthetic-wide/infer"
SYN = "/v2/models/synthetic"
POISON = -7.0
pytestmark = pytest.mark.timeout(60)


def _config(enabled: bool = True, *, models: tuple[str, ...] = ("synthetic", "synthetic-wide"),
            cost_a_us: float = 100.0, batching: bool = False, **streaming: Any) -> ServiceConfig:
    return ServiceConfig.from_dict({
        "pooling": {"enabled": True},
        "batching": {"enabled": batching},
        "streaming": {"enabled": enabled, **streaming},
        "server": {"upstream_timeout_s": 20.0},
        "loading": {"models": list(models),
                    "parameters": {m: {"poison_value": POISON, "cost_a_us": cost_a_us}
                                   for m in models if m.startswith("synthetic")}},
    })


async def _serve(app: web.Application) -> TestClient:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def _stack(repository: Path, config: ServiceConfig) -> tuple[TestClient, TestClient]:
    upstream = await _serve(create_model_server(repository, config))
    gateway = await _serve(create_gateway(str(upstream.make_url("")).rstrip("/"), config))
    return gateway, upstream


def _stats(client: TestClient) -> Any:
    app = client.server.app
    return (app[GATEWAY_KEY] if GATEWAY_KEY in app else app[MODEL_SERVER_KEY]).statistics()


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (bounded) until ``check()`` holds; fail the test if it never does."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.01)


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 16)).astype(np.float32)


def _binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body, head = encode_binary_infer_request({"x": x})
    return body, {"Content-Type": "application/octet-stream", BINARY_HEADER: str(head)}


# -- the layer -----------------------------------------------------------------------------

async def _layer_app(streamer: ResponseStreamer, body: bytes) -> TestClient:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        async with streamer.open(request, response) as out:
            step = streamer.config.chunk_bytes  # the caller makes the pieces
            for start in range(0, len(body), step):
                await out.write(memoryview(body)[start:start + step])
            await out.write(b"")  # nothing to write: not a chunk
        return response

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        async with streamer.open(request, response) as out:
            await out.event({"n": 1})
            await out.error_event("boom", rows_scored=1)
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/events", events)
    return await _serve(app)


async def test_layer_writes_in_chunks_and_counts() -> None:
    """A 1 MiB body handed over in 64 KiB pieces leaves as chunked transfer, one chunk per
    piece, all counted; repr is live."""
    streamer = ResponseStreamer(StreamingConfig(enabled=True, chunk_bytes=65536))
    body = bytes(range(256)) * 4096
    client = await _layer_app(streamer, body)
    try:
        resp = await client.get("/big")
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert await resp.read() == body
        s = streamer.statistics()
        assert (s.streamed, s.bytes_streamed, s.chunks, s.active) == (1, len(body), 16, 0)
        assert s.peak_piece_bytes == 65536
        assert "ResponseStreamer on" in repr(streamer) and "1 done" in repr(streamer)
        resp = await client.get("/events")
        assert await resp.read() == b'data: {"n":1}\n\ndata: {"error":"boom","rows_scored":1}\n\n'
        s = streamer.statistics()
        assert (s.sse_events, s.error_events) == (2, 1)
    finally:
        await client.close()
        await streamer.aclose()


def test_layer_threshold() -> None:
    """Off never streams; on, answers at or under the threshold stay buffered (and are counted)."""
    assert not ResponseStreamer(StreamingConfig()).wants_stream(None)
    streamer = ResponseStreamer(StreamingConfig(enabled=True, threshold_bytes=100))
    assert [streamer.wants_stream(n) for n in (100, 101, None)] == [False, True, True]
    assert streamer.statistics().buffered == 1


async def _raw_get(client: TestClient, path: str) -> tuple[asyncio.StreamReader, Any]:
    """A raw HTTP/1.1 client that sends a request and reads only the response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    return reader, writer


async def test_layer_stalled_client_is_cut_and_gone_client_counted() -> None:
    """A client that reads nothing is cut after write_timeout_s; one that hangs up is counted."""
    streamer = ResponseStreamer(StreamingConfig(enabled=True, write_timeout_s=0.2))
    client = await _layer_app(streamer, b"\0" * (64 << 20))  # far more than socket buffers hold
    try:
        reader, writer = await _raw_get(client, "/big")
        await _until(lambda: streamer.statistics().write_timeouts == 1)
        assert await asyncio.wait_for(reader.read(), 10) is not None  # the server closed it
        writer.close()
        reader, writer = await _raw_get(client, "/big")
        writer.transport.abort()
        await _until(lambda: streamer.statistics().disconnects == 1)
        s = streamer.statistics()
        assert s.active == 0 and s.bytes_streamed < 2 * (64 << 20)
    finally:
        await client.close()


# -- infer: streamed answers equal buffered ones -----------------------------------------

@pytest.fixture
async def tiers(repository: Path) -> AsyncIterator[dict[str, TestClient]]:
    """A buffered model server, a streaming one, and a streaming gateway in front of it."""
    plain = await _serve(create_model_server(repository, _config(False)))
    gateway, upstream = await _stack(repository, _config(True, sub_batch_rows=2))
    yield {"plain": plain, "upstream": upstream, "gateway": gateway}
    for c in (gateway, upstream, plain):
        await c.close()


@pytest.mark.parametrize("binary", [False, True])
async def test_large_answer_streamed_equals_buffered(tiers: dict[str, TestClient],
                                                     binary: bool) -> None:
    """5 rows of synthetic-wide (MBs): both tiers stream it in chunks, byte for byte the buffered one."""
    x = _rows(5)
    body, headers = _binary(x) if binary else (encode_infer_request({"x": x}, request_id="r"),
                                               {"Content-Type": "application/json"})
    answers = {}
    for name, client in tiers.items():
        resp = await client.post(WIDE, data=body, headers=headers)
        assert resp.status == 200, await resp.text()
        answers[name] = (await resp.read(), resp.headers)
    ref, ref_headers = answers["plain"]
    assert "Transfer-Encoding" not in ref_headers
    for name in ("upstream", "gateway"):
        data, headers_seen = answers[name]
        assert headers_seen.get("Transfer-Encoding") == "chunked"
        assert headers_seen.get(BINARY_HEADER) == ref_headers.get(BINARY_HEADER)
        assert data == ref
    head = None if not binary else int(ref_headers[BINARY_HEADER])
    y = decode_infer_result(ref, head).outputs["y"]
    np.testing.assert_allclose(y[:, 0], x.sum(axis=1), rtol=1e-5)
    assert y.shape == (5, 65536)
    up, gw = _stats(tiers["upstream"]), _stats(tiers["gateway"])
    assert up.streaming.streamed == 2 and gw.streaming.streamed == 1  # direct + via gateway
    assert up.server.model_calls == 2 * 3  # rows 0-1, 2-3, 4: computed in sub-batches
    assert up.streaming.peak_piece_bytes < len(ref) / 2  # held one sub-batch, not the answer


async def test_small_answer_unchanged(tiers: dict[str, TestClient]) -> None:
    """With streaming on, a small answer is one buffered body (Content-Length), as without."""
    body = encode_infer_request({"x": _rows(3)}, request_id="s")
    answers = []
    for client in tiers.values():
        resp = await client.post(SYN + "/infer", data=body)
        assert resp.status == 200 and resp.content_length is not None
        answers.append(await resp.read())
    assert answers[0] == answers[1] == answers[2]
    assert _stats(tiers["upstream"]).streaming.buffered == 2  # direct + via gateway
    assert _stats(tiers["gateway"]).streaming.buffered == 1
    assert _stats(tiers["gateway"]).streaming.streamed == 0


@pytest.mark.parametrize("outputs", [
    {"parameters": {}},
    {"parameters": {"binary_data_output": True}},
    {"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                 {"name": "label"}]},
])
async def test_several_outputs_streamed_equal_buffered(repository: Path, digits: tuple,
                                                       outputs: dict[str, Any]) -> None:
    """Threshold 0: every answer of a two-output model streams (JSON, binary, mixed) and is exact."""
    _, xte, _, _ = digits
    doc = orjson.loads(encode_infer_request({"pixels": xte[:40]}, request_id="d"))
    body = orjson.dumps({**doc, **outputs})
    plain = await _serve(create_model_server(repository, _config(False, models=("digits-mlp",))))
    gateway, upstream = await _stack(repository, _config(
        True, models=("digits-mlp",), threshold_bytes=0, chunk_bytes=1024, sub_batch_rows=8))
    try:
        seen = []
        for client in (plain, upstream, gateway):
            resp = await client.post("/v2/models/digits-mlp/infer", data=body)
            assert resp.status == 200
            seen.append((await resp.read(), resp.headers.get(BINARY_HEADER)))
        assert seen[0] == seen[1] == seen[2]
        assert _stats(upstream).streaming.streamed == 2  # direct + via the gateway
        if "outputs" in outputs:  # mixed: encoded whole (JSON in a binary frame), one piece
            assert _stats(upstream).streaming.chunks == 2
        else:  # row slices of about chunk_bytes, each its own piece
            assert _stats(upstream).streaming.chunks > 2
    finally:
        for c in (gateway, upstream, plain):
            await c.close()


# -- disconnects, slow readers, upstream failures -------------------------------------------

def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.parametrize("batching", [False, True])
async def test_client_gone_mid_stream_cancels_the_rest(repository: Path, batching: bool,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A client that hangs up after the first chunk stops the remaining sub-batches at both tiers.

    Batching (when on) is the model server's: its sub-batches ride the batcher, whose
    ``alive`` check drops a queued one whose client left. (The gateway's batcher relays
    buffered answers, so the gateway streams requests it forwards without it.)
    """
    caplog.set_level(logging.INFO)
    upstream = await _serve(create_model_server(repository, _config(
        True, cost_a_us=20_000.0, sub_batch_rows=1, batching=batching)))
    gateway = await _serve(create_gateway(str(upstream.make_url("")).rstrip("/"),
                                          _config(True)))
    rows = 64
    try:
        async with aiohttp.ClientSession() as session:
            body, headers = _binary(_rows(rows))
            resp = await session.post(gateway.make_url(WIDE), data=body, headers=headers)
            assert resp.status == 200
            await resp.content.readexactly(1 << 16)
            resp.close()  # hang up mid-stream
        await _until(lambda: _stats(gateway).streaming.disconnects == 1)
        await _until(lambda: _stats(upstream).streaming.disconnects == 1)
        up = _stats(upstream)
        assert up.server.model_calls < rows  # the rest of the work never ran
        assert up.streaming.active == 0 and _stats(gateway).streaming.active == 0
        if batching:
            assert sum(b.cancelled for b in up.batching.values()) <= 1
    finally:
        await gateway.close()
        await upstream.close()
    _no_errors(caplog)


async def test_slow_reader_holds_one_chunk(repository: Path) -> None:
    """A client reading 8 MiB slowly: the gateway holds a chunk at a time, its write buffer bounded."""
    chunk = 65536
    gateway, upstream = await _stack(repository, _config(True, chunk_bytes=chunk,
                                                         sub_batch_rows=2))
    try:
        x = _rows(32)
        body, headers = _binary(x)
        async with aiohttp.ClientSession() as session:
            async with session.post(gateway.make_url(WIDE), data=body, headers=headers) as resp:
                assert resp.status == 200
                parts = []
                async for part in resp.content.iter_chunked(16384):
                    parts.append(part)
                    await asyncio.sleep(0.001)  # a slow reader: the server must wait for it
        data = b"".join(parts)
        y = decode_infer_result(data, int(resp.headers[BINARY_HEADER])).outputs["y"]
        np.testing.assert_allclose(y[:, -1], x.sum(axis=1), rtol=1e-5)
        gw, up = _stats(gateway).streaming, _stats(upstream).streaming
        assert gw.bytes_streamed == len(data) > 8 << 20
        assert gw.peak_piece_bytes <= chunk  # relayed as it came, never gathered
        assert gw.peak_write_buffer_bytes <= 4 * chunk  # backpressure: not the 8 MiB answer
        assert up.peak_piece_bytes <= 2 * 65536 * 4  # one sub-batch of two rows at a time
    finally:
        await gateway.close()
        await upstream.close()


META = {"name": "m", "versions": ["1"], "platform": "fake",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]}


async def _dying_upstream() -> TestClient:
    """A v2 server that starts a large answer (or an event stream) and dies mid-body."""
    async def meta(request: web.Request) -> web.Response:
        return web.json_response(META)

    async def die_after(request: web.Request, first: bytes, ctype: str) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": ctype})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(first)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def infer(request: web.Request) -> web.StreamResponse:
        return await die_after(request, b'{"model_name":"m","outputs":[' + b" " * 300_000,
                               "application/json")

    async def generate(request: web.Request) -> web.StreamResponse:
        return await die_after(request, b'data: {"rows":[0,1]}\n\n', "text/event-stream")

    app = web.Application()
    app.router.add_get("/v2/models/m", meta)
    app.router.add_post("/v2/models/m/infer", infer)
    app.router.add_post("/v2/models/m/generate_stream", generate)
    return await _serve(app)


async def test_upstream_dying_mid_body_cuts_the_client(caplog: pytest.LogCaptureFixture) -> None:
    """The upstream dies mid-answer: the client sees a cut response (infer) or an error event (SSE)."""
    upstream = await _dying_upstream()
    gateway = await _serve(create_gateway(str(upstream.make_url("")).rstrip("/"), _config(True)))
    try:
        async with aiohttp.ClientSession() as session:
            body = encode_infer_request({"x": _rows(1)})
            async with session.post(gateway.make_url("/v2/models/m/infer"), data=body) as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()  # never a short body that looks complete
            gen = orjson.dumps({"x": _rows(1).tolist()})
            async with session.post(gateway.make_url("/v2/models/m/generate_stream"),
                                    data=gen) as resp:
                assert resp.status == 200
                events = _events(await resp.read())  # ends cleanly, with an error event
        assert events[0] == {"rows": [0, 1]} and "error" in events[-1]
        s = _stats(gateway).streaming
        assert (s.cut, s.error_events, s.streamed) == (1, 1, 2)
    finally:
        await gateway.close()
        await upstream.close()
    _no_errors(caplog)


# -- generate_stream ------------------------------------------------------------------------

def _events(raw: bytes) -> list[dict[str, Any]]:
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert all(b.startswith(b"data: ") for b in blocks), raw[:200]
    return [orjson.loads(b[len(b"data: "):]) for b in blocks]


@pytest.mark.parametrize("enabled", [True, False])
async def test_generate_stream_happy_path(repository: Path, enabled: bool) -> None:
    """10 rows in sub-batches of 4: three events then done; outputs equal infer on the same rows."""
    gateway, upstream = await _stack(repository, _config(enabled, sub_batch_rows=4))
    x = _rows(10, seed=3)
    try:
        infer = await upstream.post(SYN + "/infer", data=encode_infer_request({"x": x}))
        expected = decode_infer_result(await infer.read()).outputs["y"]
        for client in (upstream, gateway):
            resp = await client.post(SYN + "/generate_stream",
                                     data=orjson.dumps({"x": x.tolist()}))
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = _events(await resp.read())
            assert [e.get("rows") for e in events[:-1]] == [[0, 4], [4, 8], [8, 10]]
            assert events[-1] == {"model_name": "synthetic", "model_version": "1",
                                  "done": True, "rows_scored": 10}
            got = np.concatenate([np.asarray(e["outputs"]["y"], np.float32)
                                  for e in events[:-1]])
            np.testing.assert_array_equal(got, expected)
        assert _stats(upstream).streaming.sse_events == (2 * 4 if enabled else 0)
        doc = await (await gateway.get("/v2")).json()
        assert "generate_stream" in doc["extensions"]
    finally:
        await gateway.close()
        await upstream.close()


@pytest.mark.parametrize("doc, match", [
    ({"x": [[0.0] * 16, [0.0] * 15]}, "regular array"),
    ({"x": [[0.0] * 15]}, "shape"),
    ({"z": [[0.0] * 16]}, "unexpected input"),
    ({"x": [["a"] * 16]}, "numbers"),
    ({"x": [[0.0] * 16] * 9}, "row limit"),
    ({}, "missing input"),
])
async def test_generate_stream_bad_request_before_the_stream(repository: Path, doc: dict,
                                                             match: str) -> None:
    """A bad row is a 400 JSON error before any event, the same from both tiers."""
    gateway, upstream = await _stack(repository, _config(True, sub_batch_rows=4,
                                                         max_stream_rows=8))
    try:
        bodies = []
        for client in (upstream, gateway):
            resp = await client.post(SYN + "/generate_stream", data=orjson.dumps(doc))
            assert resp.status == 400
            assert resp.headers["Content-Type"].startswith("application/json")
            bodies.append(await resp.json())
        assert bodies[0] == bodies[1] and match in bodies[0]["error"]
        assert _stats(upstream).streaming.streamed == 0
    finally:
        await gateway.close()
        await upstream.close()


async def test_generate_stream_model_error_mid_stream(repository: Path) -> None:
    """The model raising on row 6: rows 0-3 arrive, then an error event, and the stream ends cleanly."""
    gateway, upstream = await _stack(repository, _config(True, sub_batch_rows=4))
    x = _rows(10)
    x[6, 0] = POISON
    try:
        for client in (upstream, gateway):
            resp = await client.post(SYN + "/generate_stream",
                                     data=orjson.dumps({"x": x.tolist()}))
            assert resp.status == 200
            events = _events(await resp.read())  # no ClientPayloadError: a clean end
            assert events[0]["rows"] == [0, 4] and len(events) == 2
            assert "poison" in events[1]["error"] and events[1]["rows_scored"] == 4
        assert _stats(upstream).streaming.error_events == 2
        assert _stats(upstream).streaming.cut == 0
    finally:
        await gateway.close()
        await upstream.close()


async def test_statistics_exported(tiers: dict[str, TestClient]) -> None:
    """/stats and /metrics carry the streamer's counters at both tiers."""
    for client, prefix in ((tiers["gateway"], "optkit_gateway"),
                           (tiers["upstream"], "optkit_model_server")):
        doc = await (await client.get("/stats")).json()
        assert doc["streaming"]["streamed"] == 0
        text = await (await client.get("/metrics")).text()
        assert f"{prefix}_streaming_bytes_streamed_total" in text
        assert f"# TYPE {prefix}_streaming_active gauge" in text


async def test_gateway_streams_large_answers_around_its_batcher(repository: Path) -> None:
    """Batching and streaming on: a request whose answer the metadata says is large goes alone
    and is relayed in chunks (never merged and held whole); small ones still ride the batcher."""
    gateway, upstream = await _stack(repository, _config(batching=True))
    try:
        x = _rows(2)
        resp = await gateway.post(WIDE, data=encode_infer_request({"x": x}, request_id="w"))
        assert resp.status == 200 and resp.headers.get("Transfer-Encoding") == "chunked"
        y = decode_infer_result(await resp.read(), None).outputs["y"]
        np.testing.assert_allclose(y[:, -1], x.sum(axis=1), rtol=1e-5)
        small = await asyncio.gather(*(gateway.post(SYN + "/infer", data=encode_infer_request(
            {"x": _rows(1, seed=k)}, request_id=str(k))) for k in range(8)))
        assert all(r.status == 200 for r in small)
        stats = _stats(gateway)
        assert stats.large_alone == 1 and stats.streaming.streamed == 1
        assert sum(b.items for b in stats.batching.values()) == 8  # the small ones were batched
        assert not any("wide" in label for label in stats.batching)
    finally:
        await gateway.close()
        await upstream.close()
