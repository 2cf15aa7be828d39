"""optkit: make an inference service faster one layer at a time, and prove it.

The package face: every public name is re-exported here from the part that defines it::

    optkit/
      _config, _exceptions, _checks, _metrics   the kernel: used by every part
      v2/        the Open Inference Protocol codec
      models/    built-in models, the repository on disk, its builder
      layers/    pooling, batching, streaming, loading, balancing
      service/   the gateway and the model server built from the layers
      bench/     the load generator
      lab/       trials, verdicts, the week and its reports (``pip install 'optkit[lab]'``)

Names are imported on first use (``_FACE`` below is the one list of them): the load
generator's own process, started for every trial, imports ``optkit.bench._worker`` and must
not pay for aiohttp, scikit-learn and the lab (measured: 0.50 s eagerly), and a serving
install has no lab at all.
"""

from ._version import __version__

from typing import TYPE_CHECKING as _TYPE_CHECKING

#: module -> the public names it gives the face. ``__all__`` and ``__getattr__`` are derived
#: from it and ``_MODULES``; tests/test_package.py checks the typing block below against both.
_FACE: dict[str, tuple[str, ...]] = {
    "._config": ("ServiceConfig", "ServerConfig", "PoolingConfig", "BatchingConfig",
                 "StreamingConfig", "LoadingConfig", "BalancingConfig", "GatewayConfig",
                 "load_config"),
    "._exceptions": ("OptkitError", "ConfigError", "ProtocolError", "PayloadTooLarge",
                     "ModelNotFound", "ModelNotReady", "ModelLoadError", "InferenceError",
                     "UpstreamError", "UpstreamUnavailable", "UpstreamTimeout", "PoolTimeout",
                     "QueueFull", "DeadlineExceeded", "LaunchError", "BenchError"),
    ".v2": ("InferRequest", "TensorSpec", "parse_infer_request", "validate_inputs",
            "encode_infer_request", "encode_infer_response", "decode_infer_response"),
    ".models": ("Model", "ModelConfig", "load_model", "build_repository", "digits_split",
                "MODEL_NAMES", "ModelRepository", "RepositoryStatistics"),
    ".layers": ("ConnectionPool", "DirectClient", "ChannelPool", "PoolStatistics", "UpstreamClient",
                "UpstreamResponse", "UpstreamStream", "DynamicBatcher", "BatchStatistics",
                "ResponseStreamer", "StreamingStatistics", "UpstreamBalancer",
                "BalancingStatistics"),
    ".lab": ("compare", "calibrate", "Comparison", "CompareSettings", "QUICK", "STANDARD",
             "latency_vs_load", "tune"),
}

#: public names that are modules: name -> module
_MODULES: dict[str, str] = {"v2": ".v2", "models": ".models", "layers": ".layers",
                            "service": ".service", "bench": ".bench", "lab": ".lab",
                            "stats": ".lab.stats", "plotting": ".lab.plotting",
                            "week": ".lab.week", "report": ".lab.week.report"}

_LAZY: dict[str, tuple[str, str | None]] = {
    **{name: (module, name) for module, names in _FACE.items() for name in names},
    **{name: (module, None) for name, module in _MODULES.items()},
}

__all__ = ["__version__", *_LAZY]

if _TYPE_CHECKING:  # what the names resolve to, for type checkers and editors
    from . import bench, lab, layers, models, service, v2
    from ._config import (BalancingConfig, BatchingConfig, GatewayConfig, LoadingConfig,
                          PoolingConfig, ServerConfig, ServiceConfig, StreamingConfig,
                          load_config)
    from ._exceptions import (BenchError, ConfigError, DeadlineExceeded, InferenceError,
                              LaunchError, ModelLoadError, ModelNotFound, ModelNotReady,
                              OptkitError, PayloadTooLarge, PoolTimeout, ProtocolError, QueueFull,
                              UpstreamError, UpstreamTimeout, UpstreamUnavailable)
    from .lab import (QUICK, STANDARD, CompareSettings, Comparison, calibrate, compare,
                      latency_vs_load, tune)
    from .lab import plotting, stats, week
    from .lab.week import report
    from .layers import (BalancingStatistics, BatchStatistics, ChannelPool, ConnectionPool,
                         DirectClient, DynamicBatcher, PoolStatistics, ResponseStreamer,
                         StreamingStatistics, UpstreamBalancer, UpstreamClient, UpstreamResponse,
                         UpstreamStream)
    from .models import (MODEL_NAMES, Model, ModelConfig, ModelRepository, RepositoryStatistics,
                         build_repository, digits_split, load_model)
    from .v2 import (InferRequest, TensorSpec, decode_infer_response, encode_infer_request,
                     encode_infer_response, parse_infer_request, validate_inputs)

#: what the lab needs beyond the serving install (``optkit[lab]``)
_LAB_DEPENDENCIES = frozenset({"scipy", "pandas", "matplotlib", "seaborn", "psutil", "papermill",
                               "nbclient", "nbconvert", "nbformat", "ipykernel", "tqdm",
                               "optuna"})


def __getattr__(name: str) -> object:
    """Import a public name's module when the name is first used."""
    if name not in _LAZY:
        raise AttributeError(f"module 'optkit' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:
        if module_name.startswith(".lab") and exc.name in _LAB_DEPENDENCIES:
            raise ModuleNotFoundError(
                f"optkit.{name} is part of the measurement lab, which needs {exc.name}: "
                f"pip install 'optkit[lab]'", name=exc.name) from exc
        raise
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
