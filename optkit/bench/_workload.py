"""Workloads as data: which models, how many rows, what numbers, in YAML.

A workload is a deck of request bodies dealt before the run::

    models  digits-mlp-s 0.47 | -m 0.22 | -l 0.14 | -xl 0.10 ...   (weights or Zipf s)
    rows    1, or a small distribution {values: [1, 4], weights: [0.8, 0.2]}
    data    digits (real images, a different sample per body) | random (seeded)
       └──▶ pool of `pool_size` pre-encoded v2 bodies, shuffled; request i uses body i % pool

Encoding happens here, once, so it never costs during measurement. A model's
inputs (name, datatype, width) come from its v2 metadata unless the workload
names them (``inputs:``). Built-in workloads live in ``optkit/bench/workloads``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib import resources
from numbers import Integral
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import orjson

from .._checks import check_int, check_number, check_real
from .._exceptions import BenchError
from .._schema import Document, read_mapping

__all__ = ["Workload", "BodyPool", "InputSpec", "zipf_weights", "builtin_workloads"]

DataSource = Literal["auto", "digits", "random"]
_KEYS = {"name", "description", "models", "zipf_s", "rows", "data", "low", "high",
         "pool_size", "inputs"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, v2 datatype and row width."""

    name: str
    datatype: str
    width: int

    @classmethod
    def parse(cls, text: str) -> "InputSpec":
        """``NAME:DATATYPE:WIDTH`` (the CLI's ``--input``), e.g. ``predict:FP32:64``."""
        parts = str(text).rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[2].isdigit():
            raise BenchError(f"--input must be NAME:DATATYPE:WIDTH (e.g. predict:FP32:64), "
                             f"got {text!r}")
        return cls.from_metadata({"name": parts[0], "datatype": parts[1].upper(),
                                  "shape": [-1, int(parts[2])]})

    @classmethod
    def from_metadata(cls, entry: Mapping[str, Any]) -> "InputSpec":
        """Read one ``inputs`` entry of v2 model metadata (``shape`` [-1, w, ...])."""
        try:
            shape = list(entry["shape"])
            if not all(isinstance(d, Integral) and not isinstance(d, bool) for d in shape):
                raise ValueError(f"shape must be integers, got {shape}")
            width = int(np.prod([d for d in shape[1:]])) if len(shape) > 1 else 1
            spec = cls(str(entry["name"]), str(entry["datatype"]), width)
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchError(f"bad v2 input metadata {dict(entry)!r}: {exc}") from None
        if spec.width < 1:
            raise BenchError(f"input {spec.name!r} has no fixed row width (shape {shape})")
        return spec


@dataclass(frozen=True)
class BodyPool:
    """Pre-encoded request bodies; ``models[i]`` indexes ``model_names``."""

    model_names: tuple[str, ...]
    bodies: tuple[bytes, ...]
    models: tuple[int, ...]
    rows: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.bodies)


def zipf_weights(n: int, s: float) -> np.ndarray:
    """Normalized Zipf weights ``1/k**s`` for ranks k = 1..n (the first is hottest)."""
    if n < 1 or s < 0:
        raise BenchError(f"zipf needs n >= 1 and s >= 0, got n={n}, s={s}")
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


