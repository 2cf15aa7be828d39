"""Regenerate the committed gRPC code from the two ``.proto`` files beside this one.

Run once after changing the protos or the generator (``make grpc-proto``)::

    python -m optkit.v2._proto._generate

The protos are Triton's (``triton-inference-server/common``, ``protobuf/``, commit
83adf7cf88a2f343005974dff3728be746de2d66), unchanged: package ``inference``, service
``GRPCInferenceService``, which is what ``tritonclient.grpc`` and perf_analyzer call.
The committed code was made by grpcio-tools 1.81.1 (libprotoc 33.5, so the protobuf
runtime must be >= 6.33.5 and < 7; grpcio >= 1.81.1).

Two edits after ``protoc``, so the modules live inside the package and beside a client:

- ``import model_config_pb2`` becomes a relative import;
- the descriptors go into optkit's own pool (``_pool.POOL``), not protobuf's default
  one: ``tritonclient.grpc`` registers the same ``inference.*`` names there, and a
  process holding both (a test, a notebook) would refuse the second as a duplicate.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("model_config.proto", "grpc_service.proto")


def main() -> int:
    from grpc_tools import protoc  # the dev-time generator; never imported at run time

    for proto in PROTOS:
        rc = protoc.main(["grpc_tools.protoc", f"-I{HERE}", f"--python_out={HERE}",
                          *([f"--grpc_python_out={HERE}"] if proto == "grpc_service.proto"
                            else []), str(HERE / proto)])
        if rc:
            return rc
    for path in HERE.glob("*_pb2*.py"):
        text = path.read_text()
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        text = text.replace("_descriptor_pool.Default()", "_pool.POOL")
        if "_pool.POOL" in text:
            text = text.replace("from google.protobuf import descriptor_pool as _descriptor_pool",
                                "from . import _pool")
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
