"""The upstream over gRPC: the gateway's REST calls carried as v2 gRPC calls, on channels.

The gateway speaks REST to its upstream client (:class:`~optkit.layers.UpstreamClient`:
``GET /v2/models/m``, ``POST /v2/models/m/infer`` ...). :class:`ChannelPool` is that
client for an upstream reached at ``grpc://host:port``: each REST call becomes the
``inference.GRPCInferenceService`` call it stands for, and the gRPC answer the REST
answer the upstream would have given (status, ``{"error": ...}``, JSON or binary body)::

    POST /v2/models/m/infer  ──parse_infer_request──▶ ModelInferRequest (raw tensors)
      (JSON or binary body)                                   │ channel
    200, JSON or binary as asked ◀─encode_infer_response── ModelInferResponse
    4xx/5xx {"error": details}   ◀─ the refusal's REST status (trailing metadata
                                    ``optkit-http-status``), else the code inverted

    GET /v2, /v2/health/{live,ready}, /v2/models/m[/versions/v][/ready|/stats|/config],
    /v2/models/stats, POST /v2/repository/index, .../models/m/{load,unload}: likewise.
    ``generate_stream`` has no gRPC form: 501.

Two forms, chosen by ``pooling.enabled`` as for HTTP::

    naive (the baseline)                      pooled
    req ─ channel ─ connect ─ call ─ close    req ─┐  channel 1 ══ HTTP/2 streams ══▶
    req ─ channel ─ connect ─ call ─ close    req ─┼─▶ channel 2 ══ HTTP/2 streams ══▶ upstream
    (a TCP + HTTP/2 handshake per request)    req ─┘  (taken in turn; ``grpc_channels``)

A pooled channel is a lane rather than a taxi: many requests ride it at once (HTTP/2
streams), so there is no slot to wait for and ``limit`` does not apply; the channels are
taken in turn (round robin) so one connection's socket and frames are not every request's
queue. Every channel has its own connection (``grpc.use_local_subchannel_pool``: without
it gRPC shares one connection between channels to the same address, and the naive form
would reconnect nothing). A channel idle ``keepalive_timeout`` seconds drops its connection
and reconnects on its next request.

Bounds and failures, as the HTTP pool maps them::

    cannot connect (refused, TRANSIENT_FAILURE)       -> UpstreamUnavailable (never sent)
    no connection within upstream_connect_timeout_s   -> UpstreamTimeout     (never sent)
    UNAVAILABLE from the transport (dropped, reset)   -> UpstreamUnavailable
    no answer within upstream_timeout_s (the deadline) -> UpstreamTimeout
    an answer over max_upstream_response_bytes        -> UpstreamError
    the upstream's own refusal (INVALID_ARGUMENT, ...) -> its REST status and message

The upstream's own refusals are answers, not failures: optkit's servers send the REST
status beside the gRPC code, so the gateway passes on exactly what a REST upstream would
have said; from another server (Triton) the code is mapped back through the service's
table (:data:`optkit.v2._grpc_codec.STATUS_CODES`) inverted, where ambiguous taking the
first REST status of the code (INVALID_ARGUMENT 400, RESOURCE_EXHAUSTED 413 if gRPC's own
size bound, else 429, UNAVAILABLE 503). An UNAVAILABLE without that status is the
transport's.

Retry rule (``retry_stale``, pooled only). A channel that has carried answers and then
fails with the transport's UNAVAILABLE is stale (the upstream restarted, the connection
was cut while idle): the request is sent once more on a fresh channel that replaces it,
within what is left of ``upstream_timeout_s``; counted in ``retries`` (and, for an
infer POST, in ``non_idempotent_retries``, the answer marked ``retried``: the gateway
adds ``optkit-retried: 1``), as the HTTP pool does. A channel found in TRANSIENT_FAILURE
before a request is replaced before sending. A fresh channel's failure is never resent.

The gRPC message has no field for a model's metadata ``parameters`` (optkit's
``max_batch_size``); optkit's servers send them in trailing metadata and they are put
back, so a gateway validates and batches as over REST. Request ``parameters`` that
protobuf's ``InferParameter`` cannot hold (objects, lists, null) do not travel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
import numpy as np

from ._base import Layer
from .pooling import PoolStatistics, UpstreamResponse, UpstreamStream
from .._config import PoolingConfig, ServerConfig
from .._exceptions import OptkitError, ProtocolError, UpstreamError, UpstreamTimeout, \
    UpstreamUnavailable
from ..v2 import (BINARY_HEADER, DATATYPES, encode_grpc_infer_request, encode_infer_response,
                  error_body, json_dumps, json_loads, parse_infer_request)
from ..v2._grpc_codec import HTTP_STATUS_KEY, PARAMETERS_KEY, STATUS_CODES, pb

__all__ = ["ChannelPool"]

_SERVICE = "/inference.GRPCInferenceService/"
_JSON = "application/json"
_READY = grpc.ChannelConnectivity.READY
_FAILED = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
#: gRPC code -> the REST status it stands for: the service's table inverted, the first
#: status of each code (its most common one)
_HTTP_OF: dict[grpc.StatusCode, int] = {}
for _status, _name in sorted(STATUS_CODES.items()):
    _HTTP_OF.setdefault(grpc.StatusCode[_name], _status)
_HTTP_OF[grpc.StatusCode.RESOURCE_EXHAUSTED] = 429
_HTTP_OF[grpc.StatusCode.UNAVAILABLE] = 503
_MODEL_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                         r"(?P<tail>/ready|/infer|/stats|/config|/generate_stream|/generate)?")
_REPOSITORY_PATH = re.compile(r"/v2/repository/models/(?P<model>[^/]+)/(?P<action>load|unload)")


class _Refused(Exception):
    """The upstream's own refusal of a call, as the REST answer it stands for."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Slot:
    """One pooled channel, its stub, and whether it has carried an answer (reused)."""

    __slots__ = ("channel", "calls", "answered", "in_flight")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.calls: dict[str, Any] = {}  # rpc name -> its multicallable on this channel
        self.answered = False  # it carried an answer: a failure now may be staleness
        self.in_flight = 0


