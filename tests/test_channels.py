"""The gateway's upstream over gRPC (``optkit/layers/channels.py``): naive and pooled channels.

A real model server (digits-mlp from the test repository) serves REST and, beside it, the v2
gRPC service through a :class:`~optkit.service.GrpcFront` that notes each call's peer (the
client's address and port: one per TCP connection). Gateways in front of it, on 127.0.0.1,
reach it over ``grpc://`` (``ChannelPool``) or ``http://`` (the HTTP pool), so every answer
can be compared with the HTTP upstream's.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import grpc
import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from optkit import (ChannelPool, ConfigError, PoolingConfig, ServerConfig, ServiceConfig,
                    UpstreamUnavailable, decode_infer_response, encode_infer_request, load_model)
from optkit.service import GrpcFront, ModelServer, create_gateway, parse_upstreams
from optkit.v2 import encode_binary_infer_request
from optkit.v2._proto.grpc_service_pb2_grpc import GRPCInferenceServiceServicer, \
    add_GRPCInferenceServiceServicer_to_server as add_servicer

INFER = "/v2/models/digits-mlp/infer"
FORMS = ("naive", "pooled")


class _NotingFront(GrpcFront):
    """The model server's gRPC front, noting every call's peer and its ModelInfer calls."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.peers: set[str] = set()
        self.infers = 0

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.peers.add(context.peer())
        self.infers += 1
        return await super().ModelInfer(request, context)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        self.peers.add(context.peer())
        return await super().ModelMetadata(request, context)


class Upstream:
    """A model server on 127.0.0.1: REST at ``http``, gRPC at ``grpc`` (both URLs)."""

    def __init__(self, rest: TestServer, grpc_server: Any, front: _NotingFront, port: int):
        self.rest, self.grpc_server, self.front = rest, grpc_server, front
        self.http = str(rest.make_url("")).rstrip("/")
        self.grpc = f"grpc://127.0.0.1:{port}"


