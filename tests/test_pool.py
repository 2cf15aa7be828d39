"""Tests for optkit.layers.pooling against real servers on 127.0.0.1 (no network mocks).

Connections are counted at the server's side: by distinct client ports, and by
aiohttp's own list of open server connections.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from optkit._config import PoolingConfig, ServerConfig
from optkit._exceptions import PoolTimeout, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from optkit.layers.pooling import (
    ConnectionPool,
    DirectClient,
    PoolStatistics,
    UpstreamClient,
    UpstreamResponse,
)

INFER = "/v2/models/m/infer"
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1.0]}]}'


class Upstream:
    """An aiohttp server that records which client connections it sees."""

    def __init__(self, *, keepalive_timeout: float = 75.0) -> None:
        self.keepalive_timeout = keepalive_timeout
        self.port = 0
        self.peers: set[int] = set()  # client ports seen: one per connection
        self.max_open = 0  # most server connections open during a request
        self.content_types: set[str] = set()
        self.gate = asyncio.Event()  # /slow answers when this is set
        self.entered = asyncio.Event()  # /slow has been reached
        self.delay = 0.0
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        assert self.runner is not None and self.runner.server is not None
        return len(self.runner.server.connections)

    def _note(self, request: web.Request) -> None:
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername")[1])
        self.max_open = max(self.max_open, self.open_connections)

    async def _infer(self, request: web.Request) -> web.Response:
        self._note(request)
        self.content_types.add(request.headers.get("Content-Type", ""))
        await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response({"model_name": "m", "outputs": []})

    async def _slow(self, request: web.Request) -> web.Response:
        self._note(request)
        self.entered.set()
        await asyncio.wait_for(self.gate.wait(), 5.0)
        return web.json_response({})

    async def _big(self, request: web.Request) -> web.StreamResponse:
        """``n`` chunks of 1,000 bytes, chunked transfer (no Content-Length)."""
        self._note(request)
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(int(request.query.get("n", "10"))):
            await response.write(bytes([65 + i % 26]) * 1000)
        await response.write_eof()
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(INFER, self._infer)
        app.router.add_get("/big", self._big)
        app.router.add_get("/v2/health/ready", self._infer)
        app.router.add_post("/slow", self._slow)
        self.runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=self.keepalive_timeout, shutdown_timeout=0.1
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


class DroppingServer:
    """A raw HTTP/1.1 server that closes a connection, unanswered, when `drop` says so.

    That is the keep-alive race made deterministic: the client sends on a
    connection it believes open, and the server closes it without a response.
    """

    def __init__(self, drop: Callable[[int, int], bool], *, reset: bool = False) -> None:
        self.drop = drop  # (nth request overall, nth on this connection) -> close?
        self.reset = reset  # close with RST instead of FIN
        self.seen = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for on_conn in range(1, 1000):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.seen += 1
                if self.drop(self.seen, on_conn):
                    if self.reset:
                        sock = writer.get_extra_info("socket")
                        linger = struct.pack("ii", 1, 0)  # close() then sends RST
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> DroppingServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A started Upstream, stopped afterwards."""
    server = Upstream()
    await server.start()
    yield server
    server.gate.set()
    await server.stop()


def pool(**pooling: Any) -> ConnectionPool:
    return ConnectionPool(PoolingConfig(enabled=True, **pooling), ServerConfig())


async def within(seconds: float, awaitable: Awaitable[object]) -> float:
    """Await, expecting it to raise or return in time; return the time it took."""
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(awaitable, seconds)
    finally:
        elapsed = time.monotonic() - t0
    return elapsed


async def test_direct_client_opens_one_connection_per_request(upstream: Upstream) -> None:
    """DirectClient opens (and the server sees) a new connection for every request."""
    async with DirectClient(ServerConfig()) as client:
        for _ in range(20):
            response = await client.request("POST", upstream.url + INFER, body=BODY)
            assert response.status == 200
        stats = client.statistics()
    assert len(upstream.peers) == 20
    assert (stats.requests, stats.connections_opened, stats.connections_reused) == (20, 20, 0)
    assert stats.reuse_ratio == 0.0 and stats.idle == 0


