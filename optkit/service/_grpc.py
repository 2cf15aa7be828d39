"""Both tiers' gRPC front end: Triton's ``inference.GRPCInferenceService`` over grpc.aio.

A second door into the same handlers. Each call becomes the REST request it stands
for (a :class:`GrpcCall`: route, body, headers), goes through the same guard and handler
(counted in the same books, validated by the same codec, batched by the same batcher),
and the handler's answer is turned back into protobuf::

    ModelInferRequest ─infer_request_body─▶ GrpcCall(POST /v2/models/m/infer, binary body)
        ─▶ guard(tier.infer) ─▶ web.Response ─┬ 200: infer_response_message ─▶ ModelInferResponse
                                              └ 4xx/5xx {"error": msg} ─▶ status code + msg

So a bad request gets the same message over both transports; the REST status maps to
the gRPC code as Triton maps its errors (:data:`STATUS_CODES`; a full batcher queue, a
503 over REST, is RESOURCE_EXHAUSTED; an upstream's, passed on by a gateway, UNAVAILABLE).
The REST status itself rides along in the refusal's trailing metadata
(``optkit-http-status``), and ``ModelMetadata`` sends the REST document's ``parameters``
(``optkit-parameters-bin``): a gateway reaching this server over gRPC
(``optkit.layers.channels``) reads them back; standard clients ignore them. Answers are whole
(one message: the streaming layer does not cut them). ``ModelStreamInfer`` answers each
request of the stream in order, an error as the stream's ``error_message`` (Triton's
form) without ending it. ``ModelConfig``, the shared-memory, trace and log calls are
``UNIMPLEMENTED``.

Off unless ``server.grpc_port`` is set (0: a free port); it binds ``server.host``
(127.0.0.1 by default), takes messages up to ``server.max_body_bytes`` (the REST body
bound) and sends up to ``server.max_upstream_response_bytes`` (what a gateway reads
from an upstream). It starts with the app (after the models load) and stops, with a
drain of ``shutdown_timeout_s``, when the app shuts down.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping
from urllib.parse import quote

import grpc
from aiohttp import web
from google.protobuf import json_format
from multidict import CIMultiDict

from .._exceptions import OptkitError, ProtocolError, QueueFull
from ..v2 import BINARY_HEADER, infer_request_body, infer_response_message, json_dumps, \
    json_loads
from ..v2._grpc_codec import HTTP_STATUS_KEY, PARAMETERS_KEY, STATUS_CODES as _STATUS_NAMES
from ..v2._proto import grpc_service_pb2 as pb
from ..v2._proto import grpc_service_pb2_grpc as pb_grpc
from ._http import ServerCounters, V2Handlers, guard

__all__ = ["GrpcCall", "GrpcFront", "STATUS_CODES", "attach_grpc", "GRPC_PORT_FILE_KEY",
           "HTTP_STATUS_KEY", "PARAMETERS_KEY"]

log = logging.getLogger("optkit.grpc")
#: where the serving process wants the bound gRPC port written (the launcher reads it)
GRPC_PORT_FILE_KEY: web.AppKey[str] = web.AppKey("optkit_grpc_port_file", str)
_FRONT_KEY: web.AppKey["GrpcFront"] = web.AppKey("optkit_grpc_front", object)  # type: ignore[arg-type]

#: REST status -> gRPC code, as Triton maps its errors (the protocol package's table)
STATUS_CODES: dict[int, grpc.StatusCode] = {status: grpc.StatusCode[name]
                                            for status, name in _STATUS_NAMES.items()}
_UNSUPPORTED = ("ModelConfig", "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
                "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
                "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting",
                "LogSettings")


class _CallTransport:
    """What a handler asks of a request's transport: is the client still there?"""

    __slots__ = ("_context",)

    def __init__(self, context: Any) -> None:
        self._context = context

    def is_closing(self) -> bool:
        return self._context is not None and (self._context.cancelled()
                                              or self._context.done())


class GrpcCall:
    """A gRPC call as the REST request it stands for: the parts of ``web.Request`` the
    v2 handlers read (``match_info``, ``headers``, the body, ``transport``)."""

    __slots__ = ("method", "path", "match_info", "headers", "transport", "error", "_body")

    def __init__(self, method: str, path: str, match_info: Mapping[str, str],
                 body: bytes = b"", headers: Mapping[str, str] | None = None,
                 context: Any = None) -> None:
        self.method, self.path, self.match_info = method, path, dict(match_info)
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self.transport = _CallTransport(context)
        #: the optkit error the handler raised, if any (its answer says only the status)
        self.error: OptkitError | None = None
        self._body = body

    @property
    def content_length(self) -> int:
        return len(self._body)

    @property
    def can_read_body(self) -> bool:
        return bool(self._body)

    async def read(self) -> bytes:
        return self._body

    def __repr__(self) -> str:
        return f"<GrpcCall {self.method} {self.path}>"


