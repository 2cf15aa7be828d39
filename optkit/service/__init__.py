"""The reference service: model server and gateway apps, and a launcher."""

from ._gateway import create_gateway, parse_upstreams
from ._launcher import ServiceProcess, Stack, launch_service, launch_stack
from ._model_server import create_model_server
from ._runner import install_uvloop, serve

__all__ = ["create_model_server", "create_gateway", "parse_upstreams", "launch_stack",
           "launch_service", "Stack", "ServiceProcess", "serve", "install_uvloop"]