async def test_pool_reuses_connections_for_sequential_requests(upstream: Upstream) -> None:
    """200 sequential requests through the pool ride a handful of connections."""
    async with pool() as client:
        for _ in range(200):
            response = await client.request("POST", upstream.url + INFER, body=BODY)
            assert response.status == 200 and not response.retried
        stats = client.statistics()
    assert len(upstream.peers) <= 3
    assert stats.connections_opened == len(upstream.peers)
    assert stats.reuse_ratio > 0.95 and stats.retries == stats.errors == 0
    assert response.content_type.startswith("application/json")
    assert response.headers["Content-Type"] == response.content_type
    assert response.body.startswith(b'{"model_name"')
    assert upstream.content_types == {"application/json"}


async def test_pool_caps_open_connections_at_limit(upstream: Upstream) -> None:
    """100 concurrent requests with limit=10: all answered, never more than 10 connections."""
    upstream.delay = 0.005
    async with pool(limit=10) as client:
        elapsed = await within(10, asyncio.gather(
            *(client.request("POST", upstream.url + INFER, body=BODY) for _ in range(100))
        ))
        stats = client.statistics()
    assert elapsed < 10
    assert upstream.max_open <= 10 and len(upstream.peers) <= 10
    assert stats.requests == 100 and stats.errors == 0 and stats.active == 0
    assert stats.connections_opened <= 10 and stats.waits_for_slot > 0


async def test_pool_closes_idle_connections_after_its_keepalive(upstream: Upstream) -> None:
    """A keepalive_timeout shorter than the server's: the pool closes idle connections itself."""
    async with pool(keepalive_timeout=0.1) as client:
        await client.request("GET", upstream.url + "/v2/health/ready")
        assert client.statistics().idle == 1 and upstream.open_connections == 1
        for _ in range(40):  # bounded poll, ≤ 2 s
            if upstream.open_connections == 0:
                break
            await asyncio.sleep(0.05)
        assert upstream.open_connections == 0
        assert client.statistics().idle == 0


async def test_connections_the_server_closed_while_idle_are_replaced() -> None:
    """Server keep-alive shorter than the pool's: closed connections are noticed, not used."""
    upstream = Upstream(keepalive_timeout=0.05)
    await upstream.start()
    try:
        async with pool(keepalive_timeout=15) as client:
            await client.request("POST", upstream.url + INFER, body=BODY)
            await asyncio.sleep(0.3)  # the server has closed the idle connection by now
            response = await client.request("POST", upstream.url + INFER, body=BODY)
            stats = client.statistics()
    finally:
        await upstream.stop()
    assert response.status == 200 and not response.retried
    assert stats.connections_opened == 2 and stats.retries == 0 and stats.errors == 0


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("idempotent", [False, True], ids=["post", "idempotent-post"])
async def test_stale_connection_is_retried_once_and_marked(reset: bool, idempotent: bool) -> None:
    """A reused connection the server drops unanswered: one retry, marked, counted."""
    async with DroppingServer(lambda _n, on_conn: on_conn > 1, reset=reset) as server:
        async with pool() as client:
            first = await client.request("POST", server.url + INFER, body=BODY)
            second = await client.request("POST", server.url + INFER, body=BODY,
                                          idempotent=idempotent)
            stats = client.statistics()
    assert (first.retried, second.retried) == (False, True) and second.status == 200
    assert server.seen == 3  # the dropped request did reach the server: hence the mark
    assert stats.retries == 1 and stats.errors == 0
    assert stats.non_idempotent_retries == (0 if idempotent else 1)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_stale_retry_happens_at_most_once(method: str) -> None:
    """If the resend fails too, the error surfaces: never a third send (GET or POST)."""
    async with DroppingServer(lambda n, _on_conn: n > 1) as server:
        async with pool() as client:
            await client.request(method, server.url + INFER)
            with pytest.raises(UpstreamUnavailable, match="127.0.0.1"):
                await client.request(method, server.url + INFER)
            stats = client.statistics()
    assert server.seen == 3
    assert (stats.retries, stats.errors) == (1, 1)


