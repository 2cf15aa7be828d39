"""A minimal HTTP/1.1 keep-alive client for the generator's hot loop.

A connection is a pipe that carries one request at a time::

    send(req_id, bytes) ──▶ [socket] ──▶ server
    owner.on_response(conn, req_id, end_ns) ◀── parser says "done"

The request bytes (request line, headers and body) are encoded before the run,
so sending is one ``transport.write``. The response parser only finds where a
response ends (``Content-Length``, chunked, or until close) and keeps the
status, a short sample of error bodies, whether the connection may be reused
and whether the answer carries ``optkit-retried: 1`` (the gateway's pool sent
it upstream twice); it never builds a body. Measured in ``docs/measurement.md``:
about 14 µs of CPU per request, against 52 µs for ``aiohttp.ClientSession`` on
the same loop, so the server, not the generator, is what a run measures.
"""

from __future__ import annotations

import asyncio
from time import monotonic_ns
from typing import Protocol

from ._records import PROTOCOL, RESET

__all__ = ["ResponseParser", "ProtocolViolation", "HttpConnection", "ConnectionOwner",
           "encode_request", "RETRIED_HEADER"]

#: The gateway's mark on an answer its connection pool sent upstream twice (lower case).
RETRIED_HEADER = b"optkit-retried"

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE, _DONE = range(7)
_MAX_HEAD = 64 * 1024
_SAMPLE = 512


class ProtocolViolation(Exception):
    """The server's bytes are not a well-formed HTTP/1.1 response."""


def encode_request(method: str, path: str, host: str, body: bytes = b"",
                   content_type: str = "application/json") -> bytes:
    """Return the full bytes of one keep-alive HTTP/1.1 request."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("latin-1") + body


class ResponseParser:
    """Incremental parser that finds the end of one HTTP/1.1 response.

    ``feed(data)`` returns True once the response is complete. Attributes:
    ``status`` (int), ``keep_alive`` (bool), ``sample`` (first bytes of the
    body of an error response, for messages), ``retried`` (bool: the head had
    ``optkit-retried`` with a value other than 0).
    """

    __slots__ = ("_buf", "_state", "_remaining", "status", "keep_alive", "sample", "retried")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.reset()

    def reset(self) -> None:
        """Prepare for the next response on the same connection."""
        self._buf.clear()
        self._state = _HEAD
        self._remaining = 0
        self.status = 0
        self.keep_alive = True
        self.sample = b""
        self.retried = False

    @property
    def until_close(self) -> bool:
        """True when the body runs until the server closes the connection."""
        return self._state == _UNTIL_CLOSE

    def feed(self, data: bytes) -> bool:
        """Consume bytes; True when the response is complete."""
        state = self._state
        if (state == _BODY or state == _UNTIL_CLOSE) and not self._buf:
            # Fast path for large bodies: count bytes, never copy them.
            n = len(data)
            if self.status >= 400 and len(self.sample) < _SAMPLE:
                self.sample += data[: _SAMPLE - len(self.sample)]
            if state == _UNTIL_CLOSE:
                return False
            if n < self._remaining:
                self._remaining -= n
                return False
            if n > self._remaining:
                raise ProtocolViolation("bytes after the end of the response")
            self._state = _DONE
            return True
        self._buf += data
        return self._advance()

    def _keep(self, chunk: bytes | bytearray) -> None:
        if self.status >= 400 and len(self.sample) < _SAMPLE:
            self.sample += bytes(chunk[: _SAMPLE - len(self.sample)])

    def _advance(self) -> bool:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > _MAX_HEAD:
                        raise ProtocolViolation("response head larger than 64 KiB")
                    return False
                head = bytes(buf[:i])
                del buf[: i + 4]
                self._parse_head(head)
            elif state == _BODY or state == _CHUNK_DATA:
                if len(buf) < self._remaining:
                    self._remaining -= len(buf)
                    self._keep(buf)
                    buf.clear()
                    return False
                self._keep(buf[: self._remaining])
                del buf[: self._remaining]
                self._state = _DONE if state == _BODY else _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 1024:
                        raise ProtocolViolation("chunk size line too long")
                    return False
                try:
                    size = int(bytes(buf[:i]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolViolation("bad chunk size") from None
                del buf[: i + 2]
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size + 2  # the chunk and its CRLF
                    self._state = _CHUNK_DATA
            elif state == _TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    return False
                empty = i == 0
                del buf[: i + 2]
                if empty:
                    self._state = _DONE
            elif state == _UNTIL_CLOSE:
                self._keep(buf)
                buf.clear()
                return False
            else:  # _DONE
                if buf:
                    raise ProtocolViolation("bytes after the end of the response")
                return True

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolViolation(f"bad status line {lines[0][:80]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise ProtocolViolation(f"bad status line {lines[0][:80]!r}") from None
        if 100 <= status < 200:
            return  # an interim response: the real one follows
        self.status = status
        self.keep_alive = parts[0] == b"HTTP/1.1"
        length = -1
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise ProtocolViolation("bad Content-Length") from None
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                token = value.strip().lower()
                if token == b"close":
                    self.keep_alive = False
                elif token == b"keep-alive":
                    self.keep_alive = True
            elif name == RETRIED_HEADER:
                self.retried = value.strip() not in (b"", b"0")
        if chunked:
            self._state = _CHUNK_SIZE
        elif length > 0:
            self._remaining = length
            self._state = _BODY
        elif length == 0 or status in (204, 304):
            self._state = _DONE
        else:
            self.keep_alive = False
            self._state = _UNTIL_CLOSE


class ConnectionOwner(Protocol):
    """What a connection reports to: the generator."""

    def on_response(self, conn: "HttpConnection", req_id: int, end_ns: int) -> None: ...

    def on_failure(self, conn: "HttpConnection", req_id: int, code: int, end_ns: int) -> None: ...

    def on_lost(self, conn: "HttpConnection") -> None: ...


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; at most one request outstanding (no pipelining)."""

    def __init__(self, owner: ConnectionOwner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.req_id = -1
        self.start_ns = 0
        self.first_ns = 0
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self.req_id >= 0 else "idle")
        return f"<HttpConnection [{state}]>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, req_id: int, data: bytes) -> int:
        """Write one request; return the time it was handed to the socket."""
        self.req_id = req_id
        self.first_ns = 0
        self.parser.reset()
        self.start_ns = monotonic_ns()
        self.transport.write(data)  # type: ignore[union-attr]
        return self.start_ns

    def data_received(self, data: bytes) -> None:
        if self.req_id < 0:
            self.abort()  # the server spoke without being asked
            return
        if not self.first_ns:
            self.first_ns = monotonic_ns()
        try:
            done = self.parser.feed(data)
        except ProtocolViolation:
            self._fail(PROTOCOL)
            self.abort()
            return
        if done:
            req_id, self.req_id = self.req_id, -1
            self.owner.on_response(self, req_id, monotonic_ns())

    def _fail(self, code: int) -> None:
        req_id, self.req_id = self.req_id, -1
        if req_id >= 0:
            self.owner.on_failure(self, req_id, code, monotonic_ns())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.req_id >= 0:
            if self.parser.until_close:
                req_id, self.req_id = self.req_id, -1
                self.owner.on_response(self, req_id, monotonic_ns())
            else:
                self._fail(RESET)
        self.owner.on_lost(self)

    def abandon(self) -> int:
        """Forget the outstanding request (timed out) and drop the connection."""
        req_id, self.req_id = self.req_id, -1
        self.abort()
        return req_id

    def abort(self) -> None:
        """Close at once, without waiting for buffered writes."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
