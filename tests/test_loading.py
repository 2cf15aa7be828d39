"""The loading layer: single flight, states, warm-up, swaps, budget, lazy loads, real servers.

Models are real: synthetic models whose load burns ``load_cost_s`` of CPU in Python
(holding the GIL, as unpickling does) and holds ``weights_bytes`` of weights, and
the trained digits MLP copied from the session repository. Nothing asserts on time:
tests watch states and orderings (answers completed while a load was LOADING).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from optkit import encode_infer_request
from optkit._config import LoadingConfig, ServiceConfig
from optkit._exceptions import ModelLoadError, ModelNotFound, ModelNotReady, ProtocolError
from optkit.models import ModelConfig, build_repository, load_model
from optkit.v2._codec import TensorSpec
from optkit.models._repository import FAILED, LOADING, READY, UNAVAILABLE, UNLOADING, ModelRepository
from optkit.layers.loading import ModelLoader
from optkit.service import MODEL_SERVER_KEY
from optkit.service._model_server import ModelServer

MiB = 1024 * 1024
ZERO = encode_infer_request({"x": np.zeros((1, 16), np.float32)})


def _synthetic(root: Path, name: str, version: str = "1", **params: Any) -> None:
    width = int(params.get("output_width", 1))
    ModelConfig(name=name, version=version, backend="synthetic",
                inputs=(TensorSpec("x", "FP32", (-1, 16)),),
                outputs=(TensorSpec("y", "FP32", (-1, width)),), max_batch_size=256,
                parameters={"cost_a_us": 10.0, "cost_b_us": 1.0, **params}).write(root / name / version)


@pytest.fixture
def repo(tmp_path: Path, repository: Path) -> Path:
    """A private repository: fast, slow, failing and corrupt models beside the digits MLP."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(repository / "digits-mlp", root / "digits-mlp")
    _synthetic(root, "fast")
    _synthetic(root, "slow", load_cost_s=0.4)
    _synthetic(root, "broken", load_cost_s=0.1, load_fails=True)
    for name in ("a", "b", "c"):
        _synthetic(root, name, weights_bytes=MiB)
    shutil.copytree(repository / "digits-mlp", root / "corrupt")
    (root / "corrupt" / "1" / "model.npz").write_bytes(b"PK\x03\x04 not a zip file at all")
    shutil.copytree(repository / "digits-mlp", root / "missing")
    (root / "missing" / "1" / "model.npz").unlink()
    return root


def _background(**loading: Any) -> ServiceConfig:
    return ServiceConfig(loading=LoadingConfig(mode="background", **loading))