def _normalized(where: str, key: str, weights: Sequence[float], n: int,
                what: str) -> tuple[float, ...]:
    """Weights (default: all equal) checked >= 0, one per item, not all zero; summing to 1."""
    if not weights:
        return (1.0 / n,) * n
    if len(weights) != n:
        raise BenchError(f"{where}: {key} needs one weight per {what} ({n}), got {len(weights)}")
    w = [check_number(f"{where}: {key}[{i}]", x, allow_zero=True, error=BenchError)
         for i, x in enumerate(weights)]
    total = math.fsum(w)
    if not 0 < total < math.inf:
        raise BenchError(f"{where}: {key} must not all be zero, got {tuple(weights)!r}")
    return tuple(float(x / total) for x in w)


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder rounding of ``weights * total`` to integers summing to total."""
    raw = weights * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts


def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    return load_digits().data


def builtin_workloads() -> dict[str, Path]:
    """Names and paths of the workloads shipped in ``optkit/bench/workloads``."""
    folder = resources.files("optkit.bench") / "workloads"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


@dataclass(frozen=True, kw_only=True)
class Workload:
    """A mix of models, rows per request and data, loadable from YAML.

    Args:
        name: label for result files.
        models: model names; ``weights`` (normalized) say how often each is hit.
        rows: choices for rows per request, drawn per body with ``row_weights``.
        data: ``digits`` (real samples), ``random`` (uniform in [low, high)), or
            ``auto`` (digits when the input is 64 wide, else random).
        pool_size: number of distinct pre-encoded bodies.
        inputs: input specs to use instead of each model's metadata.
    """

    name: str = "custom"
    description: str = ""
    models: tuple[str, ...] = ("digits-mlp",)
    weights: tuple[float, ...] = ()
    rows: tuple[int, ...] = (1,)
    row_weights: tuple[float, ...] = ()
    data: DataSource = "auto"
    low: float = 0.0
    high: float = 1.0
    pool_size: int = 256
    inputs: tuple[InputSpec, ...] = ()

    def __post_init__(self) -> None:
        where = f"workload {self.name!r}"
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise BenchError(f"{where}: models must be non-empty names, got {self.models!r}")
        object.__setattr__(self, "weights", _normalized(where, "weights", self.weights,
                                                        len(self.models), "model"))
        if not self.rows:
            raise BenchError(f"{where}: rows must hold at least one value")
        object.__setattr__(self, "rows", tuple(
            check_int(f"{where}: rows[{i}]", x, error=BenchError) for i, x in enumerate(self.rows)))
        object.__setattr__(self, "row_weights", _normalized(where, "row_weights", self.row_weights,
                                                            len(self.rows), "rows value"))
        if self.data not in ("auto", "digits", "random"):
            raise BenchError(f"{where}: data must be auto, digits or random, got {self.data!r}")
        check_int(f"{where}: pool_size", self.pool_size, error=BenchError)
        low = check_real(f"{where}: low", self.low, error=BenchError)
        if not check_real(f"{where}: high", self.high, error=BenchError) > low:
            raise BenchError(f"{where}: high must be > low, got low={self.low!r}, "
                             f"high={self.high!r}")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, name: str = "custom") -> "Workload":
        """Build from plain data (the YAML schema); a bad key or value is named in a BenchError.

        Nothing is coerced: ``rows: 2.7`` or ``pool_size: "64"`` is refused, not truncated.
        """
        name = doc.get("name", name) if isinstance(doc, Mapping) else name
        fields = Document(doc, where=f"workload {name!r}", known=_KEYS, error=BenchError)
        kw: dict[str, Any] = {"name": fields.text("name", name)}
        models = fields.get("models", None)
        entries = [models] if isinstance(models, str) else fields.sequence("models", ["digits-mlp"])
        names, weights = [], []
        for i, m in enumerate(entries):
            if isinstance(m, Mapping):
                entry = fields.within(f"models[{i}]", m, known={"name", "weight"})
                names.append(entry.text("name"))
                weights.append(entry.number("weight", 1.0, allow_zero=True))
            elif isinstance(m, str) and m:
                names.append(m)
                weights.append(1.0)
            else:
                raise fields.fail(f"models[{i}]", "a name or {name, weight}", m)
        kw["models"] = tuple(names)
        if "zipf_s" in fields:
            s = fields.number("zipf_s", allow_zero=True)
            kw["weights"] = tuple(zipf_weights(len(names), s)) if names else ()
        else:
            kw["weights"] = tuple(weights)
        rows = fields.get("rows", 1)
        if isinstance(rows, Mapping):
            spread = fields.within("rows", rows, known={"values", "weights"})
            values, row_weights = spread.sequence("values"), spread.sequence("weights", [])
            kw["rows"] = tuple(check_int(f"{fields.where}: rows.values[{i}]", v, error=BenchError)
                               for i, v in enumerate(values))
            kw["row_weights"] = tuple(
                check_number(f"{fields.where}: rows.weights[{i}]", v, allow_zero=True,
                             error=BenchError) for i, v in enumerate(row_weights))
        else:
            kw["rows"] = (fields.integer("rows", 1),)
        description = fields.get("description", None)
        if description is not None:
            if not isinstance(description, str):
                raise fields.fail("description", "a string", description)
            kw["description"] = description
        if "data" in fields:
            kw["data"] = fields.text("data")
        for key in ("low", "high"):
            if key in fields:
                kw[key] = fields.real(key)
        if "pool_size" in fields:
            kw["pool_size"] = fields.integer("pool_size")
        if "inputs" in fields:
            specs = []
            for i, e in enumerate(fields.sequence("inputs")):
                if not isinstance(e, Mapping):
                    raise fields.fail(f"inputs[{i}]", "a mapping with name, datatype and shape", e)
                try:
                    specs.append(InputSpec.from_metadata(e))
                except BenchError as exc:
                    raise BenchError(f"{fields.where}: inputs[{i}]: {exc}") from None
            kw["inputs"] = tuple(specs)
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Workload":
        """Read a workload file; the file's stem is the default name."""
        return cls.from_dict(read_mapping(path, what="workload", error=BenchError),
                             name=Path(path).stem)

    @classmethod
    def resolve(cls, source: "Workload | Mapping[str, Any] | str | Path | None") -> "Workload":
        """Accept a workload, a mapping, a built-in name (``'digits'``), a path, or None."""
        if source is None:
            source = "digits"
        if isinstance(source, Workload):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        shipped = builtin_workloads()
        if isinstance(source, str) and source in shipped:
            return cls.from_yaml(shipped[source])
        if not isinstance(source, (str, Path)):
            raise BenchError(f"a workload is a Workload, a mapping, a name or a path, "
                             f"got {source!r}")
        if not Path(source).exists():
            raise BenchError(f"no workload file {source!r} (built-in: {', '.join(sorted(shipped))})")
        return cls.from_yaml(source)

    def replace(self, *, models: Sequence[str] | None = None, rows: int | None = None,
                inputs: Sequence[InputSpec] | None = None) -> "Workload":
        """A copy hitting only ``models`` (evenly), with a fixed ``rows``, and/or ``inputs``."""
        changes: dict[str, Any] = {"inputs": tuple(inputs)} if inputs else {}
        if models:
            changes.update(models=tuple(models), weights=())
        if rows is not None:
            changes.update(rows=(rows,), row_weights=())
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the YAML schema) for result files."""
        return {"name": self.name, "description": self.description,
                "models": [{"name": m, "weight": w} for m, w in zip(self.models, self.weights)],
                "rows": {"values": list(self.rows), "weights": list(self.row_weights)},
                "data": self.data, "low": self.low, "high": self.high,
                "pool_size": self.pool_size,
                "inputs": [{"name": i.name, "datatype": i.datatype, "shape": [-1, i.width]}
                           for i in self.inputs]}

    def build(self, signatures: Mapping[str, Sequence[InputSpec]] | None = None,
              *, seed: int = 0) -> BodyPool:
        """Deal the pool: encode ``pool_size`` v2 bodies, seeded and shuffled."""
        rng = np.random.default_rng(seed)
        counts = _apportion(np.asarray(self.weights), self.pool_size)
        order = np.repeat(np.arange(len(self.models)), counts)
        rng.shuffle(order)
        rows = rng.choice(np.asarray(self.rows), size=self.pool_size, p=np.asarray(self.row_weights))
        digits: np.ndarray | None = None
        bodies = []
        for model, n in zip(order.tolist(), rows.tolist()):
            specs = self.inputs or tuple((signatures or {}).get(self.models[model], ()))
            if not specs:
                raise BenchError(f"no input metadata for model {self.models[model]!r}")
            tensors = []
            for spec in specs:
                use_digits = self.data == "digits" or (self.data == "auto" and spec.width == 64)
                if use_digits:
                    if spec.width != 64:
                        raise BenchError(f"data 'digits' needs 64-wide input, {spec.name!r} "
                                         f"of {self.models[model]!r} is {spec.width} wide")
                    digits = _digits() if digits is None else digits
                    values = digits[rng.integers(0, len(digits), size=n)]
                else:
                    values = rng.uniform(self.low, self.high, size=(n, spec.width)).round(4)
                if spec.datatype.startswith(("INT", "UINT")):
                    data: list[Any] = values.astype(np.int64).ravel().tolist()
                else:
                    data = values.ravel().tolist()
                tensors.append({"name": spec.name, "shape": [n, spec.width],
                                "datatype": spec.datatype, "data": data})
            bodies.append(orjson.dumps({"inputs": tensors}))
        return BodyPool(self.models, tuple(bodies), tuple(order.tolist()), tuple(rows.tolist()))