class _Call:
    """One REST call carried over gRPC: when it started (its deadline counts from there)
    and whether one of its RPCs was sent twice (its answer is then marked ``retried``)."""

    __slots__ = ("started", "resent")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.resent = False


class _Attempt:
    """What one request went through (for the counters and the error's ``sends``)."""

    __slots__ = ("sends", "unsent")

    def __init__(self) -> None:
        self.sends = 0
        self.unsent = False  # failed before any byte of it left (no connection)


def _answer(status: int, doc: Any) -> UpstreamResponse:
    return UpstreamResponse(status, _JSON, json_dumps(doc), {"Content-Type": _JSON})


def _plain(msg: Any) -> dict[str, Any]:
    """A protobuf message as the JSON document REST gives (int64 as numbers, every field)."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = {k: _plain(v) if hasattr(v, "DESCRIPTOR") else v
                            for k, v in value.items()}
        elif fd.is_repeated:
            out[fd.name] = [_plain(v) for v in value] if fd.message_type else list(value)
        elif fd.message_type is not None:
            out[fd.name] = _plain(value)
        else:
            out[fd.name] = value
    return out


def _index_ready(body: bytes) -> bool:
    """``ready`` of a repository index body, refused as optkit's REST handler refuses it
    (the message has only that field: what else the body says is checked here)."""
    if not body.strip():
        return False
    try:
        doc = json_loads(body)
    except ValueError as exc:
        raise _Refused(400, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _Refused(400, "index request must be a JSON object")
    return bool(doc.get("ready", False))


def _tensors(msg: Any) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in msg]


def _set_parameter(target: Any, key: str, value: Any) -> None:
    """One JSON parameter as an ``InferParameter`` (what it cannot hold does not travel)."""
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        target[key].int64_param = value
    elif isinstance(value, float):
        target[key].double_param = value
    elif isinstance(value, str):
        target[key].string_param = value


class _WholeStream(UpstreamStream):
    """A gRPC answer (one message, read whole) behind :class:`UpstreamStream`'s face."""

    __slots__ = ("_body",)

    def __init__(self, resp: UpstreamResponse) -> None:  # noqa: super().__init__ reads aiohttp's
        self.status, self.content_type, self.headers = resp.status, resp.content_type, resp.headers
        self.retried, self.content_length, self._body = resp.retried, len(resp.body), resp.body

    async def iter_chunks(self, chunk_bytes: int = 64 * 1024) -> AsyncIterator[bytes]:
        for start in range(0, len(self._body), chunk_bytes):
            yield self._body[start:start + chunk_bytes]