class _Refusal(Exception):
    """A handler's error answer, as a gRPC status, the REST message and the REST status."""

    def __init__(self, code: grpc.StatusCode, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _refusal(response: web.Response, error: OptkitError | None) -> _Refusal:
    body = response.body if isinstance(response.body, (bytes, bytearray)) else b""
    try:
        doc = json_loads(body)
        message = str(doc["error"]) if isinstance(doc, dict) and "error" in doc \
            else body.decode("utf-8", "replace")
    except ValueError:
        message = bytes(body).decode("utf-8", "replace")
    code = STATUS_CODES.get(response.status, grpc.StatusCode.UNKNOWN)
    if isinstance(error, QueueFull):  # a 503 with Retry-After over REST; Triton's code for it
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    return _Refusal(code, message, response.status)


def _noting(handler: Callable[[Any], Awaitable[web.StreamResponse]]
            ) -> Callable[[Any], Awaitable[web.StreamResponse]]:
    """The handler, keeping on the call the optkit error it raised (for the guard to answer)."""

    async def noted(call: Any) -> web.StreamResponse:
        try:
            return await handler(call)
        except OptkitError as exc:
            call.error = exc
            raise

    return noted


def _model_path(name: str, version: str) -> tuple[str, dict[str, str]]:
    match = {"model": name}
    path = f"/v2/models/{quote(name, safe='')}"
    if version:
        match["version"] = version
        path += f"/versions/{quote(version, safe='')}"
    return path, match


class GrpcFront(pb_grpc.GRPCInferenceServiceServicer):
    """The servicer: every RPC through a tier's guarded v2 handlers."""

    def __init__(self, tier: V2Handlers, counters: ServerCounters) -> None:
        self._counters = counters
        handlers = ("live", "ready", "server_metadata", "model_metadata", "model_ready",
                    "model_stats", "repository_index", "repository_load", "repository_unload")
        self._h: dict[str, Callable[[Any], Awaitable[web.StreamResponse]]] = {
            name: guard(_noting(getattr(tier, name)), counters) for name in handlers}
        self._infer = guard(_noting(tier.infer), counters, infer=True)

    async def _call(self, handler: Callable[[Any], Awaitable[web.StreamResponse]],
                    call: GrpcCall, *, ok: tuple[int, ...] = (200,)) -> web.Response:
        self._counters.handed += 1
        response = await handler(call)
        assert isinstance(response, web.Response)  # a GrpcCall is never streamed
        if response.status not in ok:
            raise _refusal(response, call.error)
        return response

    async def _doc(self, name: str, call: GrpcCall, *, ok: tuple[int, ...] = (200,)) -> Any:
        response = await self._call(self._h[name], call, ok=ok)
        return json_loads(response.body) if response.body else {}

    async def _answer(self, context: Any, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except _Refusal as exc:
            # the REST status too (the code alone cannot tell 400 from 422, 413 from 429):
            # a gateway whose upstream is this server over gRPC answers its clients with it
            await context.abort(exc.code, exc.message, ((HTTP_STATUS_KEY, str(exc.status)),))

    # -- health and metadata ----------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        doc = await self._answer(context, self._doc("live", GrpcCall("GET", "/v2/health/live",
                                                                      {}, context=context)))
        return pb.ServerLiveResponse(live=bool(doc.get("live")))

    async def ServerReady(self, request: Any, context: Any) -> Any:
        doc = await self._answer(context, self._doc(
            "ready", GrpcCall("GET", "/v2/health/ready", {}, context=context), ok=(200, 503)))
        return pb.ServerReadyResponse(ready=bool(doc.get("ready")))

    async def ModelReady(self, request: Any, context: Any) -> Any:
        path, match = _model_path(request.name, request.version)
        doc = await self._answer(context, self._doc(
            "model_ready", GrpcCall("GET", path + "/ready", match, context=context),
            ok=(200, 503)))
        return pb.ModelReadyResponse(ready=bool(doc.get("ready")))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        doc = await self._answer(context, self._doc(
            "server_metadata", GrpcCall("GET", "/v2", {}, context=context)))
        return json_format.ParseDict(doc, pb.ServerMetadataResponse(), ignore_unknown_fields=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        path, match = _model_path(request.name, request.version)
        doc = await self._answer(context, self._doc("model_metadata",
                                                    GrpcCall("GET", path, match, context=context)))
        if isinstance(doc.get("parameters"), dict) and doc["parameters"]:
            # the message has no field for them (optkit's max_batch_size, the model's metrics)
            context.set_trailing_metadata(((PARAMETERS_KEY, json_dumps(doc["parameters"])),))
        return json_format.ParseDict(doc, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        if request.name:
            path, match = _model_path(request.name, request.version)
            call = GrpcCall("GET", path + "/stats", match, context=context)
        else:
            call = GrpcCall("GET", "/v2/models/stats", {}, context=context)
        doc = await self._answer(context, self._doc("model_stats", call))
        return json_format.ParseDict(doc, pb.ModelStatisticsResponse(),
                                     ignore_unknown_fields=True)

    # -- inference --------------------------------------------------------------------
    async def _model_infer(self, request: Any, context: Any) -> Any:
        path, match = _model_path(request.model_name, request.model_version)
        try:
            body, head_len = infer_request_body(request)
        except ProtocolError as exc:
            # what only protobuf can get wrong: the model's 404 still comes first, as over REST
            await self._doc("model_metadata", GrpcCall("GET", path, match, context=context))
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc), 400) from None
        call = GrpcCall("POST", path + "/infer", match, body,
                        {"Content-Type": "application/octet-stream", BINARY_HEADER: str(head_len)},
                        context=context)
        response = await self._call(self._infer, call)
        raw = response.headers.get(BINARY_HEADER)
        try:
            return infer_response_message(response.body, None if raw is None else int(raw))
        except (ProtocolError, ValueError) as exc:  # an upstream's answer a gateway passed on
            raise _Refusal(grpc.StatusCode.INTERNAL, f"unusable v2 answer: {exc}", 500) from None

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._answer(context, self._model_infer(request, context))

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any],
                               context: Any) -> AsyncIterator[Any]:
        async for request in request_iterator:  # in order: each answered before the next
            try:
                answer = await self._model_infer(request, context)
            except _Refusal as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message)
                continue
            yield pb.ModelStreamInferResponse(infer_response=answer)

    # -- the repository extension ------------------------------------------------------
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        body = json_dumps({"ready": True}) if request.ready else b""
        doc = await self._answer(context, self._doc(
            "repository_index", GrpcCall("POST", "/v2/repository/index", {}, body,
                                         {"Content-Type": "application/json"}, context)))
        return json_format.ParseDict({"models": doc}, pb.RepositoryIndexResponse(),
                                     ignore_unknown_fields=True)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._answer(context, self._repository("load", request.model_name, context))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._answer(context, self._repository("unload", request.model_name, context))
        return pb.RepositoryModelUnloadResponse()

    async def _repository(self, action: str, name: str, context: Any) -> Any:
        path = f"/v2/repository/models/{quote(name, safe='')}/{action}"
        return await self._doc(f"repository_{action}",
                               GrpcCall("POST", path, {"model": name}, context=context))


