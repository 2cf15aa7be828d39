"""One configuration object that decides how the service behaves.

A service config is a tree of small frozen sections, one per layer::

    ServiceConfig
    ├── server     bind address, body bound, timeouts      (both tiers)
    ├── pooling    upstream connections: new per request, or pooled
    ├── batching   coalesce concurrent requests per model, or not
    ├── streaming  send large responses in chunks, or fully buffered
    ├── loading    load models synchronously on the loop, or in the background
    ├── balancing  the gateway over N upstreams: ejection back-off, probes, resends
    └── gateway    signatures for upstream models whose metadata lists no inputs

Every layer's switch defaults to *off*, so ``ServiceConfig()`` is the honest naive
baseline. YAML files map 1:1 onto these dataclasses (see ``experiments/``); an
unknown key or an out-of-range value is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from ._checks import check_bool as _bool, check_int as _integer, check_number as _positive
from ._exceptions import ConfigError
from ._schema import Document, read_mapping

__all__ = [
    "ServerConfig",
    "PoolingConfig",
    "BatchingConfig",
    "StreamingConfig",
    "LoadingConfig",
    "BalancingConfig",
    "GatewayConfig",
    "ServiceConfig",
    "load_config",
]

MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Settings shared by both tiers.

    Args:
        host: interface to bind; loopback unless told otherwise.
        max_body_bytes: largest request body accepted (413 above it).
        max_upstream_response_bytes: largest upstream answer the gateway reads (502 above it).
        upstream_timeout_s: total time the gateway waits for an upstream answer.
        upstream_connect_timeout_s: time allowed to open an upstream connection.
        shutdown_timeout_s: how long SIGTERM waits for in-flight requests.
        access_log: log every request (off: it costs throughput).
        grpc_port: serve the v2 gRPC protocol (Triton's ``GRPCInferenceService``) on this
            port beside REST, on ``host``; 0 picks a free one; None (the default): off.
    """

    host: str = "127.0.0.1"
    max_body_bytes: int = 4 * MiB
    max_upstream_response_bytes: int = 256 * MiB
    upstream_timeout_s: float = 5.0
    upstream_connect_timeout_s: float = 1.0
    shutdown_timeout_s: float = 10.0
    access_log: bool = False
    grpc_port: int | None = None

    def __post_init__(self) -> None:
        _integer("server.max_body_bytes", self.max_body_bytes)
        if self.grpc_port is not None and (type(self.grpc_port) is not int
                                           or not 0 <= self.grpc_port <= 65535):
            raise ConfigError(f"server.grpc_port must be a port number 0..65535 (0: any free "
                              f"one) or null (off), got {self.grpc_port!r}")
        _integer("server.max_upstream_response_bytes", self.max_upstream_response_bytes)
        _bool("server.access_log", self.access_log)
        _positive("server.upstream_timeout_s", self.upstream_timeout_s)
        _positive("server.upstream_connect_timeout_s", self.upstream_connect_timeout_s)
        _positive("server.shutdown_timeout_s", self.shutdown_timeout_s)
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"server.host must be a non-empty string, got {self.host!r}")


@dataclass(frozen=True, kw_only=True)
class PoolingConfig:
    """Upstream connections: a new one per request (off) or a reused pool (on).

    Names follow aiohttp's ``TCPConnector``: ``limit`` connections in all,
    ``limit_per_host`` per upstream (0 = no per-host cap), idle connections
    closed after ``keepalive_timeout`` seconds, which should be shorter than
    the upstream's own idle timeout so the pool, not the server, closes them.

    ``transport`` is the door of the model server the gateway goes through:
    ``http`` (REST, :class:`~optkit.layers.ConnectionPool` / ``DirectClient``) or
    ``grpc`` (the v2 gRPC service, :class:`~optkit.layers.ChannelPool`). It is the
    launcher's to read: it starts the model server with a gRPC port and points the
    gateway at ``grpc://`` (a gateway itself follows its upstream URLs' scheme).
    Over gRPC, ``enabled: false`` opens a new channel per request and
    ``enabled: true`` keeps ``grpc_channels`` HTTP/2 channels per upstream, taken in
    turn, each carrying many requests at once (``limit`` and ``limit_per_host``
    do not apply: HTTP/2 multiplexes; ``keepalive_timeout`` is the channels' idle
    timeout; ``acquire_timeout_s`` does not apply: there is no slot to wait for).
    """

    enabled: bool = False
    limit: int = 100
    limit_per_host: int = 0
    keepalive_timeout: float = 15.0
    acquire_timeout_s: float = 1.0
    retry_stale: bool = True
    transport: Literal["http", "grpc"] = "http"
    grpc_channels: int = 2

    def __post_init__(self) -> None:
        _bool("pooling.enabled", self.enabled)
        _bool("pooling.retry_stale", self.retry_stale)
        _integer("pooling.limit", self.limit)
        _integer("pooling.limit_per_host", self.limit_per_host, allow_zero=True)
        _positive("pooling.keepalive_timeout", self.keepalive_timeout)
        _positive("pooling.acquire_timeout_s", self.acquire_timeout_s)
        if self.transport not in ("http", "grpc"):
            raise ConfigError(f"pooling.transport must be 'http' or 'grpc', "
                              f"got {self.transport!r}")
        _integer("pooling.grpc_channels", self.grpc_channels)


