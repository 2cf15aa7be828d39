"""The raw per-request record: one row per request the generator scheduled.

::

    scheduled_ns  when the timetable said to send (closed loop: = start_ns)
    start_ns      when the bytes went to the socket (0: never sent)
    first_byte_ns when the first byte of the answer arrived (0: none)
    end_ns        when the answer was complete, or the request failed
    status        HTTP status (0: no answer)
    error_code    OK, HTTP, CONNECT, RESET, TIMEOUT, PROTOCOL, DROPPED
    model         index into the run's model list (-1: not a request)
    retried       1 when the answer carried ``optkit-retried: 1`` (the gateway's
                  pool sent it upstream twice), else 0

Times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC), which every process on
the machine shares, so the generator's records line up with samples the
parent takes of the server processes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COLUMNS", "ERROR_KINDS", "TRANSPORT_ERRORS", "OK", "HTTP", "CONNECT", "RESET",
           "TIMEOUT", "PROTOCOL", "DROPPED", "Records"]

OK, HTTP, CONNECT, RESET, TIMEOUT, PROTOCOL, DROPPED = range(7)
ERROR_KINDS = ("ok", "http", "connect", "reset", "timeout", "protocol", "dropped")
TRANSPORT_ERRORS = (CONNECT, RESET, TIMEOUT, PROTOCOL)

COLUMNS: dict[str, type] = {
    "scheduled_ns": np.int64,
    "start_ns": np.int64,
    "first_byte_ns": np.int64,
    "end_ns": np.int64,
    "status": np.int16,
    "error_code": np.int8,
    "model": np.int16,
    "retried": np.int8,
}


class Records:
    """Growable column arrays indexed by request id (capacity doubles when full)."""

    def __init__(self, capacity: int = 65536) -> None:
        self.n = 0
        self._cap = max(16, capacity)
        self.cols = {name: np.zeros(self._cap, dtype=dt) for name, dt in COLUMNS.items()}
        self.bind()

    def bind(self) -> None:
        """Expose the columns as attributes (the hot loop indexes them directly)."""
        c = self.cols
        self.scheduled, self.start, self.first = c["scheduled_ns"], c["start_ns"], c["first_byte_ns"]
        self.end, self.status, self.error, self.model = (
            c["end_ns"], c["status"], c["error_code"], c["model"])
        self.retried = c["retried"]

    def add(self, scheduled_ns: int, model: int) -> int:
        """Reserve the next row; return its id."""
        i = self.n
        if i == self._cap:
            self._cap *= 2
            for name, arr in self.cols.items():
                grown = np.zeros(self._cap, dtype=arr.dtype)
                grown[:i] = arr
                self.cols[name] = grown
            self.bind()
        self.n = i + 1
        self.scheduled[i] = scheduled_ns
        self.model[i] = model
        return i

    def arrays(self) -> dict[str, np.ndarray]:
        """The filled part of every column (copies)."""
        return {name: arr[: self.n].copy() for name, arr in self.cols.items()}
