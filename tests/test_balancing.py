"""The balancer's rules with fake upstream clients: choice, ejection, probes, resends.

The real thing (model-server processes, one SIGKILLed under load) is
``tests/faults/test_fault_balancing.py``; here every rule is driven exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from optkit._config import BalancingConfig, ServiceConfig
from optkit._exceptions import ConfigError, PoolTimeout, UpstreamTimeout, UpstreamUnavailable
from optkit._metrics import iter_families, to_plain
from optkit.layers.balancing import UpstreamBalancer
from optkit.layers.pooling import PoolStatistics, UpstreamResponse

FAST = BalancingConfig(eject_initial_s=0.02, eject_max_s=0.08, probe_timeout_s=0.5)


def _refused() -> UpstreamUnavailable:
    exc = UpstreamUnavailable("cannot connect")
    exc.__cause__ = aiohttp.ClientConnectorError(
        None, OSError(111, "refused"))  # type: ignore[arg-type]
    return exc


def _dropped() -> UpstreamUnavailable:
    exc = UpstreamUnavailable("connection dropped")
    exc.__cause__ = aiohttp.ServerDisconnectedError()
    return exc


class FakeUpstream:
    """An upstream client whose behaviour the test sets: answer, fail, or hold."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: Exception | None = None  # raised by infer calls
        self.ready = 200
        self.hold: asyncio.Event | None = None

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None,
                      idempotent: bool = False) -> UpstreamResponse:
        self.calls.append((method, url))
        if url.endswith("/v2/health/ready"):
            if self.ready == 0:
                raise _refused()
            return UpstreamResponse(self.ready, "application/json", b"{}", {})
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        return UpstreamResponse(200, "application/json", url.encode(), {})

    @asynccontextmanager
    async def stream(self, method: str, url: str, **kw: Any) -> AsyncIterator[Any]:
        self.calls.append((method, url))
        if self.fail is not None:
            raise self.fail

        class _S:
            retried = False
            status = 200
        yield _S()

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(requests=len(self.calls), active=0, connections_opened=0,
                              connections_reused=0, idle=0, in_use=0, waits_for_slot=0,
                              retries=0, non_idempotent_retries=0, errors=0)

    async def aclose(self) -> None:
        pass


def _balancer(n: int = 3, config: BalancingConfig = FAST) -> tuple[UpstreamBalancer,
                                                                    list[FakeUpstream]]:
    fakes: list[FakeUpstream] = []

    def make() -> FakeUpstream:
        fakes.append(FakeUpstream())
        return fakes[-1]

    urls = [f"http://u{i}" for i in range(n)]
    return UpstreamBalancer(urls, config, make), fakes  # type: ignore[arg-type]


