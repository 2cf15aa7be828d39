"""The gateway's cache of model metadata: what it validates requests against.

::

    get(m, v) ─ fresh entry? ── yes ─▶ hit
                    │ no
                    ▼
               a fetch for (m, v) already under way? ── yes ─▶ wait for it (shared)
                    │ no
                    ▼
               start one fetch; every caller that arrives meanwhile shares it

An entry is fresh for ``ttl_s`` seconds; :meth:`invalidate` drops one at once
(the gateway does on an upstream 404). Failed fetches are not cached: the next
caller tries again. Time comes from ``clock`` so tests need no sleeps.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .._config import ServiceConfig
from .._exceptions import ProtocolError, UpstreamError
from .._metrics import counter, gauge
from ..v2 import DATATYPES, InferRequest, TensorSpec, json_loads

__all__ = ["ModelMeta", "MetadataCache", "MetadataCacheStatistics", "SOURCES", "row_bytes",
           "model_meta", "check_unsigned", "check_unsigned_generate"]

Key = tuple[str, str | None]


#: where a model's signature came from, as ``/stats`` says it
SOURCES = {"upstream": "validated against the upstream's metadata",
           "config": "validated against the signature in gateway.models",
           "passthrough": "passed through: the upstream's metadata lists no inputs"}


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """What the gateway needs of a model's v2 metadata."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    #: the most rows a request may hold (0: no bound stated)
    max_batch_size: int
    #: bytes of one row of every output, binary-encoded (element size x the per-row
    #: dimensions); None when the metadata does not fix them (a -1 past the batch axis, BYTES)
    row_bytes: int | None = None
    #: a key of :data:`SOURCES`: what requests are validated against
    source: str = "upstream"
    #: the most rows one merged upstream call may hold (0: requests for it never merge)
    merge_rows: int = -1

    def __post_init__(self) -> None:
        if self.merge_rows < 0:  # not given: the stated bound
            object.__setattr__(self, "merge_rows", self.max_batch_size)


def row_bytes(outputs: Sequence[Any]) -> int | None:
    """Binary bytes of one row of all ``outputs`` (v2 metadata entries), or None if unknown."""
    total = 0
    for spec in outputs:
        try:
            dtype = DATATYPES.get(str(spec["datatype"]))
            dims = [int(d) for d in spec["shape"]][1:]
        except (KeyError, TypeError, ValueError):
            return None
        if dtype is None or any(d < 0 for d in dims):
            return None
        total += dtype.itemsize * math.prod(dims)
    return total


async def model_meta(name: str, doc: Any, config: ServiceConfig,
                     stated_bound: Callable[[], Awaitable[int | None]]) -> ModelMeta:
    """What requests for model ``name`` are checked against, from its v2 metadata ``doc``.

    The inputs the metadata lists, or, where ``gateway.models`` signs the model, that
    signature's; with neither (MLServer's and KServe's default) the model is passed
    through. The batch bound: the metadata's ``max_batch_size`` parameter, the signature's,
    or else ``await stated_bound()`` (Triton keeps it in its model configuration). With no
    bound stated anywhere, requests merge up to ``batching.max_batch_size`` rows when every
    known input is batch-major (``gateway.merge_unsigned``).
    """
    try:
        specs = tuple(TensorSpec.from_dict(d) for d in doc.get("inputs") or ())
        outputs = list(doc.get("outputs") or ())
        names = tuple(str(d["name"]) for d in outputs)
        params = doc.get("parameters") or {}
        stated = params.get("max_batch_size") if isinstance(params, dict) else None
        mbs = None if stated is None else int(stated)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpstreamError(f"upstream sent unusable metadata for {name!r}: {exc!r}") from None
    source = "upstream" if specs else "passthrough"
    signature: Mapping[str, Any] | None = config.gateway.models.get(name)
    if signature is not None:
        source = "config"
        specs = tuple(TensorSpec.from_dict(d) for d in signature["inputs"])
        if signature.get("outputs"):
            outputs = list(signature["outputs"])
            names = tuple(str(d["name"]) for d in outputs)
        if "max_batch_size" in signature:
            mbs = int(signature["max_batch_size"])
    if mbs is None:
        mbs = await stated_bound()
    merge_rows = mbs or 0
    if mbs is None:
        mbs = 0
        batch_major = all(spec.shape[:1] == (-1,) for spec in specs)  # true when none known
        if config.gateway.merge_unsigned and batch_major:
            merge_rows = config.batching.max_batch_size
    return ModelMeta(specs, names, mbs, row_bytes(outputs), source, merge_rows)


