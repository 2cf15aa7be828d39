"""The exceptions optkit raises, as one flat tree rooted at :class:`OptkitError`.

::

    OptkitError
    ├── ConfigError             a configuration value is out of range or unknown
    ├── ProtocolError           a v2 request is malformed (the client's fault -> 400)
    ├── PayloadTooLarge         a request body is over the configured bound (-> 413)
    ├── ModelNotFound           no such model or version in the repository (-> 404)
    ├── ModelNotReady           the model exists but is not loaded yet (-> 503, maybe + Retry-After)
    ├── ModelLoadError          loading a model from disk failed (the server's side)
    ├── InferenceError          the model raised while predicting (-> 500)
    ├── UpstreamError           the gateway could not get an answer upstream
    │   ├── UpstreamUnavailable     connection refused / reset (-> 502)
    │   └── UpstreamTimeout         no answer within the bound (-> 504)
    ├── PoolTimeout             no pooled connection became free in time (-> 503)
    ├── QueueFull               a bounded queue refused an item (backpressure, -> 503 + Retry-After)
    ├── DeadlineExceeded        a request's own deadline passed before it ran (-> 504)
    ├── LaunchError             a service process did not start or become ready
    └── BenchError              the load generator could not run as asked

Each class carries the HTTP status a server answers with when it escapes a
handler (:attr:`OptkitError.status`), so every tier maps errors the same way.
"""

from __future__ import annotations

__all__ = [
    "OptkitError",
    "ConfigError",
    "ProtocolError",
    "PayloadTooLarge",
    "ModelNotFound",
    "ModelNotReady",
    "ModelLoadError",
    "InferenceError",
    "UpstreamError",
    "UpstreamUnavailable",
    "UpstreamTimeout",
    "PoolTimeout",
    "QueueFull",
    "DeadlineExceeded",
    "LaunchError",
    "BenchError",
]


class OptkitError(Exception):
    """Base of every optkit error; ``status`` is the HTTP status it maps to."""

    status: int = 500


class ConfigError(OptkitError, ValueError):
    """A configuration value is invalid; the message names the parameter."""


class ProtocolError(OptkitError, ValueError):
    """The client sent a request that does not follow the v2 protocol."""

    status = 400


class PayloadTooLarge(OptkitError):
    """The request body is larger than the server accepts."""

    status = 413


class ModelNotFound(OptkitError, LookupError):
    """The named model, or the named version of it, is not in the repository."""

    status = 404


class ModelNotReady(OptkitError):
    """The model is known but not loaded (yet): try again later.

    ``retry_after_s``, when set, is how long the caller should wait before trying
    again (a lazy load still under way): the server sends it as ``Retry-After``.
    """

    status = 503

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelLoadError(OptkitError):
    """Reading or warming a model from the repository failed."""

    status = 500


class InferenceError(OptkitError):
    """The model raised while computing a prediction."""

    status = 500


class UpstreamError(OptkitError):
    """The gateway did not get a usable answer from an upstream server."""

    status = 502


class UpstreamUnavailable(UpstreamError):
    """The upstream refused or dropped the connection."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured time."""

    status = 504


class PoolTimeout(OptkitError):
    """No pooled connection became available within the configured time."""

    status = 503


class QueueFull(OptkitError):
    """A bounded queue is full; the caller should back off ``retry_after_s`` seconds."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(OptkitError):
    """The request's own deadline (v2 ``timeout`` parameter) passed before it was run."""

    status = 504


class LaunchError(OptkitError, RuntimeError):
    """A service process exited early or did not become ready in time."""


class BenchError(OptkitError, RuntimeError):
    """The load generator cannot run as asked (bad target, bad workload)."""
