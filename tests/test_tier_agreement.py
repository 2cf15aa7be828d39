"""Both tiers give the same answer to the same bad request (issue #14, item 4).

Every case of ``tests/bad_requests.py`` is sent to a model server and to a gateway
in front of it (real processes on 127.0.0.1, every layer on:
``experiments/integrated.yaml``); the gateway must answer with the model server's
status and error message, and every error body must be JSON with an ``error``. Twice:
the gateway reaching the model server over REST, and over gRPC (issue #33, item 2).
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import urllib.request

import aiohttp
import pytest
import yaml

from optkit.service import Stack, launch_stack

from bad_requests import CASES, Case, good_request

INTEGRATED = Path(__file__).resolve().parents[1] / "experiments" / "integrated.yaml"


@pytest.fixture(scope="module", params=["http", "grpc"])
def integrated(repository: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The integrated stack, its gateway reaching the model server over REST, or over gRPC
    (``pooling.transport: grpc``: the same corpus must get the same answers)."""
    config = yaml.safe_load(INTEGRATED.read_text())
    config["pooling"]["transport"] = request.param
    with launch_stack(config, repository=repository) as running:
        if request.param == "grpc":  # the launcher pointed the gateway at the gRPC door
            stats = json.loads(urllib.request.urlopen(running.url + "/stats", timeout=10).read())
            assert [u.split(":")[0] for u in stats["balancing"]["upstream"]] == ["grpc"]
        yield running


async def _send(session: aiohttp.ClientSession, base: str, case: Case) -> tuple[int, Any, str]:
    headers = dict(case.headers)
    if case.body is not None and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    data: Any = case.body
    if case.chunked:
        data = _chunks(case.body or b"")
    elif data is not None and len(data) > 1 << 20:  # aiohttp warns about large raw bytes
        data = io.BytesIO(data)
    async with session.request(case.method, base + case.path, data=data,
                               headers=headers) as resp:
        raw = await resp.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        return resp.status, doc, resp.headers.get("Allow", "")


async def _chunks(body: bytes, size: int = 1 << 16) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_corpus_is_large_and_distinct() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 40
    assert all(case.why for case in CASES if not case.same_message)


async def test_both_tiers_give_the_same_answer(integrated: Stack) -> None:
    """Each case: the model server's status, JSON ``error`` and message, at both tiers."""
    problems: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for case in CASES:
            ms = await _send(session, integrated.model_server_url, case)
            gw = await _send(session, integrated.url, case)
            for tier, (status, doc, _) in (("model server", ms), ("gateway", gw)):
                if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
                    problems.append(f"{case.name}: {tier} body is not JSON with 'error': {doc!r}")
            if ms[0] != case.status:
                problems.append(f"{case.name}: model server {ms[0]}, corpus says {case.status} "
                                f"({ms[1]})")
            if gw[0] != ms[0]:
                problems.append(f"{case.name}: gateway {gw[0]} {gw[1]}, model server {ms[0]} {ms[1]}")
            elif case.same_message and isinstance(gw[1], dict) and isinstance(ms[1], dict) \
                    and gw[1].get("error") != ms[1].get("error"):
                problems.append(f"{case.name}: gateway says {gw[1].get('error')!r}, "
                                f"model server {ms[1].get('error')!r}")
            if ms[0] == 405 and gw[2] != ms[2]:
                problems.append(f"{case.name}: Allow {gw[2]!r} vs {ms[2]!r}")
    assert not problems, "\n".join(problems)


async def test_bad_requests_never_fail_good_concurrent_ones(integrated: Stack) -> None:
    """With batching on at both tiers, bad requests interleaved with good ones: every good
    one is answered 200 with its own rows, every bad one with its own status."""
    infer = [c for c in CASES if c.path.endswith("/infer") and c.method == "POST"
             and c.status == 400 and "binary" not in c.name]
    good = json.dumps(good_request(2)).encode()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def good_one() -> int:
            async with session.post(integrated.url + "/v2/models/digits-mlp/infer", data=good,
                                    headers={"Content-Type": "application/json"}) as resp:
                doc = await resp.json()
                assert resp.status == 200, doc
                label = next(o for o in doc["outputs"] if o["name"] == "label")
                assert label["shape"] == [2, 1]
                return resp.status

        tasks: list[Any] = []
        for round_ in range(3):
            for case in infer:
                tasks.append(_send(session, integrated.url, case))
                tasks.append(good_one())
        results = await asyncio.gather(*tasks)
    goods = [r for r in results if r == 200]
    bads = [r for r in results if isinstance(r, tuple)]
    assert len(goods) == 3 * len(infer)
    assert [r[0] for r in bads] == [400] * len(bads)
