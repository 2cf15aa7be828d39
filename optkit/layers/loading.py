"""Loading models off the serving loop: one load per model version, installed when warm.

::

    load("m") ──┐                          worker (thread; or process, then thread)
    load("m") ──┼─▶ one future per (m, v) ─▶  read(m, v) ─▶ warm-up (one zero row) ─┐
    1st infer ──┘   (m, v) LOADING            (the loop keeps serving meanwhile)     │
                                                                                     ▼ on the loop
               fits the memory budget? (evicting least recently used idle models) ─▶ install: READY
               else / read or warm-up raised ─▶ FAILED "reason"  (a loaded version keeps serving)

A load is a delivery: whoever asks for a model while it is on its way (another
``load``, the first request with ``lazy``) waits for the same truck, and the
model is put on the shelf (``install``, one dict assignment on the loop, so the
switch from the old version to the new is atomic) only once it has been
unpacked and tried (warm-up). Until then the old version keeps serving; if the
delivery fails the old one stays and the new version is FAILED with the reason.

Memory budget. A model's bytes are its ``nbytes``, *measured* from the arrays
the built model holds (for scikit-learn, the artefact's size on disk: the
estimate the backend gives). They are known only once a model is built, so the
budget bounds the models *installed*: before installing, least recently used
models with no request in flight are unloaded until the new one fits; if it
still cannot fit it is FAILED "over memory budget". A load in progress holds
its model on top of the budget (at most ``workers`` of them at once).

Unload. The model stops being served at once (new requests: 503); requests
already holding it finish on it; its state is UNLOADING until the last of them
ends, then UNAVAILABLE. A load under way when its model is unloaded is
discarded when it ends (UNAVAILABLE, "unloaded while loading").

Threads or processes (``executor``). Measured on the 2-core VM with
``benchmarks/loading_executor.py`` (digits-mlp answered one request at a time
while ``synthetic-slow``, a 1 s pure-Python load, is reloaded): a load in a
*thread* holds the GIL in switch-interval (5 ms) slices, so every time the
serving loop wakes (a readable socket, a write that released the GIL) it may
wait up to 5 ms to get it back; a request's latency during the load grows by
a few such waits. A *process* builds the model in another interpreter and hands
it back with its large arrays in a shared-memory file the server maps, no bytes
copied (``_handover.py``), so the loop only shares CPU cores, not the GIL; and
the process runs at a lower CPU priority (``priority``: SCHED_IDLE by default),
so it takes the CPU serving leaves idle. Measured
(``--cost 1.0 --loads 3``; latencies of the requests answered during a load)::

    arm       idle p50  answered/load    p50     p99     max   (ms)
    sync          0.48            0.7   0.63    1.15    0.80   loop blocked: nothing answered
    thread        0.50          186.3   1.08   22.99   28.37   GIL convoy: ~5 ms per wake-up
    process       0.45         2210.0   0.49    0.78   11.59   as idle

So ``executor: process`` is the default: the first load also pays for starting a
worker (a ``spawn``: importing numpy and optkit, under a second), which is why
it answered more requests per load; its models must be picklable (all built-in
ones are). ``thread`` remains for models that are not. ``mode: sync`` is the
baseline: the same steps run on the loop itself, blocking it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ._base import Layer
from ._handover import Handover, pack, unpack
from .._config import LoadingConfig
from .._exceptions import ModelLoadError, ModelNotReady, OptkitError, ProtocolError
from .._metrics import Histogram, HistogramSnapshot, counter, gauge, histogram_field
from ..models import Model
from ..v2 import DATATYPES
from ..models._repository import FAILED, LOADING, UNAVAILABLE, UNLOADING, ModelRepository

__all__ = ["ModelLoader", "LoadingStatistics"]

log = logging.getLogger("optkit.loading")
_LOAD_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: how long closing waits for loader workers to leave (one mid-read finishes its read first)
_CLOSE_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class LoadingStatistics:
    """A snapshot of the loader: what it loaded, refused, evicted, and holds now."""

    mode: str  # "sync" or "background/thread|process": shown by /stats, not exported
    loads: int = counter("loads that installed a model (READY)")
    failures: int = counter("loads that ended FAILED (read, warm-up or memory budget)")
    shared: int = counter("load requests that joined a load already under way")
    unloads: int = counter("models unloaded on request")
    evictions: int = counter("models unloaded to fit the memory budget")
    warmups: int = counter("warm-up inferences passed before READY")
    lazy_waits: int = counter("requests that waited for a lazy load")
    lazy_timeouts: int = counter("requests answered 503 because a lazy load outlasted the wait")
    loading: int = gauge("loads under way now")
    in_flight: int = gauge("requests holding a loaded model now")
    bytes_loaded: int = gauge("bytes of weights of the models served now (measured nbytes)")
    memory_budget_bytes: int = gauge("the memory budget (0: unbounded)")
    load_s: HistogramSnapshot = histogram_field("seconds from a load's start to READY or FAILED")


def _read(root: str, name: str, version: str,
          overrides: Mapping[str, Mapping[str, Any]]) -> Handover:
    """Build a model in a worker process; its large arrays travel through shared memory."""
    return pack(ModelRepository(root, overrides=overrides).read(name, version))


def lower_priority(priority: str) -> None:
    """Lower this process's CPU priority: ``idle`` (SCHED_IDLE where Linux has it, else
    nice 19), ``low`` (nice 10) or ``normal`` (unchanged). Lowering needs no privilege."""
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:  # a sandbox that forbids it: the portable fallback below
            pass
    if priority in ("idle", "low"):
        os.nice(19 if priority == "idle" else 10)


def _init_worker(parent: int, priority: str) -> None:
    """Worker initializer: lower this worker's CPU priority (``loading.priority``), so a
    load takes the CPU serving leaves idle; and leave when the server that started this
    worker is gone.

    A worker blocks on its call queue, whose pipe it holds both ends of, so it never
    sees the server die: a SIGKILLed (or OOM-killed) server would leave its workers,
    each holding its imports and models, orphaned for good, one more set per restart.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    lower_priority(priority)  # this process only: the server keeps its own
    threading.Thread(target=watch, name="optkit-parent-watch", daemon=True).start()


