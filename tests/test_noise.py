"""The noise band of a verdict (optkit/lab/_noise.py, _calibration.py): one cell per
(workload, load), read back scaled to the session's pairs, and where it came from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from optkit.lab import noise_band
from optkit.lab._calibration import _merge, _read
from optkit.lab.stats import DEFAULT_DELTAS, scaled_delta


def cell(delta: float, sd: float, n: int, **extra: object) -> dict:
    return {"deltas": {"throughput_rps": {"delta": delta, "sd_d": sd, "n_pairs": n},
                       "p99_ms": {"delta": 2 * delta, "sd_d": 2 * sd, "n_pairs": n}},
            "n_pairs": n, "created": "2026-12-05T10:00:00+0000", **extra}


DOC = {"schema_version": 2, "cells": {"digits|closed:32": cell(0.02, 0.05, 16, config_name="baseline"),
                                      "large-output|closed:16": cell(0.04, 0.09, 16)}}


def test_a_measured_cell_at_its_own_pairs() -> None:
    """At the calibration's own n the band is the measured one; unmeasured metrics say default."""
    band = noise_band(DOC, workload="digits", load="closed:32", n_pairs=16)
    assert band.deltas["throughput_rps"] == 0.02 and band.sources["throughput_rps"] == "measured"
    assert band.deltas["p50_ms"] == DEFAULT_DELTAS["p50_ms"] and band.sources["p50_ms"] == "default"
    assert band.sd_d == {"throughput_rps": 0.05, "p99_ms": 0.10} and band.n_cal == 16
    assert "16 A/A pairs of baseline, 2026-12-05" in band.source and not band.measured


def test_fewer_pairs_widen_the_band_by_the_square_root() -> None:
    """A session of 4 pairs gets the 16-pair band times sqrt(16/4); more pairs keep it."""
    band = noise_band(DOC, workload="digits", load="closed:32", n_pairs=4)
    assert band.deltas["throughput_rps"] == pytest.approx(0.04)
    assert band.sources["throughput_rps"] == "scaled" and "scaled to 4 pairs" in band.source
    assert noise_band(DOC, workload="digits", load="closed:32", n_pairs=32).deltas[
        "throughput_rps"] == 0.02
    assert scaled_delta(0.02, None, 4) == 0.02


def test_each_workload_has_its_own_cells() -> None:
    """The large-output band is not the digits band; a cell never measured is the defaults,
    and the source says which cell was missing."""
    large = noise_band(DOC, workload="large-output", load="closed:16", n_pairs=16)
    assert large.deltas["throughput_rps"] == 0.04
    missing = noise_band(DOC, workload="digits", load="closed:16", n_pairs=16)
    assert missing.deltas == dict(DEFAULT_DELTAS) and "has no digits at closed:16" in missing.source
    assert not missing.sd_d and set(missing.sources.values()) == {"default"}


def test_a_workload_file_is_one_cell_however_its_path_is_spelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrated from the root as ``experiments/w.yaml``, read from ``notebooks/`` as
    ``../experiments/w.yaml`` (the week's notebooks): the same file, the same band; another
    file of the same name elsewhere is another cell."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "experiments" / "w.yaml").write_text("name: w\n")
    (tmp_path / "notebooks" / "w.yaml").write_text("name: other\n")
    monkeypatch.chdir(tmp_path)
    from optkit.lab._noise import cell_key
    doc = {"schema_version": 2, "cells": {cell_key("experiments/w.yaml", "closed:32"):
                                          cell(0.03, 0.06, 16)}}
    monkeypatch.chdir(tmp_path / "notebooks")
    band = noise_band(doc, workload="../experiments/w.yaml", load="closed:32", n_pairs=16)
    assert band.deltas["throughput_rps"] == 0.03 and band.sources["throughput_rps"] == "measured"
    assert noise_band(doc, workload="w.yaml", load="closed:32").deltas == dict(DEFAULT_DELTAS)
    # a workload given as a Path (the lab passes them so) is the same cell
    assert cell_key(Path("../experiments/w.yaml"), "closed:32") == next(iter(doc["cells"]))
    # a file written with the raw spelling (before the key was resolved) is still read there
    raw = {"schema_version": 2, "cells": {"../experiments/w.yaml|closed:32": cell(0.05, 0.1, 16)}}
    assert noise_band(raw, workload="../experiments/w.yaml", load="closed:32",
                      n_pairs=16).deltas["throughput_rps"] == 0.05


def test_a_file_of_the_first_schema_is_read_as_digits_cells(tmp_path: Path) -> None:
    """Schema 1 (``per_load``, one config, digits only) still reads, as digits cells."""
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"schema_version": 1, "created": "2026-11-28",
                                "per_load": {"closed:32": cell(0.03, 0.06, 24)["deltas"]}}))
    band = noise_band(path, workload="digits", load="closed:32", n_pairs=24)
    assert band.deltas["throughput_rps"] == 0.03 and band.sd_d["throughput_rps"] == 0.06
    assert noise_band(path, workload="large-output", load="closed:32").deltas == dict(DEFAULT_DELTAS)
    assert "not found" in noise_band(tmp_path / "none.json", load="closed:32").source


def test_calibrating_a_cell_keeps_the_others(tmp_path: Path) -> None:
    """A new cell is merged in; the same cell measured again replaces the old one; the top
    ``deltas`` is the widest of each metric over all cells."""
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(DOC))
    merged = _merge(_read(path), {"digits|closed:1": cell(0.01, 0.03, 16),
                                  "digits|closed:32": cell(0.025, 0.06, 16)})
    assert set(merged["cells"]) == {"digits|closed:32", "large-output|closed:16", "digits|closed:1"}
    assert merged["cells"]["digits|closed:32"]["deltas"]["throughput_rps"]["delta"] == 0.025
    widest = merged["deltas"]["throughput_rps"]
    assert widest["delta"] == 0.04 and widest["cell"] == "large-output|closed:16"
    assert math.isclose(noise_band(merged, load=None).deltas["p99_ms"], 0.08)


def test_a_calibration_made_before_memory_per_client_gives_it_the_default_and_says_so() -> None:
    """An old cell (mem_per_request_kb, no mem_per_client_kb): default band, named in the source."""
    old = {"cells": {"digits|closed:32": {"deltas": {
        "throughput_rps": {"delta": 0.03, "sd_d": 0.05, "n_pairs": 16},
        "mem_per_request_kb": {"delta": 0.40, "sd_d": 0.6, "n_pairs": 16}}}}}
    band = noise_band(old, workload="digits", load="closed:32", n_pairs=16)
    assert band.deltas["mem_per_client_kb"] == DEFAULT_DELTAS["mem_per_client_kb"] == 0.05
    assert band.sources["mem_per_client_kb"] == "default"
    assert "mem_per_request_kb" not in band.deltas
    assert "mem_per_client_kb (not in this calibration)" in band.source
    assert "mem_held_mb" not in band.source  # not defined at a closed loop: nothing to say
    opened = noise_band(old, workload="digits", load="open:2500", n_pairs=16)
    assert opened.deltas["mem_held_mb"] == DEFAULT_DELTAS["mem_held_mb"]
    assert noise_band({"throughput_rps": 0.03, "mem_per_request_kb": 0.4}, load=None
                      ).deltas["throughput_rps"] == 0.03  # an old bare mapping is still read
