"""What both tiers share: the v2 route table, JSON errors, bounded bodies, counters,
``/stats`` and ``/metrics``.

Every route is wrapped by :func:`guard`, which counts the request and turns any
error into a JSON ``{"error": ...}`` body with the right status: an
:class:`OptkitError` maps to its ``status`` (a full queue adds ``Retry-After``),
aiohttp's own HTTP errors (413) keep theirs, a path no route serves is a JSON 404
or 405, and anything unexpected becomes a 500 that never takes the server down.

The inference books. On the inference routes (``infer``, ``generate_stream``) the
guard also keeps books that close whatever step answered::

    infer_requests  every one received ─┬─ infer_ok         answered 2xx
                                        ├─ infer_refused    answered 4xx/5xx, by cause
                                        │                   (the step it had reached) and status
                                        ├─ infer_cancelled  its client left first
                                        └─ still in flight

A handler names the step a request has reached with :func:`at_step` ("metadata",
"body", "validation", "upstream", ...); a refusal is counted under the last step
named, except a queue's own refusals (:class:`QueueFull`, :class:`DeadlineExceeded`),
which are always ``queue``. The step lives in a context variable: the handler runs in
the guard's own task, so what it sets is what the guard reads, and no other request
sees it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from .._exceptions import DeadlineExceeded, ModelNotReady, OptkitError, PayloadTooLarge, \
    ProtocolError, QueueFull
from .._metrics import LabelledDict, counter, gauge, iter_families, to_plain
from ..models import validate_model_name
from ..v2 import BINARY_HEADER, InferRequest, encode_infer_response, error_body, json_dumps
from ._openapi import OPENAPI_PATH, openapi_json

__all__ = ["ServerCounters", "ServerStatistics", "json_response", "error_response", "guard",
           "at_step", "build_app", "infer_response", "mark", "read_body", "binary_header_length", "model_ref", "V2Handlers",
           "STATS_KEY", "streamable"]

log = logging.getLogger("optkit.service")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATS_KEY: web.AppKey["ServerCounters"] = web.AppKey("optkit_counters", object)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """What every request through a tier's middleware adds up to."""

    accepted: int = counter("requests accepted")
    completed: int = counter("requests answered (any status)")
    in_flight: int = gauge("requests being handled now")
    cancelled: int = counter("requests whose client went away (or a drain timed out)")
    client_errors: int = counter("answers with a 4xx status")
    server_errors: int = counter("answers with a 5xx status")
    infer_requests: int = counter("inference requests received, however they were answered")
    infer_ok: int = counter("inference requests answered 2xx")
    infer_refused: dict[str, dict[str, int]] = counter(
        "inference requests answered 4xx/5xx, by cause (the step that refused) and status")
    infer_cancelled: int = counter("inference requests whose client left before the answer")
    infer_rows: int = counter("rows in the inference requests that passed validation")
    model_calls: int = counter("calls into a model (or upstream inference calls)")
    uptime_s: float = gauge("seconds since the server started")
    open_connections: int = gauge("client connections open now (a leak shows as growth)")
    tasks: int = gauge("asyncio tasks alive on the serving loop now")


