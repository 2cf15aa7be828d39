"""A server's Triton statistics over a run: snapshots through it, differenced over its window.

::

    before the load     connect: one kept-alive connection per worker process (a server
                        that says ``optkit-worker: <i>`` gets new connections until the
                        workers repeat), so the load generator's connections, dealt after
                        ours, are split among workers exactly as without us
    during the run      every ``interval_s``: GET /v2/models/stats on each connection
                        -> (t_ns, {worker: answer})
    after the run       window(ws, we): the first snapshot at or after the window's start
                        and the last at or before its end; tier_means(start, end) differences
                        them into mean ms per successful request of each of Triton's parts

The load generator runs in its own process, so the window's exact start is only known
afterwards; polling brackets it to within ``interval_s`` at each end. A server that answers
anything but 200 with JSON (no statistics extension: 404) is *unavailable*: no snapshots, no
error. Polling costs each worker one small GET per interval (~20 a second at most).

Each part is Triton's (and perf_analyzer's) per-request convention: cumulative ns divided by
successful requests, so a request riding a batch carries its batch's whole model time. The
lab's breakdown (``optkit.lab._breakdown``) and ``optkit bench --out``'s perf_analyzer CSV
(``_perf_csv.py``) both read these.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any, Iterable, Mapping

import numpy as np
import orjson

from ._target import parse_target

__all__ = ["StatsPoller", "STATS_PATH", "WORKER_HEADER", "PARTS", "tier_means", "poll_interval_s",
           "client_mean_ms"]

#: Triton's parts of a request's time on one tier, in the order a request meets them
PARTS = ("queue", "compute_input", "compute_infer", "compute_output")

STATS_PATH = "/v2/models/stats"
#: the header optkit's model server marks each answer with under ``--workers N``
WORKER_HEADER = "optkit-worker"
_MAX_CONNECTIONS = 33  # discovery bound: 32 workers and one repeat


def poll_interval_s(duration_s: float) -> float:
    """How often to snapshot during a window of ``duration_s``: brackets it to 5 % at each
    end, between 20 and 2 snapshots a second."""
    return min(0.5, max(0.05, duration_s / 20))


class StatsPoller:
    """A thread taking ``/v2/models/stats`` snapshots of one tier every ``interval_s``.

    Use as a context manager around the load (``with StatsPoller(url): run_bench(...)``);
    :meth:`connect` runs at entry, before the load opens its connections.
    """

    def __init__(self, url: str, interval_s: float = 0.25, timeout_s: float = 1.0) -> None:
        self._target = parse_target(url)
        self._interval = interval_s
        self._timeout = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        #: worker id ("" for a single process) -> its kept-alive connection
        self._conns: dict[str, http.client.HTTPConnection] = {}
        #: (monotonic ns at the snapshot's middle, {worker: answer}), in time order
        self.snapshots: list[tuple[int, dict[str, Any]]] = []
        self.available = False

    def __repr__(self) -> str:
        return (f"<StatsPoller {self._target.url} [{len(self._conns)} workers | "
                f"{len(self.snapshots)} snapshots{'' if self.available else ', unavailable'}]>")

    def _open(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._target.host, self._target.port,
                                          timeout=self._timeout)

    def _get(self, conn: http.client.HTTPConnection) -> tuple[str | None, Any]:
        """(worker id or None, the JSON answer); raises OSError/HTTPException/ValueError."""
        conn.request("GET", self._target.prefix + STATS_PATH)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise ValueError(f"status {resp.status}")
        return resp.getheader(WORKER_HEADER), orjson.loads(raw)

    def connect(self) -> dict[str, Any]:
        """Open one connection per worker; return the first snapshot ({} if unavailable)."""
        first: dict[str, Any] = {}
        repeats = 0
        for _ in range(_MAX_CONNECTIONS):
            conn = self._open()
            try:
                worker, doc = self._get(conn)
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                break
            if worker is None:  # one process: its answers are the tier's
                self._conns, first = {"": conn}, {"": doc}
                break
            if worker in self._conns:  # dealt round-robin: a repeat means all were seen
                conn.close()
                repeats += 1
                if repeats >= 2:
                    break
                continue
            repeats = 0
            self._conns[worker], first[worker] = conn, doc
        self.available = bool(self._conns)
        return first

    def snapshot(self) -> None:
        """Ask every worker now; keep the answers that came (a worker that failed is asked
        again on a new connection only if it is the one the server deals that connection)."""
        t0 = time.monotonic_ns()
        answers: dict[str, Any] = {}
        for worker, conn in list(self._conns.items()):
            try:
                answers[worker] = self._get(conn)[1]
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                fresh = self._open()
                try:
                    got, doc = self._get(fresh)
                except (OSError, http.client.HTTPException, ValueError):
                    fresh.close()
                    continue
                if (got or "") == worker:
                    self._conns[worker], answers[worker] = fresh, doc
                else:
                    fresh.close()
        if answers:
            self.snapshots.append(((t0 + time.monotonic_ns()) // 2, answers))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.snapshot()

    def __enter__(self) -> "StatsPoller":
        first = self.connect()
        if self.available:
            self.snapshots.append((time.monotonic_ns(), first))
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
            self.snapshot()
        for conn in self._conns.values():
            conn.close()

    def window(self, start_ns: int, end_ns: int
               ) -> tuple[tuple[int, dict[str, Any]], tuple[int, dict[str, Any]]] | None:
        """The snapshots bracketing the most of [start_ns, end_ns] from inside it: the first
        at or after the start and the last at or before the end (None if fewer than two)."""
        inside = [s for s in self.snapshots if start_ns <= s[0] <= end_ns]
        if len(inside) < 2:
            return None
        return inside[0], inside[-1]


def _totals(doc: Any, models: Iterable[str] | None) -> dict[str, int] | None:
    """Σ over a ``{"model_stats": [...]}`` answer's entries (of ``models`` if given):
    success count and ns, and each part's ns. None when it is not Triton's format."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("model_stats"), list):
        return None
    wanted = set(models) if models is not None else None
    out = {"success_n": 0, "success_ns": 0, **{part: 0 for part in PARTS}}
    try:
        for entry in doc["model_stats"]:
            if wanted is not None and entry.get("name") not in wanted:
                continue
            stats = entry["inference_stats"]
            out["success_n"] += int(stats["success"]["count"])  # uint64 may come as a string
            out["success_ns"] += int(stats["success"]["ns"])
            for part in PARTS:
                out[part] += int(stats[part]["ns"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return out


def tier_means(start: Mapping[str, Any], end: Mapping[str, Any],
               models: Iterable[str] | None = None) -> dict[str, float] | None:
    """One tier's mean ms per successful request between two snapshots.

    Args:
        start, end: worker id -> that worker's statistics answer (one process: one entry,
            any id). Only workers in both snapshots count: a mean over some workers' requests
            is still a mean per request.
        models: the models to add up (None: every model listed).

    Returns:
        ``{"requests", "server_ms", "queue_ms", "compute_input_ms", "compute_infer_ms",
        "compute_output_ms"}`` (``server_ms``: the tier's whole time, Triton's success), or
        None when no request succeeded in between or an answer is not Triton's format.
    """
    names = list(models) if models is not None else None
    delta = {"success_n": 0, "success_ns": 0, **{part: 0 for part in PARTS}}
    for worker in set(start) & set(end):
        a, b = _totals(start[worker], names), _totals(end[worker], names)
        if a is None or b is None:
            return None
        for key in delta:
            delta[key] += b[key] - a[key]
    n = delta["success_n"]
    if n <= 0 or any(v < 0 for v in delta.values()):  # none, or a worker restarted
        return None
    out = {"requests": float(n), "server_ms": delta["success_ns"] / n / 1e6}
    out.update({f"{part}_ms": delta[part] / n / 1e6 for part in PARTS})
    return out


def client_mean_ms(records: Mapping[str, np.ndarray], start_ns: int, end_ns: int,
                   ok_code: int = 0) -> tuple[float | None, int]:
    """Mean latency (end − scheduled, ms) of the successful requests answered within
    [start_ns, end_ns], and how many: the client's side of the same span the servers'
    snapshots cover (their counters move when a request is answered)."""
    if not records or "end_ns" not in records:
        return None, 0
    end, sched = records["end_ns"], records["scheduled_ns"]
    sel = (records["error_code"] == ok_code) & (end >= start_ns) & (end <= end_ns)
    n = int(sel.sum())
    if n == 0:
        return None, 0
    return float((end[sel] - sched[sel]).mean() / 1e6), n
