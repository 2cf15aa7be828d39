"""The target: a loopback v2 server, checked before any load is sent.

::

    parse_target(url)     http:// or grpc://; host must be 127.0.0.0/8, ::1 or localhost
    probe(target, models) GET /v2/health/ready -> 200
                          GET /v2/models/{m}   -> metadata with inputs
    check_infer(...)      POST one real body per model -> 200 with "outputs"

Every step has a short timeout and fails with a :class:`BenchError` that says
what the target did, so an unreachable or non-v2 target ends a run in seconds
instead of producing a run full of errors (or a hang).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import quote, urlsplit

import orjson

from .._exceptions import BenchError
from ._workload import InputSpec

__all__ = ["Target", "parse_target", "probe", "check_infer", "http_get_json"]


@dataclass(frozen=True)
class Target:
    """Where to send: a loopback host, a port and an optional path prefix."""

    url: str
    host: str
    port: int
    prefix: str = ""
    #: "http" (REST), or "grpc" (``grpc://``: Triton's GRPCInferenceService on that port)
    transport: str = "http"

    @property
    def grpc_target(self) -> str:
        """``host:port`` as a gRPC channel names it."""
        return self.host_header

    @property
    def host_header(self) -> str:
        """The ``Host`` header value for requests to this target."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def infer_path(self, model: str) -> str:
        """Path of the v2 inference endpoint of ``model``."""
        return f"{self.prefix}/v2/models/{quote(model, safe='')}/infer"


def parse_target(url: str) -> Target:
    """Check that ``url`` is an http URL on this machine's loopback interface."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "grpc"):
        raise BenchError(f"target {url!r}: only http:// and grpc:// targets are supported")
    host = parts.hostname or ""
    if host == "localhost":
        address = "127.0.0.1"
    else:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is None or not ip.is_loopback:
            raise BenchError(
                f"refusing to load-test {url!r}: optkit bench only sends traffic to loopback "
                f"targets (127.0.0.0/8, ::1, localhost); {host or 'no host'!r} is not one")
        address = str(ip)
    try:
        port = parts.port or 80
    except ValueError:
        raise BenchError(f"target {url!r}: bad port") from None
    if parts.scheme == "grpc":
        if parts.port is None or parts.path.strip("/"):
            raise BenchError(f"target {url!r}: a gRPC target is grpc://HOST:PORT, no path")
        return Target(url=url, host=address, port=port, transport="grpc")
    return Target(url=url, host=address, port=port, prefix=parts.path.rstrip("/"))


def _request(target: Target, method: str, path: str, body: bytes | None,
             timeout_s: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, target.prefix + path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except ConnectionRefusedError:
        raise BenchError(f"cannot connect to {target.url}: connection refused "
                         f"(is the server running on port {target.port}?)") from None
    except (socket.timeout, TimeoutError):
        raise BenchError(f"{target.url} did not answer {method} {path} within "
                         f"{timeout_s:g} s (stalled or overloaded?)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{method} {target.url}{path} failed: {exc!r}") from None
    finally:
        conn.close()


def _decode(status: int, raw: bytes, what: str, url: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BenchError(f"{url} does not look like an Open Inference Protocol v2 server: "
                         f"{what} answered {status} with non-JSON {raw[:120]!r}") from None


def http_get_json(target: Target, path: str, timeout_s: float = 2.0) -> Any:
    """GET a JSON document (``/stats``, metadata); BenchError on anything else."""
    status, raw = _request(target, "GET", path, None, timeout_s)
    if status != 200:
        raise BenchError(f"GET {target.url}{path} returned {status}: {raw[:200]!r}")
    return _decode(status, raw, f"GET {path}", target.url)


def probe(target: Target, models: Sequence[str], *, timeout_s: float = 2.0,
          need_inputs: bool = True) -> dict[str, tuple[InputSpec, ...]]:
    """Check readiness and read each model's inputs from its v2 metadata.

    ``need_inputs=False`` (the workload names its ``inputs``) accepts metadata that lists
    none or only some: servers such as MLServer leave them out unless a model declares them.
    """
    status, raw = _request(target, "GET", "/v2/health/ready", None, timeout_s)
    if status == 404:
        raise BenchError(f"{target.url} does not look like an Open Inference Protocol v2 "
                         f"server: GET /v2/health/ready returned 404")
    if status != 200:
        raise BenchError(f"{target.url} is not ready: GET /v2/health/ready returned "
                         f"{status} {raw[:200]!r}")
    signatures: dict[str, tuple[InputSpec, ...]] = {}
    for model in models:
        path = f"/v2/models/{quote(model, safe='')}"
        status, raw = _request(target, "GET", path, None, timeout_s)
        if status == 404:
            raise BenchError(f"model {model!r} is not on {target.url} (GET {path} -> 404: "
                             f"{raw[:200]!r})")
        if status != 200:
            raise BenchError(f"GET {target.url}{path} returned {status}: {raw[:200]!r}")
        doc = _decode(status, raw, f"GET {path}", target.url)
        inputs = doc.get("inputs") if isinstance(doc, Mapping) else None
        if not isinstance(inputs, list) or not inputs:
            if not need_inputs:
                continue
            raise BenchError(f"metadata of {model!r} on {target.url} lists no 'inputs': name "
                             f"them in the workload (inputs: [{{name, datatype, shape}}]) or "
                             f"with --input NAME:DATATYPE:WIDTH")
        if need_inputs:
            signatures[model] = tuple(InputSpec.from_metadata(e) for e in inputs)
    return signatures


def check_infer(target: Target, model: str, body: bytes, *, timeout_s: float = 5.0) -> None:
    """Send one real request; it must come back 200 with v2 ``outputs``."""
    path = f"/v2/models/{quote(model, safe='')}/infer"
    status, raw = _request(target, "POST", path, body, timeout_s)
    if status != 200:
        raise BenchError(f"a trial request to {model!r} failed: POST {path} -> {status}: "
                         f"{raw[:300]!r}")
    doc = _decode(status, raw, f"POST {path}", target.url)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("outputs"), list):
        raise BenchError(f"{target.url} does not look like an Open Inference Protocol v2 "
                         f"server: the answer to POST {path} has no 'outputs'")