def warm_up(model: Model) -> bool:
    """One inference on a zero input shaped by the model's metadata (free dims -> 1); whether
    it ran (there is nothing to try a model on whose inputs take no zero, or whose graph
    refuses the size-1 shape as a client's: see ``_onnx.py``).

    Raises:
        ModelLoadError: the model raised, or answered without a batch of one.
    """
    cfg = model.config
    if any(spec.datatype not in DATATYPES for spec in cfg.inputs):
        return False  # no neutral value for BYTES inputs: nothing to try it on
    inputs = {spec.name: np.zeros(tuple(1 if d < 0 else d for d in spec.shape),
                                  DATATYPES[spec.datatype]) for spec in cfg.inputs}
    try:
        outputs = model.predict(inputs)
    except ProtocolError:
        return False  # a free dimension the graph needs larger than 1: not the model's fault
    except Exception as exc:
        raise ModelLoadError(f"warm-up of {cfg.name!r} version {cfg.version} failed: "
                             f"{type(exc).__name__}: {exc}") from exc
    if any(len(v) != 1 for v in outputs.values()):
        raise ModelLoadError(f"warm-up of {cfg.name!r} version {cfg.version}: "
                             "an output does not have one row for one input row")
    return True


class ModelLoader(Layer):
    """Load, swap, evict and unload the models of a :class:`ModelRepository`.

    Args:
        repository: where models are read from and installed (it keeps the states).
        config: ``mode``, ``executor``, ``workers``, ``warmup``, ``lazy``,
            ``lazy_wait_s``, ``memory_budget_bytes``, ``load_timeout_s``.
        clock: the time source for last use (LRU) and load durations.

    The serving side calls :meth:`acquire` / :meth:`release` around each request
    (the in-flight count per model that eviction and unload respect).
    """

    def __init__(self, repository: ModelRepository, config: LoadingConfig, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.repository, self.config, self._clock = repository, config, clock
        self._background = config.mode == "background"
        self._threads: ThreadPoolExecutor | None = None  # made on the first background load
        self._processes: ProcessPoolExecutor | None = None
        # Mutable state, changed in _load, _fit, acquire/release and unload only.
        self._pending: dict[tuple[str, str], asyncio.Task[Model]] = {}  # single flight
        self._in_use: dict[str, int] = {}       # name -> requests holding its model
        self._last_use: dict[str, float] = {}   # name -> clock() of its latest request
        self._sizes: dict[str, int] = {}        # name -> nbytes of the model served
        self._unloaded: dict[str, int] = {}     # name -> unloads so far (a load started
        #                                         before an unload is discarded)
        self._draining: dict[str, str] = {}     # name -> version UNLOADING till in_use is 0
        self._loads = self._failures = self._shared = self._unloads = self._evictions = 0
        self._warmups = self._lazy_waits = self._lazy_timeouts = self._loading = 0
        self._load_s = Histogram(_LOAD_BOUNDS)
        self._closed = False


    def __repr__(self) -> str:
        s = self.statistics()
        return (f"<ModelLoader {s.mode} [{s.loading} loading, {len(self._sizes)} loaded, "
                f"{s.in_flight} in flight | {s.bytes_loaded} bytes of "
                f"{s.memory_budget_bytes or 'unbounded'}]>")

    # -- loading ----------------------------------------------------------------------
    async def start(self, names: Iterable[str]) -> None:
        """Load ``names`` at start-up: one after another on the loop (sync), or
        scheduled in the background and not waited for (a failure is logged)."""
        for name in names:
            try:
                if self._background:
                    self.schedule(name).add_done_callback(_log_failure)
                else:
                    await self.load(name)
            except OptkitError as exc:
                log.error("model %s failed to load: %s", name, exc)

    def schedule(self, name: str, version: str | None = None) -> asyncio.Future[Model]:
        """Start loading ``name`` (its newest version if None), or join the load under way.

        Raises:
            ModelNotFound / ProtocolError: no such model or version; invalid name.
        """
        if self._closed:
            raise ModelNotReady("the model loader is closed")
        repo = self.repository
        version = version or repo.versions(name)[-1]
        repo.version_dir(name, version)  # validates; never a path from the caller
        key = (name, version)
        task = self._pending.get(key)
        if task is not None:
            self._shared += 1
            return task
        task = asyncio.get_running_loop().create_task(
            self._load(name, version, self._begin(name, version)))
        self._pending[key] = task
        task.add_done_callback(lambda _t: self._pending.pop(key, None))
        return task

    async def load(self, name: str, version: str | None = None) -> Model:
        """Load and install a model (a reload if it is loaded), waiting for it.

        Sync mode runs the whole load here, on the loop. Background mode waits at
        most ``load_timeout_s`` for the shared load (which goes on past it).

        Raises:
            ModelLoadError: the load failed (the reason is also the version's state).
            ModelNotReady: still loading after ``load_timeout_s``.
        """
        if not self._background:
            version = version or self.repository.versions(name)[-1]
            return await self._load(name, version, self._begin(name, version))
        task = self.schedule(name, version)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.config.load_timeout_s)
        except TimeoutError:
            raise ModelNotReady(f"model {name!r} is still LOADING after "
                                f"{self.config.load_timeout_s} s", retry_after_s=self._retry_after()
                                ) from None

    def _begin(self, name: str, version: str) -> int:
        """Mark a load as started (LOADING at once, before any await); its generation."""
        served = self.repository.loaded(name)
        self.repository.set_state(
            name, version, LOADING,
            "" if served is None else f"version {served.config.version} serves meanwhile")
        self._loading += 1
        return self._unloaded.get(name, 0)

    async def _load(self, name: str, version: str, generation: int) -> Model:
        repo = self.repository
        started = self._clock()
        try:
            try:
                if self._background:
                    model, warmed = await self._build_off_loop(name, version)
                else:
                    model, warmed = self._build(name, version)  # the baseline: blocks the loop
                self._warmups += warmed
                if self._unloaded.get(name, 0) != generation:
                    repo.set_state(name, version, UNAVAILABLE, "unloaded while loading")
                    raise ModelNotReady(f"model {name!r} was unloaded while it loaded")
                self._fit(name, model)
            except ModelNotReady:
                raise
            except OptkitError as exc:
                self._fail(name, version, str(exc))
                raise
            except Exception as exc:  # a backend's own error
                self._fail(name, version, f"{type(exc).__name__}: {exc}")
                raise ModelLoadError(f"loading {name!r} version {version}: {exc!r}") from exc
            except asyncio.CancelledError:
                repo.set_state(name, version, UNAVAILABLE, "load cancelled (loader closed)")
                raise
        finally:
            self._loading -= 1
            self._load_s.observe(self._clock() - started)
        repo.install(name, model, self._clock() - started)
        self._sizes[name] = model.nbytes
        self._last_use[name] = self._clock()  # just loaded counts as used: not evicted first
        self._loads += 1
        return model

    def _build(self, name: str, version: str) -> tuple[Model, bool]:
        """Read and (if configured) warm a model: runs in a worker thread or on the loop."""
        model = self.repository.read(name, version)
        return model, self.config.warmup and warm_up(model)

    async def _build_off_loop(self, name: str, version: str) -> tuple[Model, bool]:
        loop = asyncio.get_running_loop()
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.config.workers,
                                               thread_name_prefix="optkit-loader")
        if self.config.executor == "thread":
            return await loop.run_in_executor(self._threads, self._build, name, version)
        if self._processes is None:  # spawn: no fork of a process running a loop and threads
            self._processes = ProcessPoolExecutor(
                self.config.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(os.getpid(), self.config.priority))
        repo = self.repository
        handover = await loop.run_in_executor(self._processes, _read, str(repo.root), name,
                                              version, repo.overrides)
        model = unpack(handover)  # maps the arrays' file: no bytes copied here
        warmed = False
        if self.config.warmup:  # in this process: warming another one would warm nothing here
            warmed = await loop.run_in_executor(self._threads, warm_up, model)
        return model, warmed

    def _fail(self, name: str, version: str, reason: str) -> None:
        self._failures += 1
        self.repository.fail(name, version, reason)

    def _fit(self, name: str, model: Model) -> None:
        """Make room for ``model`` under the budget by evicting LRU idle models, or raise."""
        budget = self.config.memory_budget_bytes
        if not budget:
            return
        need = model.nbytes
        used = sum(b for n, b in self._sizes.items() if n != name)  # ``name``'s old copy goes
        while used + need > budget:
            idle = [n for n in self._sizes
                    if n != name and not self._in_use.get(n) and self.repository.loaded(n)]
            if need > budget or not idle:
                raise ModelLoadError(
                    f"over memory budget: {name!r} needs {need} bytes, {budget - used} of "
                    f"{budget} are free and no idle model is left to evict")
            victim = min(idle, key=lambda n: self._last_use.get(n, -math.inf))
            self.repository.unload(victim, reason=f"evicted to fit {name!r} in the memory budget")
            used -= self._sizes.pop(victim)
            self._evictions += 1
            log.info("evicted %s to fit %s in the memory budget", victim, name)

    def _retry_after(self) -> float:
        return max(1.0, self._load_s.snapshot().mean)

    # -- serving ----------------------------------------------------------------------
    async def acquire(self, name: str, version: str | None = None) -> Model:
        """The model to answer a request with; counts the request until :meth:`release`.

        With ``lazy``, a known model that is not loaded (and not FAILED) is loaded
        now and waited for up to ``lazy_wait_s``.

        Raises:
            ModelNotFound: no such model or version.
            ModelNotReady: not loaded (or still loading: ``retry_after_s`` is set).
        """
        model = self.acquire_nowait(name, version)
        if model is None:
            model = await self._wait_lazy(name, version)
            self._in_use[name] = self._in_use.get(name, 0) + 1
            self._last_use[name] = self._clock()
        return model

    def acquire_nowait(self, name: str, version: str | None = None) -> Model | None:
        """:meth:`acquire` where it needs no wait (that model and version are loaded): the
        model, counted until :meth:`release`; else None and nothing counted. The hot path
        calls it first and saves a coroutine per request."""
        model = self.repository.loaded(name)
        if model is None or (version is not None and version != model.config.version):
            return None
        self._in_use[name] = self._in_use.get(name, 0) + 1
        self._last_use[name] = self._clock()
        return model

    def release(self, name: str) -> None:
        """A request that :meth:`acquire` d ``name`` has ended."""
        left = self._in_use[name] - 1
        self._in_use[name] = left
        self._last_use[name] = self._clock()
        if left == 0 and name in self._draining:
            version = self._draining.pop(name)
            if self.repository.state(name, version)[0] == UNLOADING:
                self.repository.set_state(name, version, UNAVAILABLE, "unloaded")

    async def _wait_lazy(self, name: str, version: str | None) -> Model:
        repo = self.repository
        try:
            return repo.get(name, version)
        except ModelNotReady:
            if not self.config.lazy or self._closed or repo.loaded(name) is not None:
                raise  # another version serves: a request never swaps versions
            if repo.state(name, version)[0] in (FAILED, UNLOADING):
                raise  # retried by an explicit load, not by every request
        self._lazy_waits += 1
        task = self.schedule(name, version)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.config.lazy_wait_s)
        except TimeoutError:
            self._lazy_timeouts += 1
            raise ModelNotReady(f"model {name!r} is LOADING (lazy load; waited "
                                f"{self.config.lazy_wait_s} s)",
                                retry_after_s=self._retry_after()) from None
        except OptkitError as exc:
            raise ModelNotReady(f"model {name!r} is FAILED: {exc}") from None
        return repo.get(name, version)

    def unload(self, name: str) -> None:
        """Stop serving ``name`` now; requests holding it finish (state UNLOADING till then).

        Raises:
            ModelNotFound / ProtocolError: no such model; invalid name.
        """
        busy = self._in_use.get(name, 0) > 0
        self._unloaded[name] = self._unloaded.get(name, 0) + 1
        model = self.repository.unload(name, draining=busy)
        if model is not None:
            self._unloads += 1
            self._sizes.pop(name, None)
            if busy:
                self._draining[name] = model.config.version

    def ready(self, names: Iterable[str]) -> bool:
        """Whether every model in ``names`` is being served."""
        return all(self.repository.loaded(n) is not None for n in names)

    # -- lifecycle --------------------------------------------------------------------
    async def aclose(self) -> None:
        """Cancel loads under way and let the workers go: a worker mid-read finishes its
        read and is dropped. Returns when they are gone, or after ``_CLOSE_WAIT_S`` (a
        worker still reading then leaves on its own when this process exits)."""
        self._closed = True
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pools = [p for p in (self._threads, self._processes) if p is not None]
        self._threads = self._processes = None
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        try:
            await asyncio.wait_for(asyncio.gather(
                *(asyncio.to_thread(pool.shutdown, wait=True) for pool in pools)), _CLOSE_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("loader workers still busy after %.0f s; leaving them to exit with "
                        "this process", _CLOSE_WAIT_S)

    def statistics(self) -> LoadingStatistics:
        cfg = self.config
        mode = f"background/{cfg.executor}" if self._background else "sync"
        return LoadingStatistics(
            mode, self._loads, self._failures, self._shared, self._unloads, self._evictions,
            self._warmups, self._lazy_waits, self._lazy_timeouts, self._loading,
            sum(self._in_use.values()), sum(self._sizes.values()), cfg.memory_budget_bytes,
            self._load_s.snapshot())


def _log_failure(task: asyncio.Future[Model]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background load failed: %s", exc)

