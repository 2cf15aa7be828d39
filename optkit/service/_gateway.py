"""The gateway: a v2 server to its clients that forwards inference upstream.

::

    client ──▶ Gateway ─────────────────────────────────────────▶ model server(s)
               read body (bounded), decode, validate against       (round robin)
               MetadataCache ─ a 400 here, never upstream
               forward the original bytes ── layers.pooling: pooled, or a new
               pass the upstream's answer through (status, body)   connection each

Upstream down → 502, slow → 504, both as JSON and within the configured bounds;
the upstream's own 4xx/5xx answers are passed through unchanged. Which upstream
client is used is the pooling layer's switch: ``pooling.enabled: false`` (the
baseline) opens a new connection per upstream request.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import quote, urlsplit

from aiohttp import web

from .. import __version__
from .._config import ServiceConfig
from .._exceptions import ConfigError, ModelNotFound, OptkitError, UpstreamError
from .._metrics import counter
from .._models import validate_model_name
from .._protocol import BINARY_HEADER, TensorSpec, json_loads, parse_infer_request, \
    validate_inputs
from ..layers.pooling import (ConnectionPool, DirectClient, PoolStatistics, UpstreamClient,
                              UpstreamResponse)
from ._http import STATS_KEY, ServerCounters, ServerStatistics, add_v2_routes, \
    binary_header_length, install_observability, json_response, make_error_middleware, \
    model_ref, read_body
from ._metadata import MetadataCache, MetadataCacheStatistics, ModelMeta

__all__ = ["Gateway", "GatewayStatistics", "create_gateway", "parse_upstreams", "GATEWAY_KEY"]

METADATA_TTL_S = 10.0
RETRIED_HEADER = "optkit-retried"
GATEWAY_KEY: web.AppKey["Gateway"] = web.AppKey("optkit_gateway", object)  # type: ignore[arg-type]
_PASS_HEADERS = (BINARY_HEADER, RETRIED_HEADER)


def parse_upstreams(spec: str | Sequence[str]) -> list[str]:
    """Split ``URL[,URL...]`` and check each is an http(s) base URL."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    urls = [u.strip().rstrip("/") for u in items if u.strip()]
    if not urls:
        raise ConfigError("gateway needs at least one upstream URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstream {url!r} is not an http(s) URL")
    return urls


