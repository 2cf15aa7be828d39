"""Triton's statistics extension on both tiers (issue #28 item 2; ``service/_model_stats.py``).

Real processes on 127.0.0.1 (batching on in both tiers), read with ``tritonclient.http``
as a Triton user would: counts after N requests, a refused one under ``fail``, the
parts of the time within the whole, and 404 for a model neither tier knows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import numpy as np
import pytest
import requests
import tritonclient.http as triton_http

from optkit import encode_infer_request
from optkit.service import Stack, launch_stack
from optkit.service._model_stats import ModelStats, ModelStatsBook

BATCHING = Path(__file__).resolve().parents[1] / "experiments" / "batching.yaml"
MODEL = "digits-mlp"
INFER = f"/v2/models/{MODEL}/infer"
N, ROWS = 24, 2
PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


@pytest.fixture(scope="module")
def batching(repository: Path) -> Iterator[Stack]:
    with launch_stack(BATCHING, repository=repository) as running:
        yield running


def _stats(base: str) -> dict[str, Any]:
    """The model's record as tritonclient reads it."""
    client = triton_http.InferenceServerClient(base.split("://", 1)[1])
    try:
        doc = client.get_inference_statistics(MODEL)
    finally:
        client.close()
    (record,) = doc["model_stats"]
    return record


async def _load(base: str) -> None:
    """N concurrent good requests of ROWS rows each, and one the tier refuses (400)."""
    body = encode_infer_request({"pixels": np.ones((ROWS, 64), np.float32)})
    async with aiohttp.ClientSession() as session:
        async def one(payload: bytes) -> int:
            async with session.post(base + INFER, data=payload) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one(body) for _ in range(N)))
        assert statuses == [200] * N
        assert await one(b'{"inputs": [{"name": "pixels", "datatype": "FP32"}]}') == 400


def _check_record(record: dict[str, Any], successes: int, rows: int) -> None:
    """Counts as Triton defines them; every time nonnegative; the parts within the whole."""
    stats = record["inference_stats"]
    assert stats["success"]["count"] == successes and record["inference_count"] == rows
    assert 1 <= record["execution_count"] <= successes
    for part in PARTS:
        assert stats[part]["count"] == successes
    assert all(v["ns"] >= 0 for v in stats.values())
    assert stats["success"]["ns"] >= sum(stats[part]["ns"] for part in PARTS) > 0
    batches = record["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == record["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == rows
    assert record["last_inference"] > 1_600_000_000_000  # ms since the epoch


def test_tritonclient_reads_both_tiers(batching: Stack) -> None:
    """After N requests (and one refused) each tier's record says N successes of ROWS rows,
    at most N model calls, one failure; the model server also books what the gateway sent."""
    server, gateway = batching.model_server_url, batching.url
    asyncio.run(_load(server))
    record = _stats(server)
    _check_record(record, N, N * ROWS)
    assert record["inference_stats"]["fail"]["count"] == 1
    assert record["name"] == MODEL and record["version"] == "1"

    asyncio.run(_load(gateway))
    own = _stats(gateway)
    _check_record(own, N, N * ROWS)
    assert own["inference_stats"]["fail"]["count"] == 1  # refused at the gateway, not upstream
    # the gateway's record is its own: each of its upstream calls is one request upstream
    after = _stats(server)
    assert after["inference_stats"]["success"]["count"] == N + own["execution_count"]
    assert after["inference_count"] == 2 * N * ROWS
    assert after["inference_stats"]["fail"]["count"] == 1


def test_all_models_and_versions(batching: Stack) -> None:
    """``/v2/models/stats`` lists every model the model server's repository holds and the
    ones the gateway has served; the version route answers that version's record."""
    names = {r["name"] for r in requests.get(batching.model_server_url + "/v2/models/stats",
                                             timeout=10).json()["model_stats"]}
    assert MODEL in names and "synthetic" in names
    resp = requests.get(f"{batching.model_server_url}/v2/models/{MODEL}/versions/1/stats",
                        timeout=10)
    assert resp.status_code == 200 and resp.json()["model_stats"][0]["version"] == "1"
    requests.post(batching.url + INFER, timeout=10, data=encode_infer_request(
        {"pixels": np.ones((1, 64), np.float32)})).raise_for_status()
    listed = requests.get(batching.url + "/v2/models/stats", timeout=10).json()["model_stats"]
    assert [r["name"] for r in listed] == [MODEL]


@pytest.mark.parametrize("path", ["/v2/models/no-such-model/stats",
                                  f"/v2/models/{MODEL}/versions/99/stats",
                                  "/v2/models/no-such-model/versions/1/stats"])
def test_unknown_model_is_404_on_both_tiers(batching: Stack, path: str) -> None:
    """An unknown model (or version) is a JSON 404 with the same error shape on both tiers."""
    for base in (batching.model_server_url, batching.url):
        resp = requests.get(base + path, timeout=10)
        assert resp.status_code == 404, (base, resp.text)
        assert list(resp.json()) == ["error"]


def test_record_in_tritons_format() -> None:
    """Known answer: two requests, one batch of 3 rows, one failure, in Triton's fields."""
    book = ModelStatsBook()
    record = book.model("m", "1")
    record.ok(1, 100, 10, 20, 30, 5)
    record.ok(2, 200, 11, 21, 31, 6)
    record.executed(3, 1, 30, 2)
    record.failed(7)
    (doc,) = book.answer(book.find("m"))["model_stats"]
    stats = doc["inference_stats"]
    assert stats["success"] == {"count": 2, "ns": 300}
    assert stats["fail"] == {"count": 1, "ns": 7}
    assert stats["queue"] == {"count": 2, "ns": 41}
    assert stats["compute_input"] == {"count": 2, "ns": 21}
    assert stats["compute_infer"] == {"count": 2, "ns": 61}
    assert stats["compute_output"] == {"count": 2, "ns": 11}
    assert stats["cache_hit"] == stats["cache_miss"] == {"count": 0, "ns": 0}
    assert (doc["inference_count"], doc["execution_count"]) == (3, 1)
    assert doc["batch_stats"] == [{"batch_size": 3, "compute_input": {"count": 1, "ns": 1},
                                   "compute_infer": {"count": 1, "ns": 30},
                                   "compute_output": {"count": 1, "ns": 2}}]
    assert book.find("other") == [] and ModelStats("x", "2").triton()["batch_stats"] == []


def test_baseline_books_no_queue(stack: Stack) -> None:
    """Batching off (the baseline): one model call per request, nothing queued, on both tiers."""
    asyncio.run(_load(stack.url))  # through the gateway: each request forwarded alone
    for base in (stack.url, stack.model_server_url):
        record = _stats(base)
        _check_record(record, N, N * ROWS)
        assert record["execution_count"] == N
        assert record["inference_stats"]["queue"]["ns"] == 0
        assert record["batch_stats"] == [{**record["batch_stats"][0], "batch_size": ROWS}]
