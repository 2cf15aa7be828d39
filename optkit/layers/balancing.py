"""Spreading upstream requests over N servers: least outstanding, passive health.

::

                      ┌─ upstream A  pool A   outstanding 3   healthy
    request ─ pick ───┼─ upstream B  pool B   outstanding 1   healthy   ◀── least: B
                      └─ upstream C  pool C   outstanding 0   EJECTED (probe in 1.0 s)

**Choice.** Each request goes to the healthy upstream with the fewest requests in
flight *from this gateway* (least outstanding requests); ties go to the next in a
rotation, so an idle set is round robin. Outstanding, not round robin, because a
slow or busy replica then gets less: its requests stay out longer.

**Passive health.** Each upstream has its own client (its own pool, built by the
caller's factory). A request that fails at transport level -- refused, reset,
dropped, timed out (``UpstreamUnavailable``, ``UpstreamTimeout``) -- counts
against its upstream; ``consecutive_failures`` in a row eject it. Any HTTP answer,
whatever its status, is the upstream working and resets the count. A pool
timeout (no free *local* connection) and an unusable answer are not the
upstream's ill health and eject nothing. An ejected upstream takes no traffic;
after ``eject_initial_s`` (doubling per ejection or failed probe in a row, at most
``eject_max_s``) one probe, ``GET /v2/health/ready`` within ``probe_timeout_s``,
decides: 200 readmits it, anything else ejects it again for longer. The streak
ends at its first answered request after readmission. No healthy upstream left
(panic): requests go to the least outstanding of all, so a lone upstream behaves
as without a balancer (refused at once while down) and an answer below 500 from
an ejected one readmits it at once, without waiting for its probe.

**Resend rule.** A request that failed on one upstream is sent once more, to
another healthy one, when that is safe:

- it never left (connection refused, or the connect timed out): always;
- it may have reached the upstream (reset or dropped mid-request): only if the
  caller says it may be repeated -- ``idempotent`` (a GET), or ``resend`` (the
  gateway's v2 infer POST to a stateless model: repeating it costs a second
  inference, changes nothing; ``balancing.resend_infer``, on by default);
- it timed out: never (the upstream may still be running it, the time is spent);
- a streamed answer: only before its head arrived; once bytes went on, never.

An answer resent after a drop is marked ``retried`` (the gateway's
``optkit-retried: 1``; one whose first send never left is not), as
the pool marks its own stale-connection resend; the pool's rule inside each
upstream is unchanged, so one request is sent at most four times in the worst
case (a stale resend on each of two upstreams) and waits at most twice
``upstream_timeout_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from ._base import Layer
from .pooling import PoolStatistics, UpstreamClient, UpstreamResponse, UpstreamStream
from .._config import BalancingConfig
from .._exceptions import OptkitError, UpstreamTimeout, UpstreamUnavailable
from .._metrics import LabelledDict, counter, gauge

__all__ = ["UpstreamBalancer", "BalancingStatistics", "UpstreamStatistics"]

HEALTHY, EJECTED, PROBING = "healthy", "ejected", "probing"
_READY_PATH = "/v2/health/ready"


@dataclass(frozen=True, slots=True)
class UpstreamStatistics:
    """One upstream as the balancer sees it."""

    state: str  # healthy, ejected or probing (a string: /stats only)
    healthy: int = gauge("1 while the upstream takes traffic, else 0")
    outstanding: int = gauge("requests in flight to this upstream now")
    requests: int = counter("requests sent to this upstream (resends included)")
    transport_failures: int = counter("requests that failed at transport level")
    ejections: int = counter("times the upstream was ejected")
    probes: int = counter("readiness probes sent while ejected")
    readmissions: int = counter("probes that brought the upstream back")
    resent_away: int = counter("failed requests resent from here to another upstream")
    eject_remaining_s: float = gauge("seconds until the next probe (0 when healthy)")
    pool: PoolStatistics = field(default_factory=PoolStatistics)


@dataclass(frozen=True, slots=True)
class BalancingStatistics:
    """The set: how many take traffic, and each upstream (keyed by URL)."""

    upstreams_total: int = gauge("upstreams configured", default=0)
    upstreams_healthy: int = gauge("upstreams taking traffic now", default=0)
    resends: int = counter("requests resent to another upstream after a transport failure",
                           default=0)
    resends_unsent: int = counter("of the resends, those whose first send never left (refused "
                                  "connect): their answers are not marked retried", default=0)
    panic_requests: int = counter("requests sent while no upstream was healthy", default=0)
    upstream: dict[str, UpstreamStatistics] = field(
        default_factory=LabelledDict.factory("upstream"))


class _Upstream:
    """One upstream's client, counters and health state (owned by the balancer)."""

    __slots__ = ("url", "client", "state", "outstanding", "requests", "failures_in_row",
                 "failures", "ejections", "probes", "readmissions", "resent_away", "streak",
                 "probe_at", "task")

    def __init__(self, url: str, client: UpstreamClient) -> None:
        self.url, self.client, self.state = url, client, HEALTHY
        self.outstanding = self.requests = self.failures_in_row = self.failures = 0
        self.ejections = self.probes = self.readmissions = self.resent_away = 0
        self.streak = 0  # ejections and failed probes in a row: the back-off's exponent
        self.probe_at = 0.0
        self.task: asyncio.Task[None] | None = None