class ServerCounters:
    """Plain counters updated on the hot path; a typed record only when scraped."""

    __slots__ = ("accepted", "completed", "in_flight", "cancelled", "client_errors",
                 "server_errors", "infer_requests", "infer_ok", "infer_refused",
                 "infer_cancelled", "infer_rows", "model_calls", "started_at", "connections",
                 "busy", "handed", "marks")

    def __init__(self) -> None:
        self.accepted = self.completed = self.in_flight = self.cancelled = 0
        self.client_errors = self.server_errors = 0
        self.infer_requests = self.infer_ok = self.infer_cancelled = 0
        self.infer_rows = self.model_calls = 0
        #: (cause, status) -> inference requests refused there; changed only by refuse()
        self.infer_refused: dict[tuple[str, int], int] = {}
        self.started_at = time.time()
        #: counts the open client connections; set by the runner once its server exists
        self.connections: Callable[[], int] = lambda: 0
        #: requests read or being answered now, over every connection (-1: not known);
        #: set by the runner, which sees the HTTP server
        self.busy: Callable[[], int] = lambda: -1
        #: requests handed to the handlers by a front end other than aiohttp's (gRPC):
        #: the runner's count of requests in hand adds them
        self.handed = 0
        #: headers every answer carries (a worker's ``optkit-worker``), set by the runner:
        #: the guard adds them, and :func:`mark` to an answer a handler streams
        self.marks: tuple[tuple[str, str], ...] = ()

    def alone(self) -> bool:
        """The asking handler's request is the only one this server holds (read and not
        answered): no other can join its batch this loop iteration. Unknown: False."""
        return self.busy() == 1

    def refuse(self, cause: str, status: int) -> None:
        """Count an inference request answered ``status`` (4xx/5xx) at step ``cause``."""
        key = (cause, status)
        self.infer_refused[key] = self.infer_refused.get(key, 0) + 1

    def snapshot(self) -> ServerStatistics:
        refused: LabelledDict = LabelledDict("cause")
        for (cause, status), n in sorted(self.infer_refused.items()):
            refused.setdefault(cause, LabelledDict("status"))[str(status)] = n
        return ServerStatistics(
            accepted=self.accepted, completed=self.completed, in_flight=self.in_flight,
            cancelled=self.cancelled, client_errors=self.client_errors,
            server_errors=self.server_errors, infer_requests=self.infer_requests,
            infer_ok=self.infer_ok, infer_refused=refused,
            infer_cancelled=self.infer_cancelled,
            infer_rows=self.infer_rows, model_calls=self.model_calls,
            uptime_s=time.time() - self.started_at, open_connections=self.connections(),
            tasks=_task_count())


def _task_count() -> int:
    """Tasks alive on the running loop (0 when scraped off it, as a unit test may)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_dumps(doc), status=status, content_type="application/json")


def infer_response(model: str, version: str, outputs: Mapping[str, Any],
                   req: InferRequest) -> web.Response:
    """A request's v2 answer: the outputs it asked for (all if none), JSON or binary as it asked."""
    selected = ([(o, outputs[o]) for o in req.outputs] if req.outputs
                else list(outputs.items()))
    payload, head_len = encode_infer_response(model, version, selected, request_id=req.id,
                                              binary=req.outputs,
                                              binary_default=req.binary_default)
    if head_len is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(body=payload, headers={BINARY_HEADER: str(head_len)},
                        content_type="application/octet-stream")


def error_response(exc: OptkitError) -> web.Response:
    """The JSON answer for an optkit error; a full queue or a model still loading also
    says when to come back."""
    headers = None
    retry_after = getattr(exc, "retry_after_s", None)
    if isinstance(exc, (QueueFull, ModelNotReady)) and retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    return web.Response(body=error_body(str(exc)), status=exc.status,
                        content_type="application/json", headers=headers)


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=error_body(message), status=status, content_type="application/json")


#: the step the handling request has reached (see the module docstring); set by at_step
_step: contextvars.ContextVar[str] = contextvars.ContextVar("optkit_step", default="route")
#: refusals that are a queue's own whatever step the request was at
_QUEUE_REFUSALS = (QueueFull, DeadlineExceeded)


def at_step(step: str) -> None:
    """Name the step the request being handled has reached: a refusal from here on is
    counted under this cause. Called from a handler (or code it awaits in its own task)."""
    _step.set(step)