async def _wait(predicate: Any, timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_idle_set_rotates_and_busy_upstream_is_avoided() -> None:
    bal, fakes = _balancer(3)
    answers = [(await bal.request("POST", "/infer")).body for _ in range(6)]
    assert answers == [b"http://u0/infer", b"http://u1/infer", b"http://u2/infer"] * 2
    fakes[0].hold = fakes[1].hold = asyncio.Event()  # u0 and u1 keep their requests
    held = [asyncio.create_task(bal.request("POST", "/infer")) for _ in range(2)]
    await _wait(lambda: bal.statistics().upstream["http://u0"].outstanding
                + bal.statistics().upstream["http://u1"].outstanding == 2)
    # one request out at u0 and at u1, none at u2: the next three go to u2, u2, then rotate
    assert (await bal.request("POST", "/infer")).body == b"http://u2/infer"
    assert bal.statistics().upstream["http://u2"].outstanding == 0
    fakes[0].hold.set()
    await asyncio.gather(*held)
    await bal.aclose()


async def test_transport_failure_ejects_then_a_probe_readmits() -> None:
    bal, fakes = _balancer(2)
    fakes[0].fail, fakes[0].ready = _refused(), 0
    # refused: never sent, so resent to u1 even as a non-idempotent POST, and not marked
    resp = await bal.request("POST", "/infer")
    assert resp.body == b"http://u1/infer" and not resp.retried
    s = bal.statistics()
    assert s.upstreams_healthy == 1 and s.upstream["http://u0"].state in ("ejected", "probing")
    assert s.upstream["http://u0"].ejections == 1 and s.resends == 1
    assert bal.healthy_urls() == ["http://u1"]
    for _ in range(4):  # while ejected, u0 takes no traffic
        assert (await bal.request("POST", "/infer")).body == b"http://u1/infer"
    # failed probes back off longer, bounded by eject_max_s
    await _wait(lambda: bal.statistics().upstream["http://u0"].probes >= 4)
    assert bal.statistics().upstream["http://u0"].eject_remaining_s <= FAST.eject_max_s
    fakes[0].fail, fakes[0].ready = None, 200
    await _wait(lambda: bal.statistics().upstream["http://u0"].state == "healthy")
    s = bal.statistics().upstream["http://u0"]
    assert s.readmissions == 1 and s.ejections == 1 and s.probes >= 5
    bodies = {(await bal.request("POST", "/infer")).body for _ in range(2)}
    assert bodies == {b"http://u0/infer", b"http://u1/infer"}
    await bal.aclose()


async def test_backoff_doubles_and_is_bounded() -> None:
    cfg = BalancingConfig(eject_initial_s=1.0, eject_max_s=3.0)
    bal, fakes = _balancer(2, cfg)
    fakes[0].fail, fakes[0].ready = _refused(), 0
    await bal.request("POST", "/infer")
    up = bal._by_url["http://u0"]
    waits = []
    for _ in range(4):  # what each further ejection in a row would wait
        waits.append(round(up.probe_at - time.monotonic(), 0))
        bal._eject(up)
    assert waits == [1.0, 2.0, 3.0, 3.0]
    await bal.aclose()


async def test_resend_rules() -> None:
    bal, fakes = _balancer(2)
    fakes[0].fail = _dropped()
    with pytest.raises(UpstreamUnavailable):  # dropped mid-request, not vouched: not resent
        await bal.request("POST", "/infer")
    fakes[0].fail = _dropped()
    reuse = iter(fakes).__next__
    bal = UpstreamBalancer(["http://u0", "http://u1"], FAST, reuse)  # type: ignore[arg-type]
    resp = await bal.request("POST", "/infer", resend=True)  # vouched (a stateless infer)
    assert resp.retried and resp.body == b"http://u1/infer"
    assert bal.statistics().upstream["http://u0"].resent_away == 1
    await bal.aclose()
    bal, fakes = _balancer(2)
    fakes[0].fail = UpstreamTimeout("no answer in time")
    with pytest.raises(UpstreamTimeout):  # timed out: never resent, but ejected
        await bal.request("GET", "/v2/models/m", idempotent=True)
    assert bal.statistics().upstream["http://u0"].ejections == 1
    await bal.aclose()


async def test_pool_timeout_is_not_the_upstreams_fault() -> None:
    bal, fakes = _balancer(2)
    fakes[0].fail = PoolTimeout("no free pooled connection in time")
    with pytest.raises(PoolTimeout):
        await bal.request("POST", "/infer", resend=True)
    assert bal.statistics().upstreams_healthy == 2
    await bal.aclose()


async def test_panic_sends_anyway_and_an_answer_readmits() -> None:
    bal, fakes = _balancer(1, BalancingConfig(eject_initial_s=0.05, eject_max_s=0.05))
    fakes[0].fail = _refused()
    with pytest.raises(UpstreamUnavailable):
        await bal.request("POST", "/infer", resend=True)
    assert bal.healthy_urls() == []
    fakes[0].fail = None  # back before its probe is due: the first answer readmits it
    assert (await bal.request("POST", "/infer")).status == 200
    s = bal.statistics()
    assert s.panic_requests == 1 and s.upstreams_healthy == 1
    assert s.upstream["http://u0"].readmissions == 1
    await asyncio.sleep(0.1)  # its probe was due meanwhile: it neither probes nor flips state
    s = bal.statistics()
    assert s.upstream["http://u0"].state == "healthy" and s.upstream["http://u0"].probes == 0
    assert s.upstream["http://u0"].readmissions == 1
    await bal.aclose()


async def test_stream_resent_only_before_the_head() -> None:
    bal, fakes = _balancer(2)
    fakes[0].fail = _dropped()
    async with bal.stream("POST", "/infer", resend=True) as s:
        assert s.retried
    assert [c[1] for c in fakes[1].calls] == ["http://u1/infer"]
    bal2, fakes2 = _balancer(2)
    with pytest.raises(UpstreamUnavailable):  # failed while the body was being read
        async with bal2.stream("POST", "/infer", resend=True):
            raise _dropped()
    assert sum(len(f.calls) for f in fakes2) == 1
    assert bal2.statistics().upstream["http://u0"].ejections == 1
    await bal.aclose()
    await bal2.aclose()


async def test_statistics_export_per_upstream() -> None:
    bal, _ = _balancer(2)
    await bal.request("GET", "/v2", idempotent=True)
    plain = to_plain(bal.statistics())
    assert plain["upstream"]["http://u0"]["requests"] == 1 and plain["upstreams_healthy"] == 2
    fams = {f.name: f for f in iter_families("gw", bal.statistics())}
    samples = fams["gw_upstream_outstanding"].samples
    assert {s.labels["upstream"] for s in samples} == {"http://u0", "http://u1"}
    assert bal.pool_statistics().requests == 1
    await bal.aclose()


@pytest.mark.parametrize("bad", [{"eject_initial_s": 0}, {"eject_max_s": 0.1, "eject_initial_s": 1},
                                 {"consecutive_failures": 0}, {"resend_infer": "yes"},
                                 {"probe_every_s": 1}])
def test_bad_balancing_config_names_the_key(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="balancing"):
        ServiceConfig.from_dict({"balancing": bad})
