"""Handing a built model from a loader process to the server through shared memory."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from optkit.layers import _handover
from optkit.layers._handover import MIN_SHARED_BYTES, pack, unpack

pytestmark = pytest.mark.unit


def _leftovers() -> set[str]:
    return {p.name for p in _handover._folder().glob("optkit-load-*")}


def test_large_arrays_travel_outside_the_pickle_and_come_back_equal_and_writable() -> None:
    """Large buffers go to one file (none left once unpacked); small ones stay in the pickle."""
    before = _leftovers()
    big = np.arange(MIN_SHARED_BYTES // 4 * 3, dtype=np.float32).reshape(-1, 64)
    small = np.ones(10, np.int64)
    h = pack({"w": big, "b": small, "name": "m"})
    assert h.path is not None and h.shared_bytes == big.nbytes and len(h.meta) < 4096
    assert Path(h.path).stat().st_size == big.nbytes
    out = unpack(pickle.loads(pickle.dumps(h)))  # as the pool sends it
    assert not Path(h.path).exists() and _leftovers() == before
    assert out["name"] == "m" and np.array_equal(out["w"], big) and np.array_equal(out["b"], small)
    out["w"][0, 0] = -1.0  # copy-on-write: writable, and the write stays private
    assert out["w"][0, 0] == -1.0 and big[0, 0] == 0.0


def test_small_objects_need_no_file() -> None:
    h = pack({"x": np.zeros(4)})
    assert h.path is None and h.spans == ()
    assert np.array_equal(unpack(h)["x"], np.zeros(4))


def _build(n: int) -> _handover.Handover:
    return pack(np.full(n, os.getpid(), np.int64))


def test_a_worker_process_hands_its_array_over() -> None:
    """Across a real spawned process, as the loading layer uses it."""
    n = MIN_SHARED_BYTES // 8 * 2
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        h = pool.submit(_build, n).result(timeout=60)
    arr = unpack(h)
    assert arr.shape == (n,) and len(set(arr[[0, -1]].tolist())) == 1 and arr[0] != os.getpid()
    assert not Path(h.path).exists()


def test_an_unmapped_file_is_removed_by_a_later_sweep(tmp_path: Path, monkeypatch) -> None:
    """A server that died before mapping leaves a file; the next pack older than a day clears it."""
    monkeypatch.setattr(_handover, "_folder", lambda: tmp_path)
    stale, fresh = tmp_path / "optkit-load-1-old", tmp_path / "optkit-load-2-new"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (0, 0))
    h = pack(np.zeros(MIN_SHARED_BYTES // 8, np.float64))
    assert not stale.exists() and fresh.exists()
    unpack(h)
