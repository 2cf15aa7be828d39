"""Workloads from YAML, Zipf weights, the body pool, and the load specification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from optkit import BenchError, ConfigError
from optkit.bench import InputSpec, LoadSpec, Workload, builtin_workloads, schedule_offsets_ns
from optkit.bench import zipf_weights

PIXELS = {m: (InputSpec("pixels", "FP32", 64),) for m in
          ("digits-mlp", "digits-mlp-s", "digits-mlp-m", "digits-mlp-l", "digits-mlp-xl")}


def test_zipf_weights_known_answer() -> None:
    """Zipf(s) weights are 1/k**s normalized: s=1 over 3 ranks is 6/11, 3/11, 2/11."""
    assert zipf_weights(3, 1.0) == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    assert zipf_weights(4, 0.0) == pytest.approx([0.25] * 4)


def test_builtin_workloads_all_parse() -> None:
    """Every shipped workload file parses; catalog-zipf uses Zipf s=1.1 over four models."""
    names = set(builtin_workloads())
    assert {"digits", "catalog-zipf", "synthetic", "large-output"} <= names
    for name in names:
        Workload.resolve(name)
    zipf = Workload.resolve("catalog-zipf")
    assert zipf.models[0] == "digits-mlp-s"
    assert zipf.weights == pytest.approx(tuple(zipf_weights(4, 1.1)))
    assert Workload.resolve("large-output").models == ("synthetic-wide",)


def test_yaml_with_weights_and_row_distribution(tmp_path: Path) -> None:
    """Explicit weights normalize and a rows distribution keeps its values and weights."""
    path = tmp_path / "mix.yaml"
    path.write_text("models:\n  - {name: a, weight: 3}\n  - {name: b, weight: 1}\n"
                    "rows: {values: [1, 4], weights: [1, 1]}\ndata: random\n")
    wl = Workload.from_yaml(path)
    assert wl.name == "mix" and wl.weights == pytest.approx((0.75, 0.25))
    assert wl.rows == (1, 4) and wl.row_weights == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("doc", [{"modelz": ["a"]}, {"models": []}, {"rows": 0},
                                 {"data": "imagenet"}, {"models": [{"name": "a", "weight": -1}]}])
def test_bad_workloads_name_the_problem(doc: dict) -> None:
    """Unknown keys, empty models, zero rows, unknown data and negative weights are refused."""
    with pytest.raises(BenchError, match="workload"):
        Workload.from_dict(doc)


@pytest.mark.parametrize(("doc", "key"), [
    ({"rows": 2.7}, "rows"), ({"rows": 2.0}, "rows"), ({"rows": "2"}, "rows"),
    ({"rows": True}, "rows"), ({"rows": {"values": [1, 2.5]}}, r"rows\.values\[1\]"),
    ({"rows": {"vals": [1]}}, "rows"), ({"rows": {"values": 4}}, "rows.values"),
    ({"rows": {"values": [1, 4], "weights": [1]}}, "row_weights"),
    ({"pool_size": 10.5}, "pool_size"), ({"pool_size": 0}, "pool_size"),
    ({"models": 5}, "models"), ({"models": [{"weight": 2}]}, r"models\[0\]"),
    ({"models": [{"name": "a", "weight": "heavy"}]}, r"models\[0\]\.weight"),
    ({"models": ["a", 7]}, r"models\[1\]"), ({"zipf_s": -1}, "zipf_s"),
    ({"low": "zero"}, "low"), ({"low": 2, "high": 1}, "high"), ({"high": float("nan")}, "high"),
    ({"inputs": ["pixels"]}, r"inputs\[0\]"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16.5]}]}, "shape"),
    ({"name": 3}, "name"), ({"description": ["a"]}, "description"),
])
def test_bad_values_raise_bench_error_naming_the_key(doc: dict, key: str) -> None:
    """Wrong types or ranges are a BenchError naming the key, never truncated or a bare error."""
    with pytest.raises(BenchError, match=key) as caught:
        Workload.from_dict(doc)
    assert "workload" in str(caught.value)


def test_integer_fields_are_never_truncated() -> None:
    """rows 2.7 is refused from YAML and from Python; integer values stay as given."""
    with pytest.raises(BenchError, match="rows must be an integer, got 2.7"):
        Workload.from_dict({"rows": 2.7})
    with pytest.raises(BenchError, match=r"rows\[0\] must be an integer"):
        Workload(rows=(2.7,))
    wl = Workload.from_dict({"rows": {"values": [1, 4], "weights": [3, 1]}, "pool_size": 8})
    assert wl.rows == (1, 4) and wl.row_weights == (0.75, 0.25) and wl.pool_size == 8
    assert Workload.from_dict(wl.to_dict()) == wl  # what to_dict writes reads back the same


def test_pool_matches_weights_and_encodes_v2_bodies() -> None:
    """The pool holds each model in proportion to its weight, as valid v2 JSON of real digits."""
    wl = Workload.resolve("catalog-zipf")
    pool = wl.build(PIXELS, seed=1)
    counts = np.bincount(pool.models, minlength=4)
    assert counts.sum() == 256
    assert np.abs(counts / 256 - np.asarray(wl.weights)).max() < 1 / 256 + 1e-9
    doc = orjson.loads(pool.bodies[0])
    tensor = doc["inputs"][0]
    assert tensor["name"] == "pixels" and tensor["shape"] == [1, 64]
    assert tensor["datatype"] == "FP32" and len(tensor["data"]) == 64
    assert 0 <= min(tensor["data"]) and max(tensor["data"]) <= 16
    assert len(set(pool.bodies)) > 200  # real samples vary per body


def test_pool_is_reproducible_and_batch_override_sets_rows() -> None:
    """Same seed, same bytes; replace(rows=8) makes every body 8 rows of random floats."""
    wl = Workload.resolve("synthetic").replace(rows=8)
    sig = {"synthetic": (InputSpec("x", "FP32", 16),)}
    a, b = wl.build(sig, seed=3), wl.build(sig, seed=3)
    assert a.bodies == b.bodies and a.bodies != wl.build(sig, seed=4).bodies
    assert set(a.rows) == {8}
    assert orjson.loads(a.bodies[0])["inputs"][0]["shape"] == [8, 16]


def test_digits_data_needs_64_wide_input() -> None:
    """Asking for digits on a 16-wide input is an error naming the input."""
    wl = Workload.from_dict({"models": ["synthetic"], "data": "digits"})
    with pytest.raises(BenchError, match="64-wide"):
        wl.build({"synthetic": (InputSpec("x", "FP32", 16),)})


def test_load_spec_validation_and_labels() -> None:
    """Labels read 'closed:N' / 'open:R'; bad values raise ConfigError naming the field."""
    assert LoadSpec.closed(32).label == "closed:32"
    assert LoadSpec.parse("open:2000").rate == 2000 and LoadSpec.open(2000).label == "open:2000"
    with pytest.raises(ConfigError, match="rate"):
        LoadSpec(mode="open")
    with pytest.raises(ConfigError, match="concurrency"):
        LoadSpec.closed(0)
    with pytest.raises(ConfigError, match="wrk"):
        LoadSpec.open(100, engine="wrk")


def test_constant_schedule_is_evenly_spaced() -> None:
    """A constant timetable at 1000/s for 1 s has 1000 sends 1 ms apart."""
    offsets = schedule_offsets_ns(1000, 1.0, "constant", 0)
    assert len(offsets) == 1000 and set(np.diff(offsets).tolist()) == {1_000_000}


def test_poisson_schedule_is_seeded_with_the_right_rate() -> None:
    """A Poisson timetable reproduces with its seed and has mean gap 1/rate, CV ~1."""
    a = schedule_offsets_ns(2000, 5.0, "poisson", 7)
    assert np.array_equal(a, schedule_offsets_ns(2000, 5.0, "poisson", 7))
    assert abs(len(a) - 10_000) < 400
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)
