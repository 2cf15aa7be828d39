"""``optkit serve model-server --workers N``: N processes sharing one port.

::

    parent (no loop, no models): listens on PORT, deals each connection to a worker
      ├─ worker 0: its own uvloop, its own models ── serves what it is dealt  + its own
      ├─ worker 1: its own uvloop, its own models ── serves what it is dealt    port each
      └─ ...

The parent accepts every connection and passes it (SCM_RIGHTS, over a Unix socket
per worker) to the workers in turn, so a keep-alive connection stays with one worker
and N workers hold equal shares of them: 32 connections are 16 and 16 for two.
Letting the kernel spread them (each worker listening with SO_REUSEPORT, as this
module first did) hashes addresses: measured here, wrk's 32 connections split
anywhere from 16/16 to 11/21, and the worker holding more sets the tail latency.
Node's cluster module deals connections from its primary for the same reason.
The cost is one hop through the parent per *connection* (not per request).

Statistics, honestly: nothing is added up across processes. Every answer says which
worker gave it (``optkit-worker: <i>``), so ``/stats``, ``/metrics`` and
``/v2/models[/{m}]/stats`` on the shared port are the answering worker's own. Each
worker also listens on a port of its own (loopback, like the shared one); the parent
writes them to ``<port-file>.workers.json`` (``[{"worker", "pid", "url"}]``) and prints
them. Scrape each worker there (one Prometheus target per worker) and sum, e.g.
``sum(optkit_model_server_server_infer_requests)``.

Lifecycle: the parent listens before it starts the workers (so ``--port 0`` works
and no other program takes the port meanwhile; early clients wait in the backlog),
deals connections once every worker is up, then writes the port file. On
SIGTERM/SIGINT it closes the port, then passes the signal to every worker, each of
which drains as a single server does; it exits 0 when all exit 0. If a worker dies
on its own, the parent stops the others and exits 1: restarting is left to a
supervisor (systemd, Kubernetes), as for one process.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ._runner import _write_atomically

__all__ = ["run_workers"]

_START_TIMEOUT_S = 120.0  # every worker loads its models before it listens
_BACKLOG = 1024  # connections waiting to be accepted, and accepted per wake-up


def run_workers(workers: int, child_args: Sequence[str], *, host: str, port: int,
                port_file: str | None, shutdown_timeout_s: float) -> int:
    """Run ``workers`` copies of ``optkit serve model-server <child_args>`` on one port.

    Returns the exit status for the command: 0 after a clean drain of every worker,
    1 when a worker failed to start or died.
    """
    listener = socket.create_server((host, port), backlog=_BACKLOG)
    listener.setblocking(False)
    bound = listener.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="optkit-workers-"))
    procs: list[subprocess.Popen[bytes]] = []
    channels: list[socket.socket] = []
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for i in range(workers):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            channels.append(ours)
            cmd = [sys.executable, "-m", "optkit", "serve", "model-server", *child_args,
                   "--host", host, "--port", "0", "--worker-id", str(i),
                   "--channel-fd", str(theirs.fileno()),
                   "--port-file", str(folder / f"worker{i}.port")]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                          pass_fds=[theirs.fileno()]))
            theirs.close()
        table = _wait_listening(procs, folder, host, stop)
        if table is None:
            return _stop_all(procs, shutdown_timeout_s, failed=not stop["signal"])
        if port_file:
            _write_atomically(f"{port_file}.workers.json", json.dumps(table))
            _write_atomically(port_file, str(bound))
        for row in table:
            print(f"optkit: worker {row['worker']} pid {row['pid']}: its own stats at "
                  f"{row['url']}/stats", file=sys.stderr, flush=True)
        print(f"optkit: {workers} workers serving on http://{host}:{bound}",
              file=sys.stderr, flush=True)
        dealer = _Dealer(listener, channels)
        while not stop["signal"]:
            if any(p.poll() is not None for p in procs):
                print("optkit: a worker exited; stopping the others", file=sys.stderr,
                      flush=True)
                return _stop_all(procs, shutdown_timeout_s, failed=True)
            try:
                readable, _, _ = select.select([listener], [], [], 0.1)
            except InterruptedError:  # a signal: the loop condition says what to do
                continue
            if readable:
                dealer.deal()
        listener.close()  # no new connections while the workers drain theirs
        print(f"optkit: connections dealt to the workers: {dealer.dealt}", file=sys.stderr,
              flush=True)
        return _stop_all(procs, shutdown_timeout_s, failed=False)
    finally:
        for p in procs:  # never leave a worker behind, whatever happened above
            if p.poll() is None:
                p.kill()
                p.wait(5)
        listener.close()
        for channel in channels:
            channel.close()
        for f in folder.iterdir():
            f.unlink(missing_ok=True)
        folder.rmdir()


class _Dealer:
    """Accepts what is waiting on the port and passes each connection to the next worker."""

    def __init__(self, listener: socket.socket, channels: list[socket.socket]) -> None:
        self._listener, self._channels, self._next = listener, channels, 0
        self.dealt = [0] * len(channels)

    def deal(self) -> None:
        for _ in range(_BACKLOG):  # bounded: a flood cannot hold the parent here
            try:
                conn, _ = self._listener.accept()
            except OSError:  # nothing waiting (EAGAIN), the client left, or fds ran out
                return
            with conn:  # the worker holds its own copy once it is sent
                self._pass(conn)

    def _pass(self, conn: socket.socket) -> None:
        n = len(self._channels)
        for k in range(n):  # in turn; a worker whose queue is full is skipped
            i = (self._next + k) % n
            try:
                socket.send_fds(self._channels[i], [b"c"], [conn.fileno()])
            except OSError:  # its queue is full, or it is gone (the main loop notices)
                continue
            self._next, self.dealt[i] = (i + 1) % n, self.dealt[i] + 1
            return
        # no worker could take it (every queue full): closing it refuses the client


def _wait_listening(procs: list[subprocess.Popen[bytes]], folder: Path, host: str,
                    stop: dict[str, int]) -> list[dict[str, object]] | None:
    """Each worker's row once all listen, or None (one exited, time ran out, a signal)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline and not stop["signal"]:
        if any(p.poll() is not None for p in procs):
            print("optkit: a worker exited while starting", file=sys.stderr, flush=True)
            return None
        own = [folder / f"worker{i}.port" for i in range(len(procs))]
        if all(f.exists() for f in own):
            return [{"worker": i, "pid": p.pid, "url": f"http://{host}:{int(own[i].read_text())}"}
                    for i, p in enumerate(procs)]
        time.sleep(0.02)
    if not stop["signal"]:
        print("optkit: workers did not start in time", file=sys.stderr, flush=True)
    return None


def _stop_all(procs: list[subprocess.Popen[bytes]], shutdown_timeout_s: float, *,
              failed: bool) -> int:
    """SIGTERM every worker (each drains), wait, SIGKILL what outlives the bound."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + shutdown_timeout_s + 5
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait(5))
    return 1 if failed or any(codes) else 0