def guard(handler: Handler, counters: ServerCounters, *, infer: bool = False) -> Handler:
    """Wrap a handler: count the request and answer any failure as JSON.

    ``infer``: an inference route; its requests are also entered in the inference
    books (the module docstring), each refusal under the step that gave it.

    This is what an aiohttp middleware would do, as one wrapper per route instead:
    measured here, the middleware chain (two more coroutine frames on every resume
    and aiohttp's per-request middleware lookup) cost the model server about a fifth
    of its batched throughput.
    """

    async def guarded(request: web.Request) -> web.StreamResponse:
        counters.accepted += 1
        counters.in_flight += 1
        if infer:
            counters.infer_requests += 1
            _step.set("route")
        cause = None
        try:
            response = await handler(request)
        except OptkitError as exc:
            response = error_response(exc)
            if isinstance(exc, _QUEUE_REFUSALS):
                cause = "queue"
        except web.HTTPException as exc:
            if exc.status < 400:
                counters.in_flight -= 1
                counters.completed += 1
                if infer:
                    counters.infer_ok += 1
                raise
            response = _error(exc.status, exc.reason if exc.status != 413 else
                              f"request body too large: {exc.text}")
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except asyncio.CancelledError:  # the client went away, or a drain timed out
            counters.in_flight -= 1
            counters.cancelled += 1
            if infer:
                counters.infer_cancelled += 1
            raise
        except Exception as exc:  # a bug must answer 500, not kill the server
            if isinstance(exc, ConnectionError) and _client_gone(request):
                # the client left while its body was read or its answer written: not a
                # server error, and nobody to answer (aiohttp's write of this answer to the
                # closed connection fails quietly; raised, it would be logged as a 500)
                counters.in_flight -= 1
                counters.cancelled += 1
                if infer:
                    counters.infer_cancelled += 1
                return _error(400, "the client closed the connection")
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = _error(500, f"internal error: {type(exc).__name__}")
        if counters.marks and not response.prepared:  # a streamed one got them in mark()
            response.headers.update(counters.marks)
        # counted only once a response exists, so the drain receipt can show a loss
        counters.in_flight -= 1
        counters.completed += 1
        status = response.status
        if status >= 400:
            if status >= 500:
                counters.server_errors += 1
            else:
                counters.client_errors += 1
            if infer:
                counters.refuse(cause or _step.get(), status)
        elif infer:
            counters.infer_ok += 1
        return response

    return guarded


