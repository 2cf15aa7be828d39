"""A CPU-bound model whose cost per call is ``a + b * batch_size`` microseconds.

It spins on the CPU (holding the GIL, like pure-Python inference code) for the
configured time, then returns the row sums of its input, repeated to
``output_width`` columns. The known cost makes it the ground truth for
experiments: lower ``b`` and the throughput must go up.
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
        self.load_delay_s = float(params.get("load_delay_s", 0.0))
        self._input = config.inputs[0].name
        self._output = config.outputs[0].name
        if self.load_delay_s:
            _spin(self.load_delay_s)  # a slow load, for the loading day

    @property
    def nbytes(self) -> int:
        return 0

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs[self._input]
        batch = x.shape[0]
        _spin((self.cost_a_us + self.cost_b_us * batch) * 1e-6)
        sums = x.sum(axis=1, dtype=np.float32).reshape(batch, 1)
        if self.output_width != 1:
            sums = np.repeat(sums, self.output_width, axis=1)
        return {self._output: sums}


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
