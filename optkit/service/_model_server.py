"""The model server: Open Inference Protocol v2 (REST) over a model repository.

::

    POST /v2/models/{m}[/versions/{v}]/infer
        read body (bounded) -> decode + validate against the model's metadata
        -> model.predict(rows)                       (batching off: the baseline)
           or layers.batching.DynamicBatcher ─▶ one predict for many requests'
              rows, split back row for row          (batching on)
        -> encode (JSON or binary, as this request asked) -> one buffered response
           (streaming on: a large answer computed in sub-batches and written in
            chunks, and POST .../generate_stream as server-sent events; see _streams.py)

Endpoints: health (``/v2/health/live|ready``), server metadata (``/v2``), model
metadata and readiness, inference, and the repository extension
(``/v2/repository/index``, ``/v2/repository/models/{m}/load|unload``), plus
``/stats`` (JSON) and ``/metrics`` (Prometheus), and Triton's statistics extension
(``/v2/models[/{m}[/versions/{v}]]/stats``, see ``_model_stats.py``); the same over
gRPC with ``server.grpc_port`` set (``_grpc.py``). In the baseline, models are
loaded synchronously on the serving loop, at start-up and on ``load``; with
``loading.mode: background`` the loading layer (``layers/loading.py``) loads them
in workers while the loop serves. Every inference holds its model from
``loader.acquire`` to ``loader.release`` (an in-flight count per model: such a
model is never evicted, and an unload lets it finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from time import perf_counter_ns
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from aiohttp import web

from .._version import __version__
from .._config import ServiceConfig
from .._exceptions import InferenceError, OptkitError, ProtocolError
from ..models import Model, ModelConfig
from ..v2 import (InferRequest, json_loads, parse_generate_request, parse_infer_request,
                  request_deadline, split_rows, validate_inputs)
from ..models import ModelRepository, RepositoryStatistics
from ..layers.batching import BatchStatistics, DynamicBatcher
from ..layers.loading import LoadingStatistics, ModelLoader
from ..layers.streaming import ResponseStreamer, StreamingStatistics
from ._model_stats import ModelStats, ModelStatsBook
from ._grpc import attach_grpc
from ._streams import stream_generate, stream_infer
from ._http import ServerCounters, ServerStatistics, at_step, binary_header_length, \
    build_app, infer_response, json_response, model_ref, read_body, streamable

__all__ = ["ModelServer", "ModelServerStatistics", "create_model_server", "MODEL_SERVER_KEY"]

log = logging.getLogger("optkit.model_server")
EXTENSIONS = ["model_repository", "binary_tensor_data", "statistics", "generate_stream"]
_SMALL_BODY = 64 * 1024  # repository requests carry no tensors
_NO_HOLD = contextlib.nullcontext()  # reusable: the model runs unheld (no batcher slot)
MODEL_SERVER_KEY: web.AppKey["ModelServer"] = web.AppKey("optkit_model_server", object)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ModelServerStatistics:
    """Everything the model server counts; ``/stats`` and ``/metrics`` serialize it whole."""

    server: ServerStatistics
    repository: RepositoryStatistics
    batching: dict[str, BatchStatistics] = field(default_factory=dict)
    streaming: StreamingStatistics = field(default_factory=StreamingStatistics)
    loading: LoadingStatistics | None = None


class ModelServer:
    """A v2 server hosting the models of one repository.

    Args:
        repository: the repository folder (``<repo>/<model>/<version>/``).
        config: the service config; ``loading.models`` names what :meth:`start`
            loads (all, if empty).

    Nothing is loaded by the constructor: :meth:`start` (run by the app's
    start-up) loads the configured models, synchronously, before the server
    accepts a connection — the baseline's start-up; with ``loading.mode:
    background`` it only schedules their loads (:class:`ModelLoader`), so the
    server is live at once and ready when ``loading.models`` are loaded.
    """

    def __init__(self, repository: str | Path, config: ServiceConfig | None = None) -> None:
        self.config = config or ServiceConfig()
        self.repository = ModelRepository(repository, overrides=self.config.loading.parameters)
        self.loader = ModelLoader(self.repository, self.config.loading)
        self.counters = ServerCounters()
        self.stats_book = ModelStatsBook()  # Triton's statistics extension (_model_stats.py)
        self._limit = self.config.server.max_body_bytes
        self._batching = self.config.batching
        # model name -> (the model object it batches for, its batcher); a reload gets a new one
        self._batchers: dict[str, tuple[Model, DynamicBatcher[Mapping[str, np.ndarray],
                                                              dict[str, np.ndarray]]]] = {}
        self._retired: dict[str, BatchStatistics] = {}  # statistics of replaced batchers
        self._streamer = ResponseStreamer(self.config.streaming)
        self._executor: ThreadPoolExecutor | None = None
        if self._batching.enabled and self._batching.executor == "thread":
            self._executor = ThreadPoolExecutor(self._batching.max_concurrent_batches,
                                                thread_name_prefix="optkit-model")

    # -- lifecycle ------------------------------------------------------------------
    def make_app(self) -> web.Application:
        """The aiohttp app serving this model server."""
        app = build_app(self, prefix="optkit_model_server", counters=self.counters,
                        statistics=self.statistics, max_body_bytes=self._limit,
                        models=self.repository.names())
        app[MODEL_SERVER_KEY] = self
        app.on_startup.append(lambda _app: self.start())
        app.on_cleanup.append(lambda _app: self.aclose())
        # gRPC beside REST when server.grpc_port is set; it starts after the models load
        attach_grpc(app, self, self.counters, self.config.server)
        if (self.config.server.grpc_port is not None and self._batching.enabled
                and self._batching.executor == "loop"):
            # grpc.aio hands the loop one call at a time: a model computing on the loop
            # finds no company, so every gRPC request runs as a batch of one (measured)
            log.warning("gRPC requests are not merged with batching.executor: loop (every "
                        "one runs as a batch of one); set batching.executor: thread to batch "
                        "them (docs/performance.md, Over gRPC)")
        return app

    async def start(self) -> None:
        """Load the configured models (sync), or schedule their loads (background);
        a broken one is logged and the others still load."""
        await self.loader.start(self.config.loading.models or tuple(self.repository.names()))

    async def aclose(self) -> None:
        """Let running batches finish, fail what still waits, stop the model threads."""
        await self.loader.aclose()
        batchers, self._batchers = self._batchers, {}
        for name, (_, batcher) in batchers.items():
            await batcher.aclose()
            self._retired[name] = batcher.statistics()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def statistics(self) -> ModelServerStatistics:
        batching = dict(self._retired)
        batching.update((name, b.statistics()) for name, (_, b) in self._batchers.items())
        return ModelServerStatistics(self.counters.snapshot(), self.repository.statistics(),
                                     batching, self._streamer.statistics(),
                                     self.loader.statistics())

    def __repr__(self) -> str:
        c = self.counters
        return (f"<ModelServer {self.repository.root} [{c.in_flight} in flight, "
                f"{c.completed} answered | {self.repository.statistics().ready} models ready]>")

    # -- v2 endpoints -----------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.StreamResponse:
        # in the gateway's order: the model's metadata (404), the body checked against it
        # (400, even for a model not loaded), and only then the model itself (503).
        # The step a refusal is counted under (_http.at_step) is kept in a local and named
        # to the guard only when the request fails: a ContextVar.set per step on every
        # answered request was ~1 us of the hot path.
        t0 = perf_counter_ns()
        step, stats = "route", None
        try:
            match = request.match_info
            name, version = match["model"], match.get("version")
            served = self.repository.loaded(name) if version is None else None
            if served is not None:  # the name of a model served is a valid one: its config
                cfg = served.config
            else:
                name, version = model_ref(request)
                step = "metadata"
                cfg = self.repository.config(name, version)
            stats = self.stats_book.model(name, cfg.version)  # a known model from here on
            step = "body"
            body = await read_body(request, self._limit)
            step = "validation"
            t_in = perf_counter_ns()
            req = parse_infer_request(body, binary_header_length(request))
            _check_infer(req, cfg)
            clock = _Clock(perf_counter_ns() - t_in)
            step = "loading"
            loader = self.loader
            # counted in flight (never evicted); acquire() only when it has to wait
            model = loader.acquire_nowait(name, version) or await loader.acquire(name, version)
            try:
                if model.config is not cfg:  # another version was installed meanwhile
                    _check_infer(req, model.config)
                    stats = self.stats_book.model(name, model.config.version)
                # its batcher's queue included: that queue's refusals are "queue"
                step = "model"
                rows = req.batch_size
                self.counters.infer_rows += rows
                inputs = {item.name: item.array for item in req.inputs}
                if self._streamer.config.enabled and streamable(request):
                    response = await self._stream(request, name, model, req, inputs, clock)
                else:
                    outputs = await self._compute(request, name, model, inputs, req, clock)
                    t = perf_counter_ns()
                    response = infer_response(name, model.config.version, outputs, req)
                    clock.output_ns = perf_counter_ns() - t
            finally:
                loader.release(name)
        except BaseException as exc:
            at_step(step)
            if stats is not None and isinstance(exc, Exception):
                stats.failed(perf_counter_ns() - t0)
            raise
        if response.status >= 400:  # an answer, not a raise, that refuses: the guard counts it
            at_step(step)
        stats.ok(rows, perf_counter_ns() - t0, clock.input_ns, clock.queue_ns,
                 clock.infer_ns, clock.output_ns)
        return response

    async def _stream(self, request: web.Request, name: str, model: Model, req: InferRequest,
                      inputs: dict[str, np.ndarray], clock: "_Clock") -> web.StreamResponse:
        """Large answers in chunks, rows in sub-batches (a gRPC answer is one message)."""
        t = perf_counter_ns()
        response = await stream_infer(
            self._streamer, request, name, model.config.version, req, inputs,
            lambda part: self._compute(request, name, model, part, req, clock))
        # streamed: encoding and writing interleave with the sub-batches' model calls
        clock.output_ns = max(0, perf_counter_ns() - t - clock.queue_ns - clock.infer_ns)
        return response

    async def _compute(self, request: web.Request, name: str, model: Model,
                       inputs: Mapping[str, np.ndarray], req: Any,
                       clock: "_Clock") -> dict[str, np.ndarray]:
        """Run ``inputs`` through the model: directly, or riding its batcher."""
        held: Any = _NO_HOLD
        if self._batching.enabled:
            entry = self._batchers.get(name)
            batcher = entry[1] if entry is not None and entry[0] is model \
                else self._batcher(name, model)
            if self._executor is None and req.timeout_us is None and batcher.idle():
                # a lone request, the model idle, computed on the loop without yielding:
                # nobody could join its batch, so it skips the batcher's machinery (a lone
                # client paid ~5 % of its latency for it) and is counted as a batch of one
                held = batcher.hold(len(next(iter(inputs.values()))))
            else:
                transport = request.transport
                ride = _Ride(inputs)
                t = perf_counter_ns()
                outputs = await batcher.submit(
                    ride, rows=ride.rows,
                    deadline=None if req.timeout_us is None
                    else request_deadline(req, time.monotonic()),
                    alive=None if transport is None else (lambda: not transport.is_closing()))
                # waiting for its batch to start is queue; its batch's model call is its compute
                clock.queue_ns += max(0, ride.started - t)
                clock.infer_ns += ride.ended - ride.started
                return outputs
        self.counters.model_calls += 1
        rows = len(next(iter(inputs.values())))
        with held:
            t = perf_counter_ns()
            outputs = _predict(model, inputs)
            infer_ns = perf_counter_ns() - t
        clock.infer_ns += infer_ns
        self.stats_book.model(name, model.config.version).executed(rows, 0, infer_ns, 0)
        return outputs

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        """``generate_stream``: rows scored in sub-batches, one Server-Sent Event each."""
        name, version = model_ref(request)
        at_step("metadata")
        cfg = self.repository.config(name, version)  # checked in infer's order
        at_step("body")
        body = await read_body(request, self._limit)
        at_step("validation")
        max_rows = self.config.streaming.max_stream_rows
        req = parse_generate_request(body, cfg.inputs, max_rows=max_rows)
        at_step("loading")
        model = await self.loader.acquire(name, version)
        try:
            if model.config is not cfg:
                req = parse_generate_request(body, model.config.inputs, max_rows=max_rows)
            return await self._generate_stream(request, name, model, req)
        finally:
            self.loader.release(name)

    async def _generate_stream(self, request: web.Request, name: str, model: Model,
                               req: InferRequest) -> web.StreamResponse:
        cfg, streaming = model.config, self.config.streaming
        at_step("model")
        self.counters.infer_rows += req.batch_size
        sub_rows = min(streaming.sub_batch_rows, cfg.max_batch_size or streaming.sub_batch_rows)
        return await stream_generate(self._streamer, request, name, cfg.version, req,
                                     lambda part: self._compute(request, name, model, part, req,
                                                                _Clock(0)),
                                     sub_rows)

    def _batcher(self, name: str, model: Model) -> DynamicBatcher[Mapping[str, np.ndarray],
                                                                  dict[str, np.ndarray]]:
        entry = self._batchers.get(name)
        if entry is not None and entry[0] is model:
            return entry[1]
        cfg = self._batching
        max_rows = model.config.max_batch_size or None
        batcher: DynamicBatcher[Mapping[str, np.ndarray], dict[str, np.ndarray]] = \
            DynamicBatcher(self._runner(model), cfg, max_rows=max_rows, name=name,
                           alone=self.counters.alone,
                           release_first=cfg.release_first and cfg.executor == "thread")
        if entry is not None:  # the model was reloaded: the old batcher drains, then goes
            old = entry[1]
            asyncio.get_running_loop().create_task(self._retire(name, old))
        self._batchers[name] = (model, batcher)
        return batcher

    async def _retire(self, name: str, batcher: DynamicBatcher[Any, Any]) -> None:
        await batcher.aclose()
        self._retired[name] = batcher.statistics()

    def _runner(self, model: Model) -> Any:
        """The batch function: concatenate the items' rows, predict once, split row for row."""
        executor = self._executor
        counters = self.counters
        stats = self.stats_book.model(model.config.name, model.config.version)

        async def run(items: Sequence[_Ride]) -> list[dict[str, np.ndarray]]:
            counters.model_calls += 1
            t0 = perf_counter_ns()
            if len(items) == 1:
                inputs = items[0].inputs
            else:
                first = items[0].inputs
                inputs = {k: np.concatenate([item.inputs[k] for item in items]) for k in first}
            t1 = perf_counter_ns()
            if executor is None:  # on the loop: requests that arrive meanwhile form the next batch
                outputs = _predict(model, inputs)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    executor, _predict, model, inputs)
            t2 = perf_counter_ns()
            for item in items:
                item.started, item.ended = t1, t2
            rows = len(next(iter(inputs.values())))
            if len(items) == 1:
                stats.executed(rows, t1 - t0, t2 - t1, 0)
                return [outputs]
            try:
                parts = split_rows(outputs, [item.rows for item in items])
            except ValueError as exc:
                raise InferenceError(f"model {model.config.name!r}: {exc}") from None
            stats.executed(rows, t1 - t0, t2 - t1, perf_counter_ns() - t2)
            return parts

        return run

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        """Ready when every model of ``loading.models`` is served (if that is empty:
        when any model is, or the repository holds none)."""
        repo, wanted = self.repository, self.config.loading.models
        ok = self.loader.ready(wanted) if wanted else \
            (repo.statistics().ready > 0 or not repo.names())
        return json_response({"ready": ok}, status=200 if ok else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": "optkit-model-server", "version": __version__,
                              "extensions": EXTENSIONS})

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = model_ref(request)
        cfg = self.repository.config(name, version)
        return json_response(cfg.metadata(versions=self.repository.versions(name)))

    async def model_stats(self, request: web.Request) -> web.Response:
        """Triton's statistics extension (``_model_stats.py``): every model in the repository
        (one zero record for a model not yet asked), or the one named (404 if unknown)."""
        book = self.stats_book
        if "model" not in request.match_info:
            records = []
            for name in self.repository.names():
                records += book.find(name) or [_empty(name, self.repository)]
            return json_response(book.answer(records))
        name, version = model_ref(request)
        self.repository.version_dir(name, version)  # 404 for an unknown model or version
        return json_response(book.answer(book.find(name, version)
                                         or [_empty(name, self.repository, version)]))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = model_ref(request)
        repo = self.repository
        repo.version_dir(name, version)  # 404 for an unknown model or version
        model = repo.loaded(name)  # an old version serves while a new one loads: ready
        ok = model is not None and version in (None, model.config.version)
        return json_response({"name": name, "ready": ok}, status=200 if ok else 503)

    async def repository_index(self, request: web.Request) -> web.Response:
        ready_only = False
        if request.can_read_body:
            body = await read_body(request, _SMALL_BODY)
            if body.strip():
                try:
                    doc: Any = json_loads(body)
                except ValueError as exc:
                    raise ProtocolError(f"malformed JSON: {exc}") from None
                if not isinstance(doc, dict):
                    raise ProtocolError("index request must be a JSON object")
                ready_only = bool(doc.get("ready", False))
        return json_response(self.repository.index(ready_only=ready_only))

    async def repository_load(self, request: web.Request) -> web.Response:
        """Load (or reload: the newest version on disk) and answer when it is READY.

        Sync: the load runs here, blocking the serving loop (the baseline).
        Background: it runs in a worker; concurrent loads of one model share it; the
        old version serves until the new one is installed; a failure is a 500 with
        the reason (and the version FAILED in the index), a load still running after
        ``loading.load_timeout_s`` a 503 with Retry-After.
        """
        name, _ = model_ref(request)
        await read_body(request, _SMALL_BODY)  # parameters are not used: never a path
        await self.loader.load(name)
        return json_response({})

    async def repository_unload(self, request: web.Request) -> web.Response:
        """Stop serving now: requests in flight finish on the model (state UNLOADING
        until they have), new ones get a 503."""
        name, _ = model_ref(request)
        self.loader.unload(name)
        return json_response({})


