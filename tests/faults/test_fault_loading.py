"""Model loads under traffic through the gateway (the Thursday layer, background loads).

Promised: a new version whose load fails leaves the old one serving, with not one
request failed, and the failure reported (a JSON 500 naming the reason, FAILED in the
index); a successful new version is swapped in under load without losing a request,
and answers switch atomically: each answer is the old version's or the new one's,
each exactly what that version computes for the request's own rows, and a client
sending one request after another never sees the old version again once it saw the new.
The gateway's books hold every request the generator and the checkers sent, all 200.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _harness import Books, FaultStack, SteadyLoad, Tally, get_json, post_json
from optkit.models import ModelConfig
from optkit.v2._codec import TensorSpec, decode_infer_result, encode_infer_request

SYNTHETIC = "synthetic"  # the workload: seeded random rows of width 16


def _version(repo: Path, name: str, version: int, **params: Any) -> None:
    """A synthetic model version answering row sums in ``version`` columns."""
    ModelConfig(name=name, version=str(version), backend="synthetic",
                inputs=(TensorSpec("x", "FP32", (-1, 16)),),
                outputs=(TensorSpec("y", "FP32", (-1, version)),), max_batch_size=256,
                parameters={"cost_a_us": 20.0, "cost_b_us": 2.0, "output_width": version,
                            **params}).write(repo / name / str(version))


def _load(fs: FaultStack, name: str) -> tuple[int, Any]:
    return post_json(f"{fs.gateway_url}/v2/repository/models/{name}/load")


def _index(fs: FaultStack, name: str) -> dict[str, tuple[str, str]]:
    _, doc = post_json(fs.gateway_url + "/v2/repository/index")
    return {e["version"]: (e["state"], e["reason"]) for e in doc if e["name"] == name}


def _fresh_model(fs: FaultStack, repo: Path, stem: str) -> str:
    """A model name no earlier run of this session used, loaded at version 1."""
    name = f"{stem}-{time.monotonic_ns() % 10**9}"
    _version(repo, name, 1, load_cost_s=0.05)
    assert _load(fs, name)[0] == 200
    return name


class _Checker:
    """Clients each sending one request after another, checking every answer."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url, self.stop = url, threading.Event()
        self.seen: list[list[str]] = [[] for _ in range(clients)]
        self.problems: list[str] = []
        self.by_status: collections.Counter[int] = collections.Counter()  # every answer
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(clients)]

    def _client(self, i: int) -> None:
        rng = np.random.default_rng(i)
        while not self.stop.is_set():
            x = rng.integers(0, 100, (2, 16)).astype(np.float32)
            req = urllib.request.Request(self.url, data=encode_infer_request({"x": x}),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    self.by_status[resp.status] += 1
                    res = decode_infer_result(resp.read())
            except Exception as exc:  # any failure is a broken promise, kept for the assert
                if isinstance(exc, urllib.error.HTTPError):
                    self.by_status[exc.code] += 1
                self.problems.append(f"client {i}: {exc!r}")
                continue
            width = int(res.model_version or 0)
            expect = np.repeat(x.sum(axis=1).reshape(-1, 1), width, axis=1)
            got = res.outputs["y"]
            if got.shape != expect.shape or not np.array_equal(got, expect):
                self.problems.append(f"client {i}: version {width} answered {got}")
            self.seen[i].append(res.model_version or "")

    def __enter__(self) -> "_Checker":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def _under_load(fs: FaultStack, name: str, action: Any, *,
                duration_s: float) -> tuple[Tally, _Checker, Any]:
    """Run ``action()`` while the generator and the checker clients send to ``name``;
    the gateway's books must hold exactly what both sent, answered as they saw it."""
    url = f"{fs.gateway_url}/v2/models/{name}/infer"
    before = get_json(fs.gateway_url + "/stats")["server"]
    with SteadyLoad(fs.gateway_url, model=name, workload=SYNTHETIC, concurrency=8,
                    duration_s=duration_s) as load:
        load.wait_sending()
        with _Checker(url) as checker:
            time.sleep(0.2)
            outcome = action()
            time.sleep(0.4)  # traffic on whatever serves after the action
        result = load.result()
    tally = Tally.of(result)
    books = Books.between(before, get_json(fs.gateway_url + "/stats")["server"])
    tally.reconcile()
    print("counts:", tally.summary(), "checkers:", dict(checker.by_status))
    print("gateway books:", books.summary())  # shown with -s: docs/reliability.md cites them
    books.reconcile(tally, preflight=1, others=checker.by_status)
    return tally, checker, outcome


def test_failed_load_leaves_old_version_serving(fault_stack: FaultStack,
                                                fault_repository: Path) -> None:
    name = _fresh_model(fault_stack, fault_repository, "failing")
    _version(fault_repository, name, 2, load_cost_s=0.3, load_fails=True)
    tally, checker, (status, doc) = _under_load(
        fault_stack, name, lambda: _load(fault_stack, name), duration_s=1.5)
    assert status == 500 and "failed half way" in doc["error"], doc
    assert tally.ok == tally.sent > 0, tally.summary()  # not one request failed
    assert checker.problems == [] and all(set(s) == {"1"} for s in checker.seen), checker.seen
    index = _index(fault_stack, name)
    assert index["1"] == ("READY", "") and index["2"][0] == "FAILED", index


def test_swap_under_load_is_atomic_and_loses_nothing(fault_stack: FaultStack,
                                                     fault_repository: Path) -> None:
    name = _fresh_model(fault_stack, fault_repository, "swapping")
    _version(fault_repository, name, 2, load_cost_s=0.3)
    tally, checker, (status, doc) = _under_load(
        fault_stack, name, lambda: _load(fault_stack, name), duration_s=1.5)
    assert status == 200, doc
    assert tally.ok == tally.sent > 0, tally.summary()  # no request lost or failed
    assert checker.problems == [], checker.problems[:5]
    for seen in checker.seen:  # old, then new, never back; both seen
        assert seen and set(seen) <= {"1", "2"}, seen
        assert seen == sorted(seen), seen
    assert any("1" in s for s in checker.seen) and all(s[-1] == "2" for s in checker.seen)
    index = _index(fault_stack, name)
    assert index["2"] == ("READY", "") and index["1"][0] == "UNAVAILABLE", index


@pytest.mark.heavy
def test_many_swaps_under_longer_load(fault_stack: FaultStack, fault_repository: Path) -> None:
    """Five versions in a row, failing ones between them, under twelve seconds of load."""
    name = _fresh_model(fault_stack, fault_repository, "many")

    def swaps() -> list[int]:
        statuses = []
        for v in range(2, 8):
            _version(fault_repository, name, v, load_cost_s=0.3, load_fails=v % 3 == 0)
            statuses.append(_load(fault_stack, name)[0])
            time.sleep(1.0)
        return statuses

    tally, checker, statuses = _under_load(fault_stack, name, swaps, duration_s=12.0)
    assert statuses == [200, 500, 200, 200, 500, 200], statuses
    assert tally.ok == tally.sent > 0, tally.summary()
    assert checker.problems == [], checker.problems[:5]
    for seen in checker.seen:
        assert seen == sorted(seen, key=int) and seen[-1] == "7", seen[:3] + seen[-3:]
    assert json.dumps(_index(fault_stack, name)["7"]) == json.dumps(["READY", ""])
