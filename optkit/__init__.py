"""optkit: make an inference service faster one layer at a time, and prove it.

The package face: every public name is re-exported here from a private module.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:  # what the names below resolve to, imported on first use (see _LAZY)
    from ._config import (BalancingConfig, BatchingConfig, LoadingConfig, PoolingConfig, ServerConfig, ServiceConfig,
                          StreamingConfig, load_config)
    from ._exceptions import (BenchError, ConfigError, InferenceError, LaunchError, ModelLoadError,
                              ModelNotFound, ModelNotReady, OptkitError, PayloadTooLarge, PoolTimeout,
                              ProtocolError, QueueFull, DeadlineExceeded, UpstreamError, UpstreamTimeout,
                              UpstreamUnavailable)
    from ._models import MODEL_NAMES, Model, ModelConfig, build_repository, digits_split, load_model
    from ._protocol import (InferRequest, TensorSpec, decode_infer_response, encode_infer_request,
                            encode_infer_response, parse_infer_request, validate_inputs)
    from ._repository import ModelRepository, RepositoryStatistics
    from .layers import (BalancingStatistics, BatchStatistics, ConnectionPool, DirectClient, DynamicBatcher,
                         PoolStatistics, ResponseStreamer, StreamingStatistics, UpstreamClient,
                         UpstreamBalancer, UpstreamResponse, UpstreamStream)

__all__ = [
    "__version__",
    # configuration
    "ServiceConfig", "ServerConfig", "PoolingConfig", "BatchingConfig", "StreamingConfig",
    "LoadingConfig", "BalancingConfig", "load_config",
    # errors
    "OptkitError", "ConfigError", "ProtocolError", "PayloadTooLarge", "ModelNotFound",
    "ModelNotReady", "ModelLoadError", "InferenceError", "UpstreamError", "UpstreamUnavailable",
    "UpstreamTimeout", "PoolTimeout", "QueueFull", "DeadlineExceeded", "LaunchError", "BenchError",
    # protocol
    "InferRequest", "TensorSpec", "parse_infer_request", "validate_inputs",
    "encode_infer_request", "encode_infer_response", "decode_infer_response",
    # models
    "Model", "ModelConfig", "load_model", "build_repository", "digits_split", "MODEL_NAMES",
    "ModelRepository", "RepositoryStatistics",
    # layers
    "ConnectionPool", "DirectClient", "PoolStatistics", "UpstreamClient", "UpstreamResponse",
    "UpstreamStream", "DynamicBatcher", "BatchStatistics", "ResponseStreamer",
    "StreamingStatistics", "UpstreamBalancer", "BalancingStatistics",
    # experiments (imported lazily: servers start without pandas/scipy)
    "compare", "calibrate", "Comparison", "CompareSettings", "QUICK", "STANDARD", "week",
    "latency_vs_load",
    "stats", "plotting", "bench", "report",
]

#: name -> (module, attribute or None for the module itself). Everything is imported on
#: first use, so a process that needs one corner of optkit (the load generator's own
#: process, started for every trial) does not pay for aiohttp, scikit-learn and the rest:
#: measured, ``import optkit.bench._worker`` took 0.50 s eagerly.
_LAZY = {
    **{name: ("._config", name) for name in (
        "BalancingConfig", "BatchingConfig", "LoadingConfig", "PoolingConfig", "ServerConfig",
        "ServiceConfig", "StreamingConfig", "load_config")},
    **{name: ("._exceptions", name) for name in (
        "BenchError", "ConfigError", "InferenceError", "LaunchError", "ModelLoadError",
        "ModelNotFound", "ModelNotReady", "OptkitError", "PayloadTooLarge", "PoolTimeout",
        "ProtocolError", "QueueFull", "DeadlineExceeded", "UpstreamError", "UpstreamTimeout",
        "UpstreamUnavailable")},
    **{name: ("._models", name) for name in (
        "MODEL_NAMES", "Model", "ModelConfig", "build_repository", "digits_split", "load_model")},
    **{name: ("._protocol", name) for name in (
        "InferRequest", "TensorSpec", "decode_infer_response", "encode_infer_request",
        "encode_infer_response", "parse_infer_request", "validate_inputs")},
    **{name: ("._repository", name) for name in ("ModelRepository", "RepositoryStatistics")},
    **{name: (".layers", name) for name in (
        "BalancingStatistics", "BatchStatistics", "ConnectionPool", "DirectClient",
        "DynamicBatcher", "PoolStatistics", "ResponseStreamer", "StreamingStatistics",
        "UpstreamClient", "UpstreamBalancer", "UpstreamResponse", "UpstreamStream")},
    "compare": ("._compare", "compare"), "calibrate": ("._compare", "calibrate"),
    "Comparison": ("._compare", "Comparison"), "CompareSettings": ("._compare", "CompareSettings"),
    "QUICK": ("._compare", "QUICK"), "STANDARD": ("._compare", "STANDARD"),
    "latency_vs_load": ("._slo", "latency_vs_load"),
    "week": ("._week", None), "report": ("._report", None), "stats": (".stats", None),
    "plotting": (".plotting", None),
    "bench": (".bench", None),
}


def __getattr__(name: str) -> object:
    """Import a public name's module when the name is first used."""
    if name not in _LAZY:
        raise AttributeError(f"module 'optkit' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
