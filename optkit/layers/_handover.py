"""Handing a built model from a loader process to the server without copying its weights.

::

    loader process                                   server process
    pickle(model, protocol 5) ──┬─ small: in the pickle ─────────────▶ pickle.loads(
                                └─ large buffers ─▶ one file in          meta, buffers=
                                   /dev/shm (tmpfs) ── its path ──▶ mmap  views of the map)
                                                                   unlink: gone with the model

A model returned through a process pool travels as one pickle through a pipe: the
server's result thread reads every byte and copies each array out of it, holding the
GIL in slices while the event loop waits for it (measured on Thursday's loads, a 16 MiB
model: most requests slower than the trial's p99 were sent in the last tenth of a load).
Here the arrays' bytes never cross the pipe: the loader writes them once to a file in
shared memory (at its own, lower, CPU priority), the server maps that file and unpickles
with the mapped pages as the arrays' buffers — no copy, nothing to read. The file is
unlinked as soon as it is mapped, so it lives exactly as long as the arrays that use it,
and a server that dies leaves nothing behind but what the loader wrote before (a file
named ``optkit-load-*``, removed by the next handover's sweep of files older than a day).
The map is private (copy-on-write): arrays stay writable, and a write never reaches the
file or another process.
"""

from __future__ import annotations

import mmap
import os
import pickle
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Handover", "pack", "unpack"]

#: buffers at least this large go through shared memory; smaller ones stay in the pickle
MIN_SHARED_BYTES = 1 << 20
_PREFIX = "optkit-load-"
_STALE_S = 86_400.0


def _folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


@dataclass(frozen=True)
class Handover:
    """A pickled object whose large buffers wait in a file: ``spans`` (offset, size) each."""

    meta: bytes
    path: str | None = None
    spans: tuple[tuple[int, int], ...] = ()
    shared_bytes: int = 0


def pack(obj: Any) -> Handover:
    """In the loader: pickle ``obj``, its large buffers written to one shared-memory file."""
    buffers: list[pickle.PickleBuffer] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes >= MIN_SHARED_BYTES:
            buffers.append(buf)
            return False  # out of band
        return True  # in the pickle

    meta = pickle.dumps(obj, protocol=5, buffer_callback=keep)
    if not buffers:
        return Handover(meta)
    folder = _folder()
    _sweep(folder)
    path = folder / f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    spans, offset = [], 0
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for buf in buffers:
                raw = buf.raw()
                out.write(raw)
                spans.append((offset, raw.nbytes))
                offset += raw.nbytes
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Handover(meta, str(path), tuple(spans), offset)


def unpack(handover: Handover) -> Any:
    """In the server: the object, its large arrays backed by the mapped file (then unlinked)."""
    if handover.path is None:
        return pickle.loads(handover.meta)
    path = Path(handover.path)
    try:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    finally:
        path.unlink(missing_ok=True)  # the map keeps the pages; the name goes now
    view = memoryview(mapped)
    return pickle.loads(handover.meta, buffers=[view[o:o + n] for o, n in handover.spans])


def _sweep(folder: Path) -> None:
    """Remove handover files a dead server never mapped (older than a day)."""
    cutoff = time.time() - _STALE_S
    try:
        for stale in folder.glob(f"{_PREFIX}*"):
            try:
                if stale.stat().st_mtime < cutoff:
                    stale.unlink(missing_ok=True)
            except OSError:
                pass
    except OSError:
        pass
