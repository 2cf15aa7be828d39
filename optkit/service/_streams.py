"""The model server's streamed answers: large infer responses and ``generate_stream``.

Both compute a request's rows in sub-batches of ``streaming.sub_batch_rows`` and hand
each to the client before computing the next, so a slow reader holds one sub-batch::

    rows 0..k ─ compute ─ (decide: small -> one buffered answer, as without streaming)
                        └ head + part 0 ─▶ client (drained)
    rows k..2k ─ compute ─ part 1 ─▶ client (drained)      ... client gone: stop here

Infer (``POST .../infer``, streaming on). The first sub-batch is computed before the
head, so a failure there is an ordinary JSON error, and it sizes the answer: an
answer estimated at or under ``threshold_bytes`` is sent buffered, as before. A
larger one is one valid v2 document, JSON or binary as asked:

- *one* output selected (the client named one, or the model has one): pipelined, a
  sub-batch at a time. The JSON ``data`` array is written piecewise; the binary
  header's length is known up front from the shape ``[rows, *trailing]`` and the
  datatype of the first sub-batch (every later one must match, else the stream is cut).
- several outputs: the v2 layout is output after output, so every row is computed
  first; then JSON (all JSON outputs) or binary (all binary) is written piecewise in
  row slices of about ``chunk_bytes``; a mix of JSON and binary outputs is encoded
  whole (the header holds the JSON data) and written in chunks.

A failure after the head (a later sub-batch raising) cuts the connection without the
terminating chunk: a client never mistakes a short document for a whole one.

``generate_stream`` (Server-Sent Events, the v2 generate extension's streaming form)::

    data: {"model_name": m, "model_version": v, "rows": [0, 16], "outputs": {"y": [[...], ...]}}
    data: {"model_name": m, "model_version": v, "rows": [16, 20], "outputs": {...}}
    data: {"model_name": m, "model_version": v, "done": true, "rows_scored": 20}

A failure after the 200 is ``data: {"error": "...", "rows_scored": k}`` and the stream
ends cleanly: a complete stream ends with ``done`` or ``error``, a cut one with neither.
With ``streaming.enabled: false`` the endpoint still answers, with the same events in
one buffered body sent when all are ready (the baseline of this endpoint).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Mapping

import numpy as np
from aiohttp import web

from .._exceptions import InferenceError, OptkitError
from ..v2 import (BINARY_HEADER, InferRequest, binary_data_piece, encode_infer_response_frames,
                  json_data_piece, json_dumps)
from ..layers.streaming import ChunkWriter, ResponseStreamer
from ._http import infer_response, mark

__all__ = ["stream_infer", "stream_generate", "EVENT_STREAM"]

Compute = Callable[[Mapping[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]
EVENT_STREAM = "text/event-stream; charset=utf-8"
_JSON_SAMPLE = 256  # values of a row encoded to estimate the JSON size of an answer


def _rows(inputs: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in inputs.items()}


async def _next(compute: Compute, inputs: Mapping[str, np.ndarray], start: int, stop: int,
                out: ChunkWriter | None) -> dict[str, np.ndarray]:
    """One sub-batch; a batcher dropping it because the client left counts as a disconnect."""
    if out is not None:
        out.ensure_client()
    try:
        return await compute(_rows(inputs, start, stop))
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if out is not None and out.client_gone and not (task and task.cancelling()):
            out.ensure_client()  # raises: the streamer counts the disconnect
        raise


def _selected(outputs: Mapping[str, np.ndarray], req: InferRequest) -> list[tuple[str, bool]]:
    names = list(req.outputs) if req.outputs else list(outputs)
    return [(name, req.outputs.get(name, req.binary_default)) for name in names]


def _estimate(block: Mapping[str, np.ndarray], selected: list[tuple[str, bool]],
              rows: int) -> int | None:
    """Bytes of the whole answer, extrapolated from the first sub-batch (None: unknown)."""
    total = 0
    for name, binary in selected:
        arr = block[name]
        if arr.ndim == 0 or arr.shape[0] == 0:
            return None
        if binary:
            per_row = arr.nbytes / arr.shape[0]
        else:  # JSON: encode a sample of the first row, not the row (a wide row is MBs)
            first = np.ascontiguousarray(arr[:1]).reshape(-1)
            if first.size == 0:
                return None
            sample = first[:_JSON_SAMPLE]
            per_row = (len(json_data_piece(sample)) + 1) / sample.size * first.size
        total += int(per_row * rows)
    return total


async def stream_infer(streamer: ResponseStreamer, request: web.Request, model: str,
                       version: str, req: InferRequest, inputs: Mapping[str, np.ndarray],
                       compute: Compute) -> web.StreamResponse:
    """Answer an infer request, streamed when large (see the module docstring)."""
    n, k = req.batch_size, streamer.config.sub_batch_rows
    first = await _next(compute, inputs, 0, min(k, n), None)
    selected = _selected(first, req)
    small = not streamer.wants_stream(_estimate(first, selected, n))
    if small or n <= k or len(selected) > 1:  # the rest in one call: nothing to pipeline
        parts = [first] if n <= k else [first, await _next(compute, inputs, k, n, None)]
        if small:
            return infer_response(model, version, _concat(parts), req)
        return await _write_whole(streamer, request, model, version, req, _concat(parts),
                                  selected)
    (name, binary), block = selected[0], first[selected[0][0]]
    shape, dtype = (n, *block.shape[1:]), block.dtype
    frames, head_len = encode_infer_response_frames(model, version, [(name, dtype, shape)],
                                                    request_id=req.id, binary=binary)
    response = web.StreamResponse(headers=_headers(head_len))
    async with streamer.open(request, mark(request, response)) as out:
        await out.write(frames[0] if binary else frames[0] + b"[")
        start = 0
        while True:
            stop = min(start + k, n)
            if block.shape != (stop - start, *shape[1:]) or block.dtype != dtype:
                raise InferenceError(f"model {model!r}: rows {start}..{stop} came back as "
                                     f"{block.dtype}{list(block.shape)}, not {dtype}"
                                     f"{[stop - start, *shape[1:]]}")
            if binary:
                await out.write(binary_data_piece(block))
            else:
                await out.write((b"," if start else b"") + json_data_piece(block))
            start = stop
            if start >= n:
                break
            block = (await _next(compute, inputs, start, min(start + k, n), out))[name]
        if not binary:
            await out.write(b"]" + frames[1])
    return response


async def _write_whole(streamer: ResponseStreamer, request: web.Request, model: str,
                       version: str, req: InferRequest, outputs: Mapping[str, np.ndarray],
                       selected: list[tuple[str, bool]]) -> web.StreamResponse:
    """A computed answer written piecewise (row slices of about ``chunk_bytes``)."""
    kinds = {binary for _, binary in selected}
    if len(kinds) > 1:  # JSON data inside a binary header: encode whole, write in chunks
        whole = infer_response(model, version, outputs, req)
        response = web.StreamResponse(headers={BINARY_HEADER: whole.headers[BINARY_HEADER],
                                               "Content-Type": "application/octet-stream"})
        async with streamer.open(request, mark(request, response)) as out:
            assert whole.body is not None
            await out.write(whole.body)  # type: ignore[arg-type]
        return response
    binary = kinds.pop()
    arrays = [(name, outputs[name]) for name, _ in selected]
    frames, head_len = encode_infer_response_frames(
        model, version, [(name, a.dtype, a.shape) for name, a in arrays],
        request_id=req.id, binary=binary)
    response = web.StreamResponse(headers=_headers(head_len))
    step_bytes = streamer.config.chunk_bytes
    async with streamer.open(request, mark(request, response)) as out:
        await out.write(frames[0])
        for i, (_, arr) in enumerate(arrays):
            row_bytes = max(1, arr.nbytes // max(1, arr.shape[0]))
            step = max(1, step_bytes // row_bytes)
            if not binary:
                await out.write(b"[")
            for start in range(0, arr.shape[0], step):
                block = arr[start:start + step]
                if binary:
                    await out.write(binary_data_piece(block))
                else:
                    await out.write((b"," if start else b"") + json_data_piece(block))
            if not binary:
                await out.write(b"]" + frames[i + 1])
    return response


async def stream_generate(streamer: ResponseStreamer, request: web.Request, model: str,
                          version: str, req: InferRequest, compute: Compute,
                          sub_rows: int) -> web.StreamResponse:
    """Score ``req``'s rows in sub-batches, one Server-Sent Event each."""
    inputs = {item.name: item.array for item in req.inputs}
    n = req.batch_size
    first = await _next(compute, inputs, 0, min(sub_rows, n), None)  # fails as plain JSON

    def event(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {"model_name": model, "model_version": version, "rows": [start, stop],
                "outputs": dict(outputs)}

    done = {"model_name": model, "model_version": version, "done": True, "rows_scored": n}
    headers = {"Content-Type": EVENT_STREAM, "Cache-Control": "no-cache"}
    if not streamer.config.enabled:  # the same events, sent together when all are ready
        events = [event(0, min(sub_rows, n), first)]
        try:
            for start in range(sub_rows, n, sub_rows):
                stop = min(start + sub_rows, n)
                events.append(event(start, stop, await compute(_rows(inputs, start, stop))))
            events.append(done)
        except OptkitError as exc:
            events.append({"error": str(exc), "rows_scored": events[-1]["rows"][1]})
        return web.Response(body=b"".join(b"data: " + json_dumps(e) + b"\n\n" for e in events),
                            headers=headers)
    response = web.StreamResponse(headers=headers)
    async with streamer.open(request, mark(request, response)) as out:
        stop = min(sub_rows, n)
        await out.event(event(0, stop, first))
        try:
            for start in range(stop, n, sub_rows):
                stop = min(start + sub_rows, n)
                await out.event(event(start, stop,
                                      await _next(compute, inputs, start, stop, out)))
        except OptkitError as exc:
            await out.error_event(str(exc), rows_scored=start)
        else:
            await out.event(done)
    return response


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _headers(head_len: int | None) -> dict[str, str]:
    if head_len is None:
        return {"Content-Type": "application/json"}
    return {"Content-Type": "application/octet-stream", BINARY_HEADER: str(head_len)}