@dataclass(frozen=True, slots=True)
class GatewayStatistics:
    """Everything the gateway counts; ``/stats`` and ``/metrics`` serialize it whole."""

    server: ServerStatistics
    pool: PoolStatistics
    metadata: MetadataCacheStatistics
    retried_answers: int = counter("answers marked optkit-retried (an upstream resend)")


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
        self._limit = self.config.server.max_body_bytes
        self._rotation = itertools.cycle(self.upstreams)
        self._client: UpstreamClient = (
            ConnectionPool(self.config.pooling, self.config.server) if self.config.pooling.enabled
            else DirectClient(self.config.server))
        self.metadata = MetadataCache(self._fetch_meta, ttl_s=METADATA_TTL_S)
        self._retried_answers = 0

    # -- lifecycle ------------------------------------------------------------------
    def make_app(self) -> web.Application:
        """The aiohttp app serving this gateway (its cleanup closes the gateway)."""
        app = web.Application(client_max_size=self._limit,
                              middlewares=[make_error_middleware(self.counters)])
        app[STATS_KEY] = self.counters
        app[GATEWAY_KEY] = self
        app.on_cleanup.append(lambda _app: self.aclose())
        add_v2_routes(app.router, self)
        install_observability(app, "optkit_gateway", self.statistics)
        return app

    async def aclose(self) -> None:
        await self._client.aclose()

    def statistics(self) -> GatewayStatistics:
        return GatewayStatistics(self.counters.snapshot(), self._client.statistics(),
                                 self.metadata.statistics(), self._retried_answers)

    def __repr__(self) -> str:
        c = self.counters
        return (f"<Gateway {','.join(self.upstreams)} [{c.in_flight} in flight, "
                f"{c.completed} answered | {self._client!r}]>")

    # -- upstream calls ---------------------------------------------------------------
    async def _upstream(self, method: str, path: str, body: bytes | None = None,
                        headers: dict[str, str] | None = None, *, idempotent: bool = False,
                        base: str | None = None) -> UpstreamResponse:
        return await self._client.request(method, (base or next(self._rotation)) + path,
                                          body=body, headers=headers, idempotent=idempotent)

    def _passthrough(self, resp: UpstreamResponse) -> web.Response:
        headers = {k: resp.headers[k] for k in _PASS_HEADERS if k in resp.headers}
        if resp.retried:
            headers[RETRIED_HEADER] = "1"
        if RETRIED_HEADER in headers:
            self._retried_answers += 1
        # the raw header: aiohttp's content_type= refuses parameters such as "; charset=utf-8"
        headers["Content-Type"] = resp.content_type or "application/json"
        return web.Response(status=resp.status, body=resp.body, headers=headers)

    async def _fetch_meta(self, name: str, version: str | None) -> ModelMeta:
        resp = await self._upstream("GET", _model_path(name, version), idempotent=True)
        if resp.status == 404:
            raise ModelNotFound(_upstream_error(resp) or f"unknown model {name!r}")
        if resp.status != 200:
            raise UpstreamError(f"model metadata for {name!r}: upstream answered {resp.status}: "
                                f"{_upstream_error(resp)}")
        try:
            doc = json_loads(resp.body)
            specs = tuple(TensorSpec.from_dict(d) for d in doc["inputs"])
            outputs = tuple(str(d["name"]) for d in doc.get("outputs") or ())
            mbs = int((doc.get("parameters") or {}).get("max_batch_size", 0) or 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"upstream sent unusable metadata for {name!r}: {exc!r}") from None
        return ModelMeta(specs, outputs, mbs)

    # -- v2 endpoints -----------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.Response:
        name, version = model_ref(request)
        body = await read_body(request, self._limit)
        head_len = binary_header_length(request)
        req = parse_infer_request(body, head_len)
        meta = await self.metadata.get(name, version)
        validate_inputs(req, meta.inputs, meta.max_batch_size)
        counters = self.counters
        counters.infer_requests += 1
        counters.infer_rows += req.batch_size
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        if head_len is not None:
            headers[BINARY_HEADER] = str(head_len)
        resp = await self._upstream("POST", _model_path(name, version) + "/infer", body, headers)
        counters.model_calls += 1
        if resp.status == 404:
            self.metadata.invalidate(name, version)
        return self._passthrough(resp)

    async def model_metadata(self, request: web.Request) -> web.Response:
        path = _model_path(*model_ref(request))
        return self._passthrough(await self._upstream("GET", path, idempotent=True))

    async def model_ready(self, request: web.Request) -> web.Response:
        path = _model_path(*model_ref(request)) + "/ready"
        return self._passthrough(await self._upstream("GET", path, idempotent=True))

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        for base in self.upstreams:
            try:
                resp = await self._upstream("GET", "/v2/health/ready", idempotent=True, base=base)
            except OptkitError:
                continue
            if resp.status == 200:
                return json_response({"ready": True})
        return json_response({"ready": False, "error": "no upstream is ready"}, status=503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": "optkit-gateway", "version": __version__,
                              "extensions": ["model_repository", "binary_tensor_data"]})

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


def _model_path(name: str, version: str | None) -> str:
    return f"/v2/models/{quote(name)}" + (f"/versions/{version}" if version else "")


def _upstream_error(resp: UpstreamResponse) -> str:
    try:
        doc = json_loads(resp.body)
        return str(doc.get("error", "")) if isinstance(doc, dict) else ""
    except ValueError:
        return resp.body[:200].decode("utf-8", "replace")
