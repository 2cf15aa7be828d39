"""Upstream HTTP clients: a new connection per request, or a pool that reuses them.

The gateway calls model servers through one interface (:class:`UpstreamClient`),
implemented twice::

    DirectClient (the baseline)            ConnectionPool
    req ─ connect ─ send ─ read ─ close    req ─┐   idle    ══ ══ ══
    req ─ connect ─ send ─ read ─ close    req ─┼─▶ in use  ══ ══ ══ ══ ─▶ upstream
    (a TCP handshake for every request)    req ─┘   waiting (≤ acquire_timeout_s)

A pool is a taxi rank: a request takes the first idle connection, rides it to
the upstream and back, and returns it; a new one is opened only when the rank is
empty and fewer than ``limit`` are out; one idle for ``keepalive_timeout`` is sent
home. Keep that shorter than the upstream's idle timeout (aiohttp's server, ours
included: 75 s; the pool's default: 15 s) so the pool, not the server, closes idle
connections. aiohttp's
``TCPConnector`` does the pooling; this module adds the statistics (counted by
aiohttp's ``TraceConfig`` hooks, not guessed), the retry policy, the bounded waits
and the mapping of failures onto optkit's exceptions.

Two ways to call: :meth:`~ConnectionPool.request` reads the whole answer (bounded
by ``max_upstream_response_bytes``); :meth:`~ConnectionPool.stream` is an async
context manager whose :class:`UpstreamStream` yields the body chunk by chunk under
the same bound, so a caller can relay it without holding it whole. Both share the
send, the retry rule and the error mapping::

    refused, reset, dropped before the whole answer     -> UpstreamUnavailable
    no answer within upstream_timeout_s                 -> UpstreamTimeout
    no connection within acquire_timeout_s              -> PoolTimeout if it queued for
      (slot wait + opening one; the TCP connect alone       a slot, else UpstreamTimeout
       is bounded by upstream_connect_timeout_s)
    anything else aiohttp rejects (malformed answer)    -> UpstreamError

Retry policy. A *stale* connection is a pooled one the upstream closed while it
sat idle. aiohttp drops those whose close it has already seen; what is left is
the race where the close crosses our request on the wire, which fails with
``ServerDisconnectedError`` or a reset before any response byte. Only that
signature -- a *reused* connection failing before the response head -- is
resent, once, within what is left of ``upstream_timeout_s``:

- idempotent (``idempotent=True``, or GET/HEAD/PUT/DELETE/... per RFC 9110
  §9.2.2): resent. aiohttp resends idempotent methods by itself (RFC 9112
  §9.3.1.1); that resend is counted and is the one retry.
- non-idempotent (a plain POST to ``/infer``): also resent once, but the answer
  is marked ``retried=True`` and counted in ``non_idempotent_retries`` so the
  gateway can add ``optkit-retried: 1``. Not failed, because this signature is
  almost always the keep-alive race, where the upstream never ran the handler:
  failing would let pooling turn its own housekeeping race into 502s the
  baseline never shows. Not silent, because we cannot prove the request never
  reached the handler (an upstream dying mid-inference looks the same) and a
  repeated inference, harmless for a stateless model, still costs a second run.
  ``PoolingConfig(retry_stale=False)`` turns our resend off.
- failures on a *fresh* connection are never resent: a refused connect is safe
  to repeat but pointless (the upstream is down: fail fast), and a fresh
  connection that drops is the upstream failing, not the pool.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import AsyncContextManager, Protocol

import aiohttp
from aiohttp import ClientTimeout

from ._base import Layer
from .._config import PoolingConfig, ServerConfig
from .._metrics import counter, gauge
from .._exceptions import (
    OptkitError,
    PoolTimeout,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "UpstreamResponse",
    "UpstreamStream",
    "UpstreamClient",
    "PoolStatistics",
    "DirectClient",
    "ConnectionPool",
]

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
# What a connection closed under us looks like (ClientConnectorError, a failed
# connect, is a ClientOSError too and is told apart where this is used).
_DROPPED = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ClientConnectionResetError,
)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """An upstream's answer, read in full.

    ``headers`` are the upstream's as received; ``content_type`` is its raw
    Content-Type value; ``body`` is decoded, so do not pass Content-Encoding on.
    ``retried`` says the request was sent twice (see the module docstring).
    """

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]
    retried: bool = False


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a client: cumulative counters and current gauges."""

    __derived__ = ("reuse_ratio",)

    requests: int = counter("upstream requests started")
    active: int = gauge("upstream requests in flight now")
    connections_opened: int = counter("upstream connections opened")
    connections_reused: int = counter("acquisitions served by an open connection")
    idle: int = gauge("connections parked in the pool now")
    in_use: int = gauge("connections lent out (or being opened) now")
    waits_for_slot: int = counter("requests that found every connection out and queued")
    retries: int = counter("requests sent twice, answered or not")
    non_idempotent_retries: int = counter("of the retries, non-idempotent ones (answer marked)")
    errors: int = counter("upstream requests that raised")

    @property
    def reuse_ratio(self) -> float:
        """Share of connection acquisitions served by an already open connection."""
        total = self.connections_opened + self.connections_reused
        return self.connections_reused / total if total else 0.0


