"""Tests for the gateway's metadata cache (optkit.service._metadata): a fake clock, no sleeps."""

from __future__ import annotations

import asyncio

import pytest

from optkit._exceptions import ModelNotFound
from optkit.v2._codec import TensorSpec
from optkit.service import MetadataCache, ModelMeta

META = ModelMeta((TensorSpec("x", "FP32", (-1, 4)),), ("y",), 8)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """A fetch function that counts calls and can be held open or made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, name: str, version: str | None) -> ModelMeta:
        self.calls.append((name, version))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return META


async def test_fresh_entries_are_hits_and_expire_after_ttl() -> None:
    """Within ttl_s an entry is served without a fetch; past it, fetched again."""
    clock, fetch = FakeClock(), Upstream()
    cache = MetadataCache(fetch, ttl_s=10.0, clock=clock)
    assert await cache.get("m", None) is META
    clock.now += 9.9
    assert await cache.get("m", None) is META
    assert len(fetch.calls) == 1
    clock.now += 0.2
    await cache.get("m", None)
    assert len(fetch.calls) == 2
    s = cache.statistics()
    assert (s.hits, s.fetches, s.shared, s.errors, s.entries) == (1, 2, 0, 0, 1)


async def test_concurrent_misses_share_one_fetch() -> None:
    """Callers arriving while a fetch is under way wait for it instead of fetching again."""
    fetch = Upstream()
    fetch.gate.clear()
    cache = MetadataCache(fetch, clock=FakeClock())
    waiters = [asyncio.ensure_future(cache.get("m", "1")) for _ in range(25)]
    await asyncio.sleep(0)
    fetch.gate.set()
    assert all(meta is META for meta in await asyncio.gather(*waiters))
    assert fetch.calls == [("m", "1")]
    assert cache.statistics().shared == 24


async def test_failures_are_not_cached_and_reach_every_waiter() -> None:
    """A failed fetch raises to all who shared it; the next lookup tries again."""
    fetch = Upstream()
    fetch.fail = ModelNotFound("unknown model 'm'")
    cache = MetadataCache(fetch, clock=FakeClock())
    with pytest.raises(ModelNotFound):
        await cache.get("m", None)
    fetch.fail = None
    assert await cache.get("m", None) is META
    assert len(fetch.calls) == 2 and cache.statistics().errors == 1


async def test_a_caller_leaving_does_not_cancel_the_shared_fetch() -> None:
    """Cancelling one waiter leaves the fetch running for the others."""
    fetch = Upstream()
    fetch.gate.clear()
    cache = MetadataCache(fetch, clock=FakeClock())
    first = asyncio.ensure_future(cache.get("m", None))
    second = asyncio.ensure_future(cache.get("m", None))
    await asyncio.sleep(0)
    first.cancel()
    fetch.gate.set()
    assert await second is META
    assert first.cancelled() and len(fetch.calls) == 1


async def test_invalidate_drops_an_entry_and_versions_are_separate_keys() -> None:
    """invalidate() forces the next lookup upstream; (m, None) and (m, '1') are cached apart."""
    fetch = Upstream()
    cache = MetadataCache(fetch, clock=FakeClock())
    await cache.get("m", None)
    await cache.get("m", "1")
    cache.invalidate("m", None)
    await cache.get("m", None)
    await cache.get("m", "1")
    assert fetch.calls == [("m", None), ("m", "1"), ("m", None)]
    assert "2 entries" in repr(cache)
