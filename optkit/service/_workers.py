"""``optkit serve model-server --workers N``: N processes sharing one port.

::

    parent (no loop, no models): reserves the port, starts N workers, waits
      ├─ worker 0: its own uvloop, its own models ── listens on PORT (SO_REUSEPORT)
      ├─ worker 1: its own uvloop, its own models ── listens on PORT (SO_REUSEPORT)   + its own
      └─ ...                                                                           port each

The kernel spreads *connections* over the workers listening on the shared port
(SO_REUSEPORT hashes each connection's addresses), so a keep-alive connection
stays with one worker; many clients spread, one client does not.

Statistics, honestly: nothing is added up across processes. Every answer says
which worker gave it (``optkit-worker: <i>``), so ``/stats`` and ``/metrics`` on
the shared port are the answering worker's own. Each worker also listens on a
port of its own (loopback, like the shared one); the parent writes them to
``<port-file>.workers.json`` (``[{"worker", "pid", "url"}]``) and prints them. Scrape
each worker there (one Prometheus target per worker) and sum, e.g.
``sum(optkit_model_server_server_infer_requests)``.

Lifecycle: the parent reserves the port with a bound, never-listening SO_REUSEPORT
socket (so ``--port 0`` works and no other program takes the port meanwhile),
writes the port file once every worker is listening, and on SIGTERM/SIGINT passes
the signal to every worker, each of which drains as a single server does; it exits
0 when all exit 0. If a worker dies on its own, the parent stops the others and
exits 1: restarting is left to a supervisor (systemd, Kubernetes), as for one process.
"""

from __future__ import annotations

import json
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


def run_workers(workers: int, child_args: Sequence[str], *, host: str, port: int,
                port_file: str | None, shutdown_timeout_s: float) -> int:
    """Run ``workers`` copies of ``optkit serve model-server <child_args>`` on one port.

    Returns the exit status for the command: 0 after a clean drain of every worker,
    1 when a worker failed to start or died.
    """
    reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind((host, port))  # bound, never listening: takes no connections
    bound = reserve.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="optkit-workers-"))
    procs: list[subprocess.Popen[bytes]] = []
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for i in range(workers):
            cmd = [sys.executable, "-m", "optkit", "serve", "model-server", *child_args,
                   "--host", host, "--port", str(bound), "--worker-id", str(i),
                   "--port-file", str(folder / f"worker{i}.port")]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
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
        while not stop["signal"]:
            if any(p.poll() is not None for p in procs):
                print("optkit: a worker exited; stopping the others", file=sys.stderr,
                      flush=True)
                return _stop_all(procs, shutdown_timeout_s, failed=True)
            time.sleep(0.1)
        return _stop_all(procs, shutdown_timeout_s, failed=False)
    finally:
        for p in procs:  # never leave a worker behind, whatever happened above
            if p.poll() is None:
                p.kill()
                p.wait(5)
        reserve.close()
        for f in folder.iterdir():
            f.unlink(missing_ok=True)
        folder.rmdir()


def _wait_listening(procs: list[subprocess.Popen[bytes]], folder: Path, host: str,
                    stop: dict[str, int]) -> list[dict[str, object]] | None:
    """Each worker's row once all listen, or None (one exited, time ran out, a signal)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline and not stop["signal"]:
        if any(p.poll() is not None for p in procs):
            print("optkit: a worker exited while starting", file=sys.stderr, flush=True)
            return None
        own = [folder / f"worker{i}.port.own" for i in range(len(procs))]
        shared = [folder / f"worker{i}.port" for i in range(len(procs))]
        if all(f.exists() for f in own + shared):
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
