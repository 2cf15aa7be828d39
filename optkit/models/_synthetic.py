"""A CPU-bound model whose cost per call is ``a + b * batch_size`` microseconds.

It spins on the CPU (holding the GIL, like pure-Python inference code) for the
configured time, then returns the row sums of its input, repeated to
``output_width`` columns. The known cost makes it the ground truth for
experiments: lower ``b`` and the throughput must go up.

Loading costs what ``load_cost_s`` says (``load_delay_s`` is its old name): a
pure-Python loop that holds the GIL the way unpickling a large object graph does,
so a load in a thread competes with the serving loop as a real one would.
``weights_bytes`` makes it hold that many bytes of (seeded, random) weights, so
memory budgets can be exercised; ``load_fails`` (off) makes the load raise half
way through its cost, as a truncated artefact does.

``poison_value`` (off by default) injects a fault: a call whose input holds a
row starting with that value raises, as a model does on an input it cannot
handle, so batching's fault isolation can be tested and measured on a real server.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np

from ._base import ModelConfig

__all__ = ["SyntheticModel"]


class SyntheticModel:
    """Burns ``cost_a_us + cost_b_us * batch`` of CPU per call."""

    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        self.config = config
        params = config.parameters
        self.cost_a_us = float(params.get("cost_a_us", 50.0))
        self.cost_b_us = float(params.get("cost_b_us", 10.0))
        self.output_width = int(params.get("output_width", 1))
        self.load_cost_s = float(params.get("load_cost_s", params.get("load_delay_s", 0.0)))
        poison = params.get("poison_value")
        self.poison_value = None if poison is None else float(poison)
        self._input = config.inputs[0].name
        self._output = config.outputs[0].name
        if params.get("load_fails", False):
            _spin(self.load_cost_s / 2)
            raise ValueError(f"synthetic load of {config.name!r} failed half way (load_fails)")
        if self.load_cost_s:
            _spin(self.load_cost_s)  # a slow load, for the loading day
        size = int(params.get("weights_bytes", 0))
        self._weights = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        return int(self._weights.nbytes)

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs[self._input]
        batch = x.shape[0]
        _spin((self.cost_a_us + self.cost_b_us * batch) * 1e-6)
        if self.poison_value is not None and batch and bool((x[:, 0] == self.poison_value).any()):
            raise ValueError(f"a row starts with the poison value {self.poison_value}")
        sums = x.sum(axis=1, dtype=np.float32).reshape(batch, 1)
        if self.output_width != 1:
            sums = np.repeat(sums, self.output_width, axis=1)
        return {self._output: sums}


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