@pytest.fixture
async def serve(repo: Path) -> AsyncIterator[Any]:
    """Start model servers over ``repo`` on 127.0.0.1 with a given config; closed after."""
    clients: list[TestClient] = []

    async def start(config: ServiceConfig) -> TestClient:
        client = TestClient(TestServer(ModelServer(repo, config).make_app(), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def _json(resp: Any) -> Any:
    assert resp.content_type == "application/json"
    return orjson.loads(await resp.read())


async def _index(client: TestClient) -> dict[tuple[str, str], tuple[str, str]]:
    doc = await _json(await client.post("/v2/repository/index"))
    return {(e["name"], e["version"]): (e["state"], e["reason"]) for e in doc}


async def _until(predicate: Any, what: str, tries: int = 400) -> None:
    """Poll an async predicate (bounded: ``tries`` polls 25 ms apart)."""
    for _ in range(tries):
        if await predicate():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


def _server(client: TestClient) -> ModelServer:
    return client.server.app[MODEL_SERVER_KEY]


# -- the layer on its own -------------------------------------------------------------------
@pytest.mark.parametrize("executor", ["process", "thread"])
async def test_concurrent_loads_share_one(repo: Path, executor: str) -> None:
    """Three loads of one model at once build it once and all get the same object."""
    repository = ModelRepository(repo)
    async with ModelLoader(repository, LoadingConfig(mode="background",
                                                     executor=executor)) as loader:
        models = await asyncio.gather(*(loader.load("slow") for _ in range(3)))
        stats = loader.statistics()
    assert models[0] is models[1] is models[2]
    assert (stats.loads, stats.shared, stats.loading) == (1, 2, 0)
    assert stats.load_s.count == 1


@pytest.mark.parametrize("priority", ["normal", "low", "idle"])
async def test_loader_processes_run_at_lower_cpu_priority(repo: Path, priority: str) -> None:
    """``priority`` lowers the loader processes' CPU priority, never the server's own."""
    import os

    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    own = me.nice(), os.sched_getscheduler(0)
    async with ModelLoader(ModelRepository(repo), LoadingConfig(
            mode="background", executor="process", workers=2, priority=priority)) as loader:
        await asyncio.gather(loader.load("slow"), loader.load("fast"))
        workers = [p for p in me.children(recursive=True) if p.pid not in before
                   and "multiprocessing" in " ".join(p.cmdline())
                   and "resource_tracker" not in " ".join(p.cmdline())]
        assert workers, "the loads ran in no worker process"
        seen = {(w.nice(), os.sched_getscheduler(w.pid)) for w in workers}
    expected = {"normal": own, "low": (min(19, own[0] + 10), own[1]),
                "idle": (own[0], os.SCHED_IDLE)}[priority]
    assert seen == {expected}
    assert (me.nice(), os.sched_getscheduler(0)) == own


def test_loading_priority_is_checked() -> None:
    """An unknown priority is a config error naming the key and the choices."""
    from optkit._exceptions import ConfigError

    for bad in ("lowest", 10, None):
        with pytest.raises(ConfigError, match="loading.priority"):
            LoadingConfig(priority=bad)


async def test_states_unavailable_loading_ready(repo: Path) -> None:
    """A version goes UNAVAILABLE -> LOADING (while a worker builds it) -> READY."""
    repository = ModelRepository(repo)
    async with ModelLoader(repository, LoadingConfig(mode="background")) as loader:
        assert repository.state("slow") == (UNAVAILABLE, "not loaded")
        task = loader.schedule("slow")
        assert repository.state("slow", "1")[0] == LOADING
        assert loader.statistics().loading == 1
        await task
        assert repository.state("slow", "1") == (READY, "")
        assert repository.loaded("slow") is task.result()


async def test_load_failing_midway_is_failed_with_reason(repo: Path) -> None:
    """A load that raises half way leaves the version FAILED with the backend's reason."""
    repository = ModelRepository(repo)
    async with ModelLoader(repository, LoadingConfig(mode="background")) as loader:
        with pytest.raises(ModelLoadError, match="half way"):
            await loader.load("broken")
        state, reason = repository.state("broken", "1")
        assert state == FAILED and "half way" in reason
        assert loader.statistics().failures == 1 and repository.loaded("broken") is None


@pytest.mark.parametrize("executor", ["process", "thread"])
async def test_warmup_runs_before_ready_and_can_fail_a_load(repo: Path, executor: str) -> None:
    """With warm-up, a model answers one zero row before READY; one that cannot is FAILED."""
    _synthetic(repo, "poisoned", poison_value=0.0)  # a zero row starts with the poison value
    repository = ModelRepository(repo)
    config = LoadingConfig(mode="background", warmup=True, executor=executor)
    async with ModelLoader(repository, config) as loader:
        await loader.load("fast")
        with pytest.raises(ModelLoadError, match="warm-up"):
            await loader.load("poisoned")
        assert loader.statistics().warmups == 1  # the one that passed
        assert repository.state("poisoned", "1")[0] == FAILED
        assert repository.loaded("fast") is not None and repository.loaded("poisoned") is None


async def test_lru_eviction_skips_models_in_flight(repo: Path) -> None:
    """Over budget, the least recently used *idle* model goes; busy ones never do."""
    ticks = iter(range(1, 10_000))
    repository = ModelRepository(repo)
    config = LoadingConfig(mode="background", memory_budget_bytes=int(2.5 * MiB))
    async with ModelLoader(repository, config, clock=lambda: float(next(ticks))) as loader:
        await loader.load("a")
        await loader.load("b")
        await loader.acquire("a")  # a is held: in flight (and the older of the two)...
        await loader.acquire("b")
        loader.release("b")        # ... b is idle and more recently used
        await loader.load("c")
        assert repository.loaded("b") is None and repository.loaded("a") is not None
        assert repository.state("b", "1") == (UNAVAILABLE, "evicted to fit 'c' in the memory budget")
        await loader.acquire("c")  # now both loaded models are busy: nothing may go
        with pytest.raises(ModelLoadError, match="over memory budget"):
            await loader.load("b")
        assert repository.state("b", "1")[0] == FAILED
        stats = loader.statistics()
        assert (stats.evictions, stats.bytes_loaded, stats.in_flight) == (1, 2 * MiB, 2)
        loader.release("a")
        loader.release("c")
        await loader.load("b")  # a is now the least recently used idle model
        assert repository.loaded("a") is None and loader.statistics().evictions == 2


async def test_sync_mode_loads_on_the_caller(repo: Path) -> None:
    """mode: sync builds in the awaiting task itself (no worker), the baseline."""
    repository = ModelRepository(repo)
    async with ModelLoader(repository, LoadingConfig()) as loader:
        model = await loader.load("fast")
        assert loader._threads is None  # noqa: SLF001 - no worker was ever started
        assert repository.loaded("fast") is model and loader.statistics().mode == "sync"


def test_synthetic_slow_is_built_and_holds_its_weights(tmp_path: Path) -> None:
    """The repository build writes synthetic-slow: a 1 s load holding 16 MiB (config only)."""
    assert build_repository(tmp_path, models=["synthetic-slow"]) == ["synthetic-slow"]
    model = load_model(tmp_path / "synthetic-slow" / "1", overrides={"load_cost_s": 0.0})
    assert model.config.parameters["load_cost_s"] == 0.0 and model.nbytes == 16 * MiB
    assert ModelConfig.read(tmp_path / "synthetic-slow" / "1").parameters["load_cost_s"] == 1.0


# -- on a real server ---------------------------------------------------------------------
async def test_steady_model_answers_while_slow_one_loads(serve: Any) -> None:
    """Background: digits-mlp keeps answering while 'slow' is LOADING in a worker."""
    client = await serve(_background(models=("digits-mlp",),
                                     parameters={"slow": {"load_cost_s": 1.0}}))
    await _until(lambda: _ready(client), "server ready")
    load = asyncio.ensure_future(client.post("/v2/repository/models/slow/load"))
    body = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
    during = 0
    await _until(lambda: _state_is(client, ("slow", "1"), LOADING), "slow LOADING")
    while (await _index(client))[("slow", "1")][0] == LOADING:
        resp = await client.post("/v2/models/digits-mlp/infer", data=body)
        assert resp.status == 200
        if (await _index(client))[("slow", "1")][0] == LOADING:
            during += 1  # answered, and the load was still under way after it
    assert (await load).status == 200
    assert during >= 3, f"only {during} answers completed while the load ran"
    assert (await _index(client))[("slow", "1")] == (READY, "")


async def _ready(client: TestClient) -> bool:
    return (await client.get("/v2/health/ready")).status == 200


async def _state_is(client: TestClient, key: tuple[str, str], state: str) -> bool:
    return (await _index(client)).get(key, ("?", ""))[0] == state


async def test_live_at_once_ready_when_configured_models_are(serve: Any) -> None:
    """Background start-up: live immediately; ready only once every loading.models is READY."""
    client = await serve(_background(models=("slow", "fast")))
    assert (await client.get("/v2/health/live")).status == 200
    before = (await _index(client))[("slow", "1")][0]
    ready = (await client.get("/v2/health/ready")).status
    after = (await _index(client))[("slow", "1")][0]
    if before == after == LOADING:
        assert ready == 503
    await _until(lambda: _ready(client), "ready")
    assert (await client.get("/v2/models/slow/ready")).status == 200
    # a configured model that cannot load keeps the server unready, the rest serving
    client = await serve(_background(models=("fast", "corrupt")))
    await _until(lambda: _state_is(client, ("corrupt", "1"), FAILED), "corrupt FAILED")
    await _until(lambda: _state_is(client, ("fast", "1"), READY), "fast READY")
    assert (await client.get("/v2/health/ready")).status == 503
    assert (await client.post("/v2/models/fast/infer", data=ZERO)).status == 200


@pytest.mark.parametrize("mode", ["sync", "background"])
async def test_corrupt_or_missing_weights_fail_with_reason(serve: Any, mode: str) -> None:
    """A corrupt or missing weights file: FAILED with the reason, a JSON 500, others serve."""
    client = await serve(ServiceConfig(loading=LoadingConfig(mode=mode, models=("digits-mlp",))))
    # a body valid for the model (a bad one is a 400 first, loaded or not)
    body = encode_infer_request({"pixels": np.zeros((2, 64), np.float32)})
    for name, words in (("corrupt", "zip"), ("missing", "FileNotFoundError")):
        resp = await client.post(f"/v2/repository/models/{name}/load")
        assert resp.status == 500 and words in (await _json(resp))["error"]
        state, reason = (await _index(client))[(name, "1")]
        assert state == FAILED and words in reason
        resp = await client.post(f"/v2/models/{name}/infer", data=body)
        assert resp.status == 503 and "FAILED" in (await _json(resp))["error"]
    assert (await client.post("/v2/models/digits-mlp/infer", data=body)).status == 200


async def test_version_swap_keeps_old_serving_and_fails_over(serve: Any, repo: Path) -> None:
    """A reload builds the newest version while the old serves; a failed one leaves it serving."""
    _synthetic(repo, "swap", load_cost_s=0.3)
    client = await serve(_background(models=("swap",)))
    await _until(lambda: _ready(client), "v1 ready")
    _synthetic(repo, "swap", "2", load_cost_s=0.3, output_width=2)
    load = asyncio.ensure_future(client.post("/v2/repository/models/swap/load"))
    await _until(lambda: _state_is(client, ("swap", "2"), LOADING), "v2 LOADING")
    served_old = 0
    while (await _index(client))[("swap", "2")][0] == LOADING:
        resp = await client.post("/v2/models/swap/infer", data=ZERO)
        doc = await _json(resp)
        assert resp.status == 200 and doc["model_version"] in ("1", "2")
        served_old += doc["model_version"] == "1"
        assert (await client.get("/v2/models/swap/ready")).status == 200
    assert (await load).status == 200 and served_old >= 1
    doc = await _json(await client.post("/v2/models/swap/infer", data=ZERO))
    assert doc["model_version"] == "2" and doc["outputs"][0]["shape"] == [1, 2]
    index = await _index(client)
    assert index[("swap", "1")] == (UNAVAILABLE, "replaced by version 2")
    assert index[("swap", "2")] == (READY, "")
    _synthetic(repo, "swap", "3", load_cost_s=0.1, load_fails=True)
    resp = await client.post("/v2/repository/models/swap/load")
    assert resp.status == 500 and "half way" in (await _json(resp))["error"]
    index = await _index(client)
    assert index[("swap", "3")][0] == FAILED and "half way" in index[("swap", "3")][1]
    assert index[("swap", "2")] == (READY, "")
    doc = await _json(await client.post("/v2/models/swap/infer", data=ZERO))
    assert doc["model_version"] == "2"
    assert (await client.get("/v2/models/swap/versions/2/ready")).status == 200
    assert (await client.get("/v2/models/swap/versions/3/ready")).status == 503


async def test_unload_lets_requests_in_flight_finish(serve: Any, repo: Path) -> None:
    """Unload: the request in flight completes; new ones get a JSON 503; UNLOADING then UNAVAILABLE."""
    # 1 s a call, in a model thread: long enough that the unload and the next request land
    # while it runs, even on a loaded machine (0.4 s was not, once)
    _synthetic(repo, "busy", cost_a_us=1_000_000.0)
    config = ServiceConfig(loading=LoadingConfig(mode="background", models=("busy",)),
                           batching=ServiceConfig().batching.__class__(enabled=True,
                                                                       executor="thread"))
    client = await serve(config)
    await _until(lambda: _ready(client), "ready")
    first = asyncio.ensure_future(client.post("/v2/models/busy/infer", data=ZERO))
    loader = _server(client).loader
    await _until(lambda: _true(loader.statistics().in_flight == 1), "request in flight")
    assert (await client.post("/v2/repository/models/busy/unload")).status == 200
    assert (await _index(client))[("busy", "1")][0] == UNLOADING
    resp = await client.post("/v2/models/busy/infer", data=ZERO)
    assert resp.status == 503 and "UNLOADING" in (await _json(resp))["error"]
    assert (await first).status == 200
    assert (await _index(client))[("busy", "1")] == (UNAVAILABLE, "unloaded")
    assert loader.statistics().in_flight == 0


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("name", ["..", "%2e%2e", "..%2F..%2Fetc", "%2Fetc%2Fpasswd",
                                  "outside", "a..b", "..%2Foutside"])
async def test_load_refuses_paths_and_unknown_names(serve: Any, repo: Path, name: str) -> None:
    """Names with path characters or outside the repository: 400/404 JSON, nothing read."""
    outside = repo.parent / "outside"
    _synthetic(repo.parent, "outside", load_cost_s=0.0)
    (repo / "outside").symlink_to(outside, target_is_directory=True)  # a link out of it
    client = await serve(_background(models=("fast",)))
    await _until(lambda: _ready(client), "ready")
    resp = await client.post(f"/v2/repository/models/{name}/load",
                             data=b'{"parameters": {"path": "/etc"}}')
    assert resp.status in (400, 404)
    assert "error" in await _json(resp)
    stats = _server(client).loader.statistics()
    assert (stats.loads, stats.failures, stats.loading) == (1, 0, 0)


async def test_load_unload_storm_stays_consistent(serve: Any) -> None:
    """100 load/unload cycles racing requests: no crash, states consistent, gauges back to 0."""
    client = await serve(_background(models=("digits-mlp",)))
    await _until(lambda: _ready(client), "ready")
    statuses: set[int] = set()
    for _ in range(100):
        results = await asyncio.gather(client.post("/v2/repository/models/fast/load"),
                                       client.post("/v2/models/fast/infer", data=ZERO),
                                       client.post("/v2/repository/models/fast/unload"))
        statuses.update(r.status for r in results)
        for r in results:
            await _json(r)
    assert statuses <= {200, 503}
    index = await _index(client)
    assert index[("fast", "1")][0] in (UNAVAILABLE, READY)
    assert (await client.post("/v2/repository/models/fast/load")).status == 200
    assert (await client.post("/v2/models/fast/infer", data=ZERO)).status == 200
    stats = _server(client).loader.statistics()
    assert stats.in_flight == 0 and stats.loading == 0 and stats.loads >= 2
    assert (await _index(client))[("fast", "1")] == (READY, "")


async def test_lazy_load_within_bound_and_503_beyond(serve: Any) -> None:
    """Lazy: a first request loads the model and waits; past lazy_wait_s: 503 + Retry-After."""
    client = await serve(_background(lazy=True, lazy_wait_s=30.0, models=("digits-mlp",)))
    resp = await client.post("/v2/models/slow/infer", data=ZERO)
    assert resp.status == 200  # loaded on demand, within the bound
    client = await serve(_background(lazy=True, lazy_wait_s=0.05, models=("digits-mlp",),
                                     parameters={"slow": {"load_cost_s": 1.0}}))
    resp = await client.post("/v2/models/slow/infer", data=ZERO)
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert "LOADING" in (await _json(resp))["error"]
    await _until(lambda: _state_is(client, ("slow", "1"), READY), "lazy load finished")
    assert (await client.post("/v2/models/slow/infer", data=ZERO)).status == 200
    stats = _server(client).loader.statistics()
    assert stats.lazy_waits == 1 and stats.lazy_timeouts == 1 and stats.loads == 2
    resp = await client.post("/v2/models/nope/infer", data=ZERO)  # unknown: still a 404
    assert resp.status == 404


async def test_budget_eviction_and_statistics_on_the_server(serve: Any) -> None:
    """Over the budget the LRU idle model is evicted; /stats and /metrics count it."""
    client = await serve(_background(models=("a", "b"), warmup=True,
                                     memory_budget_bytes=int(2.5 * MiB)))
    await _until(lambda: _ready(client), "ready")
    assert (await client.post("/v2/models/b/infer", data=ZERO)).status == 200  # a is LRU now
    assert (await client.post("/v2/repository/models/c/load")).status == 200
    index = await _index(client)
    assert index[("a", "1")][0] == UNAVAILABLE and "memory budget" in index[("a", "1")][1]
    assert index[("b", "1")][0] == READY and index[("c", "1")][0] == READY
    stats = (await _json(await client.get("/stats")))["loading"]
    assert stats["evictions"] == 1 and stats["bytes_loaded"] == 2 * MiB
    assert stats["warmups"] == 3 and stats["mode"] == "background/process"
    text = await (await client.get("/metrics")).text()
    assert "optkit_model_server_loading_evictions_total 1.0" in text
    assert "# TYPE optkit_model_server_loading_bytes_loaded gauge" in text


def test_repository_rejects_bad_names_directly(repo: Path) -> None:
    """The repository itself refuses path-like names and unknown ones before touching disk."""
    repository = ModelRepository(repo)
    with pytest.raises(ProtocolError):
        repository.read("../outside")
    with pytest.raises(ModelNotFound):
        repository.read("nope")
    with pytest.raises(ModelNotReady):
        repository.get("fast")