@dataclass(frozen=True, kw_only=True)
class BalancingConfig:
    """The gateway over N upstreams (``optkit.layers.balancing``): passive health.

    ``consecutive_failures`` transport failures in a row eject an upstream for
    ``eject_initial_s``, doubling per ejection or failed probe in a row up to
    ``eject_max_s``; a probe of its ready endpoint (``probe_timeout_s``) readmits
    it. ``resend_infer``: an infer POST dropped mid-flight is sent once to another
    upstream (safe for stateless models; its answer is marked ``optkit-retried``).
    """

    consecutive_failures: int = 1
    eject_initial_s: float = 0.5
    eject_max_s: float = 10.0
    probe_timeout_s: float = 0.5
    resend_infer: bool = True

    def __post_init__(self) -> None:
        _integer("balancing.consecutive_failures", self.consecutive_failures)
        _positive("balancing.eject_initial_s", self.eject_initial_s)
        _positive("balancing.eject_max_s", self.eject_max_s)
        _positive("balancing.probe_timeout_s", self.probe_timeout_s)
        _bool("balancing.resend_infer", self.resend_infer)
        if self.eject_max_s < self.eject_initial_s:
            raise ConfigError("balancing.eject_max_s must be >= balancing.eject_initial_s")


#: the v2 datatypes optkit's codec carries (``optkit.v2.DATATYPES``; BYTES is not one)
_DATATYPES = frozenset({"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                        "INT64", "FP16", "FP32", "FP64"})


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """What the gateway knows of its upstream's models beyond their v2 metadata.

    A third-party server (MLServer, KServe) may list no inputs in its model metadata;
    the gateway then passes requests through with the checks it can make without
    them (well-formed v2, sizes, datatypes against data) and says so in ``/stats``.
    A signature here, per model, adds full validation (names, datatypes, shapes)
    and complete metadata for the gateway's own clients::

        gateway:
          models:
            digits-sklearn:
              inputs: [{name: pixels, datatype: FP32, shape: [-1, 64]}]
              outputs: [{name: predict, datatype: INT64, shape: [-1, 1]}]
              max_batch_size: 32     # rows per merged call; 0: never merge this model

    ``merge_unsigned``: with batching on, requests for a model whose metadata
    states no batch bound are merged along their leading axis (at most
    ``batching.max_batch_size`` rows); an upstream answer whose row count does not
    match sends the items again one by one, and that model is not merged again.
    """

    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    merge_unsigned: bool = True

    def __post_init__(self) -> None:
        _bool("gateway.merge_unsigned", self.merge_unsigned)
        if not isinstance(self.models, Mapping):
            raise ConfigError("gateway.models must map model names to signatures")
        for model, signature in self.models.items():
            where = f"gateway.models.{model}"
            if not isinstance(signature, Mapping):
                raise ConfigError(f"{where} must be a mapping (inputs, outputs, max_batch_size)")
            if extra := set(signature) - {"inputs", "outputs", "max_batch_size"}:
                raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}")
            if not signature.get("inputs"):
                raise ConfigError(f"{where}.inputs must list the model's inputs")
            for key in ("inputs", "outputs"):
                _tensor_specs(f"{where}.{key}", signature.get(key) or [])
            if "max_batch_size" in signature:
                _integer(f"{where}.max_batch_size", signature["max_batch_size"], allow_zero=True)


def _tensor_specs(where: str, specs: Any) -> None:
    """Check a list of ``{name, datatype, shape}`` (v2 tensor metadata), naming the bad key."""
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(f"{where} must be a list of {{name, datatype, shape}}")
    names: set[str] = set()
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        if not isinstance(spec, Mapping) or set(spec) != {"name", "datatype", "shape"}:
            raise ConfigError(f"{at} must have exactly the keys name, datatype, shape")
        if not isinstance(spec["name"], str) or not spec["name"] or spec["name"] in names:
            raise ConfigError(f"{at}.name must be a non-empty name, unique in the list")
        names.add(spec["name"])
        if spec["datatype"] not in _DATATYPES:
            raise ConfigError(f"{at}.datatype must be one of {sorted(_DATATYPES)}, "
                              f"got {spec['datatype']!r}")
        shape = spec["shape"]
        if not isinstance(shape, (list, tuple)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0)
                for d in shape):
            raise ConfigError(f"{at}.shape must be a list of dimensions (-1: any), got {shape!r}")


