"""What load to offer: a closed loop of N users, or an open-loop arrival schedule.

Two questions, two load models::

    closed:32      32 connections, each sends again the moment it gets an answer
                   -> "how much can it serve?"  (throughput)
    open:2000      requests leave on a timetable (constant or Poisson gaps),
                   whether or not earlier ones came back
                   -> "how fast at this load?"  (latency, from the scheduled time)

In the open loop the requests ride ``connections`` keep-alive connections; a
request due while all of them are busy waits for one and is a *late send*. At
most ``max_in_flight`` requests may be outstanding (sent or waiting); one more
is *dropped* and counted, never queued without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .._exceptions import ConfigError

__all__ = ["LoadSpec", "schedule_offsets_ns"]

Mode = Literal["closed", "open"]
Arrival = Literal["constant", "poisson"]
Engine = Literal["builtin", "wrk", "ray"]


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    """The offered load of one run.

    Args:
        mode: ``closed`` (fixed concurrency) or ``open`` (fixed arrival rate).
        concurrency: closed loop: connections, each with one request in flight.
        rate: open loop: requests per second offered.
        arrival: open loop: ``constant`` gaps or ``poisson`` (exponential, seeded).
        connections: open loop: keep-alive connections the requests ride on.
        max_in_flight: open loop: cap on outstanding requests; beyond it, dropped.
        engine: ``builtin`` (asyncio, both modes), ``wrk`` (closed loop only) or ``ray``
            (the built-in generator split over Ray actors, both modes; ``optkit[ray]``).
    """

    mode: Mode
    concurrency: int = 1
    rate: float = 0.0
    arrival: Arrival = "constant"
    connections: int = 64
    max_in_flight: int = 1024
    engine: Engine = "builtin"

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ConfigError(f"load.mode must be 'closed' or 'open', got {self.mode!r}")
        if self.arrival not in ("constant", "poisson"):
            raise ConfigError(f"load.arrival must be 'constant' or 'poisson', got {self.arrival!r}")
        if self.engine not in ("builtin", "wrk", "ray"):
            raise ConfigError(f"load.engine must be 'builtin', 'wrk' or 'ray', "
                              f"got {self.engine!r}")
        for name in ("concurrency", "connections", "max_in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"load.{name} must be an integer >= 1, got {value!r}")
        if self.mode == "open":
            if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) \
                    or not self.rate > 0:
                raise ConfigError(f"load.rate must be > 0 for the open loop, got {self.rate!r}")
            if self.engine == "wrk":
                raise ConfigError("load.engine 'wrk' only runs the closed loop "
                                  "(wrk 4 has no arrival schedule); use engine 'builtin'")

    @classmethod
    def closed(cls, concurrency: int, **kwargs: object) -> "LoadSpec":
        """A closed loop of ``concurrency`` connections."""
        return cls(mode="closed", concurrency=concurrency, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def open(cls, rate: float, **kwargs: object) -> "LoadSpec":
        """An open loop offering ``rate`` requests per second."""
        return cls(mode="open", rate=rate, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str, **kwargs: object) -> "LoadSpec":
        """Read a label such as ``'closed:32'`` or ``'open:2000'``."""
        mode, _, value = text.partition(":")
        try:
            if mode == "closed":
                return cls.closed(int(value), **kwargs)
            if mode == "open":
                return cls.open(float(value), **kwargs)
        except ValueError:
            pass
        raise ConfigError(f"load must look like 'closed:32' or 'open:2000', got {text!r}")

    @property
    def label(self) -> str:
        """``'closed:32'`` or ``'open:2000'``: the ``load`` column of the trial table."""
        if self.mode == "closed":
            return f"closed:{self.concurrency}"
        return f"open:{self.rate:g}"

    def to_dict(self) -> dict[str, object]:
        """Plain data for result files."""
        return {"mode": self.mode, "concurrency": self.concurrency, "rate": self.rate,
                "arrival": self.arrival, "connections": self.connections,
                "max_in_flight": self.max_in_flight, "engine": self.engine,
                "label": self.label}


def schedule_offsets_ns(rate: float, duration_s: float, arrival: Arrival,
                        seed: int) -> np.ndarray:
    """Send times (ns after the start) of every request due within ``duration_s``.

    ``constant``: one every ``1/rate`` seconds. ``poisson``: exponential gaps
    of mean ``1/rate`` from a generator seeded with ``seed``, so a run's
    timetable is reproducible.
    """
    if rate <= 0 or duration_s <= 0:
        return np.zeros(0, dtype=np.int64)
    expected = rate * duration_s
    if arrival == "constant":
        n = int(np.ceil(expected))
        offsets = np.arange(n, dtype=np.float64) / rate
    else:
        rng = np.random.default_rng(seed)
        n = int(expected + 10 * np.sqrt(expected) + 10)
        gaps = rng.exponential(1.0 / rate, size=n)
        gaps[0] = 0.0  # the first request leaves at the start
        offsets = np.cumsum(gaps)
    offsets = offsets[offsets < duration_s]
    return np.round(offsets * 1e9).astype(np.int64)