class UpstreamStream:
    """An upstream's answer whose body is still on the wire.

    Read it with ``async for chunk in stream.iter_chunks()``: chunks arrive as the
    upstream sends them, the running total is bounded by
    ``max_upstream_response_bytes``, and a failure mid-body raises the same
    optkit exceptions as :meth:`ConnectionPool.request`. Valid only inside the
    ``async with client.stream(...)`` block that produced it.
    """

    __slots__ = ("status", "content_type", "headers", "retried", "content_length",
                 "_resp", "_client", "_url")

    def __init__(self, resp: aiohttp.ClientResponse, client: "_Client", url: str,
                 retried: bool) -> None:
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "")
        self.headers: Mapping[str, str] = resp.headers
        self.retried = retried
        self.content_length = resp.content_length
        self._resp, self._client, self._url = resp, client, url

    async def iter_chunks(self, chunk_bytes: int = 64 * 1024) -> AsyncIterator[bytes]:
        """The body in chunks of at most ``chunk_bytes``, as they arrive."""
        limit, size = self._client._max_response, 0
        if self.content_length is not None and self.content_length > limit:
            raise self._client._too_large(self._url, self.content_length)
        try:
            async for chunk in self._resp.content.iter_chunked(chunk_bytes):
                size += len(chunk)
                if size > limit:
                    raise self._client._too_large(self._url, None)
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._client._error(exc, self._url, _Probe()) from exc

    async def read(self) -> bytes:
        """The rest of the body, whole (bounded like :meth:`iter_chunks`)."""
        return b"".join([chunk async for chunk in self.iter_chunks(1 << 20)])