@pytest.fixture
async def upstream(repository: Path) -> AsyncIterator[Upstream]:
    config = ServiceConfig.from_dict({"loading": {"models": ["digits-mlp"]}})
    server = ModelServer(repository, config)
    rest = TestServer(server.make_app(), host="127.0.0.1")
    await rest.start_server()  # loads digits-mlp
    front = _NotingFront(server, server.counters)
    grpc_server = grpc.aio.server()
    add_servicer(front, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    yield Upstream(rest, grpc_server, front, port)
    await grpc_server.stop(None)
    await rest.close()


async def _gateway(upstream: str, **sections: Any) -> TestClient:
    client = TestClient(TestServer(create_gateway(upstream, ServiceConfig.from_dict(sections)),
                                   host="127.0.0.1"))
    await client.start_server()
    return client


def _pooling(form: str, **extra: Any) -> dict[str, Any]:
    return {"enabled": form == "pooled", **extra}


@pytest.mark.parametrize("form", FORMS)
async def test_answers_equal_the_http_upstreams(upstream: Upstream, digits: tuple,
                                                repository: Path, form: str) -> None:
    """Real digit rows, JSON and binary bodies, through a gRPC-upstream gateway: byte for
    byte the HTTP-upstream gateway's answers, the offline model's labels."""
    _, xte, _, yte = digits
    rows = xte[:40].astype(np.float32)
    offline = load_model(repository / "digits-mlp" / "1").predict({"pixels": rows})
    over_grpc = await _gateway(upstream.grpc, pooling=_pooling(form))
    over_http = await _gateway(upstream.http, pooling=_pooling(form))
    json_body = encode_infer_request({"pixels": rows}, request_id="rows-40")
    binary_body, head = encode_binary_infer_request({"pixels": rows}, request_id="bin")
    try:
        answers: dict[str, list[tuple[int, bytes, str | None]]] = {}
        for name, gw in (("grpc", over_grpc), ("http", over_http)):
            answers[name] = []
            for body, headers in ((json_body, {"Content-Type": "application/json"}),
                                  (binary_body, {"Content-Type": "application/octet-stream",
                                                 "Inference-Header-Content-Length": str(head)})):
                resp = await gw.post(INFER, data=body, headers=headers)
                answers[name].append((resp.status, await resp.read(),
                                      resp.headers.get("Inference-Header-Content-Length")))
            meta = await gw.get("/v2/models/digits-mlp")
            answers[name].append((meta.status, await meta.read(), None))
    finally:
        await over_grpc.close()
        await over_http.close()
    assert answers["grpc"] == answers["http"]
    (status, body, _), (bstatus, bbody, bhead) = answers["grpc"][:2]
    assert status == bstatus == 200 and orjson.loads(body)["id"] == "rows-40"
    labels = decode_infer_response(body)["label"].ravel()
    np.testing.assert_array_equal(labels, offline["label"].ravel())
    np.testing.assert_array_equal(decode_infer_response(bbody, int(bhead or 0))["label"].ravel(),
                                  labels)
    assert (labels == yte[:40]).mean() > 0.9
    meta_doc = orjson.loads(answers["grpc"][2][1])
    assert meta_doc["parameters"]["max_batch_size"] > 0  # back from the trailing metadata


@pytest.mark.parametrize("form", FORMS)
async def test_merged_batches_over_grpc_keep_each_clients_rows(upstream: Upstream,
                                                               digits: tuple, repository: Path,
                                                               form: str) -> None:
    """Batching on: 48 concurrent clients, each its own rows and id; the upstream ran fewer
    ModelInfer calls than requests (merged), and every client got its own rows back."""
    _, xte, _, _ = digits
    offline = load_model(repository / "digits-mlp" / "1").predict(
        {"pixels": xte[:96].astype(np.float32)})["label"].ravel()
    gw = await _gateway(upstream.grpc, pooling=_pooling(form),
                        batching={"enabled": True, "max_batch_size": 64, "max_delay_ms": 20.0})
    try:
        async def one(i: int) -> tuple[str, list[int]]:
            rows = xte[2 * i:2 * i + 2].astype(np.float32)
            resp = await gw.post(INFER, data=encode_infer_request({"pixels": rows},
                                                                  request_id=f"c{i}"))
            assert resp.status == 200
            doc = orjson.loads(await resp.read())
            return doc["id"], decode_infer_response(orjson.dumps(doc))["label"].ravel().tolist()

        await gw.get("/v2/models/digits-mlp")  # the metadata fetched before the burst
        results = await asyncio.gather(*(one(i) for i in range(48)))
        stats = orjson.loads(await (await gw.get("/stats")).read())
    finally:
        await gw.close()
    assert [rid for rid, _ in results] == [f"c{i}" for i in range(48)]
    for i, (_, labels) in enumerate(results):
        assert labels == offline[2 * i:2 * i + 2].tolist(), f"client {i} got another's rows"
    assert stats["merged_calls"] >= 1
    assert upstream.front.infers < 48


@pytest.mark.parametrize("form", FORMS)
async def test_channel_reuse_in_statistics_and_at_the_upstream(upstream: Upstream,
                                                               form: str) -> None:
    """30 inferences: pooled opens at most ``grpc_channels`` channels (connections at the
    upstream: as many), the naive form one channel (and connection) per request."""
    gw = await _gateway(upstream.grpc, pooling=_pooling(form, grpc_channels=2))
    try:
        body = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
        for _ in range(30):
            resp = await gw.post(INFER, data=body)
            assert resp.status == 200
        pool = orjson.loads(await (await gw.get("/stats")).read())["pool"]
    finally:
        await gw.close()
    assert pool["requests"] == 31  # 30 inferences + 1 metadata fetch
    assert pool["errors"] == 0
    if form == "pooled":
        assert pool["connections_opened"] <= 2 and len(upstream.front.peers) <= 2
        assert pool["connections_reused"] >= 29
    else:
        assert pool["connections_opened"] == 31 and len(upstream.front.peers) == 31
        assert pool["connections_reused"] == 0


@pytest.mark.parametrize("form", FORMS)
async def test_upstream_down_is_a_502(form: str) -> None:
    """Nothing listening at the gRPC upstream: infer is a 502 JSON error naming it, ready a 503."""
    with socket.socket() as sock:  # a port that is surely closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gw = await _gateway(f"grpc://127.0.0.1:{port}", pooling=_pooling(form))
    try:
        resp = await gw.post(INFER, data=encode_infer_request(
            {"pixels": np.zeros((1, 64), np.float32)}))
        doc = orjson.loads(await resp.read())
        assert resp.status == 502 and f"127.0.0.1:{port}" in doc["error"]
        assert (await gw.get("/v2/health/ready")).status == 503
    finally:
        await gw.close()


async def test_the_upstreams_refusals_pass_through_with_their_rest_status(
        upstream: Upstream) -> None:
    """An unknown model is the upstream's 404, a model it knows but has not loaded its own
    refusal, each with the HTTP upstream's status and message."""
    async with ChannelPool(PoolingConfig(enabled=True, transport="grpc",
                                         grpc_channels=1)) as pool:
        over_grpc = [await pool.request("GET", upstream.grpc + path)
                     for path in ("/v2/models/nope", "/v2/models/digits-sklearn/ready",
                                  "/v2/health/ready", "/v2/models/stats")]
        stats = pool.statistics()
    async with aiohttp.ClientSession() as session:
        over_http = []
        for path in ("/v2/models/nope", "/v2/models/digits-sklearn/ready", "/v2/health/ready"):
            async with session.get(upstream.http + path) as resp:
                over_http.append((resp.status, orjson.loads(await resp.read())))
    for mine, (status, want) in zip(over_grpc, over_http):
        doc = orjson.loads(mine.body)
        assert mine.status == status
        assert doc.get("error") == want.get("error") and doc.get("ready") == want.get("ready")
    assert over_grpc[3].status == 200
    names = {m["name"] for m in orjson.loads(over_grpc[3].body)["model_stats"]}
    assert "digits-mlp" in names
    assert stats.requests == 4 and stats.connections_opened == 1 and stats.errors == 0


async def test_a_restarted_upstream_is_reached_on_a_fresh_channel(repository: Path) -> None:
    """Pooled: the upstream stops and starts again on the same port; the next request is
    answered (the stale channel replaced or reconnected), with no error counted."""
    config = ServiceConfig.from_dict({"loading": {"models": ["digits-mlp"]}})
    server = ModelServer(repository, config)
    rest = TestServer(server.make_app(), host="127.0.0.1")
    await rest.start_server()

    async def start_grpc(port: int = 0) -> tuple[Any, int]:
        grpc_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_servicer(GrpcFront(server, server.counters), grpc_server)
        bound = grpc_server.add_insecure_port(f"127.0.0.1:{port}")
        await grpc_server.start()
        return grpc_server, bound

    first, port = await start_grpc()
    pool = ChannelPool(PoolingConfig(enabled=True, transport="grpc", grpc_channels=1))
    url = f"grpc://127.0.0.1:{port}/v2/models/digits-mlp/infer"
    body = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
    try:
        assert (await pool.request("POST", url, body=body)).status == 200
        await first.stop(None)
        with pytest.raises(UpstreamUnavailable):  # down: a failure, not a hang
            await pool.request("POST", url, body=body)
        second, _ = await start_grpc(port)
        try:
            answer = await pool.request("POST", url, body=body)
            assert answer.status == 200
            assert decode_infer_response(answer.body)["label"].shape == (1, 1)
        finally:
            await second.stop(None)
        stats = pool.statistics()
        assert stats.requests == 3 and stats.errors == 1
    finally:
        await pool.aclose()
        await rest.close()


class _CuttingProxy:
    """A TCP relay in front of the gRPC upstream that can drop a connection the moment the
    next bytes arrive on it: the stale-connection race (the close crosses a request)."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.cut_next, self.accepted = target_port, False, 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, cut: bool) -> None:
            try:
                while data := await src.read(65536):
                    # a request's frames, not a PING or WINDOW_UPDATE (13-17 bytes)
                    if cut and self.cut_next and len(data) >= 200:
                        self.cut_next = False
                        writer.transport.abort()  # reset: nothing of this request goes on
                        up_writer.transport.abort()
                        return
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_stale_channel_is_resent_once_on_a_fresh_one(upstream: Upstream) -> None:
    """Pooled, one channel: its connection dropped as the next infer arrives; the infer is
    sent again on a fresh channel, answered, marked retried and counted (non-idempotent)."""
    proxy = _CuttingProxy(int(upstream.grpc.rsplit(":", 1)[1]))
    port = await proxy.start()
    url = f"grpc://127.0.0.1:{port}/v2/models/digits-mlp/infer"
    body = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
    pool = ChannelPool(PoolingConfig(enabled=True, transport="grpc", grpc_channels=1))
    try:
        first = await pool.request("POST", url, body=body)
        assert first.status == 200 and not first.retried
        proxy.cut_next = True
        second = await pool.request("POST", url, body=body)
        stats = pool.statistics()
    finally:
        await pool.aclose()
        proxy.close()
    assert second.status == 200 and second.retried
    assert decode_infer_response(second.body)["label"].shape == (1, 1)
    assert stats.retries == 1 and stats.non_idempotent_retries == 1 and stats.errors == 0
    assert stats.connections_opened == 2 and proxy.accepted == 2


class _Foreign(GRPCInferenceServiceServicer):
    """A gRPC server that is not optkit's (no REST status in its trailing metadata)."""

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name}")

    async def ServerReady(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")

    async def ServerLive(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not this one")


async def test_a_foreign_servers_codes_map_back_through_the_table_inverted() -> None:
    """Without optkit's status metadata a refusal's code is mapped back (NOT_FOUND 404,
    FAILED_PRECONDITION 409, RESOURCE_EXHAUSTED 429) with its message; UNAVAILABLE is the
    transport's (UpstreamUnavailable), as it cannot be told from a dropped connection."""
    server = grpc.aio.server()
    add_servicer(_Foreign(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    base = f"grpc://127.0.0.1:{port}"
    try:
        async with ChannelPool(PoolingConfig(enabled=True, transport="grpc")) as pool:
            meta = await pool.request("GET", base + "/v2/models/m")
            ready = await pool.request("GET", base + "/v2/models/m/ready")
            busy = await pool.request("GET", base + "/v2/health/ready")
            with pytest.raises(UpstreamUnavailable, match="going away"):
                await pool.request("GET", base + "/v2/health/live")
    finally:
        await server.stop(None)
    assert (meta.status, orjson.loads(meta.body)) == (404, {"error": "no model m"})
    assert (ready.status, orjson.loads(ready.body)) == (409, {"error": "not this one"})
    assert (busy.status, orjson.loads(busy.body)) == (429, {"error": "busy"})


def test_grpc_upstreams_and_settings_are_validated() -> None:
    """grpc://host:port upstreams are accepted alone, not mixed with HTTP ones nor with a
    path; pooling.transport and pooling.grpc_channels are checked naming the key."""
    assert parse_upstreams("grpc://127.0.0.1:9001/") == ["grpc://127.0.0.1:9001"]
    for bad in ("grpc://127.0.0.1:1,http://127.0.0.1:2", "grpc://127.0.0.1:1/v2",
                "grpc://127.0.0.1"):
        with pytest.raises(ConfigError):
            parse_upstreams(bad)
    with pytest.raises(ConfigError, match="pooling.transport"):
        PoolingConfig(transport="h2")
    with pytest.raises(ConfigError, match="pooling.grpc_channels"):
        PoolingConfig(grpc_channels=0)
    assert ServiceConfig.from_dict({"pooling": {"transport": "grpc"}}).pooling.grpc_channels == 2


async def test_a_closed_pool_refuses_and_a_non_grpc_url_is_an_upstream_error() -> None:
    """After aclose() a request raises RuntimeError; an http:// URL is not this client's."""
    pool = ChannelPool(PoolingConfig(transport="grpc"), ServerConfig())
    with pytest.raises(Exception, match="grpc://host:port"):
        await pool.request("GET", "http://127.0.0.1:1/v2")
    await pool.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await pool.request("GET", "grpc://127.0.0.1:1/v2")
