"""Run an aiohttp app as a server process: uvloop, a port file, graceful SIGTERM.

``serve(app, ...)`` binds (port 0 picks a free one), writes the bound port to
``port_file`` once it is listening (so a launcher never races for ports), then
waits for SIGTERM/SIGINT. On the signal it stops accepting, lets in-flight
requests finish (up to ``shutdown_timeout`` seconds) and exits.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from ._http import STATS_KEY

__all__ = ["serve", "install_uvloop", "watch_server", "WORKER_HEADER"]

WORKER_HEADER = "optkit-worker"


def install_uvloop() -> bool:
    """Use uvloop's event loop where it is installed; say whether it is."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # type: ignore[attr-defined]
    return True


async def _serve(app: web.Application, host: str, port: int, port_file: str | None,
                 shutdown_timeout: float, access_log: bool, worker: int | None = None,
                 channel_fd: int | None = None) -> None:
    kwargs: dict[str, Any] = {"shutdown_timeout": shutdown_timeout}
    if not access_log:
        kwargs["access_log"] = None
    counters = app.get(STATS_KEY)
    if worker is not None:  # one of --workers N sharing the port: say which one answered
        if counters is not None:  # by the guard (a response-prepare signal costs ~1 us each)
            counters.marks = ((WORKER_HEADER, str(worker)),)
        else:
            app.on_response_prepare.append(_worker_header(str(worker)))
    runner = web.AppRunner(app, **kwargs)
    await runner.setup()
    if counters is not None:
        watch_server(runner, counters)
    # Everything built so far (models, the app, imported modules) lives as long as the
    # process: move it out of the collector's way, so a collection while serving walks
    # only what requests allocated, not the whole heap (gc.freeze's documented use).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    channel = None
    if channel_fd is not None:  # a worker: its clients come from the parent, which listens;
        # its port (0: any free one) is its own, for /stats and /metrics of this worker alone
        channel = socket.socket(fileno=channel_fd)
        _adopt_connections(loop, runner, channel)
    site = web.TCPSite(runner, host, port, backlog=1024 if channel is None else 128,
                       reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if port_file:
        _write_atomically(port_file, str(bound))
    print(f"optkit: serving on http://{host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if channel is not None:  # take no more connections; then drain like a single server
        loop.remove_reader(channel.fileno())
        channel.close()
    await runner.cleanup()
    if counters is not None:  # the drain's receipt: every accepted request completed
        print(f"optkit: stopped after draining: accepted={counters.accepted} "
              f"completed={counters.completed} in_flight={counters.in_flight} "
              f"cancelled={counters.cancelled} infer_requests={counters.infer_requests}",
              file=sys.stderr, flush=True)


def _adopt_connections(loop: asyncio.AbstractEventLoop, runner: web.AppRunner,
                       channel: socket.socket) -> None:
    """Serve every client connection the parent passes over ``channel`` (one socket per
    message, SCM_RIGHTS), as if this process had accepted it."""
    channel.setblocking(False)
    server = runner.server
    assert server is not None
    pending: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak refs)

    async def adopt(sock: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(server, sock)
        except OSError:  # the client already left
            sock.close()

    def ready() -> None:
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(channel, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                fds = []
            if not fds:  # the parent is gone: no more connections will come
                loop.remove_reader(channel.fileno())
                return
            sock = socket.socket(fileno=fds[0])
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(adopt(sock))
            pending.add(task)
            task.add_done_callback(pending.discard)

    loop.add_reader(channel.fileno(), ready)


def serve(app: web.Application, *, host: str = "127.0.0.1", port: int = 0,
          port_file: str | None = None, shutdown_timeout: float = 10.0,
          access_log: bool = False, worker: int | None = None,
          channel_fd: int | None = None) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain and return.

    ``worker``: this process is worker ``worker`` of several sharing a port (see
    :mod:`optkit.service._workers`); it marks every answer ``optkit-worker: <worker>``.
    ``channel_fd``: a Unix socket the parent passes this worker's client connections
    over; the worker then listens only on ``port``, its own (for its ``/stats``).
    """
    install_uvloop()
    asyncio.run(_serve(app, host, port, port_file, shutdown_timeout, access_log, worker,
                       channel_fd))


def watch_server(runner: web.AppRunner, counters: Any) -> None:
    """Let ``counters`` see the runner's HTTP server: open connections, requests in hand."""
    server = runner.server
    if server is not None:
        counters.connections = lambda: len(server.connections)
        counters.busy = lambda: _busy(server, counters)


def _busy(server: Any, counters: Any) -> int:
    """Requests this server has read and not yet answered, on every connection.

    Handed to a handler (aiohttp's ``requests_count``, and the gRPC front end's
    ``handed``) minus answered or given up (the guard's ``completed`` and ``cancelled``),
    plus those parsed and still queued on their connection. A request read in this loop iteration is in one of the two, so 1 means the
    asking handler's own request is the only one: no other can join a batch this iteration.
    aiohttp keeps the per-connection queue private; without it, the count is never 1.
    """
    queued = 0
    for handler in server.connections:
        messages = getattr(handler, "_messages", None)
        if messages is None:
            return -1
        queued += len(messages)
    return (server.requests_count + counters.handed - counters.completed - counters.cancelled
            + queued)


def _write_atomically(path: str, text: str) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _worker_header(worker: str) -> Any:
    async def mark(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = worker
    return mark
