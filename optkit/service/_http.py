"""What both tiers share: JSON errors, bounded bodies, counters, /stats, /metrics.

Every request passes one middleware that counts it and turns any error into a
JSON ``{"error": ...}`` body with the right status: an :class:`OptkitError`
maps to its ``status``, aiohttp's own HTTP errors (404 route, 405, 413) keep
theirs, and anything unexpected becomes a 500 that never takes the server down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .._exceptions import OptkitError, PayloadTooLarge, ProtocolError
from .._models import validate_model_name
from .._protocol import BINARY_HEADER, error_body, json_dumps

__all__ = ["ServerCounters", "json_response", "make_error_middleware", "read_body",
           "binary_header_length", "model_ref",
           "install_metrics", "STATS_KEY", "EXTRA_STATS_KEY"]

log = logging.getLogger("optkit.service")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATS_KEY: web.AppKey["ServerCounters"] = web.AppKey("optkit_counters", object)  # type: ignore[arg-type]
EXTRA_STATS_KEY: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey(
    "optkit_extra_stats", object)  # type: ignore[arg-type]


@dataclass
class ServerCounters:
    """Plain counters updated on the hot path; rendered only when scraped."""

    accepted: int = 0
    completed: int = 0
    in_flight: int = 0
    cancelled: int = 0
    client_errors: int = 0
    server_errors: int = 0
    infer_requests: int = 0
    infer_rows: int = 0
    model_calls: int = 0
    started_at: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        out = asdict(self)
        out["uptime_s"] = time.time() - self.started_at
        return out


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_dumps(doc), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=error_body(message), status=status, content_type="application/json")


def make_error_middleware(counters: ServerCounters) -> Any:
    """Count every request and answer every failure as JSON."""

    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        counters.accepted += 1
        counters.in_flight += 1
        try:
            response = await handler(request)
        except OptkitError as exc:
            response = _error(exc.status, str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                counters.in_flight -= 1
                counters.completed += 1
                raise
            response = _error(exc.status, exc.reason if exc.status != 413 else
                              f"request body too large: {exc.text}")
        except asyncio.CancelledError:  # the client went away, or a drain timed out
            counters.in_flight -= 1
            counters.cancelled += 1
            raise
        except Exception as exc:  # a bug must answer 500, not kill the server
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = _error(500, f"internal error: {type(exc).__name__}")
        # counted only once a response exists, so the drain receipt can show a loss
        counters.in_flight -= 1
        counters.completed += 1
        status = response.status
        if status >= 500:
            counters.server_errors += 1
        elif status >= 400:
            counters.client_errors += 1
        return response

    return error_middleware


def binary_header_length(request: web.Request) -> int | None:
    """The ``Inference-Header-Content-Length`` of a binary-extension request, if any."""
    raw = request.headers.get(BINARY_HEADER)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ProtocolError(f"{BINARY_HEADER} must be an integer, got {raw!r}") from None


def model_ref(request: web.Request) -> tuple[str, str | None]:
    """``(model, version or None)`` from the route, validated as plain names."""
    name = request.match_info["model"]
    version = request.match_info.get("version")
    validate_model_name(name, version)
    return name, version


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the request body, refusing anything over ``limit``.

    A declared length over the bound is refused before reading a byte; a chunked
    body is counted as it arrives and refused as soon as it passes the bound.
    """
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(f"request body of {length} bytes is over the {limit}-byte limit")
        return await request.read()  # aiohttp also enforces client_max_size
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def stats_handler(request: web.Request) -> web.Response:
    doc = request.app[STATS_KEY].snapshot()
    extra = request.app.get(EXTRA_STATS_KEY)
    if extra is not None:
        doc.update(extra())
    return json_response(doc)


class _Collector:
    def __init__(self, app: web.Application, prefix: str) -> None:
        self._app, self._prefix = app, prefix

    def collect(self) -> Iterator[Any]:
        doc = self._app[STATS_KEY].snapshot()
        extra = self._app.get(EXTRA_STATS_KEY)
        if extra is not None:
            doc.update(extra())
        for key, value in _flatten(doc):
            name = f"{self._prefix}_{key}"
            if key in ("in_flight", "started_at") or key.endswith(
                    ("_s", "ready", "idle", "in_use", "depth", "ratio")):
                yield GaugeMetricFamily(name, key.replace("_", " "), value=float(value))
            else:
                yield CounterMetricFamily(name, key.replace("_", " "), value=float(value))


def _flatten(doc: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + "_")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, value


def install_metrics(app: web.Application, prefix: str) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(app, prefix))  # type: ignore[arg-type]

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/stats", stats_handler)

