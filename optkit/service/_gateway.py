"""The gateway: a v2 server to its clients that forwards inference upstream.

::

    client ──▶ Gateway ─────────────────────────────────────────▶ model server(s)
               read body (bounded), decode, validate against       (least outstanding)
               MetadataCache ─ a 400 here, never upstream
               batching off, or a request that cannot merge:
                 forward the original bytes ── layers.pooling: pooled, or a new
                 pass the upstream's answer through                 connection each
               batching on (layers.batching.DynamicBatcher per model and shape):
                 concurrent requests ─▶ one upstream v2 request (rows concatenated,
                 binary tensors) ─▶ the answer cut row for row ─▶ each client's own
                 response (its id, its outputs, JSON or binary as it asked)

Merging. Requests for the same model and version, with the same input names and
datatypes and the same requested outputs, and no parameters beyond
``binary_data_output`` and ``timeout``, may share an upstream call; any other
goes alone. A batch of one is forwarded as it came (no re-encoding), so a lone
client pays nothing for batching. If the upstream refuses a merged request (400,
422 or 500) its items are sent again in halves until the one it refuses is
alone (the batcher's fault isolation): that client gets the upstream's own
answer, every other its result, marked ``optkit-batch-fallback: 1``. Other
refusals (503, 404, ...) are every item's answer; a transport failure (502, 504)
fails the batch's items without resending.

Upstream down → 502, slow → 504, both as JSON and within the configured bounds;
the upstream's own 4xx/5xx answers are passed through unchanged. Which upstream
client is used is the pooling layer's switch: ``pooling.enabled: false`` (the
baseline) opens a new connection per upstream request. An upstream given as
``grpc://host:port`` is called over the v2 gRPC service (``layers.channels``: the same
REST calls, carried as gRPC; a new channel per request, or pooled channels).

Streaming (``streaming.enabled``): a request forwarded alone (batching off, or one
that cannot merge) uses the pool's ``stream()``; an answer over ``threshold_bytes``
or of unknown length is relayed chunk by chunk (:mod:`optkit.layers.streaming`),
status and binary/retried headers passed through; an upstream dying mid-body cuts
the client's response (no clean end). ``generate_stream`` is validated here like
infer (same 400s as the model server), then its events relayed as they come (or
buffered when streaming is off). Requests riding the batcher are answered buffered.

Books. Every inference request is counted as it arrives (``server.infer_requests``),
however it ends; an error answer is counted under the step that gave it
(``server.infer_refused{cause, status}``, see ``_http``)::

    route ─▶ metadata ─▶ body ─▶ validation ─▶ queue ─▶ upstream ─▶ upstream_answer
    bad      unknown     413     400           503 full  502 gone   the upstream's own
    name     (404), or                         504 past  504 slow   refusal, passed on
             not fetched (upstream gone: 502)  deadline             (503 LOADING, ...)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any, Sequence
from urllib.parse import quote, urlsplit

import numpy as np
from aiohttp import web

from .._version import __version__
from .._config import ServiceConfig
from .._exceptions import ConfigError, ModelNotFound, OptkitError, ProtocolError, UpstreamError
from .._metrics import counter
from ..models import validate_model_name
from ..v2 import (BINARY_HEADER, InferRequest, decode_infer_result,
                  encode_binary_infer_request, encode_infer_request, json_loads,
                  parse_generate_request, parse_infer_request, request_deadline, split_rows,
                  validate_inputs)
from ..layers.balancing import BalancingStatistics, UpstreamBalancer
from ..layers.batching import BatchStatistics, DynamicBatcher
from ..layers.channels import ChannelPool
from ..layers.pooling import (ConnectionPool, DirectClient, PoolStatistics, UpstreamClient,
                              UpstreamResponse, UpstreamStream)
from ..layers.streaming import ResponseStreamer, StreamingStatistics
from ._http import ServerCounters, ServerStatistics, at_step, binary_header_length, \
    build_app, infer_response, json_response, model_ref, read_body, streamable
from ._grpc import attach_grpc
from ._model_stats import ModelStats, ModelStatsBook
from ._metadata import (MetadataCache, MetadataCacheStatistics, ModelMeta, check_unsigned,
                        check_unsigned_generate, model_meta)

__all__ = ["Gateway", "GatewayStatistics", "create_gateway", "parse_upstreams", "GATEWAY_KEY"]

log = logging.getLogger("optkit.gateway")

METADATA_TTL_S = 10.0
RETRIED_HEADER = "optkit-retried"
FALLBACK_HEADER = "optkit-batch-fallback"
_MERGEABLE_PARAMETERS = frozenset({"binary_data_output", "timeout"})
_SPLIT_STATUSES = frozenset({400, 422, 500})  # a refusal one item can cause
GATEWAY_KEY: web.AppKey["Gateway"] = web.AppKey("optkit_gateway", object)  # type: ignore[arg-type]
_PASS_HEADERS = (BINARY_HEADER, RETRIED_HEADER)
_JSON_PER_BINARY_BYTE = 2.5


def parse_upstreams(spec: str | Sequence[str]) -> list[str]:
    """Split ``URL[,URL...]`` and check each is an http(s) base URL or a ``grpc://host:port``
    (the v2 gRPC service, :class:`~optkit.layers.ChannelPool`); one scheme for all."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    urls = [u.strip().rstrip("/") for u in items if u.strip()]
    if not urls:
        raise ConfigError("gateway needs at least one upstream URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "grpc") or not parts.hostname:
            raise ConfigError(f"upstream {url!r} is not an http(s) or grpc:// URL")
        if parts.scheme == "grpc":
            if parts.path or parts.query or parts.port is None:
                raise ConfigError(f"upstream {url!r}: a gRPC upstream is grpc://host:port, "
                                  f"nothing after the port")
    if len({urlsplit(u).scheme == "grpc" for u in urls}) > 1:
        raise ConfigError(f"upstreams mix gRPC and HTTP ({', '.join(urls)}): one transport "
                          f"for all")
    return urls


@dataclass(frozen=True, slots=True)
class GatewayStatistics:
    """Everything the gateway counts; ``/stats`` and ``/metrics`` serialize it whole."""

    server: ServerStatistics
    pool: PoolStatistics
    metadata: MetadataCacheStatistics
    retried_answers: int = counter("answers marked optkit-retried (an upstream resend)")
    merged_calls: int = counter("upstream calls that carried several client requests")
    fallback_answers: int = counter("answers marked optkit-batch-fallback")
    unmergeable: int = counter("requests sent alone because they could not merge")
    large_alone: int = counter("requests sent alone, unbatched, to stream their large answer")
    passed_through: int = counter("requests for a model with no signature, passed through "
                                  "with the checks made without one")
    #: ``model[/version]`` -> what its requests are validated against (``_metadata.SOURCES``)
    models: dict[str, str] = field(default_factory=dict)
    #: models whose merged answers did not split row for row: sent alone since
    not_merged: tuple[str, ...] = ()
    batching: dict[str, BatchStatistics] = field(default_factory=dict)
    streaming: StreamingStatistics = field(default_factory=StreamingStatistics)
    balancing: BalancingStatistics = field(default_factory=BalancingStatistics)


class _Pending:
    """One client request while it rides the gateway's batcher."""

    __slots__ = ("req", "body", "headers", "runs", "started", "ended")

    def __init__(self, req: InferRequest, body: bytes, headers: dict[str, str]) -> None:
        self.req, self.body, self.headers, self.runs = req, body, headers, 0
        self.started = self.ended = 0  # when its batch's upstream call ran (perf_counter_ns)


class _Clock:
    """One request's time on the gateway, in parts (ns), as its handler sees it."""

    __slots__ = ("input_ns", "queue_ns", "infer_ns", "output_ns", "rows")

    def __init__(self, input_ns: int) -> None:
        self.input_ns, self.queue_ns, self.infer_ns, self.output_ns = input_ns, 0, 0, 0
        self.rows = 0


class _Misfit(Exception):
    """The upstream's answer to a merged request does not split row for row."""


class _Refused(Exception):
    """The upstream refused a merged request in a way one item can cause."""

    def __init__(self, response: UpstreamResponse) -> None:
        super().__init__(f"upstream answered {response.status}")
        self.response = response


@dataclass(frozen=True, slots=True)
class _Merged:
    """One client's rows of a merged upstream answer."""

    version: str
    outputs: dict[str, np.ndarray]


class Gateway:
    """A v2 server that validates requests and forwards them to upstream v2 servers.

    Args:
        upstreams: ``URL[,URL...]`` of v2 servers (optkit's model server, Triton, MLServer).
        config: the service config; its ``pooling`` section picks the upstream client.

    Use :meth:`make_app` to serve it; the app starts and closes the gateway's
    layers with itself.
    """

    def __init__(self, upstreams: str | Sequence[str], config: ServiceConfig | None = None) -> None:
        self.config = config or ServiceConfig()
        self.upstreams = parse_upstreams(upstreams)
        self.counters = ServerCounters()
        #: the gateway's own side in Triton's statistics format (_model_stats.py)
        self.stats_book = ModelStatsBook()
        self._limit = self.config.server.max_body_bytes
        self._resend = self.config.balancing.resend_infer  # infer POSTs: see layers.balancing
        # one client (pool) per upstream; the balancer picks, ejects and probes them
        self._balancer = UpstreamBalancer(self.upstreams, self.config.balancing, self._new_client)
        self.metadata = MetadataCache(self._fetch_meta, ttl_s=METADATA_TTL_S)
        self._retried_answers = self._merged_calls = self._fallbacks = self._unmergeable = 0
        self._large_alone = self._passed_through = 0
        self._no_merge: set[tuple[str, str | None]] = set()  # models whose rows did not line up
        # (model, version, inputs, outputs) -> its batcher; bounded by the models' metadata
        self._batchers: dict[tuple[Any, ...], DynamicBatcher[_Pending, Any]] = {}
        self._binary_upstream: bool | None = None  # does the upstream speak binary tensors?
        self._streamer = ResponseStreamer(self.config.streaming)

    # -- lifecycle ------------------------------------------------------------------
    def make_app(self) -> web.Application:
        """The aiohttp app serving this gateway (its cleanup closes the gateway)."""
        app = build_app(self, prefix="optkit_gateway", counters=self.counters,
                        statistics=self.statistics, max_body_bytes=self._limit)
        app[GATEWAY_KEY] = self
        app.on_cleanup.append(lambda _app: self.aclose())
        attach_grpc(app, self, self.counters, self.config.server)  # server.grpc_port set: gRPC too
        return app

    async def aclose(self) -> None:
        for batcher in list(self._batchers.values()):
            await batcher.aclose()
        await self._balancer.aclose()

    def _new_client(self) -> UpstreamClient:
        if self.upstreams[0].startswith("grpc://"):  # pooled channels, or one per request
            return ChannelPool(self.config.pooling, self.config.server)
        if self.config.pooling.enabled:
            return ConnectionPool(self.config.pooling, self.config.server)
        return DirectClient(self.config.server)

    def statistics(self) -> GatewayStatistics:
        batching = {_batcher_label(key): b.statistics() for key, b in self._batchers.items()}
        return GatewayStatistics(self.counters.snapshot(), self._balancer.pool_statistics(),
                                 self.metadata.statistics(), self._retried_answers,
                                 self._merged_calls, self._fallbacks, self._unmergeable,
                                 self._large_alone, self._passed_through,
                                 self.metadata.sources(),
                                 tuple(sorted(n + (f"/{v}" if v else "") for n, v in self._no_merge)),
                                 batching, self._streamer.statistics(),
                                 self._balancer.statistics())

    def __repr__(self) -> str:
        c = self.counters
        return (f"<Gateway {','.join(self.upstreams)} [{c.in_flight} in flight, "
                f"{c.completed} answered | {self._balancer!r}]>")

    # -- upstream calls ---------------------------------------------------------------
    async def _upstream(self, method: str, path: str, body: bytes | None = None,
                        headers: dict[str, str] | None = None, *, idempotent: bool = False,
                        resend: bool = False, base: str | None = None) -> UpstreamResponse:
        return await self._balancer.request(method, path, body=body, headers=headers,
                                            idempotent=idempotent, resend=resend, base=base)

    def _answer_headers(self, resp: UpstreamResponse | UpstreamStream) -> dict[str, str]:
        """The headers an upstream answer passes on to the client (counting resends)."""
        headers = {k: resp.headers[k] for k in _PASS_HEADERS if k in resp.headers}
        if resp.retried:
            headers[RETRIED_HEADER] = "1"
        if RETRIED_HEADER in headers:
            self._retried_answers += 1
        # the raw header: aiohttp's content_type= refuses parameters such as "; charset=utf-8"
        headers["Content-Type"] = resp.content_type or "application/json"
        return headers

    def _passthrough(self, resp: UpstreamResponse) -> web.Response:
        at_step("upstream_answer")  # an error status now is the upstream's own answer
        return web.Response(status=resp.status, body=resp.body,
                            headers=self._answer_headers(resp))

    async def _fetch_meta(self, name: str, version: str | None) -> ModelMeta:
        """The model's signature (see :func:`._metadata.model_meta`), from its v2 metadata."""
        resp = await self._upstream("GET", _model_path(name, version), idempotent=True)
        if resp.status == 404:
            raise ModelNotFound(_upstream_error(resp) or f"unknown model {name!r}")
        if resp.status != 200:
            raise UpstreamError(f"model metadata for {name!r}: upstream answered {resp.status}: "
                                f"{_upstream_error(resp)}")
        try:
            doc = json_loads(resp.body)
        except ValueError as exc:
            raise UpstreamError(f"upstream sent unusable metadata for {name!r}: {exc!r}") from None
        return await model_meta(name, doc, self.config,
                                lambda: self._triton_max_batch_size(name, version))

    async def _triton_max_batch_size(self, name: str, version: str | None) -> int | None:
        """``max_batch_size`` from Triton's model configuration extension, if the upstream has it."""
        try:
            resp = await self._upstream("GET", _model_path(name, version) + "/config",
                                        idempotent=True)
            doc = json_loads(resp.body) if resp.status == 200 else {}
            value = doc.get("max_batch_size") if isinstance(doc, dict) else None
            return int(value) if isinstance(value, int) and value >= 0 else None
        except (OptkitError, ValueError):
            return None

    # -- v2 endpoints -----------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.StreamResponse:
        t0 = perf_counter_ns()
        name, version = model_ref(request)
        # the model first, as the model server does: an unknown one is a 404 whatever the body
        at_step("metadata")
        meta = await self.metadata.get(name, version)
        stats = self.stats_book.model(name, version or "")  # a model the upstream knows
        clock = _Clock(0)
        try:
            response = await self._infer(request, name, version, meta, clock)
        except Exception:
            stats.failed(perf_counter_ns() - t0)
            raise
        if response.status >= 400:  # the upstream's own refusal, passed on
            stats.failed(perf_counter_ns() - t0)
        else:
            stats.ok(clock.rows, perf_counter_ns() - t0, clock.input_ns, clock.queue_ns,
                     clock.infer_ns, clock.output_ns)
        return response

    async def _infer(self, request: web.Request, name: str, version: str | None,
                     meta: ModelMeta, clock: "_Clock") -> web.StreamResponse:
        at_step("body")
        body = await read_body(request, self._limit)
        at_step("validation")
        t_in = perf_counter_ns()
        head_len = binary_header_length(request)
        req = parse_infer_request(body, head_len)
        if meta.source == "passthrough":
            self._passed_through += 1  # no signature: the codec's checks and these
            check_unsigned(req)
        else:
            validate_inputs(req, meta.inputs, meta.max_batch_size)
        if req.outputs and meta.outputs:  # both tiers refuse the same request the same way
            unknown = set(req.outputs) - set(meta.outputs)
            if unknown:
                raise ProtocolError(f"unknown output(s) {sorted(unknown)}")
        at_step("upstream")  # the batcher's queue included: its refusals count as "queue"
        self.counters.infer_rows += req.batch_size
        clock.rows = req.batch_size
        # JSON as parsed, whatever the client's header said (a third-party upstream may insist)
        headers = {"Content-Type": "application/json"}
        if head_len is not None:
            headers = {"Content-Type": request.headers.get("Content-Type",
                                                           "application/octet-stream"),
                       BINARY_HEADER: str(head_len)}
        if head_len is not None and not await self._speaks_binary():
            # binary tensors to an upstream that does not announce them (MLServer, KServe)
            body = encode_infer_request(
                {i.name: i.array for i in req.inputs}, request_id=req.id, outputs=tuple(req.outputs),
                parameters={k: v for k, v in req.parameters.items() if k != "binary_data_output"})
            headers = {"Content-Type": "application/json"}
        clock.input_ns = perf_counter_ns() - t_in
        if self.config.batching.enabled:
            if self._streamer.config.enabled and self._large(req, meta):
                # a large answer is streamed, not held whole in a merged one: it goes alone
                self._large_alone += 1
            else:
                key = self._merge_key(name, version, req, meta)
                if key is not None:
                    return await self._infer_batched(request, key, meta, req, body, headers,
                                                     clock)
                self._unmergeable += 1
        return await self._forward(request, name, version, "/infer", body, headers,
                                   clock=clock)

    def _large(self, req: InferRequest, meta: ModelMeta) -> bool:
        """Whether the answer will likely exceed the streaming threshold (an estimate from the
        metadata's output shapes: binary size, x2.5 for JSON, where a float32 takes ~10 chars)."""
        if meta.row_bytes is None:
            return False
        binary = bool(req.parameters.get("binary_data_output")) if req.parameters else False
        size = req.batch_size * meta.row_bytes * (1.0 if binary else _JSON_PER_BINARY_BYTE)
        return size > self._streamer.config.threshold_bytes

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        """Validated like the model server does it, then the upstream's events relayed."""
        name, version = model_ref(request)
        at_step("metadata")
        meta = await self.metadata.get(name, version)
        at_step("body")
        body = await read_body(request, self._limit)
        at_step("validation")
        if meta.source == "passthrough":  # optkit's own extension: the upstream's to judge
            self._passed_through += 1
            check_unsigned_generate(body)
        else:
            req = parse_generate_request(body, meta.inputs,
                                         max_rows=self.config.streaming.max_stream_rows)
            self.counters.infer_rows += req.batch_size
        at_step("upstream")
        return await self._forward(request, name, version, "/generate_stream", body,
                                   {"Content-Type": "application/json"}, sse=True)

    async def _forward(self, request: web.Request, name: str, version: str | None, tail: str,
                       body: bytes, headers: dict[str, str], *, sse: bool = False,
                       clock: _Clock | None = None) -> web.StreamResponse:
        """Send one request upstream alone; pass its answer through, relayed if large.

        Streaming on: an answer over the threshold (or of unknown length) is relayed
        chunk by chunk as it arrives, never held whole. If the upstream dies
        mid-body the client's response is cut (no clean end); for server-sent
        events that broke off between two events, an error event ends it cleanly.
        """
        path = _model_path(name, version) + tail
        self.counters.model_calls += 1
        t = perf_counter_ns()
        if not self._streamer.config.enabled or not streamable(request):  # gRPC: one message
            resp = await self._upstream("POST", path, body, headers, resend=self._resend)
        else:
            async with self._balancer.stream("POST", path, body=body, headers=headers,
                                             resend=self._resend) as up:
                if up.status == 200 and self._streamer.wants_stream(up.content_length):
                    # relayed: the upstream's answer and its writing to the client overlap
                    response = await self._relay(request, up, sse=sse)
                    self._upstream_done(name, version, clock, t, 0)
                    return response
                resp = UpstreamResponse(up.status, up.content_type, await up.read(),
                                        up.headers, up.retried)
        if resp.status == 404:
            self.metadata.invalidate(name, version)
        t_out = self._upstream_done(name, version, clock, t, 0)
        response = self._passthrough(resp)
        if clock is not None:
            clock.output_ns = perf_counter_ns() - t_out
        return response

    def _upstream_done(self, name: str, version: str | None, clock: _Clock | None,
                       t: int, input_ns: int) -> int:
        """Book an inference forwarded alone, its upstream call from ``t`` to now."""
        now = perf_counter_ns()
        if clock is not None:
            clock.infer_ns = now - t
            self.stats_book.model(name, version or "").executed(clock.rows, input_ns,
                                                                 now - t, 0)
        return now

    async def _relay(self, request: web.Request, up: UpstreamStream, *,
                     sse: bool) -> web.StreamResponse:
        response = web.StreamResponse(status=up.status, headers=self._answer_headers(up))
        async with self._streamer.open(request, response) as out:
            tail = b""
            try:
                async for chunk in up.iter_chunks(self._streamer.config.chunk_bytes):
                    await out.write(chunk)
                    tail = (tail + chunk)[-2:]
            except OptkitError as exc:
                if not (sse and tail == b"\n\n"):
                    raise  # mid-body: the streamer cuts the connection
                await out.error_event(f"upstream failed mid-stream: {exc}")
        return response

    # -- batching -----------------------------------------------------------------------
    def _merge_key(self, name: str, version: str | None, req: InferRequest,
                   meta: ModelMeta) -> tuple[Any, ...] | None:
        """Which batcher a request may ride, or None: it must go alone."""
        if meta.merge_rows <= 0 or (name, version) in self._no_merge:
            return None
        if req.parameters and not _MERGEABLE_PARAMETERS.issuperset(req.parameters):
            return None
        if meta.source == "passthrough":  # unchecked: rows must line up to be merged
            shapes = [i.array.shape for i in req.inputs]
            if not all(shapes) or len({shape[0] for shape in shapes}) != 1:
                return None
            return (name, version, tuple((i.name, i.datatype, i.array.shape[1:])
                                         for i in req.inputs), tuple(sorted(req.outputs)))
        return (name, version, tuple((i.name, i.datatype) for i in req.inputs),
                tuple(sorted(req.outputs)))

    async def _infer_batched(self, request: web.Request, key: tuple[Any, ...], meta: ModelMeta,
                             req: InferRequest, body: bytes,
                             headers: dict[str, str], clock: _Clock) -> web.Response:
        batcher = self._batchers.get(key)
        if batcher is not None and req.timeout_us is None and batcher.idle():
            # a lone request and an idle batcher: forwarded as it came, holding the batch
            # slot so that requests arriving meanwhile queue behind it as behind any batch
            with batcher.hold(req.batch_size):
                return await self._forward(request, key[0], key[1], "/infer", body, headers,
                                           clock=clock)
        if batcher is None:
            batcher = self._batchers[key] = DynamicBatcher(
                self._batch_runner(key), self.config.batching, max_rows=meta.merge_rows,
                name=_batcher_label(key),
                split_on_error=lambda exc: isinstance(exc, (_Refused, _Misfit)),
                alone=self.counters.alone,
                release_first=self.config.batching.release_first)
        pending = _Pending(req, body, headers)
        transport = request.transport
        t = perf_counter_ns()
        result = await batcher.submit(
            pending, rows=req.batch_size, deadline=request_deadline(req, time.monotonic()),
            alive=None if transport is None else (lambda: not transport.is_closing()))
        t_out = perf_counter_ns()
        # waiting for its batch's upstream call is queue; that call is its compute_infer
        clock.queue_ns = max(0, pending.started - t)
        clock.infer_ns = pending.ended - pending.started
        if isinstance(result, UpstreamResponse):
            response = self._passthrough(result)
            if pending.runs > 1:
                response.headers[FALLBACK_HEADER] = "1"
                self._fallbacks += 1
        else:
            merged: _Merged = result
            response = infer_response(key[0], merged.version, merged.outputs, req)
        clock.output_ns = perf_counter_ns() - t_out
        return response

    def _batch_runner(self, key: tuple[Any, ...]) -> Any:
        name, version, _, outputs = key
        path = _model_path(name, version) + "/infer"
        counters = self.counters
        stats = self.stats_book.model(name, version or "")

        async def run(items: Sequence[_Pending]) -> list[Any]:
            for item in items:
                item.runs += 1
            counters.model_calls += 1
            t0 = perf_counter_ns()
            if len(items) == 1:  # alone: forwarded exactly as the client sent it
                only = items[0]
                resp = await self._upstream("POST", path, only.body, only.headers,
                                            resend=self._resend)
                only.started, only.ended = t0, perf_counter_ns()
                stats.executed(only.req.batch_size, 0, only.ended - t0, 0)
                if resp.status == 404:
                    self.metadata.invalidate(name, version)
                return [resp]
            self._merged_calls += 1
            merged_body = await self._merged_body(items, outputs)
            t1 = perf_counter_ns()
            resp = await self._upstream("POST", path, *merged_body, resend=self._resend)
            t2 = perf_counter_ns()
            for item in items:
                item.started, item.ended = t1, t2
            stats.executed(sum(item.req.batch_size for item in items), t1 - t0, t2 - t1, 0)
            if resp.status != 200:
                if resp.status in _SPLIT_STATUSES:
                    raise _Refused(resp)
                return [resp] * len(items)  # not one item's doing: everyone's answer
            try:
                result = decode_infer_result(resp.body, _header_length(resp))
            except ProtocolError as exc:
                raise UpstreamError(f"upstream answered a merged request with {exc}") from None
            version_seen = result.model_version or version or ""
            try:
                parts = split_rows(result.outputs, [item.req.batch_size for item in items])
            except ValueError as exc:
                # the upstream does not answer row for row (a model that is not batch-major):
                # its items go again, down to one each, and the model is never merged again
                if (name, version) not in self._no_merge:
                    self._no_merge.add((name, version))
                    log.warning("upstream answered a merged request for %s with rows that do "
                                 "not line up (%s): it is not merged again", name, exc)
                raise _Misfit(str(exc)) from None
            return [_Merged(version_seen, part) for part in parts]

        return run

    async def _merged_body(self, items: Sequence[_Pending],
                           outputs: tuple[str, ...]) -> tuple[bytes, dict[str, str]]:
        """One upstream request holding every item's rows, in the items' order."""
        inputs = {i.name: np.concatenate([item.req.input(i.name) for item in items])
                  for i in items[0].req.inputs}
        if await self._speaks_binary():
            body, head_len = encode_binary_infer_request(inputs, outputs=outputs)
            return body, {"Content-Type": "application/octet-stream",
                          BINARY_HEADER: str(head_len)}
        return encode_infer_request(inputs, outputs=outputs), {"Content-Type": "application/json"}

    async def _speaks_binary(self) -> bool:
        """Whether the upstream announces the binary tensor extension (asked once)."""
        if self._binary_upstream is None:
            try:
                resp = await self._upstream("GET", "/v2", idempotent=True)
                doc = json_loads(resp.body) if resp.status == 200 else {}
                self._binary_upstream = "binary_tensor_data" in (doc.get("extensions") or ())
            except (OptkitError, ValueError, AttributeError):
                return False  # ask again next time
        return self._binary_upstream

    async def model_metadata(self, request: web.Request) -> web.Response:
        """The upstream's answer; for a model gateway.models signs, completed with its signature."""
        name, version = model_ref(request)
        resp = await self._upstream("GET", _model_path(name, version), idempotent=True)
        signature = self.config.gateway.models.get(name)
        if resp.status != 200 or signature is None:
            return self._passthrough(resp)
        try:
            doc = json_loads(resp.body)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise UpstreamError(f"upstream sent unusable metadata for {name!r}: {exc}") from None
        doc["inputs"] = [dict(spec) for spec in signature["inputs"]]
        if signature.get("outputs"):
            doc["outputs"] = [dict(spec) for spec in signature["outputs"]]
        if "max_batch_size" in signature:
            params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
            doc["parameters"] = {**params, "max_batch_size": signature["max_batch_size"]}
        return json_response(doc)

    async def model_stats(self, request: web.Request) -> web.Response:
        """Triton's statistics extension for the gateway's own side (``_model_stats.py``).

        These are the gateway's books, not a proxy of its upstreams' (an optkit model
        server upstream answers its own ``/v2/models/{m}/stats``): decode and validation
        here are compute_input, waiting in the gateway's batcher queue, the upstream call
        (network and the upstream's whole time) compute_infer, encoding or passing on the
        answer compute_output. Records are kept per model and version as the clients
        named them ("" for no version). ``/v2/models/stats`` lists the models this gateway
        has served; a named model it has not served is asked of the upstream (404 if unknown
        there) and answered with zeros.
        """
        book = self.stats_book
        if "model" not in request.match_info:
            return json_response(book.answer(book.find()))
        name, version = model_ref(request)
        records = book.find(name, version or None)
        if not records:
            await self.metadata.get(name, version)  # the upstream's 404 for an unknown model
            records = [ModelStats(name, version or "")]
        return json_response(book.answer(records))

    async def model_ready(self, request: web.Request) -> web.Response:
        path = _model_path(*model_ref(request)) + "/ready"
        return self._passthrough(await self._upstream("GET", path, idempotent=True))

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        """Ready while one upstream of the healthy set (not ejected) answers ready; with
        none healthy, every upstream is asked (a 200 readmits it, as a probe would)."""
        for base in self._balancer.healthy_urls() or self.upstreams:
            try:
                resp = await self._upstream("GET", "/v2/health/ready", idempotent=True, base=base)
            except OptkitError:
                continue
            if resp.status == 200:
                return json_response({"ready": True})
        return json_response({"ready": False, "error": "no healthy upstream is ready"},
                             status=503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": "optkit-gateway", "version": __version__,
                              "extensions": ["model_repository", "binary_tensor_data",
                                             "generate_stream"]})

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await read_body(request, 64 * 1024)
        return self._passthrough(await self._upstream("POST", request.path, body,
                                                      base=self.upstreams[0]))

    async def repository_load(self, request: web.Request) -> web.Response:
        return await self._on_every_upstream(request)

    async def repository_unload(self, request: web.Request) -> web.Response:
        return await self._on_every_upstream(request)

    async def _on_every_upstream(self, request: web.Request) -> web.Response:
        """Load/unload on every upstream, so routing stays uniform; the first refusal wins."""
        body = await read_body(request, 64 * 1024)
        validate_model_name(request.match_info["model"])
        last: UpstreamResponse | None = None
        for base in self.upstreams:
            last = await self._upstream("POST", request.path, body, base=base)
            if last.status != 200:
                break
        assert last is not None
        return self._passthrough(last)


def create_gateway(upstreams: str | Sequence[str],
                   config: ServiceConfig | None = None) -> web.Application:
    """The app of a :class:`Gateway` forwarding to ``upstreams`` (v2 servers)."""
    return Gateway(upstreams, config).make_app()


def _batcher_label(key: tuple[Any, ...]) -> str:
    name, version, _, outputs = key
    label = name + (f"/{version}" if version else "")
    return label + (f"[{','.join(outputs)}]" if outputs else "")


def _header_length(resp: UpstreamResponse) -> int | None:
    raw = resp.headers.get(BINARY_HEADER)
    try:
        return None if raw is None else int(raw)
    except ValueError:
        raise UpstreamError(f"upstream sent a bad {BINARY_HEADER}: {raw!r}") from None


def _model_path(name: str, version: str | None) -> str:
    return f"/v2/models/{quote(name)}" + (f"/versions/{version}" if version else "")


def _upstream_error(resp: UpstreamResponse) -> str:
    try:
        doc = json_loads(resp.body)
        return str(doc.get("error", "")) if isinstance(doc, dict) else ""
    except ValueError:
        return resp.body[:200].decode("utf-8", "replace")