class _Clock:
    """One request's time on the model server, in parts (ns), as its handler sees it."""

    __slots__ = ("input_ns", "queue_ns", "infer_ns", "output_ns")

    def __init__(self, input_ns: int) -> None:
        self.input_ns, self.queue_ns, self.infer_ns, self.output_ns = input_ns, 0, 0, 0


class _Ride:
    """One request's rows in the batcher; the batch stamps when its model call ran."""

    __slots__ = ("inputs", "rows", "started", "ended")

    def __init__(self, inputs: Mapping[str, np.ndarray]) -> None:
        self.inputs = inputs
        self.rows = len(next(iter(inputs.values())))
        self.started = self.ended = 0


def _empty(name: str, repository: ModelRepository, version: str | None = None) -> ModelStats:
    """A model's record before its first request: zeros, under the version it would serve."""
    return ModelStats(name, version or repository.versions(name)[-1])


def _check_infer(req: InferRequest, cfg: ModelConfig) -> None:
    """A request's inputs and requested outputs against the model's metadata (400s)."""
    validate_inputs(req, cfg.inputs, cfg.max_batch_size)
    if req.outputs:  # refused before the model runs, not after
        unknown = set(req.outputs) - {t.name for t in cfg.outputs}
        if unknown:
            raise ProtocolError(f"unknown output(s) {sorted(unknown)}")


def _predict(model: Model, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        return model.predict(inputs)
    except OptkitError:  # the model's own verdict: a ProtocolError (an input its graph refuses)
        raise           # is the client's 400, not the model's 500
    except Exception as exc:
        raise InferenceError(f"model {model.config.name!r} failed: {type(exc).__name__}: "
                             f"{exc}") from exc


def create_model_server(repository: str | Path,
                        config: ServiceConfig | None = None) -> web.Application:
    """The app of a :class:`ModelServer` over the repository at ``repository``."""
    return ModelServer(repository, config).make_app()
