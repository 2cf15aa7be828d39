"""The reference service: the gateway and model server built from the layers, and a launcher.

::

    Gateway       v2 server to clients; validates, forwards upstream through layers.pooling
    ModelServer   v2 server over a model repository
    launch_stack  both as subprocesses on free loopback ports, stopped with a SIGTERM drain
    run_workers   N model-server processes on one port, connections dealt to them in turn
    GrpcFront     either tier over gRPC (Triton's GRPCInferenceService), server.grpc_port
"""

from ._grpc import GRPC_PORT_FILE_KEY, GrpcFront
from ._gateway import GATEWAY_KEY, Gateway, GatewayStatistics, create_gateway, parse_upstreams
from ._launcher import ServiceProcess, Stack, launch_service, launch_stack
from ._metadata import MetadataCache, MetadataCacheStatistics, ModelMeta
from ._model_server import MODEL_SERVER_KEY, ModelServer, ModelServerStatistics, \
    create_model_server
from ._runner import install_uvloop, serve
from ._workers import run_workers

__all__ = ["Gateway", "GatewayStatistics", "ModelServer", "ModelServerStatistics",
           "MetadataCache", "MetadataCacheStatistics", "ModelMeta",
           "create_model_server", "create_gateway", "parse_upstreams", "launch_stack",
           "launch_service", "Stack", "ServiceProcess", "serve", "install_uvloop", "run_workers",
           "GATEWAY_KEY", "MODEL_SERVER_KEY", "GrpcFront", "GRPC_PORT_FILE_KEY"]