async def test_no_retry_when_disabled() -> None:
    """retry_stale=False: a stale POST fails with UpstreamUnavailable instead of being resent."""
    async with DroppingServer(lambda _n, on_conn: on_conn > 1) as server:
        async with pool(retry_stale=False) as client:
            await client.request("POST", server.url + INFER, body=BODY)
            with pytest.raises(UpstreamUnavailable):
                await client.request("POST", server.url + INFER, body=BODY)
    assert server.seen == 2


async def test_upstream_restart_fails_fast_then_recovers(upstream: Upstream) -> None:
    """Upstream stops: in-flight and new requests fail fast; it restarts: the pool recovers."""
    async with pool() as client:
        for _ in range(3):
            await client.request("POST", upstream.url + INFER, body=BODY)
        in_flight = asyncio.create_task(client.request("POST", upstream.url + "/slow", body=BODY))
        await within(2, upstream.entered.wait())
        await upstream.stop()
        with pytest.raises(UpstreamUnavailable):
            await within(2, in_flight)
        with pytest.raises(UpstreamUnavailable, match=f"127.0.0.1:{upstream.port}"):
            await within(2, client.request("POST", upstream.url + INFER, body=BODY))
        await upstream.start()  # same port
        response = await client.request("POST", upstream.url + INFER, body=BODY)
        stats = client.statistics()
    assert response.status == 200
    assert stats.errors == 2 and stats.requests == 6


async def test_slow_upstream_raises_upstream_timeout_within_bound(upstream: Upstream) -> None:
    """An upstream slower than upstream_timeout_s: UpstreamTimeout, in about that time."""
    server = ServerConfig(upstream_timeout_s=0.2)
    async with ConnectionPool(PoolingConfig(enabled=True), server) as client:
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="/slow"):
            await within(5, client.request("POST", upstream.url + "/slow", body=BODY))
        # not before the bound (a load on the machine can only make it later; within() is
        # the hang guard). aiohttp runs its timeouts on the loop's clock, so no fake one here.
        assert time.monotonic() - t0 >= 0.15
        assert client.statistics().errors == 1


async def test_busy_pool_raises_pool_timeout(upstream: Upstream) -> None:
    """All slots busy longer than acquire_timeout_s: PoolTimeout, then service resumes."""
    async with pool(limit=1, acquire_timeout_s=0.1) as client:
        busy = asyncio.create_task(client.request("POST", upstream.url + "/slow", body=BODY))
        await within(2, upstream.entered.wait())
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout, match="no free pooled connection"):
            await within(5, client.request("POST", upstream.url + INFER, body=BODY))
        assert time.monotonic() - t0 >= 0.08
        upstream.gate.set()
        await within(2, busy)
        assert busy.result().status == 200
        stats = client.statistics()
    assert stats.waits_for_slot == 1 and stats.errors == 1 and stats.connections_opened == 1


