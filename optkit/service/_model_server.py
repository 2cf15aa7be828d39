"""The model server: an aiohttp app speaking the Open Inference Protocol v2 (REST).

::

    POST /v2/models/{m}[/versions/{v}]/infer
        read body (bounded) -> decode + validate against the model's metadata
        -> model.predict(batch) -> encode -> one buffered response

Endpoints: health (``/v2/health/live|ready``), server metadata (``/v2``), model
metadata and readiness, inference, and the repository extension
(``/v2/repository/index``, ``/v2/repository/models/{m}/load|unload``), plus
``/stats`` (JSON) and ``/metrics`` (Prometheus). In the baseline, models are
loaded synchronously on the serving loop, at start-up and on ``load``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from .._config import ServiceConfig
from .._exceptions import InferenceError, OptkitError, ProtocolError
from .._protocol import BINARY_HEADER, encode_infer_response, json_loads, parse_infer_request, \
    validate_inputs
from .._repository import READY, ModelRepository
from ._http import EXTRA_STATS_KEY, STATS_KEY, ServerCounters, binary_header_length, \
    install_metrics, json_response, make_error_middleware, model_ref, read_body

__all__ = ["create_model_server"]

log = logging.getLogger("optkit.model_server")
REPO_KEY: web.AppKey[ModelRepository] = web.AppKey("optkit_repository", ModelRepository)
EXTENSIONS = ["model_repository", "binary_tensor_data", "statistics"]


def create_model_server(repository: str | Path, config: ServiceConfig | None = None) -> web.Application:
    """Build the model server app over the repository at ``repository``.

    Models named in ``config.loading.models`` (all, if empty) are loaded before
    the app is returned, synchronously: the baseline's start-up.
    """
    config = config or ServiceConfig()
    repo = ModelRepository(repository, overrides=config.loading.parameters)
    counters = ServerCounters()
    limit = config.server.max_body_bytes
    app = web.Application(client_max_size=limit, middlewares=[make_error_middleware(counters)])
    app[REPO_KEY] = repo
    app[STATS_KEY] = counters

    for name in (config.loading.models or tuple(repo.names())):
        try:
            repo.load(name)
        except OptkitError as exc:  # a broken model must not stop the others
            log.error("model %s failed to load: %s", name, exc)

    async def on_startup(app: web.Application) -> None:
        counters.started_at = time.time()

    app.on_startup.append(on_startup)

    async def live(request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        ok = repo.statistics().ready > 0 or not repo.names()
        return json_response({"ready": ok}, status=200 if ok else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return json_response({"name": "optkit-model-server", "version": __version__,
                              "extensions": EXTENSIONS})

    async def model_metadata(request: web.Request) -> web.Response:
        name, version = model_ref(request)
        cfg = repo.config(name, version)
        return json_response(cfg.metadata(versions=repo.versions(name)))

    async def model_ready(request: web.Request) -> web.Response:
        name, version = model_ref(request)
        state, _ = repo.state(name)
        if version is not None:
            repo.version_dir(name, version)
        ok = state == READY and (version is None or repo.get(name).config.version == version)
        return json_response({"name": name, "ready": ok}, status=200 if ok else 503)

    async def infer(request: web.Request) -> web.Response:
        name, version = model_ref(request)
        model = repo.get(name, version)
        body = await read_body(request, limit)
        req = parse_infer_request(body, binary_header_length(request))
        cfg = model.config
        validate_inputs(req, cfg.inputs, cfg.max_batch_size)
        if req.outputs:  # refused before the model runs, not after
            unknown = set(req.outputs) - {t.name for t in cfg.outputs}
            if unknown:
                raise ProtocolError(f"unknown output(s) {sorted(unknown)}")
        counters.infer_requests += 1
        counters.infer_rows += req.batch_size
        counters.model_calls += 1
        try:
            outputs = model.predict({item.name: item.array for item in req.inputs})
        except Exception as exc:
            raise InferenceError(f"model {name!r} failed: {type(exc).__name__}: {exc}") from exc
        selected = [(o, outputs[o]) for o in req.outputs] if req.outputs else list(outputs.items())
        payload, head_len = encode_infer_response(
            name, cfg.version, selected, request_id=req.id, binary=req.outputs,
            binary_default=req.binary_default)
        headers = None if head_len is None else {BINARY_HEADER: str(head_len)}
        return web.Response(body=payload, headers=headers,
                            content_type="application/octet-stream" if head_len is not None
                            else "application/json")

    async def repo_index(request: web.Request) -> web.Response:
        ready_only = False
        if request.can_read_body:
            body = await read_body(request, 64 * 1024)
            if body.strip():
                try:
                    doc: Any = json_loads(body)
                except ValueError as exc:
                    raise ProtocolError(f"malformed JSON: {exc}") from None
                if not isinstance(doc, dict):
                    raise ProtocolError("index request must be a JSON object")
                ready_only = bool(doc.get("ready", False))
        return json_response(repo.index(ready_only=ready_only))

    async def repo_load(request: web.Request) -> web.Response:
        name, _ = model_ref(request)
        await read_body(request, 64 * 1024)  # parameters are not used: never a path
        repo.load(name)  # baseline: blocks the serving loop while it reads weights
        return json_response({})

    async def repo_unload(request: web.Request) -> web.Response:
        name, _ = model_ref(request)
        repo.unload(name)
        return json_response({})

    def extra() -> dict[str, Any]:
        st = repo.statistics()
        return {"repository": {"loads": st.loads, "load_failures": st.load_failures,
                               "unloads": st.unloads, "ready": st.ready}}

    app[EXTRA_STATS_KEY] = extra
    r = app.router
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, model_metadata)
        r.add_get(base + "/ready", model_ready)
        r.add_post(base + "/infer", infer)
    r.add_post("/v2/repository/index", repo_index)
    r.add_post("/v2/repository/models/{model}/load", repo_load)
    r.add_post("/v2/repository/models/{model}/unload", repo_unload)
    install_metrics(app, "optkit_model_server")
    return app

