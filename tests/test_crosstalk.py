"""Every answer belongs to its request, with batching and streaming on (issue 15, item 2).

A stack launched from ``experiments/integrated.yaml`` (gateway + model server, real
processes on 127.0.0.1) takes thousands of concurrent requests with known inputs: mixed
JSON and binary tensors, mixed row counts, some with an ``id``, mixed requested outputs,
and now and then a large answer the tiers stream. Each output row is checked against the
same model loaded in-process from the same repository by optkit's own loader: no row
may be another request's, and every request sent is answered exactly once.

The same stack then takes a few hundred hypothesis-made bad bodies at both tiers:
never a 5xx, always a JSON error, and a good request is still served afterwards.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import aiohttp
import numpy as np
import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optkit.v2._codec import BINARY_HEADER, decode_infer_result, encode_binary_infer_request, \
    encode_infer_request
from optkit.models._repository import ModelRepository
from optkit.service import Stack, launch_stack

sys.path.insert(0, str(Path(__file__).parent / "faults"))
from _harness import integrated_config  # noqa: E402
from test_codec_fuzz import GOOD, bad_posts  # noqa: E402

IN_FLIGHT = 64
DIGITS_OUTPUTS = ([], ["label"], ["probabilities"], ["label", "probabilities"])


@pytest.fixture(scope="module")
def integrated(repository: Path) -> Iterator[Stack]:
    config = integrated_config(loading={"models": ["digits-mlp", "synthetic-wide"]})
    with launch_stack(config, repository=repository) as running:
        yield running


@dataclass
class Case:
    """One request: what was sent, and what its answer must hold."""

    model: str
    inputs: dict[str, np.ndarray]
    binary: bool
    outputs: list[str]
    request_id: str | None

    def body(self) -> tuple[bytes, dict[str, str]]:
        if self.binary:
            body, head_len = encode_binary_infer_request(self.inputs, outputs=self.outputs)
            return body, {BINARY_HEADER: str(head_len), "Content-Type": "application/octet-stream"}
        return (encode_infer_request(self.inputs, request_id=self.request_id, outputs=self.outputs),
                {"Content-Type": "application/json"})


def make_cases(total: int, seed: int) -> list[Case]:
    """Distinct known inputs (no two rows alike), every mix of the knobs a client turns."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(total):
        if i % 100 == 99:  # a large answer (binary, 256 KiB a row): streamed by both tiers
            x = rng.uniform(-1, 1, size=(int(rng.integers(1, 3)), 16)).astype(np.float32)
            cases.append(Case("synthetic-wide", {"x": x}, True, [], None))
            continue
        rows = int(rng.choice([1, 1, 1, 2, 3, 5, 8, 17]))
        pixels = rng.uniform(0, 16, size=(rows, 64)).astype(np.float32)
        binary = bool(rng.integers(2))
        cases.append(Case("digits-mlp", {"pixels": pixels}, binary,
                          list(DIGITS_OUTPUTS[int(rng.integers(len(DIGITS_OUTPUTS)))]),
                          None if binary or rng.integers(2) else f"req-{i}"))
    return cases


async def _send_all(base: str, cases: list[Case]) -> list[tuple[int, bytes, str | None]]:
    sem = asyncio.Semaphore(IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT),
                                     timeout=timeout) as session:
        async def one(case: Case) -> tuple[int, bytes, str | None]:
            body, headers = case.body()
            async with sem:
                async with session.post(f"{base}/v2/models/{case.model}/infer", data=body,
                                        headers=headers) as resp:
                    return resp.status, await resp.read(), resp.headers.get(BINARY_HEADER)

        return await asyncio.gather(*(one(c) for c in cases))


def check_no_crosstalk(stack: Stack, repository: Path, total: int, seed: int) -> dict[str, int]:
    """Send ``total`` cases through the gateway; return the counts, failing on any mismatch."""
    cases = make_cases(total, seed)
    answers = asyncio.run(_send_all(stack.gateway_url, cases))
    models = ModelRepository(repository)
    direct = {name: models.read(name) for name in {c.model for c in cases}}
    counts = {"sent": len(cases), "answered": len(answers), "ok": 0, "rows": 0, "mismatched": 0}
    mismatches = []
    for i, (case, (status, body, head_len)) in enumerate(zip(cases, answers)):
        assert status == 200, (i, status, body[:300])
        counts["ok"] += 1
        result = decode_infer_result(body, None if head_len is None else int(head_len))
        want = direct[case.model].predict(case.inputs)
        expected_names = case.outputs or sorted(want)
        assert result.id == case.request_id, (i, result.id, case.request_id)
        assert sorted(result.outputs) == sorted(expected_names), (i, list(result.outputs))
        counts["rows"] += next(iter(case.inputs.values())).shape[0]
        for name in expected_names:
            got = result.outputs[name]
            if got.shape != want[name].shape or not np.allclose(got, want[name], rtol=1e-5,
                                                                atol=1e-6):
                counts["mismatched"] += 1
                mismatches.append((i, case.model, name))
    assert not mismatches, mismatches[:10]
    assert counts["sent"] == counts["answered"] == counts["ok"], counts
    return counts


def _served(stack: Stack) -> int:
    return int(requests.get(stack.gateway_url + "/stats", timeout=5).json()["server"]["infer_requests"])


def test_no_crosstalk_under_batching_and_streaming(integrated: Stack, repository: Path) -> None:
    """3,000 concurrent requests (64 in flight): every row is its own request's."""
    before = _served(integrated)
    counts = check_no_crosstalk(integrated, repository, total=3000, seed=15)
    print("counts:", counts)
    assert _served(integrated) - before == counts["sent"]  # the gateway counted each once


@pytest.mark.heavy
def test_no_crosstalk_many(integrated: Stack, repository: Path) -> None:
    """The bigger version: 20,000 requests."""
    counts = check_no_crosstalk(integrated, repository, total=20000, seed=16)
    print("counts:", counts)


def test_live_tiers_refuse_hypothesis_bodies_without_a_5xx(integrated: Stack) -> None:
    """Hundreds of generated bad bodies at the model server and the gateway (every layer
    on): each answer a JSON error, never a 5xx; then a good request is still served."""
    session = requests.Session()
    statuses: dict[int, int] = {}
    sent = 0

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(bad_posts(), st.sampled_from(["model_server_url", "gateway_url"]))
    def post(case: tuple[bytes, dict[str, str]], tier: str) -> None:
        nonlocal sent
        body, headers = case
        url = getattr(integrated, tier) + "/v2/models/digits-mlp/infer"
        resp = session.post(url, data=body, headers=headers, timeout=10)
        sent += 1
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (tier, body[:200], headers, resp.text)
        if resp.status_code != 200:
            assert resp.headers["Content-Type"].startswith("application/json")
            assert isinstance(orjson.loads(resp.content)["error"], str)

    post()
    print("statuses:", statuses)
    assert sent >= 200 and sum(statuses.values()) == sent
    for url in (integrated.model_server_url, integrated.gateway_url):
        good = session.post(url + "/v2/models/digits-mlp/infer", data=GOOD, timeout=10)
        assert good.status_code == 200, good.text
        assert orjson.loads(good.content)["outputs"][0]["name"] == "label"