class ChannelPool(Layer):
    """The gateway's upstream client for ``grpc://`` upstreams: long-lived channels, or one
    per request.

    Args:
        config: ``enabled`` picks the form (off: a new channel per request, the
            baseline; no config: pooled); ``grpc_channels`` per upstream when on; ``retry_stale`` the one
            resend on a fresh channel; ``keepalive_timeout`` a channel's idle timeout.
        server: ``upstream_timeout_s`` (each call's deadline, connecting included),
            ``upstream_connect_timeout_s`` (connecting), ``max_upstream_response_bytes``
            (the largest answer taken).
    """

    def __init__(self, config: PoolingConfig | None = None,
                 server: ServerConfig | None = None) -> None:
        self._config = config or PoolingConfig(enabled=True, transport="grpc")
        server = server or ServerConfig()
        self._pooled = self._config.enabled
        self._total_s = server.upstream_timeout_s
        self._connect_s = server.upstream_connect_timeout_s
        self._max_response = server.max_upstream_response_bytes
        self._options = [
            ("grpc.use_local_subchannel_pool", 1),  # this channel's own connection
            ("grpc.max_receive_message_length", self._max_response),
            ("grpc.max_send_message_length", -1),  # the upstream bounds what it takes
            ("grpc.client_idle_timeout_ms", int(self._config.keepalive_timeout * 1000)),
        ]
        # the pooled channels: target -> its slots, and whose turn it is
        self._slots: dict[str, list[_Slot]] = {}
        self._turn: dict[str, int] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # replaced channels, closing
        self._closed = False
        # counters (changed only in _call and _open)
        self._requests = self._active = self._opened = self._reused = 0
        self._retries = self._unsafe_retries = self._errors = 0

    # -- the UpstreamClient face --------------------------------------------------------
    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None,
                      idempotent: bool = False) -> UpstreamResponse:
        """Carry one REST call over gRPC; its REST answer (any status is returned).

        Raises:
            UpstreamUnavailable, UpstreamTimeout, UpstreamError.
        """
        if self._closed:
            raise RuntimeError("ChannelPool is closed")
        parts = urlsplit(url)
        if parts.scheme != "grpc" or not parts.netloc:
            raise UpstreamError(f"{url}: not a grpc://host:port URL")
        self._requests += 1
        self._active += 1
        rest = _Call()
        try:
            resp = await self._route(method.upper(), parts.netloc, parts.path, body or b"",
                                     headers or {}, url, idempotent or method.upper() != "POST",
                                     rest)
            return dataclasses.replace(resp, retried=True) if rest.resent else resp
        finally:
            self._active -= 1

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, body: bytes | None = None,
                     headers: Mapping[str, str] | None = None,
                     idempotent: bool = False) -> AsyncIterator[UpstreamStream]:
        """As :meth:`request`; a gRPC answer is one message, so the body is already whole."""
        yield _WholeStream(await self.request(method, url, body=body, headers=headers,
                                              idempotent=idempotent))

    def statistics(self) -> PoolStatistics:
        """The counters now, in the HTTP pool's record: a connection there is a channel
        here; ``idle`` / ``in_use``: pooled channels without / with a call in flight."""
        slots = [s for group in self._slots.values() for s in group]
        in_use = sum(1 for s in slots if s.in_flight)
        return PoolStatistics(
            requests=self._requests, active=self._active, connections_opened=self._opened,
            connections_reused=self._reused, idle=len(slots) - in_use, in_use=in_use,
            waits_for_slot=0, retries=self._retries,
            non_idempotent_retries=self._unsafe_retries, errors=self._errors)

    async def aclose(self) -> None:
        """Close every channel; later requests raise RuntimeError. Idempotent."""
        self._closed = True
        slots = [s for group in self._slots.values() for s in group]
        self._slots.clear()
        for slot in slots:
            await slot.channel.close()
        for task in list(self._retiring):
            await task

    def __repr__(self) -> str:
        s = self.statistics()
        form = f"{self._config.grpc_channels} channel(s) per upstream" if self._pooled \
            else "a channel per request"
        return (f"<ChannelPool {form} [requests: {s.active} active | channels: "
                f"{s.idle + s.in_use} open, {s.connections_opened} opened, "
                f"{s.connections_reused} reuses]>")

    # -- REST -> gRPC ---------------------------------------------------------------------
    async def _route(self, method: str, target: str, path: str, body: bytes,
                     headers: Mapping[str, str], url: str, repeatable: bool,
                     rest: _Call) -> UpstreamResponse:
        """The REST call ``method path`` as its gRPC call; the answer as REST's."""
        call = lambda rpc, msg, reply: self._call(target, rpc, msg, reply, url,  # noqa: E731
                                                  repeatable, rest)
        try:
            if method == "GET" and path == "/v2/health/live":
                live = (await call("ServerLive", pb.ServerLiveRequest(),
                                   pb.ServerLiveResponse))[0].live
                return _answer(200, {"live": live})
            if method == "GET" and path == "/v2/health/ready":
                ready = (await call("ServerReady", pb.ServerReadyRequest(),
                                    pb.ServerReadyResponse))[0].ready
                return _answer(200 if ready else 503, {"ready": ready})
            if method == "GET" and path == "/v2":
                meta = (await call("ServerMetadata", pb.ServerMetadataRequest(),
                                   pb.ServerMetadataResponse))[0]
                return _answer(200, {"name": meta.name, "version": meta.version,
                                     "extensions": list(meta.extensions)})
            if method == "GET" and path == "/v2/models/stats":
                stats = (await call("ModelStatistics", pb.ModelStatisticsRequest(),
                                    pb.ModelStatisticsResponse))[0]
                return _answer(200, _plain(stats))
            if method == "POST" and path == "/v2/repository/index":
                ready = _index_ready(body)
                index = (await call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready),
                                    pb.RepositoryIndexResponse))[0]
                return _answer(200, _plain(index)["models"])
            if method == "POST" and (m := _REPOSITORY_PATH.fullmatch(path)):
                action = "Load" if m["action"] == "load" else "Unload"
                await call(f"RepositoryModel{action}",
                           getattr(pb, f"RepositoryModel{action}Request")(
                               model_name=unquote(m["model"])),
                           getattr(pb, f"RepositoryModel{action}Response"))
                return _answer(200, {})
            if m := _MODEL_PATH.fullmatch(path):
                return await self._model_call(method, m, body, headers, call)
        except _Refused as refused:
            return UpstreamResponse(refused.status, _JSON, error_body(refused.message),
                                    {"Content-Type": _JSON})
        return UpstreamResponse(501, _JSON, error_body(
            f"{method} {path} has no v2 gRPC form (the upstream is reached over gRPC)"),
            {"Content-Type": _JSON})

    async def _model_call(self, method: str, m: re.Match[str], body: bytes,
                          headers: Mapping[str, str], call: Any) -> UpstreamResponse:
        name, version = unquote(m["model"]), unquote(m["version"] or "")
        tail = m["tail"] or ""
        if method == "GET" and tail == "":
            meta, trailing = await call("ModelMetadata",
                                        pb.ModelMetadataRequest(name=name, version=version),
                                        pb.ModelMetadataResponse)
            doc: dict[str, Any] = {"name": meta.name, "versions": list(meta.versions),
                                   "platform": meta.platform, "inputs": _tensors(meta.inputs),
                                   "outputs": _tensors(meta.outputs)}
            params = dict(trailing).get(PARAMETERS_KEY)
            if params:
                doc["parameters"] = json_loads(params)
            return _answer(200, doc)
        if method == "GET" and tail == "/ready":
            ready = (await call("ModelReady", pb.ModelReadyRequest(name=name, version=version),
                                pb.ModelReadyResponse))[0].ready
            return _answer(200 if ready else 503, {"name": name, "ready": ready})
        if method == "GET" and tail == "/stats":
            stats = (await call("ModelStatistics",
                                pb.ModelStatisticsRequest(name=name, version=version),
                                pb.ModelStatisticsResponse))[0]
            return _answer(200, _plain(stats))
        if method == "GET" and tail == "/config":
            config = (await call("ModelConfig", pb.ModelConfigRequest(name=name, version=version),
                                 pb.ModelConfigResponse))[0]
            return _answer(200, _plain(config.config))
        if method == "POST" and tail == "/infer":
            return await self._infer(name, version, body, headers, call)
        raise _Refused(501, f"{method} {m.group(0)} has no v2 gRPC form "
                            f"(the upstream is reached over gRPC)")

    async def _infer(self, name: str, version: str, body: bytes, headers: Mapping[str, str],
                     call: Any) -> UpstreamResponse:
        """An infer POST (JSON or binary body) as ModelInfer; the answer as the body asked."""
        raw = next((v for k, v in headers.items() if k.lower() == BINARY_HEADER.lower()), None)
        try:
            req = parse_infer_request(body, None if raw is None else int(raw))
        except (ProtocolError, ValueError) as exc:
            # the model first, as a REST upstream checks it: an unknown one is a 404
            await call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version),
                       pb.ModelMetadataResponse)
            message = str(exc) if isinstance(exc, ProtocolError) else \
                f"bad {BINARY_HEADER}: {raw!r}"
            raise _Refused(400, message) from None
        msg = encode_grpc_infer_request(name, {i.name: i.array for i in req.inputs},
                                        version=version, outputs=list(req.outputs),
                                        request_id=req.id or "")
        for key, value in req.parameters.items():
            if key != "binary_data_output":  # the answer's form is chosen here, below
                _set_parameter(msg.parameters, key, value)
        answer, _ = await call("ModelInfer", msg, pb.ModelInferResponse)
        try:
            outputs = [(o.name, np.frombuffer(blob, dtype=DATATYPES[o.datatype]).reshape(
                tuple(o.shape))) for o, blob in zip(answer.outputs, answer.raw_output_contents,
                                                   strict=True)]
        except (KeyError, ValueError, TypeError) as exc:
            self._errors += 1
            raise UpstreamError(f"unusable ModelInfer answer for {name!r}: {exc}") from None
        payload, head_len = encode_infer_response(
            answer.model_name, answer.model_version, outputs,
            request_id=answer.id or req.id, binary=req.outputs,
            binary_default=req.binary_default)
        if head_len is None:
            return UpstreamResponse(200, _JSON, payload, {"Content-Type": _JSON})
        binary = "application/octet-stream"
        return UpstreamResponse(200, binary, payload,
                                {"Content-Type": binary, BINARY_HEADER: str(head_len)})

    # -- channels -----------------------------------------------------------------------
    async def _call(self, target: str, rpc: str, msg: Any, reply: Any, url: str,
                    repeatable: bool, rest: _Call) -> tuple[Any, tuple[Any, ...]]:
        """One RPC within ``upstream_timeout_s`` of the REST call's start: (answer, trailing
        metadata).

        Raises:
            _Refused: the upstream's own refusal (an answer, not a failure).
            UpstreamUnavailable, UpstreamTimeout, UpstreamError: the transport's.
        """
        attempt, started = _Attempt(), rest.started
        slot, fresh = await self._acquire(target, attempt, url, started)
        while True:
            attempt.sends += 1
            slot.in_flight += 1
            try:
                method = slot.calls.get(rpc)
                if method is None:
                    method = slot.calls[rpc] = slot.channel.unary_unary(
                        _SERVICE + rpc, request_serializer=type(msg).SerializeToString,
                        response_deserializer=reply.FromString)
                left = self._total_s - (time.monotonic() - started)
                if left <= 0:
                    raise self._failure(UpstreamTimeout, "no answer in time", url, attempt)
                call = method(msg, timeout=left)
                answer = await call
                trailing = tuple(await call.trailing_metadata() or ())
                slot.answered = True
                return answer, trailing
            except grpc.aio.AioRpcError as exc:
                status = self._http_status(exc)
                if status is not None:
                    slot.answered = True  # the upstream answered: the channel works
                    raise _Refused(status, exc.details() or "") from None
                if not (self._pooled and not fresh and self._config.retry_stale
                        and attempt.sends == 1 and exc.code() == grpc.StatusCode.UNAVAILABLE
                        and self._total_s - (time.monotonic() - started) > 0):
                    raise self._transport_error(exc, url, attempt) from None
            finally:
                slot.in_flight -= 1
                if not self._pooled:
                    await slot.channel.close()
            # the stale signature on a reused channel: once more, on a fresh one replacing it
            self._retries += 1
            self._unsafe_retries += not repeatable
            rest.resent = True
            slot, fresh = self._retire(target, slot), True
            await self._connect(slot, attempt, url, started)

    async def _acquire(self, target: str, attempt: _Attempt, url: str,
                       started: float) -> tuple[_Slot, bool]:
        """A connected channel to send on, and whether it is fresh (has carried no answer);
        a naive one is new each time."""
        if not self._pooled:
            slot = self._open(target)
            try:
                await self._connect(slot, attempt, url, started)
            except BaseException:
                await slot.channel.close()
                raise
            return slot, True
        group = self._slots.setdefault(target, [])
        turn = self._turn.get(target, 0)
        self._turn[target] = (turn + 1) % self._config.grpc_channels
        if turn >= len(group):
            slot = self._open(target)
            group.append(slot)
        else:
            slot = group[turn]
            if slot.channel.get_state() in _FAILED:  # broken while parked: replace it first
                slot = self._retire(target, slot)
        if slot.answered:
            self._reused += 1
            return slot, False
        await self._connect(slot, attempt, url, started)
        return slot, True

    def _open(self, target: str) -> _Slot:
        if self._closed:
            raise RuntimeError("ChannelPool is closed")
        self._opened += 1
        return _Slot(grpc.aio.insecure_channel(target, options=self._options))

    def _retire(self, target: str, slot: _Slot) -> _Slot:
        """The fresh channel replacing a stale pooled one (the old one closes once its
        calls end, within ``upstream_timeout_s``); if another request replaced it
        already, that replacement."""
        group = self._slots.setdefault(target, [])
        if slot not in group:  # never a channel outside the group: aclose() closes the group
            if not group:
                raise RuntimeError("ChannelPool is closed")
            return next((s for s in group if not s.answered), group[0])
        fresh = self._open(target)
        group[group.index(slot)] = fresh
        task = asyncio.get_running_loop().create_task(slot.channel.close(self._total_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return fresh

    async def _connect(self, slot: _Slot, attempt: _Attempt, url: str, started: float) -> None:
        """Wait for the channel's connection: failing fast when it is refused."""
        deadline = time.monotonic() + min(self._connect_s,
                                          self._total_s - (time.monotonic() - started))
        channel = slot.channel
        state = channel.get_state(try_to_connect=True)
        while state != _READY:
            if state in _FAILED:
                attempt.unsent = True
                raise self._failure(UpstreamUnavailable, "cannot connect", url, attempt)
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait_for(channel.wait_for_state_change(state), left)
            except TimeoutError:
                attempt.unsent = True
                if not self._pooled:
                    await channel.close()
                raise self._failure(UpstreamTimeout, "connect timed out", url,
                                    attempt) from None
            state = channel.get_state(try_to_connect=True)

    # -- failures ---------------------------------------------------------------------------
    def _failure(self, kind: type[OptkitError], what: str, url: str,
                 attempt: _Attempt, detail: str = "") -> OptkitError:
        """Name a failure in optkit's terms, as the HTTP pool does (``sends``: 2 when the
        stale resend ran; ``unsent``: nothing left, so the balancer may resend it anywhere)."""
        self._errors += 1
        error = kind(f"{what}: {url}" + (f" ({detail})" if detail else ""))
        error.sends = max(1, attempt.sends)  # type: ignore[attr-defined]
        error.unsent = attempt.unsent and attempt.sends <= 1  # type: ignore[attr-defined]
        return error

    def _transport_error(self, exc: grpc.aio.AioRpcError, url: str,
                         attempt: _Attempt) -> OptkitError:
        code, details = exc.code(), exc.details() or ""
        detail = f"{code.name}: {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return self._failure(UpstreamTimeout, "no answer in time", url, attempt, detail)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return self._failure(UpstreamError, f"answer over the {self._max_response}-byte "
                                 f"bound", url, attempt, detail)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return self._failure(UpstreamUnavailable, "connection dropped", url, attempt, detail)
        return self._failure(UpstreamError, "unusable answer", url, attempt, detail)

    def _http_status(self, exc: grpc.aio.AioRpcError) -> int | None:
        """The REST status of the upstream's own refusal, or None for the transport's failure.

        optkit's servers say it (``optkit-http-status``); another server's code is mapped back
        through the service's table, except what gRPC itself raises on this side: a deadline,
        an answer over our bound, a dropped connection (UNAVAILABLE, CANCELLED).
        """
        for key, value in exc.trailing_metadata() or ():
            if key == HTTP_STATUS_KEY:
                try:
                    return int(value)
                except ValueError:
                    break
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            details = exc.details() or ""
            if "larger than max" not in details:
                return 429
            # gRPC's own size bound: ours on the answer (a failure), else the upstream's
            # on the request (its REST 413)
            return None if f"vs. {self._max_response})" in details else 413
        if code == grpc.StatusCode.UNKNOWN:
            return 500
        return _HTTP_OF.get(code, 500)