class UpstreamBalancer(Layer):
    """Least-outstanding balancing with passive health over N upstream base URLs.

    Args:
        urls: upstream base URLs (``http://host:port``), checked by the caller.
        config: the ``balancing`` section (back-off bounds, probe timeout, resend rule).
        make_client: builds one upstream client per URL (a pool or a direct client).
    """

    def __init__(self, urls: Sequence[str], config: BalancingConfig | None,
                 make_client: Callable[[], UpstreamClient]) -> None:
        if not urls:
            raise ValueError("a balancer needs at least one upstream")
        self.config = config or BalancingConfig()
        self._ups = [_Upstream(url, make_client()) for url in urls]
        self._by_url = {u.url: u for u in self._ups}
        self._turn = 0
        self._resends = self._unsent = self._panic = 0
        self._closed = False

    # -- choosing ---------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        return [u.url for u in self._ups]

    def healthy_urls(self) -> list[str]:
        """The upstreams taking traffic now (readiness is: at least one)."""
        return [u.url for u in self._ups if u.state == HEALTHY]

    def _pick(self, exclude: _Upstream | None = None, *,
              any_state: bool = False) -> _Upstream | None:
        """The healthy upstream with the fewest outstanding requests; ties rotate.

        ``any_state``: choose among all (panic: none is healthy)."""
        n = len(self._ups)
        start = self._turn
        self._turn = (start + 1) % n
        best: _Upstream | None = None
        for i in range(n):
            u = self._ups[(start + i) % n]
            if (any_state or u.state == HEALTHY) and u is not exclude and (
                    best is None or u.outstanding < best.outstanding):
                best = u
        return best

    def _choose(self, base: str | None, exclude: _Upstream | None = None) -> _Upstream:
        if base is not None:  # a caller addressing one upstream (probes, load/unload)
            try:
                return self._by_url[base]
            except KeyError:
                raise ValueError(f"{base!r} is not one of the balancer's upstreams") from None
        up = self._pick(exclude)
        if up is None:  # panic: every upstream ejected
            self._panic += 1
            up = self._pick(exclude, any_state=True)
        if up is None:
            raise UpstreamUnavailable(f"no upstream to send to ({', '.join(self.urls)})")
        return up

    # -- calling ----------------------------------------------------------------------
    async def request(self, method: str, path: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None, idempotent: bool = False,
                      resend: bool = False, base: str | None = None) -> UpstreamResponse:
        """Send ``method path`` to the chosen upstream (or ``base``); the whole answer.

        Raises what the upstream client raises (the resend, if any, having failed too),
        or ``UpstreamUnavailable`` when no upstream is healthy.
        """
        up = self._choose(base)
        try:
            return await self._call(up, method, path, body, headers, idempotent)
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            other = self._resend_target(up, exc, idempotent or resend, base)
            if other is None:
                raise
            maybe_ran = not _never_sent(exc)  # only then is the answer marked resent
        resp = await self._call(other, method, path, body, headers, idempotent)
        return dataclasses.replace(resp, retried=True) if maybe_ran else resp

    async def _call(self, up: _Upstream, method: str, path: str, body: bytes | None,
                    headers: Mapping[str, str] | None, idempotent: bool) -> UpstreamResponse:
        up.outstanding += 1
        up.requests += 1
        try:
            resp = await up.client.request(method, up.url + path, body=body, headers=headers,
                                           idempotent=idempotent)
        except (UpstreamUnavailable, UpstreamTimeout):
            self._failed(up)
            raise
        finally:
            up.outstanding -= 1
        self._answered(up, resp.status)
        return resp

    @asynccontextmanager
    async def stream(self, method: str, path: str, *, body: bytes | None = None,
                     headers: Mapping[str, str] | None = None, idempotent: bool = False,
                     resend: bool = False) -> AsyncIterator[UpstreamStream]:
        """Like :meth:`request`, the body left on the wire (see the pool's ``stream``).

        Resent only if the first upstream failed before its answer's head; a failure
        while the caller reads the body counts against the upstream and propagates.
        """
        up: _Upstream | None = self._choose(None)
        attempt, maybe_ran = 0, False
        while up is not None:
            cur, up, entered = up, None, False
            cur.outstanding += 1
            cur.requests += 1
            try:
                async with cur.client.stream(method, cur.url + path, body=body, headers=headers,
                                             idempotent=idempotent) as s:
                    entered = True
                    self._answered(cur, s.status)
                    if maybe_ran:
                        s.retried = True
                    yield s
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                self._failed(cur)
                if not entered and not attempt:
                    up = self._resend_target(cur, exc, idempotent or resend, None)
                if up is None:
                    raise
                attempt, maybe_ran = 1, not _never_sent(exc)
            finally:
                cur.outstanding -= 1

    def _resend_target(self, up: _Upstream, exc: Exception, repeatable: bool,
                       base: str | None) -> _Upstream | None:
        """Where a failed request may go again, or None (see the module docstring)."""
        if base is not None or isinstance(exc, UpstreamTimeout) and not _never_sent(exc):
            return None
        if not (_never_sent(exc) or repeatable):
            return None
        other = self._pick(exclude=up)
        if other is not None:
            up.resent_away += 1
            self._resends += 1
            self._unsent += _never_sent(exc)
        return other

    # -- health -------------------------------------------------------------------------
    def _answered(self, up: _Upstream, status: int) -> None:
        up.failures_in_row = 0
        if up.state != HEALTHY:  # a panic-mode answer below 500: as good as a probe
            if status >= 500:
                return
            up.state = HEALTHY
            up.readmissions += 1
        up.streak = 0

    def _failed(self, up: _Upstream) -> None:
        up.failures += 1
        up.failures_in_row += 1
        if up.state == HEALTHY and up.failures_in_row >= self.config.consecutive_failures:
            up.ejections += 1
            self._eject(up)

    def _eject(self, up: _Upstream) -> None:
        cfg = self.config
        wait = min(cfg.eject_initial_s * 2.0 ** up.streak, cfg.eject_max_s)
        up.streak += 1
        up.state, up.probe_at = EJECTED, time.monotonic() + wait
        if not self._closed and (up.task is None or up.task.done()):
            up.task = asyncio.get_running_loop().create_task(self._probe_loop(up))

    async def _probe_loop(self, up: _Upstream) -> None:
        """Wait out the back-off, probe; readmit on 200, else back off longer."""
        while up.state != HEALTHY and not self._closed:
            await asyncio.sleep(max(0.0, up.probe_at - time.monotonic()))
            if up.state == HEALTHY:  # a panic-mode answer readmitted it meanwhile
                return
            up.state = PROBING
            up.probes += 1
            ok = await self.probe(up.url)
            if up.state == HEALTHY:  # a panic-mode answer readmitted it meanwhile
                return
            if ok:
                up.state, up.failures_in_row = HEALTHY, 0
                up.readmissions += 1
                return
            self._eject(up)

    async def probe(self, url: str) -> bool:
        """Whether ``url`` answers its v2 ready endpoint with 200 in ``probe_timeout_s``."""
        up = self._by_url[url]
        try:
            async with asyncio.timeout(self.config.probe_timeout_s):
                resp = await up.client.request("GET", url + _READY_PATH, idempotent=True)
        except (OptkitError, TimeoutError):
            return False
        return resp.status == 200

    # -- reporting, closing ----------------------------------------------------------------
    def statistics(self) -> BalancingStatistics:
        now = time.monotonic()
        per = LabelledDict("upstream")
        for u in self._ups:
            per[u.url] = UpstreamStatistics(
                u.state, int(u.state == HEALTHY), u.outstanding, u.requests, u.failures,
                u.ejections, u.probes, u.readmissions, u.resent_away,
                0.0 if u.state == HEALTHY else round(max(0.0, u.probe_at - now), 3),
                u.client.statistics())
        return BalancingStatistics(len(self._ups), sum(u.state == HEALTHY for u in self._ups),
                                   self._resends, self._unsent, self._panic, per)

    def pool_statistics(self) -> PoolStatistics:
        """Every upstream's client statistics added up (the gateway's ``pool`` record)."""
        parts = [u.client.statistics() for u in self._ups]
        return PoolStatistics(**{f.name: sum(getattr(p, f.name) for p in parts)
                                 for f in dataclasses.fields(PoolStatistics)})

    async def aclose(self) -> None:
        """Stop the probes and close every upstream's client."""
        self._closed = True
        for u in self._ups:
            if u.task is not None and not u.task.done():
                u.task.cancel()
        for u in self._ups:
            await u.client.aclose()

    def __repr__(self) -> str:
        parts = ", ".join(f"{u.url} {u.state} {u.outstanding} out" for u in self._ups)
        return f"<UpstreamBalancer [{parts}]>"


def _never_sent(exc: BaseException) -> bool:
    """The request failed before any byte left: a refused or timed-out connect, and no
    earlier send on a pooled connection (the pool's stale resend) that may have reached it."""
    if getattr(exc, "unsent", False):  # a gRPC channel that never connected (layers.channels)
        return True
    cause = exc.__cause__
    return isinstance(cause, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)) \
        and getattr(exc, "sends", 1) <= 1