async def test_refused_connection_is_upstream_unavailable() -> None:
    """Nothing listening: UpstreamUnavailable naming the URL, for both clients."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for client in (DirectClient(ServerConfig()), pool()):
        async with client:
            with pytest.raises(UpstreamUnavailable, match=f"127.0.0.1:{port}/v2"):
                await client.request("GET", f"http://127.0.0.1:{port}/v2/health/ready")
            assert client.statistics().errors == 1


async def test_statistics_record_and_repr(upstream: Upstream) -> None:
    """statistics() is a frozen record with reuse_ratio; repr is a live one-liner."""
    client: UpstreamClient = pool()
    assert repr(client) == (
        "<ConnectionPool [requests: 0 active | connections: 0 idle, 0 opened, 0 reused]>"
    )
    for _ in range(3):
        response = await client.request("GET", upstream.url + "/v2/health/ready")
    assert isinstance(response, UpstreamResponse)
    stats = client.statistics()
    assert isinstance(stats, PoolStatistics)
    assert stats == PoolStatistics(requests=3, active=0, connections_opened=1, connections_reused=2,
                                   idle=1, in_use=0, waits_for_slot=0, retries=0,
                                   non_idempotent_retries=0, errors=0)
    assert stats.reuse_ratio == pytest.approx(2 / 3)
    with pytest.raises(AttributeError):
        stats.requests = 0  # type: ignore[misc]
    assert repr(client) == (
        "<ConnectionPool [requests: 0 active | connections: 1 idle, 1 opened, 2 reused]>"
    )
    await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await client.request("GET", upstream.url + "/v2/health/ready")


async def test_http_error_statuses_are_answers_not_errors(upstream: Upstream) -> None:
    """A 404 from the upstream comes back as a response; only transport failures raise."""
    async with pool() as client:
        response = await client.request("POST", upstream.url + "/v2/models/nope/infer", body=BODY)
        assert response.status == 404 and client.statistics().errors == 0


async def test_stream_yields_the_body_in_chunks_and_reuses_the_connection(
        upstream: Upstream) -> None:
    """stream() hands the body over chunk by chunk; a fully read stream frees its connection."""
    async with pool() as client:
        async with client.stream("GET", upstream.url + "/big?n=50") as answer:
            assert answer.status == 200 and answer.content_length is None
            chunks = [chunk async for chunk in answer.iter_chunks(4096)]
        assert b"".join(chunks) == b"".join(bytes([65 + i % 26]) * 1000 for i in range(50))
        assert len(chunks) > 1 and max(len(c) for c in chunks) <= 4096
        async with client.stream("GET", upstream.url + "/big?n=2") as answer:
            assert await answer.read() == b"A" * 1000 + b"B" * 1000
        stats = client.statistics()
    assert stats.requests == 2 and stats.connections_opened == 1 and stats.connections_reused == 1
    assert stats.active == 0 and stats.errors == 0


async def test_stream_enforces_the_response_bound_while_reading(upstream: Upstream) -> None:
    """A chunked answer past max_upstream_response_bytes fails mid-stream; the connection is dropped."""
    server = ServerConfig(max_upstream_response_bytes=5000)
    async with ConnectionPool(PoolingConfig(enabled=True), server) as client:
        received = 0
        with pytest.raises(UpstreamError, match="over the 5000-byte bound"):
            async with client.stream("GET", upstream.url + "/big?n=3000") as answer:
                async for chunk in answer.iter_chunks(1000):
                    received += len(chunk)
        assert received <= 5000
        # a half-read body (3 MB: more than the socket buffers hold) cannot go back to the
        # pool: the next request opens a new connection
        response = await client.request("GET", upstream.url + "/v2/health/ready")
        stats = client.statistics()
    assert response.status == 200
    assert stats.errors == 1 and stats.connections_opened == 2 and stats.active == 0


async def test_stream_left_early_closes_the_connection(upstream: Upstream) -> None:
    """Leaving a stream before its end drops that connection instead of reusing a dirty one."""
    async with pool() as client:
        async with client.stream("GET", upstream.url + "/big?n=3000") as answer:
            async for _ in answer.iter_chunks(1000):
                break
        response = await client.request("GET", upstream.url + "/v2/health/ready")
        stats = client.statistics()
    assert response.status == 200 and stats.connections_opened == 2


def test_pool_statistics_declare_their_metric_types() -> None:
    """Every pool statistic is exported with its declared type (gauges are not counters)."""
    from optkit._metrics import iter_families

    stats = PoolStatistics(requests=3, active=1, connections_opened=1, connections_reused=2,
                           idle=0, in_use=1, waits_for_slot=0, retries=0,
                           non_idempotent_retries=0, errors=0)
    kinds = {f.name: f.type for f in iter_families("p", stats)}
    assert kinds["p_active"] == "gauge" and kinds["p_idle"] == "gauge"
    assert kinds["p_in_use"] == "gauge" and kinds["p_requests"] == "counter"
    assert kinds["p_non_idempotent_retries"] == "counter"
    assert stats.reuse_ratio == pytest.approx(2 / 3)