@dataclass(frozen=True, kw_only=True)
class BatchingConfig:
    """Coalesce concurrent requests for one model into one call.

    A batch is a bus: it leaves at once while the road is clear (no batch
    running); while buses are on the road, passengers accumulate, and one
    leaves when full (``max_batch_size`` rows) or when its first passenger has
    waited ``max_delay_ms``. At most ``max_concurrent_batches`` buses are on the
    road at once (1: the model runs one batch at a time, and the delay never
    applies); at most ``max_queue`` requests wait, beyond that callers get a 503
    (backpressure). See :class:`optkit.layers.batching.DynamicBatcher`.

    ``executor`` says where the model server runs a batch: ``loop`` (on the
    event loop: requests that arrive while it computes are parsed right after
    and form the next batch) or ``thread`` (a pool of ``max_concurrent_batches``
    threads, the loop parsing meanwhile as far as the GIL lets it).

    ``release_first``: a batch whose work ran off the event loop (the gateway's
    upstream call, the model server's ``thread`` executor) gives its slot back
    before its requests are answered, so the next batch is on its way while they
    are; false: after. On the model server's ``loop`` executor it does nothing (the
    next batch would compute before this one's answers are written).
    """

    enabled: bool = False
    max_batch_size: int = 32
    max_delay_ms: float = 1.0
    max_queue: int = 1024
    max_concurrent_batches: int = 1
    executor: Literal["loop", "thread"] = "loop"
    release_first: bool = True

    def __post_init__(self) -> None:
        _bool("batching.enabled", self.enabled)
        _bool("batching.release_first", self.release_first)
        _integer("batching.max_batch_size", self.max_batch_size)
        _positive("batching.max_delay_ms", self.max_delay_ms, allow_zero=True)
        _integer("batching.max_queue", self.max_queue)
        _integer("batching.max_concurrent_batches", self.max_concurrent_batches)
        if self.executor not in ("loop", "thread"):
            raise ConfigError(f"batching.executor must be 'loop' or 'thread', got {self.executor!r}")


@dataclass(frozen=True, kw_only=True)
class StreamingConfig:
    """Send large responses in chunks of ``chunk_bytes`` instead of one buffered body.

    An answer over ``threshold_bytes`` (or of unknown length) is written piece by
    piece, each ``write`` waiting for the client to drain (backpressure); a client
    that takes no byte for ``write_timeout_s`` is cut off. The model server computes
    a request of more than ``sub_batch_rows`` rows a sub-batch at a time, writing
    each before computing the next; ``generate_stream`` sends one event per
    sub-batch and takes at most ``max_stream_rows`` rows. See
    :class:`optkit.layers.streaming.ResponseStreamer`.
    """

    enabled: bool = False
    chunk_bytes: int = 64 * 1024
    threshold_bytes: int = 256 * 1024
    write_timeout_s: float = 10.0
    sub_batch_rows: int = 16
    max_stream_rows: int = 16384

    def __post_init__(self) -> None:
        _bool("streaming.enabled", self.enabled)
        _integer("streaming.chunk_bytes", self.chunk_bytes)
        _integer("streaming.threshold_bytes", self.threshold_bytes, allow_zero=True)
        _positive("streaming.write_timeout_s", self.write_timeout_s)
        _integer("streaming.sub_batch_rows", self.sub_batch_rows)
        _integer("streaming.max_stream_rows", self.max_stream_rows)
        if self.max_stream_rows < self.sub_batch_rows:
            raise ConfigError(f"streaming.max_stream_rows ({self.max_stream_rows}) must be >= "
                              f"streaming.sub_batch_rows ({self.sub_batch_rows})")


