"""The generator over gRPC: slots on one HTTP/2 channel, and the target checks.

The generator drives *connections* that carry one request at a time (``_client``).
Over gRPC a :class:`GrpcSlot` plays that part: one request outstanding, on a channel
every slot shares (HTTP/2 multiplexes them, as ``tritonclient.grpc`` does with one
client)::

    send(req_id, ModelInferRequest bytes) ──▶ channel ──▶ GRPCInferenceService/ModelInfer
    owner.on_response(slot, req_id, end_ns) ◀── OK (status 200) or a gRPC code (its REST status)

Requests are serialized before the run (raw tensors, as tritonclient sends them) and
answers are never parsed: the status and, for an error, its details are kept. So the
generator's schedule, records and validity gates are the same on both transports;
an error's status is the REST one its gRPC code stands for (``_STATUS``).
"""

from __future__ import annotations

import asyncio
from time import monotonic_ns
from typing import Any, Mapping, Sequence

import grpc
from google.protobuf import json_format

from .._exceptions import BenchError
from ..v2 import encode_grpc_infer_request, parse_infer_request
from ..v2._proto import grpc_service_pb2 as pb
from ._workload import InputSpec

__all__ = ["GrpcSlot", "MODEL_INFER", "grpc_request", "grpc_probe", "grpc_check_infer",
           "grpc_ready"]

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: gRPC code -> the REST status it stands for (the inverse of the servers' mapping)
_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
           grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
           grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNIMPLEMENTED: 501}


class _Outcome:
    """What the generator reads of an answer (``HttpConnection.parser``'s fields)."""

    __slots__ = ("status", "keep_alive", "sample", "retried")

    def __init__(self) -> None:
        self.status, self.keep_alive, self.sample, self.retried = 0, True, b"", False


class GrpcSlot:
    """One request at a time on a shared channel; the generator's ``HttpConnection`` shape."""

    def __init__(self, owner: Any, call: Any) -> None:
        self.owner, self._call = owner, call
        self.parser = _Outcome()
        self.req_id = -1
        self.start_ns = self.first_ns = 0
        self.closed = False
        self.transport = self  # the generator closes a connection through its transport
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<GrpcSlot req={self.req_id}>"

    def send(self, req_id: int, data: bytes) -> int:
        self.req_id, self.first_ns = req_id, 0
        self.start_ns = monotonic_ns()
        self._task = asyncio.get_running_loop().create_task(self._run(req_id, data))
        return self.start_ns

    async def _run(self, req_id: int, data: bytes) -> None:
        outcome = self.parser
        try:
            await self._call(data)
            outcome.status, outcome.sample = 200, b""
        except grpc.aio.AioRpcError as exc:
            outcome.status = _STATUS.get(exc.code(), 500)
            outcome.sample = f"{exc.code().name}: {exc.details()}".encode()
        if self.req_id != req_id:  # abandoned meanwhile
            return
        self.req_id = -1
        self.first_ns = end = monotonic_ns()
        self.owner.on_response(self, req_id, end)

    def abandon(self) -> int:
        """Forget the outstanding request (timed out): cancel its call, drop the slot."""
        req_id, self.req_id = self.req_id, -1
        self.abort()
        return req_id

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._task is not None:
            self._task.cancel()
        self.owner.on_lost(self)

    def close(self) -> None:
        self.abort()


def grpc_request(model: str, body: bytes) -> bytes:
    """A REST v2 body (the workload's) as a serialized ``ModelInferRequest``, raw tensors."""
    req = parse_infer_request(body)
    msg = encode_grpc_infer_request(model, {i.name: i.array for i in req.inputs},
                                    outputs=tuple(req.outputs))
    return msg.SerializeToString()


def _stub_call(channel: grpc.Channel, name: str, request: Any, response: Any,
               timeout_s: float) -> Any:
    call = channel.unary_unary(f"/inference.GRPCInferenceService/{name}",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response.FromString)
    try:
        return call(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        raise BenchError(f"gRPC {name} failed: {exc.code().name}: {exc.details()}") from None


def grpc_ready(target: str, timeout_s: float = 1.0) -> bool | None:
    """``ServerReady`` of ``host:port``: True or False as it answers, None when it gives no
    answer (not listening yet, or an error): a started server's readiness, polled."""
    try:
        with grpc.insecure_channel(target) as channel:
            return bool(_stub_call(channel, "ServerReady", pb.ServerReadyRequest(),
                                   pb.ServerReadyResponse, timeout_s).ready)
    except BenchError:
        return None


def grpc_probe(target: str, models: Sequence[str], *, timeout_s: float = 2.0,
               need_inputs: bool = True) -> dict[str, tuple[InputSpec, ...]]:
    """``ServerReady``, then each model's inputs from ``ModelMetadata`` (see ``probe``)."""
    signatures: dict[str, tuple[InputSpec, ...]] = {}
    with grpc.insecure_channel(target) as channel:
        ready = _stub_call(channel, "ServerReady", pb.ServerReadyRequest(),
                           pb.ServerReadyResponse, timeout_s)
        if not ready.ready:
            raise BenchError(f"grpc://{target} is not ready (ServerReady: false)")
        for model in models:
            meta = _stub_call(channel, "ModelMetadata", pb.ModelMetadataRequest(name=model),
                              pb.ModelMetadataResponse, timeout_s)
            doc: Mapping[str, Any] = json_format.MessageToDict(meta)
            inputs = [{**e, "shape": [int(d) for d in e.get("shape", [])]}
                      for e in doc.get("inputs", [])]
            if not inputs and need_inputs:
                raise BenchError(f"metadata of {model!r} on grpc://{target} lists no inputs")
            if need_inputs:
                signatures[model] = tuple(InputSpec.from_metadata(e) for e in inputs)
    return signatures


def grpc_check_infer(target: str, request: bytes, *, timeout_s: float = 5.0) -> None:
    """Send one real request; it must come back OK with outputs."""
    with grpc.insecure_channel(target) as channel:
        answer = _stub_call(channel, "ModelInfer", pb.ModelInferRequest.FromString(request),
                            pb.ModelInferResponse, timeout_s)
    if not answer.outputs:
        raise BenchError(f"grpc://{target}: the answer to a trial ModelInfer has no outputs")
