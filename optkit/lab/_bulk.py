"""Bulk scoring as a stream: when do the first results of a many-row request arrive?

::

    POST /v2/models/<m>/generate_stream   {"<input>": [[row], ... N rows]}
      t0 ── request sent
      t1 ── first event (rows 0..k scored)      streaming on: as soon as the first sub-batch is
      ...                                       done; off: all events come in one body at the end
      tn ── final event {"done": true, "rows_scored": N}

Rows are real digits (``digits_split``) for models whose input is 64 wide, else seeded
uniform values of the input's width. One request per call; bounded by ``timeout_s``.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .._exceptions import BenchError
from ..models import digits_split

__all__ = ["bulk_stream"]


def _rows(url: str, model: str, rows: int, seed: int) -> tuple[str, list[list[float]]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", f"/v2/models/{model}")
        resp = conn.getresponse()
        meta = json.loads(resp.read())
    finally:
        conn.close()
    spec = meta["inputs"][0]
    width = int(spec["shape"][-1])
    if width == 64:

        x = digits_split(seed)[0]
        x = x[np.arange(rows) % len(x)]
    else:
        x = np.random.default_rng(seed).uniform(0, 1, (rows, width))
    return spec["name"], x.astype(np.float32).tolist()


def bulk_stream(url: str, model: str, *, rows: int = 10_000, seed: int = 0,
                timeout_s: float = 60.0) -> dict[str, Any]:
    """Score ``rows`` rows through ``generate_stream`` at ``url``; time the events.

    Returns ``{"rows", "events", "first_event_s", "last_event_s", "rows_scored",
    "complete"}``: seconds from sending to the first and the last event, and whether the
    stream ended with its ``done`` event.
    """
    name, data = _rows(url, model, rows, seed)
    body = json.dumps({name: data}).encode()
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    first = last = None
    events = 0
    done: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/generate_stream", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"generate_stream answered {resp.status}: {resp.read(512)!r}")
        while True:
            line = resp.readline(16 * 1024 * 1024)
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            now = time.perf_counter() - started
            first = now if first is None else first
            last = now
            events += 1
            doc = json.loads(line[6:])
            if doc.get("done") or "error" in doc:
                done = doc
    finally:
        conn.close()
    return {"rows": rows, "events": events, "first_event_s": first, "last_event_s": last,
            "rows_scored": done.get("rows_scored"), "complete": bool(done.get("done"))}