@dataclass(frozen=True, kw_only=True)
class LoadingConfig:
    """How models get loaded.

    ``mode: sync`` (baseline) reads and builds every model on the serving loop,
    blocking it; ``background`` builds it off the loop (``executor``: a pool of
    ``workers`` threads, or of worker processes that hand back the built model)
    while the loop keeps serving, one load per model at a time, and installs it
    atomically once built (and warmed up, with ``warmup``). ``models`` lists what
    to load at start-up (empty: every model in the repository); the server is
    ready when those are. See :class:`optkit.layers.loading.ModelLoader`.

    Args:
        warmup: run one inference on a zero input before a model becomes READY.
        lazy: a request for a known model that is not loaded starts its load and
            waits up to ``lazy_wait_s``; past that it gets a 503 with ``Retry-After``.
            Background mode only (a lazy load on the loop would stall every request).
        memory_budget_bytes: the most bytes of weights loaded at once (0: no bound);
            least recently used idle models are unloaded to make room.
        load_timeout_s: how long a ``load`` request waits for its load before it is
            answered 503 (the load itself goes on).
        priority: the CPU priority of the loader processes (``executor: process`` only):
            ``idle`` (Linux's SCHED_IDLE: they run only on CPU nothing else wants; nice 19
            where the OS has no such class), ``low`` (nice 10) or ``normal`` (the
            server's own). The server's priority never changes.
    """

    mode: Literal["sync", "background"] = "sync"
    models: tuple[str, ...] = ()
    #: per-model parameter overrides, e.g. ``{"synthetic": {"cost_b_us": 18}}``:
    #: experiments change a model's cost without rebuilding the repository.
    parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: process (measured: the loop keeps its GIL; see layers/loading.py) or thread
    executor: Literal["thread", "process"] = "process"
    workers: int = 1
    warmup: bool = False
    lazy: bool = False
    lazy_wait_s: float = 1.0
    memory_budget_bytes: int = 0
    load_timeout_s: float = 60.0
    #: measured on Thursday's loads (docs/layers.md): idle kept the steady model's p50
    #: within noise, normal and low did not
    priority: Literal["idle", "low", "normal"] = "idle"

    def __post_init__(self) -> None:
        if self.mode not in ("sync", "background"):
            raise ConfigError(f"loading.mode must be 'sync' or 'background', got {self.mode!r}")
        if self.executor not in ("thread", "process"):
            raise ConfigError(f"loading.executor must be 'thread' or 'process', "
                              f"got {self.executor!r}")
        if isinstance(self.models, str) or not isinstance(self.models, (list, tuple)) \
                or not all(isinstance(m, str) for m in self.models):
            raise ConfigError(f"loading.models must be a list of model names, got {self.models!r}")
        object.__setattr__(self, "models", tuple(self.models))
        if not isinstance(self.parameters, Mapping) or not all(
                isinstance(v, Mapping) for v in self.parameters.values()):
            raise ConfigError("loading.parameters must map model names to parameter mappings")
        _integer("loading.workers", self.workers)
        _bool("loading.warmup", self.warmup)
        _bool("loading.lazy", self.lazy)
        _positive("loading.lazy_wait_s", self.lazy_wait_s, allow_zero=True)
        _integer("loading.memory_budget_bytes", self.memory_budget_bytes, allow_zero=True)
        _positive("loading.load_timeout_s", self.load_timeout_s)
        if self.priority not in ("idle", "low", "normal"):
            raise ConfigError(f"loading.priority must be 'idle', 'low' or 'normal', "
                              f"got {self.priority!r}")
        if self.lazy and self.mode == "sync":
            raise ConfigError("loading.lazy needs loading.mode: background "
                              "(a lazy load on the serving loop would stall every request)")


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """The whole service: one section per layer; the default is the baseline."""

    name: str = "baseline"
    server: ServerConfig = field(default_factory=ServerConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    loading: LoadingConfig = field(default_factory=LoadingConfig)
    balancing: BalancingConfig = field(default_factory=BalancingConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ServiceConfig":
        """Build a config from plain data, rejecting unknown keys by name."""
        doc = Document.of_record(data or {}, cls, where="config")
        kwargs: dict[str, Any] = {}
        if "name" in doc:
            kwargs["name"] = str(doc.get("name"))
        for key, section_cls in _SECTIONS.items():
            value = doc.get(key, None)
            if value is not None:
                kwargs[key] = Document.of_record(value, section_cls, where=key).record(section_cls)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ServiceConfig":
        """Read a YAML file; its top-level keys are the sections."""
        data = read_mapping(path, what="config")
        data.setdefault("name", Path(path).stem)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready), the inverse of :meth:`from_dict`."""
        out = dataclasses.asdict(self)
        out["loading"]["models"] = list(self.loading.models)
        out["loading"]["parameters"] = {k: dict(v) for k, v in self.loading.parameters.items()}
        out["gateway"]["models"] = {k: dict(v) for k, v in self.gateway.models.items()}
        return out

    def replace(self, **changes: Any) -> "ServiceConfig":
        """A copy with whole sections (or ``name``) replaced."""
        return dataclasses.replace(self, **changes)


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "pooling": PoolingConfig,
    "batching": BatchingConfig,
    "streaming": StreamingConfig,
    "loading": LoadingConfig,
    "balancing": BalancingConfig,
    "gateway": GatewayConfig,
}


def load_config(source: "str | Path | Mapping[str, Any] | ServiceConfig | None") -> ServiceConfig:
    """Accept a path to YAML, a mapping, a config, or None (the baseline)."""
    if source is None:
        return ServiceConfig()
    if isinstance(source, ServiceConfig):
        return source
    if isinstance(source, Mapping):
        return ServiceConfig.from_dict(source)
    return ServiceConfig.from_yaml(source)
