"""What a server process holds open, told apart: the connections its pools keep, and the rest.

::

    /proc/<pid>/fd ──┬─ inbound   TCP connections accepted on the server's port (its clients'
                     │            keep-alive connections: bounded by the clients' pools)
                     ├─ outbound  TCP connections it opened to its upstream (its own pool:
                     │            bounded by what it can have in flight upstream at once)
                     └─ other     the rest: listening socket, event loop, pipes, files, logs

A pool is a rank of taxis that grows only when every taxi is out: aiohttp's connector
hands out the idle connection that has waited longest (first in, first out), so under
steady load each is reused within seconds and none idles long enough to be closed. The
number of connections is then the highest concurrency seen so far: a staircase that
steps up whenever the load reaches a new peak (a slow moment on a shared machine is
enough) and never comes down while the load lasts. That is a pool filling toward its
bound, not a leak, and a slope test on the total cannot tell the two apart.

So a soak judges the three apart (:func:`judge_pools` for the connections):

- ``other`` must stay flat (a slope test, as for memory): a leaked file, pipe or socket
  that is not a connection shows here;
- ``inbound`` and ``outbound`` must stay within their pools' bounds, stated with the
  reason for each bound;
- once the load stops and the pools' idle timeouts have passed, every connection must
  be gone (:func:`connections` polled until zero): a leaked connection never closes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import psutil

__all__ = ["Connections", "connections", "judge_pools"]


@dataclass(frozen=True, slots=True)
class Connections:
    """One process's open descriptors now, split as the module docstring draws them."""

    fds: int
    inbound: int
    outbound: int

    @property
    def other(self) -> int:
        return self.fds - self.inbound - self.outbound


def connections(pid: int, port: int, upstream_port: int | None = None) -> Connections:
    """The descriptors of ``pid``: all, inbound on ``port``, outbound to ``upstream_port``.

    A connection in any state but LISTEN counts (one half-closed and never closed, stuck
    in CLOSE_WAIT, still holds its descriptor and must show).
    """
    proc = psutil.Process(pid)
    listing = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
    inbound = outbound = 0
    for conn in listing(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN or not conn.raddr:
            continue
        if conn.laddr and conn.laddr.port == port:
            inbound += 1
        elif upstream_port is not None and conn.raddr.port == upstream_port:
            outbound += 1
    return Connections(len(os.listdir(f"/proc/{pid}/fd")), inbound, outbound)


def judge_pools(peaks: Mapping[str, int], bounds: Mapping[str, tuple[int, str]],
                drained: Mapping[str, int | None]) -> dict[str, Any]:
    """Each series of connections against its pool's bound, and whether it drained.

    Args:
        peaks: the most connections each series held at once during the load.
        bounds: each series' bound and why it is the bound (a sentence for the report).
        drained: the connections each series still held once the pools' idle timeouts
            had passed after the load (None: not measured).

    Returns:
        ``{series: {"peak", "bound", "why", "left_after_load", "ok"}}``; ``ok`` when the
        peak is within the bound and nothing was left (or not measured).
    """
    out: dict[str, Any] = {}
    for name, (bound, why) in bounds.items():
        peak, left = int(peaks[name]), drained.get(name)
        out[name] = {"peak": peak, "bound": int(bound), "why": why, "left_after_load": left,
                     "ok": peak <= bound and not left}
    return out