def check_unsigned(req: InferRequest) -> None:
    """What can be checked of an infer request's rows without the model's signature."""
    leading = {i.array.shape[0] for i in req.inputs if i.array.ndim}
    if 0 in leading:
        raise ProtocolError("batch size 0: a request needs at least one row")
    if len(leading) > 1:
        raise ProtocolError("inputs disagree on the batch size")


def check_unsigned_generate(body: bytes) -> None:
    """What can be checked of a generate_stream body without the model's signature."""
    try:
        doc = json_loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ProtocolError("generate request must be a JSON object of input names to rows")
    if not isinstance(doc.get("parameters", {}), dict):
        raise ProtocolError("'parameters' must be an object")


@dataclass(frozen=True, slots=True)
class MetadataCacheStatistics:
    hits: int = counter("lookups answered from a fresh entry")
    fetches: int = counter("upstream metadata fetches started")
    shared: int = counter("lookups that waited on a fetch already under way")
    errors: int = counter("fetches that failed")
    entries: int = gauge("models cached now")


class MetadataCache:
    """Model metadata by ``(model, version)``, fetched once per ``ttl_s``, single flight.

    Args:
        fetch: ``await fetch(model, version)`` returns a :class:`ModelMeta` or raises.
        ttl_s: how long an entry is used before it is fetched again.
        clock: seconds, monotonic.
    """

    def __init__(self, fetch: Callable[[str, str | None], Awaitable[ModelMeta]], *,
                 ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch, self._ttl, self._clock = fetch, ttl_s, clock
        self._entries: dict[Key, tuple[ModelMeta, float]] = {}  # key -> (meta, fetched at)
        self._pending: dict[Key, asyncio.Future[ModelMeta]] = {}
        self._hits = self._fetches = self._shared = self._errors = 0

    async def get(self, name: str, version: str | None) -> ModelMeta:
        key = (name, version)
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[1] < self._ttl:
            self._hits += 1
            return entry[0]
        pending = self._pending.get(key)
        if pending is None:
            self._fetches += 1
            pending = self._pending[key] = asyncio.ensure_future(self._fill(key))
            pending.add_done_callback(_retrieve)  # no "never retrieved" if every caller left
        else:
            self._shared += 1
        # shield: one caller going away must not cancel the fetch the others wait on
        return await asyncio.shield(pending)

    async def _fill(self, key: Key) -> ModelMeta:
        try:
            meta = await self._fetch(*key)
        except BaseException:
            self._errors += 1
            raise
        finally:
            self._pending.pop(key, None)
        self._entries[key] = (meta, self._clock())
        return meta

    def sources(self) -> dict[str, str]:
        """``model[/version]`` -> what its requests are validated against, for every entry."""
        return {name + (f"/{version}" if version else ""): meta.source
                for (name, version), (meta, _) in sorted(self._entries.items(),
                                                         key=lambda kv: (kv[0][0], kv[0][1] or ""))}

    def invalidate(self, name: str, version: str | None) -> None:
        self._entries.pop((name, version), None)

    def statistics(self) -> MetadataCacheStatistics:
        return MetadataCacheStatistics(self._hits, self._fetches, self._shared, self._errors,
                                       len(self._entries))

    def __repr__(self) -> str:
        s = self.statistics()
        return (f"<MetadataCache [{s.entries} entries | {s.hits} hits, {s.fetches} fetches, "
                f"{s.shared} shared]>")


def _retrieve(future: asyncio.Future[ModelMeta]) -> None:
    if not future.cancelled():
        future.exception()