class UpstreamClient(Protocol):
    """What the gateway needs from an upstream client."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> UpstreamResponse: ...

    def stream(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> AsyncContextManager[UpstreamStream]: ...

    def statistics(self) -> PoolStatistics: ...

    async def aclose(self) -> None: ...


class _Probe:
    """What the trace hooks saw during one request, for :meth:`_Client.request`."""

    __slots__ = ("attempts", "reused", "waited")

    def __init__(self) -> None:
        self.attempts = 0  # connection acquisitions: 2 means the request was sent twice
        self.reused = False  # the latest acquisition took a pooled connection
        self.waited = False  # it queued for a free slot


class _Client(Layer):
    """The machinery both clients share; each subclass only chooses its connector."""

    def __init__(self, server: ServerConfig, *, acquire_s: float, retry_stale: bool) -> None:
        self._timeout = ClientTimeout(
            total=server.upstream_timeout_s,
            connect=acquire_s,
            sock_connect=server.upstream_connect_timeout_s,
        )
        self._total_s = server.upstream_timeout_s
        self._max_response = server.max_upstream_response_bytes
        self._retry_stale = retry_stale
        self._session: aiohttp.ClientSession | None = None  # made on first use, in the loop
        self._closed = False
        # Counters: changed only by request() and the trace hooks below.
        self._requests = self._active = self._opened = self._reused = 0
        self._waits = self._retries = self._unsafe_retries = self._errors = 0

    def _connector(self) -> aiohttp.TCPConnector:
        raise NotImplementedError

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_start.append(self._on_create_start)
        trace.on_connection_create_end.append(self._on_create_end)
        trace.on_connection_reuseconn.append(self._on_reuse)
        trace.on_connection_queued_start.append(self._on_queued)
        self._session = aiohttp.ClientSession(
            connector=self._connector(), timeout=self._timeout, trace_configs=[trace]
        )
        return self._session

    async def _on_create_start(self, _s: object, ctx: SimpleNamespace, _p: object) -> None:
        probe: _Probe = ctx.trace_request_ctx
        probe.attempts += 1
        probe.reused = False

    async def _on_create_end(self, _s: object, _ctx: SimpleNamespace, _p: object) -> None:
        self._opened += 1

    async def _on_reuse(self, _s: object, ctx: SimpleNamespace, _p: object) -> None:
        probe: _Probe = ctx.trace_request_ctx
        probe.attempts += 1
        probe.reused = True
        self._reused += 1

    async def _on_queued(self, _s: object, ctx: SimpleNamespace, _p: object) -> None:
        probe: _Probe = ctx.trace_request_ctx
        if not probe.waited:
            probe.waited = True
            self._waits += 1

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> UpstreamResponse:
        """Send one request and read the whole answer; any HTTP status is returned.

        Args:
            headers: sent as given (so include Content-Type); when None, a body
                goes as ``application/json``.
            idempotent: the caller vouches that sending this twice is harmless.

        Raises:
            UpstreamUnavailable, UpstreamTimeout, PoolTimeout, UpstreamError.
        """
        probe = _Probe()
        self._requests += 1
        self._active += 1
        try:
            resp = await self._send(method, url, body, headers, probe)
            try:
                payload = await self._read_bounded(resp, url)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._error(exc, url, probe) from exc
            finally:
                resp.release()
            return UpstreamResponse(
                resp.status, resp.headers.get("Content-Type", ""), payload, resp.headers,
                probe.attempts > 1,
            )
        finally:
            self._done(probe, method, idempotent)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> AsyncIterator[UpstreamStream]:
        """Send one request; yield its answer with the body still to be read.

        Same arguments, retry rule and errors as :meth:`request`; the body is read
        through :meth:`UpstreamStream.iter_chunks` inside the block, and the
        connection goes back to the pool (or is closed, if the body was not read
        to the end) when the block exits.
        """
        probe = _Probe()
        self._requests += 1
        self._active += 1
        try:
            resp = await self._send(method, url, body, headers, probe)
            try:
                yield UpstreamStream(resp, self, url, probe.attempts > 1)
            finally:
                if resp.content.at_eof():
                    resp.release()
                else:  # a half-read body cannot be reused: drop the connection
                    resp.close()
        finally:
            self._done(probe, method, idempotent)

    async def _send(self, method: str, url: str, body: bytes | None,
                    headers: Mapping[str, str] | None, probe: _Probe) -> aiohttp.ClientResponse:
        """Send, resending once on the stale-connection signature; the answer's head."""
        session = self._session if self._session is not None else self._open()
        if headers is None and body is not None:
            headers = _JSON_HEADERS
        timeout = self._timeout
        started = time.monotonic()
        while True:
            try:
                return await session.request(
                    method, url, data=body, headers=headers,
                    timeout=timeout, trace_request_ctx=probe,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                if not (self._retry_stale and probe.reused and probe.attempts == 1
                        and isinstance(exc, _DROPPED)
                        and not isinstance(exc, aiohttp.ClientConnectorError)):
                    raise self._error(exc, url, probe) from exc
                left = self._total_s - (time.monotonic() - started)
                if left <= 0:
                    raise self._error(TimeoutError("none left to retry"), url, probe) from exc
                timeout = ClientTimeout(
                    total=left, connect=timeout.connect, sock_connect=timeout.sock_connect
                )

    def _done(self, probe: _Probe, method: str, idempotent: bool) -> None:
        self._active -= 1
        if probe.attempts > 1:
            self._retries += 1
            if not (idempotent or method in _IDEMPOTENT_METHODS):
                self._unsafe_retries += 1

    async def _read_bounded(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
        """The whole body, refusing one over ``max_upstream_response_bytes``."""
        limit = self._max_response
        if resp.content_length is not None:
            if resp.content_length > limit:
                raise self._too_large(url, resp.content_length)
            return await resp.read()  # the hot path: a declared, bounded length
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > limit:
                raise self._too_large(url, None)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: str, declared: int | None) -> UpstreamError:
        self._errors += 1
        what = f"answer of {declared} bytes" if declared is not None else "answer"
        return UpstreamError(f"{url}: {what} is over the {self._max_response}-byte bound")

    def _error(self, exc: BaseException, url: str, probe: _Probe) -> OptkitError:
        """Name an aiohttp failure in optkit's terms (the one place that does)."""
        self._errors += 1
        kind: type[OptkitError]
        if isinstance(exc, aiohttp.ConnectionTimeoutError):  # acquiring: slot wait + connect
            kind, what = UpstreamTimeout, "connect timed out"
            if probe.waited:
                kind, what = PoolTimeout, "no free pooled connection in time"
        elif isinstance(exc, TimeoutError):
            kind, what = UpstreamTimeout, "no answer in time"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            kind, what = UpstreamUnavailable, "cannot connect"
        elif isinstance(exc, (*_DROPPED, aiohttp.ClientPayloadError)):
            kind, what = UpstreamUnavailable, "connection dropped"
        else:
            kind, what = UpstreamError, "unusable answer"
        error = kind(f"{what}: {url} ({type(exc).__name__}: {exc})")
        error.sends = probe.attempts  # type: ignore[attr-defined]  # 2: the stale resend ran
        return error

    def statistics(self) -> PoolStatistics:
        """The counters now (cheap, but not meant for the per-request path)."""
        idle = in_use = 0
        connector = self._session.connector if self._session is not None else None
        if connector is not None and not connector.closed:
            # aiohttp has no public gauge of parked / lent-out connections; these two
            # attributes have held them throughout aiohttp 3.x. Missing -> 0, no crash.
            idle = sum(len(q) for q in getattr(connector, "_conns", {}).values())
            in_use = len(getattr(connector, "_acquired", ()))
        return PoolStatistics(
            requests=self._requests, active=self._active,
            connections_opened=self._opened, connections_reused=self._reused,
            idle=idle, in_use=in_use, waits_for_slot=self._waits, retries=self._retries,
            non_idempotent_retries=self._unsafe_retries, errors=self._errors,
        )

    async def aclose(self) -> None:
        """Close every connection; later requests raise RuntimeError. Idempotent."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<{type(self).__name__} [requests: {s.active} active | connections: "
            f"{s.idle} idle, {s.connections_opened} opened, {s.connections_reused} reused]>"
        )


class DirectClient(_Client):
    """The baseline: a new TCP connection for every request, closed after it.

    One shared session whose connector has ``force_close=True`` and no cap
    (``limit=0``), so what is measured is the connection, not building a session.
    Timeouts come from ``config`` (``upstream_timeout_s``, ``upstream_connect_timeout_s``).
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        server = config or ServerConfig()
        super().__init__(server, acquire_s=server.upstream_connect_timeout_s, retry_stale=False)

    def _connector(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(force_close=True, limit=0)


class ConnectionPool(_Client):
    """Keep-alive connections to upstreams, reused across requests.

    Args:
        config: ``limit`` / ``limit_per_host`` / ``keepalive_timeout`` as in aiohttp's
            ``TCPConnector``; ``acquire_timeout_s`` bounds getting a connection (slot
            wait + opening); ``retry_stale`` enables the one resend described above.
        server: ``upstream_timeout_s`` (whole request) and ``upstream_connect_timeout_s``.
    """

    def __init__(
        self, config: PoolingConfig | None = None, server: ServerConfig | None = None
    ) -> None:
        self._config = config or PoolingConfig(enabled=True)
        super().__init__(
            server or ServerConfig(),
            acquire_s=self._config.acquire_timeout_s,
            retry_stale=self._config.retry_stale,
        )

    def _connector(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(
            limit=self._config.limit,
            limit_per_host=self._config.limit_per_host,
            keepalive_timeout=self._config.keepalive_timeout,
        )
