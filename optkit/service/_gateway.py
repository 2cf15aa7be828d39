"""The gateway: a v2 server to its clients that forwards inference upstream.

::

    client ──▶ gateway ──────────────────────────────▶ model server(s)
               read body (bounded), decode, validate     (round robin)
               against cached model metadata  ─ 400 here, never upstream
               forward the original bytes  ── pooled or a new connection
               pass the upstream's answer through (status, body)

Upstream down → 502, slow → 504, both as JSON and within the configured bounds;
the upstream's own 4xx/5xx answers are passed through unchanged. Which upstream
client is used is the pooling layer's switch: ``pooling.enabled: false`` (the
baseline) opens a new connection per upstream request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import quote, urlsplit

from aiohttp import web

from .. import __version__
from .._config import ServiceConfig
from .._exceptions import ConfigError, ModelNotFound, OptkitError, UpstreamError
from .._models import validate_model_name
from .._pool import ConnectionPool, DirectClient, UpstreamClient, UpstreamResponse
from .._protocol import BINARY_HEADER, TensorSpec, json_loads, parse_infer_request, validate_inputs
from ._http import EXTRA_STATS_KEY, STATS_KEY, ServerCounters, binary_header_length, \
    install_metrics, json_response, make_error_middleware, model_ref, read_body

__all__ = ["create_gateway", "parse_upstreams"]

CLIENT_KEY: web.AppKey[list[UpstreamClient]] = web.AppKey("optkit_upstream", list)
METADATA_TTL_S = 10.0
_PASS_HEADERS = (BINARY_HEADER, "optkit-retried")


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


@dataclass(frozen=True)
class _Meta:
    inputs: tuple[TensorSpec, ...]
    max_batch_size: int
    fetched_at: float


def create_gateway(upstreams: str | Sequence[str], config: ServiceConfig | None = None) -> web.Application:
    """Build the gateway app forwarding to ``upstreams`` (v2 servers)."""
    config = config or ServiceConfig()
    bases = parse_upstreams(upstreams)
    counters = ServerCounters()
    limit = config.server.max_body_bytes
    app = web.Application(client_max_size=limit, middlewares=[make_error_middleware(counters)])
    app[STATS_KEY] = counters
    holder: list[UpstreamClient] = []
    app[CLIENT_KEY] = holder
    rotation = itertools.cycle(bases)
    metadata: dict[tuple[str, str | None], _Meta] = {}
    fetching: dict[tuple[str, str | None], asyncio.Future[_Meta]] = {}

    async def on_startup(app: web.Application) -> None:
        counters.started_at = time.time()
        if config.pooling.enabled:
            holder.append(ConnectionPool(config.pooling, config.server))
        else:
            holder.append(DirectClient(config.server))

    async def on_cleanup(app: web.Application) -> None:
        for client in holder:
            await client.aclose()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)

    async def upstream(method: str, path: str, body: bytes | None = None,
                       headers: dict[str, str] | None = None, *,
                       idempotent: bool = False, base: str | None = None) -> UpstreamResponse:
        return await holder[0].request(method, (base or next(rotation)) + path, body=body,
                                       headers=headers, idempotent=idempotent)

    def passthrough(resp: UpstreamResponse) -> web.Response:
        headers = {k: resp.headers[k] for k in _PASS_HEADERS if k in resp.headers}
        if resp.retried:
            headers["optkit-retried"] = "1"
        # the raw header: aiohttp's content_type= refuses parameters such as "; charset=utf-8"
        headers["Content-Type"] = resp.content_type or "application/json"
        return web.Response(status=resp.status, body=resp.body, headers=headers)

    def model_path(request: web.Request) -> tuple[str, str | None, str]:
        name, version = model_ref(request)
        path = f"/v2/models/{quote(name)}" + (f"/versions/{version}" if version else "")
        return name, version, path

    async def get_meta(name: str, version: str | None, path: str) -> _Meta:
        key = (name, version)
        meta = metadata.get(key)
        if meta is not None and time.monotonic() - meta.fetched_at < METADATA_TTL_S:
            return meta
        # single flight: concurrent requests for an expired entry share one upstream fetch
        pending = fetching.get(key)
        if pending is None:
            pending = fetching[key] = asyncio.ensure_future(fetch_meta(name, version, path))
            pending.add_done_callback(lambda _: fetching.pop(key, None))
        return await asyncio.shield(pending)

    async def fetch_meta(name: str, version: str | None, path: str) -> _Meta:
        key = (name, version)
        resp = await upstream("GET", path, idempotent=True)
        if resp.status == 404:
            raise ModelNotFound(_upstream_error(resp) or f"unknown model {name!r}")
        if resp.status != 200:
            raise UpstreamError(f"model metadata for {name!r}: upstream answered {resp.status}: "
                                f"{_upstream_error(resp)}")
        try:
            doc = json_loads(resp.body)
            specs = tuple(TensorSpec.from_dict(d) for d in doc["inputs"])
            mbs = int((doc.get("parameters") or {}).get("max_batch_size", 0) or 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"upstream sent unusable metadata for {name!r}: {exc!r}") from None
        meta = _Meta(specs, mbs, time.monotonic())
        metadata[key] = meta
        return meta

    async def infer(request: web.Request) -> web.Response:
        name, version, path = model_path(request)
        body = await read_body(request, limit)
        head_len = binary_header_length(request)
        req = parse_infer_request(body, head_len)
        meta = await get_meta(name, version, path)
        validate_inputs(req, meta.inputs, meta.max_batch_size)
        counters.infer_requests += 1
        counters.infer_rows += req.batch_size
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        if head_len is not None:
            headers[BINARY_HEADER] = str(head_len)
        resp = await upstream("POST", path + "/infer", body, headers)
        counters.model_calls += 1
        if resp.status == 404:
            metadata.pop((name, version), None)
        return passthrough(resp)

    async def model_metadata(request: web.Request) -> web.Response:
        _, _, path = model_path(request)
        return passthrough(await upstream("GET", path, idempotent=True))

    async def model_ready(request: web.Request) -> web.Response:
        _, _, path = model_path(request)
        return passthrough(await upstream("GET", path + "/ready", idempotent=True))

    async def live(request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        for base in bases:
            try:
                resp = await upstream("GET", "/v2/health/ready", idempotent=True, base=base)
            except OptkitError:
                continue
            if resp.status == 200:
                return json_response({"ready": True})
        return json_response({"ready": False, "error": "no upstream is ready"}, status=503)

    async def server_metadata(request: web.Request) -> web.Response:
        return json_response({"name": "optkit-gateway", "version": __version__,
                              "extensions": ["model_repository", "binary_tensor_data"]})

    async def repository(request: web.Request) -> web.Response:
        body = await read_body(request, 64 * 1024)
        name = request.match_info.get("model")
        if name is not None:
            validate_model_name(name)
        if request.path.endswith("/index"):
            return passthrough(await upstream("POST", request.path, body, base=bases[0]))
        last: UpstreamResponse | None = None
        for base in bases:  # load/unload on every upstream, so routing stays uniform
            last = await upstream("POST", request.path, body, base=base)
            if last.status != 200:
                break
        assert last is not None
        return passthrough(last)

    def extra() -> dict[str, Any]:
        if not holder:
            return {}
        st = holder[0].statistics()
        return {"pool": {"requests": st.requests, "connections_opened": st.connections_opened,
                         "connections_reused": st.connections_reused, "idle": st.idle,
                         "in_use": st.in_use, "waits_for_slot": st.waits_for_slot,
                         "retries": st.retries, "errors": st.errors,
                         "reuse_ratio": st.reuse_ratio}}

    app[EXTRA_STATS_KEY] = extra
    r = app.router
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, model_metadata)
        r.add_get(base + "/ready", model_ready)
        r.add_post(base + "/infer", infer)
    r.add_post("/v2/repository/index", repository)
    r.add_post("/v2/repository/models/{model}/load", repository)
    r.add_post("/v2/repository/models/{model}/unload", repository)
    install_metrics(app, "optkit_gateway")
    return app


def _upstream_error(resp: UpstreamResponse) -> str:
    try:
        doc = json_loads(resp.body)
        return str(doc.get("error", "")) if isinstance(doc, dict) else ""
    except ValueError:
        return resp.body[:200].decode("utf-8", "replace")