def _unsupported(name: str) -> Callable[..., Awaitable[Any]]:
    async def refuse(self: GrpcFront, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by optkit")
    refuse.__name__ = name
    return refuse


for _name in _UNSUPPORTED:
    setattr(GrpcFront, _name, _unsupported(_name))


def server_options(max_receive: int, max_send: int) -> list[tuple[str, int]]:
    """grpc.aio server options: the tier's message bounds (as REST bounds its bodies)."""
    return [("grpc.max_receive_message_length", max_receive),
            ("grpc.max_send_message_length", max_send),
            ("grpc.so_reuseport", 0)]


def attach_grpc(app: web.Application, tier: V2Handlers, counters: ServerCounters,
                server: Any) -> None:
    """Serve ``tier`` over gRPC beside ``app`` when ``server.grpc_port`` is set.

    ``server``: the tier's :class:`~optkit.ServerConfig`. The gRPC server starts on the
    app's start-up, after the hooks already registered (a model server's model loads),
    and stops with a drain on its shutdown.
    """
    if server.grpc_port is None:
        return

    async def start(app: web.Application) -> None:
        grpc_server = grpc.aio.server(options=server_options(
            server.max_body_bytes, server.max_upstream_response_bytes))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcFront(tier, counters),
                                                           grpc_server)
        host = f"[{server.host}]" if ":" in server.host else server.host
        port = grpc_server.add_insecure_port(f"{host}:{server.grpc_port}")
        await grpc_server.start()
        app[_FRONT_KEY] = grpc_server  # type: ignore[assignment]
        port_file = app.get(GRPC_PORT_FILE_KEY)
        if port_file:
            tmp = Path(f"{port_file}.tmp")
            tmp.write_text(str(port))
            tmp.replace(port_file)
        print(f"optkit: serving gRPC on {host}:{port}", file=sys.stderr, flush=True)

    async def stop(app: web.Application) -> None:
        grpc_server = app.get(_FRONT_KEY)
        if grpc_server is not None:
            await grpc_server.stop(server.shutdown_timeout_s)  # type: ignore[attr-defined]

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
