"""Model lifecycle events while a trial runs: the Thursday workload.

::

    ChurnPlan(models=("synthetic-slow",), every_s=1.0)
    with Churn(plan, model_server_url):         a thread beside the load generator
        t=0      POST /v2/repository/models/synthetic-slow/load  ─┐ one event: from the
                 poll the repository index until READY / FAILED  ─┘ request to its end
        t=1.0    next model in ``models`` (round robin) ...
    churn.events  ->  [ChurnEvent(model, action, start_ns, end_ns, status, state)]

A load of a model that is already loaded is a reload (the v2 repository API's
meaning): the server reads the newest version again and swaps it in. With the
baseline's synchronous loading the load request itself blocks the model
server's loop for the whole load; with background loading the loop keeps
serving while a worker reads. Either way an event ends when the index says the
model is READY or FAILED, so its duration is the load's, not the HTTP call's.

Events are timed with ``time.monotonic_ns`` (CLOCK_MONOTONIC, the generator's
clock too), so a timeline can put them next to each request. Everything is
bounded: every HTTP call has a timeout, an event waits at most
``event_timeout_s``, and the thread stops when the trial does.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import quote

from .._exceptions import ConfigError

__all__ = ["ChurnPlan", "ChurnEvent", "Churn"]


@dataclass(frozen=True, kw_only=True)
class ChurnPlan:
    """What to do to the model repository while traffic runs.

    Args:
        models: the models to act on, round robin (names in the repository).
        every_s: seconds between the starts of two events (an event still running
            when the next is due delays it: one event at a time).
        action: ``load`` (load or reload) or ``cycle`` (unload, then load again).
        start_s: delay before the first event (lets the warm-up see none or some).
        event_timeout_s: the longest one event may take before it is recorded as timed out.
    """

    models: tuple[str, ...]
    every_s: float = 1.0
    action: Literal["load", "cycle"] = "load"
    start_s: float = 0.5
    event_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise ConfigError(f"churn.models must name at least one model, got {self.models!r}")
        if not self.every_s > 0 or self.start_s < 0 or not self.event_timeout_s > 0:
            raise ConfigError("churn: every_s and event_timeout_s must be > 0, start_s >= 0")
        if self.action not in ("load", "cycle"):
            raise ConfigError(f"churn.action must be 'load' or 'cycle', got {self.action!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = list(self.models)
        return out


@dataclass(frozen=True)
class ChurnEvent:
    """One lifecycle event: from the request to the model being READY (or FAILED)."""

    model: str
    action: str
    start_ns: int
    end_ns: int
    status: int  # HTTP status of the load request (0: no answer)
    state: str  # the model's state at the end: READY, FAILED, TIMEOUT, ...

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class Churn:
    """Runs a :class:`ChurnPlan` against a model server in a thread (a context manager)."""

    def __init__(self, plan: ChurnPlan, url: str, *, poll_s: float = 0.02) -> None:
        self.plan, self.url, self.poll_s = plan, url.rstrip("/"), poll_s
        self.events: list[ChurnEvent] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optkit-churn", daemon=True)

    def __enter__(self) -> "Churn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.plan.event_timeout_s + 5)

    def __repr__(self) -> str:
        return f"<Churn {self.url} {self.plan.models} [{len(self.events)} events]>"

    def _run(self) -> None:
        plan = self.plan
        due = time.monotonic() + plan.start_s
        k = 0
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            model = plan.models[k % len(plan.models)]
            k += 1
            if plan.action == "cycle":
                self._event(model, "unload")
            self._event(model, "load")
            due = max(due + plan.every_s, time.monotonic())

    def _event(self, model: str, action: str) -> None:
        start = time.monotonic_ns()
        deadline = time.monotonic() + self.plan.event_timeout_s
        status = self._post(f"/v2/repository/models/{quote(model, safe='')}/{action}",
                            timeout=self.plan.event_timeout_s)
        want = ("UNAVAILABLE",) if action == "unload" else ("READY", "FAILED")
        state = self._state(model)
        while state not in want and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(self.poll_s)
            state = self._state(model)
        if state not in want:
            state = "TIMEOUT" if time.monotonic() >= deadline else f"STOPPED ({state})"
        self.events.append(ChurnEvent(model, action, start, time.monotonic_ns(), status, state))

    def _post(self, path: str, timeout: float) -> int:
        request = urllib.request.Request(self.url + path, data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(64 * 1024)
                return int(response.status)
        except urllib.error.HTTPError as exc:
            self.errors.append(f"{path}: HTTP {exc.code}")
            return int(exc.code)
        except (OSError, urllib.error.URLError) as exc:
            self.errors.append(f"{path}: {exc}")
            return 0

    def _state(self, model: str) -> str:
        request = urllib.request.Request(self.url + "/v2/repository/index", data=b"{}",
                                         method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                index = json.loads(response.read(1024 * 1024))
        except (OSError, ValueError, urllib.error.URLError):
            return "UNKNOWN"
        states = [e.get("state", "UNKNOWN") for e in index
                  if isinstance(e, dict) and e.get("name") == model]
        if not states:
            return "UNAVAILABLE"
        # several versions: the event is done when none is still moving
        for moving in ("LOADING", "UNLOADING"):
            if moving in states:
                return moving
        return "READY" if "READY" in states else states[-1]

    def records(self) -> list[dict[str, Any]]:
        """The events as plain rows (``trial.json``)."""
        return [{**asdict(e), "seconds": e.seconds} for e in self.events]
