"""The sprint's optimization layers, one module each; the service wires them together.

::

    layers/pooling.py    ConnectionPool (and the baseline DirectClient): upstream connections
    layers/channels.py   ChannelPool: the same upstream calls over gRPC, on pooled HTTP/2
                         channels or a new channel per request (the baseline)
    layers/batching.py   DynamicBatcher: concurrent requests for one model become one call
    layers/streaming.py  ResponseStreamer: large answers and server-sent events leave in
                         chunks at the client's pace (backpressure, write timeout, disconnect)
    layers/balancing.py  UpstreamBalancer: least-outstanding choice over N upstreams, each
                         with its own pool; failing ones ejected, backed off, probed back
    layers/loading.py    ModelLoader: models load off the serving loop, one load per model,
                         warmed before READY, swapped atomically, evicted LRU under a budget

A layer never imports :mod:`optkit.service`; each has a frozen config section in
:mod:`optkit._config`, ``statistics()`` returning a frozen record, and ``aclose()``.
"""

from .balancing import BalancingStatistics, UpstreamBalancer
from .batching import BatchStatistics, DynamicBatcher
from .channels import ChannelPool
from .loading import LoadingStatistics, ModelLoader
from .pooling import (ConnectionPool, DirectClient, PoolStatistics, UpstreamClient,
                      UpstreamResponse, UpstreamStream)
from .streaming import ChunkWriter, ResponseStreamer, StreamingStatistics

__all__ = ["ConnectionPool", "DirectClient", "ChannelPool", "PoolStatistics", "UpstreamClient",
           "UpstreamResponse", "UpstreamStream", "DynamicBatcher", "BatchStatistics",
           "ResponseStreamer", "ChunkWriter", "StreamingStatistics", "ModelLoader",
           "LoadingStatistics", "UpstreamBalancer", "BalancingStatistics"]