def mark(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Give ``response``, which its handler prepares itself (a streamed answer), the
    headers the guard adds to every other answer (``ServerCounters.marks``)."""
    counters = request.app.get(STATS_KEY)
    if counters is not None and counters.marks:
        response.headers.update(counters.marks)
    return response


def _client_gone(request: web.Request) -> bool:
    """The request's own client connection is closed (or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def build_app(component: "V2Handlers", *, prefix: str, counters: ServerCounters,
              statistics: Callable[[], Any], max_body_bytes: int,
              models: Iterable[str] = ()) -> web.Application:
    """The aiohttp app of a tier: the v2 routes, ``/stats``, ``/metrics``, JSON 404/405.

    Every route is guarded (counted, errors as JSON); a request no route matches is
    answered 404, or 405 with ``Allow`` when the path exists for other methods, as JSON.
    ``models``: names known when the app is built; each gets its own exact
    ``/v2/models/<name>/infer`` route (the same handler and match_info), which the router
    finds at its first lookup, where the ``{model}`` route is tried two lookups and a
    regex later (~1 us a request). Any other name takes the ``{model}`` route.
    """
    app = web.Application(client_max_size=max_body_bytes)
    app[STATS_KEY] = counters
    router = app.router

    def add(method: str, path: str, handler: Handler, *, infer: bool = False) -> None:
        router.add_route(method, path, guard(handler, counters, infer=infer))

    if models:
        infer = guard(component.infer, counters, infer=True)
        for name in models:
            try:
                validate_model_name(name)
            except ProtocolError:  # a folder no request could name: the {model} route's 400
                continue
            resource = _ModelPath(name, "infer")
            router.register_resource(resource)
            resource.add_route("POST", infer)
    # inference first: the router tries resources in order, and this is the hot path
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        add("POST", base + "/infer", component.infer, infer=True)
        add("POST", base + "/generate_stream", component.generate_stream, infer=True)
    add("GET", "/v2/health/live", component.live)
    add("GET", "/v2/health/ready", component.ready)
    add("GET", "/v2", component.server_metadata)
    # before /v2/models/{model}, which would take "stats" for a model's name
    add("GET", "/v2/models/stats", component.model_stats)
    add("GET", "/v2/", component.server_metadata)  # the protocol's OpenAPI spec names it so
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        add("GET", base, component.model_metadata)
        add("GET", base + "/ready", component.model_ready)
        add("GET", base + "/stats", component.model_stats)
    add("POST", "/v2/repository/index", component.repository_index)
    add("POST", "/v2/repository/models/{model}/load", component.repository_load)
    add("POST", "/v2/repository/models/{model}/unload", component.repository_unload)
    add("GET", "/stats", _stats_handler(statistics))
    add("GET", OPENAPI_PATH, _openapi_handler)
    add("GET", "/metrics", _metrics_handler(statistics, prefix))
    known = list(router.resources())

    async def unmatched(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in known:
            match, methods = await resource.resolve(request)
            allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
        raise web.HTTPNotFound()

    router.add_route("*", "/{tail:.*}", guard(unmatched, counters))
    return app


class _ModelPath(web.PlainResource):
    """``/v2/models/<name>/<action>`` for one model: an exact path, matched with the
    ``match_info`` the ``{model}`` route would give (``{"model": name}``)."""

    def __init__(self, name: str, action: str) -> None:
        super().__init__(f"/v2/models/{name}/{action}")
        self._match_info = {"model": name}

    def _match(self, path: str) -> dict[str, str] | None:
        return self._match_info if path == self._path else None  # aiohttp copies it


def streamable(request: web.Request) -> bool:
    """Whether the answer may be written piecewise: an HTTP request's may; a gRPC call's
    (``_grpc.GrpcCall``) is one message, answered whole."""
    return isinstance(request, web.BaseRequest)


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


class _Collector:
    def __init__(self, statistics: Callable[[], Any], prefix: str) -> None:
        self._statistics, self._prefix = statistics, prefix

    def collect(self) -> Iterator[Any]:
        return iter_families(self._prefix, self._statistics())


def _metrics_handler(statistics: Callable[[], Any], prefix: str) -> Handler:
    """``GET /metrics``: the component's whole statistics record, each metric typed as declared."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(statistics, prefix))  # type: ignore[arg-type]

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    return metrics


async def _openapi_handler(request: web.Request) -> web.Response:
    """``GET /v2/openapi.json``: the REST surface of both tiers (``openapi.yaml``)."""
    return web.Response(body=openapi_json(), content_type="application/json")


def _stats_handler(statistics: Callable[[], Any]) -> Handler:
    """``GET /stats``: the same record as JSON; nothing copied by hand."""

    async def stats(request: web.Request) -> web.Response:
        return json_response(to_plain(statistics()))

    return stats


class V2Handlers(Protocol):
    """The Open Inference Protocol v2 REST endpoints a tier answers."""

    async def live(self, request: web.Request) -> web.StreamResponse: ...
    async def ready(self, request: web.Request) -> web.StreamResponse: ...
    async def server_metadata(self, request: web.Request) -> web.StreamResponse: ...
    async def model_metadata(self, request: web.Request) -> web.StreamResponse: ...
    async def model_ready(self, request: web.Request) -> web.StreamResponse: ...
    async def model_stats(self, request: web.Request) -> web.StreamResponse: ...
    async def infer(self, request: web.Request) -> web.StreamResponse: ...
    async def generate_stream(self, request: web.Request) -> web.StreamResponse: ...
    async def repository_index(self, request: web.Request) -> web.StreamResponse: ...
    async def repository_load(self, request: web.Request) -> web.StreamResponse: ...
    async def repository_unload(self, request: web.Request) -> web.StreamResponse: ...
