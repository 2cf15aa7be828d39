"""What ``optkit tune`` may change: a search space over dotted config paths, checked up front.

A space file maps config keys, named as in an experiment file (``section.key``), to the values
the search may try::

    batching.max_batch_size:         {int: [4, 128], log: true}     integers 4..128, log-spaced
    batching.max_delay_ms:           {float: [0.0, 4.0]}            any real in [0, 4]
    batching.max_concurrent_batches: {choices: [1, 2, 4]}           one of a list
    batching.executor:               {choices: [loop, thread]}
    pooling.limit:                   {int: [16, 256], step: 16}

Every key is checked against the config schema before any server starts, the way an
experiment file is: an unknown section or key is refused with the keys that are known, and
both ends of a range (and every choice) are set into the base config and built, so a value
the config would refuse (``batching.max_batch_size: 0``, ``2.5`` rows) is refused here,
naming the key, instead of failing a trial an hour into the search. A candidate is the base
config with the space's keys replaced (:meth:`SearchSpace.apply`): keys the space does not
name keep the base's values.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Mapping

import yaml

from .._config import _SECTIONS, ServiceConfig, load_config
from .._exceptions import ConfigError
from .._schema import read_mapping

__all__ = ["Param", "SearchSpace", "load_space", "Slo", "parse_slo", "parse_budget",
           "write_tuned_config"]

_KINDS = ("int", "float", "choices")
_OPTIONS = {"int": {"log", "step"}, "float": {"log", "step"}, "choices": set()}
#: keys a search may not change: they say what the service is, not how well it runs
_FIXED = {"name", "server.host", "server.grpc_port", "loading.models", "loading.parameters",
          "gateway.models"}


@dataclass(frozen=True)
class Param:
    """One dimension of the space: ``int``/``float`` in ``[low, high]`` (``log``, ``step``), or
    one of ``choices``."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        """The dimension in one phrase: ``int 4..128 (log)``, ``one of 1, 2, 4``."""
        if self.kind == "choices":
            return "one of " + ", ".join(map(str, self.choices))
        extra = " (log)" if self.log else (f" step {self.step:g}" if self.step else "")
        return f"{self.kind} {self.low:g}..{self.high:g}{extra}"

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension (the base's own setting may not be)."""
        if self.kind == "choices":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, Real):
            return False
        if self.kind == "int" and not isinstance(value, Integral):
            return False
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this dimension's value."""
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        if self.kind == "float":
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log,
                                       step=self.step)
        return trial.suggest_categorical(self.key, list(self.choices))


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions a search explores, each a key of the service config."""

    params: tuple[Param, ...]
    source: str = "space"

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, the file's own form (stored with the study: a resume must match it)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "choices":
                out[p.key] = {"choices": list(p.choices)}
                continue
            doc: dict[str, Any] = {p.kind: [p.low, p.high]}
            if p.log:
                doc["log"] = True
            if p.step is not None:
                doc["step"] = p.step
            out[p.key] = doc
        return out

    def apply(self, base: Any, values: Mapping[str, Any], *, name: str | None = None
              ) -> ServiceConfig:
        """The base config with ``values`` (dotted keys) set: a candidate.

        Raises:
            ConfigError: the combination is not a valid config (a rule between two keys,
                say ``streaming.max_stream_rows >= streaming.sub_batch_rows``).
        """
        doc = set_values(load_config(base).to_dict(), values)
        if name is not None:
            doc["name"] = name
        return ServiceConfig.from_dict(doc)

    def base_values(self, base: Any) -> dict[str, Any]:
        """The base config's own value of every key of the space."""
        doc = load_config(base).to_dict()
        return {key: doc[key.split(".")[0]][key.split(".")[1]] for key in self.keys}


def set_values(doc: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the config mapping ``doc`` with each ``section.key`` of ``values`` set."""
    out = copy.deepcopy(dict(doc))
    for key, value in values.items():
        section, field = key.split(".")
        out[section] = {**(out.get(section) or {}), field: value}
    return out


def write_tuned_config(path: Path, base: Any, base_cfg: ServiceConfig,
                       overrides: dict[str, Any], best: dict[str, Any], slo: Slo,
                       load: str) -> Path:
    """The base experiment file with the winning keys set, named ``<base>-tuned``."""
    if isinstance(base, (str, Path)):
        doc = read_mapping(base, what="config")
    else:
        doc = base_cfg.to_dict()
    doc = set_values(doc, overrides)
    doc = {"name": f"{base_cfg.name}-tuned", **{k: v for k, v in doc.items() if k != "name"}}
    load_config(doc)  # what is written loads as an experiment
    old = {k: base_cfg.to_dict()[k.split(".")[0]][k.split(".")[1]] for k in overrides}
    head = (f"# optkit tune: {base_cfg.name} + the winning candidate #{best['candidate']} at "
            f"{slo}, {load}\n" + "".join(
                f"#   {k}: {old[k]!r} -> {v!r}\n" if old[k] != v
                else f"#   {k}: {v!r} (the base's)\n" for k, v in overrides.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False))
    return path


def _fields(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_SECTIONS[section])]


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str) or key.count(".") != 1:
        raise ConfigError(f"{where}: {key!r} must be a config key as section.key "
                          f"(e.g. batching.max_batch_size)")
    section, field = key.split(".")
    if section == "arm":
        raise ConfigError(f"{where}: {key}: arm.NAME keys search an arm file's own parameters, "
                          f"but the base is an optkit config: tune the arm file (kind: command, "
                          f"parameters: ...) instead")
    if section not in _SECTIONS:
        raise ConfigError(f"{where}: {key}: unknown section {section!r} "
                          f"(known: {', '.join(sorted(_SECTIONS))})")
    if field not in _fields(section):
        raise ConfigError(f"{where}: {key}: unknown key {field!r} of {section} "
                          f"(known: {', '.join(_fields(section))})")
    if key in _FIXED:
        raise ConfigError(f"{where}: {key} says what the service is, not how well it runs: "
                          f"it cannot be searched")


def _number(where: str, key: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key}: {what} must be a finite number, got {value!r}")
    return value  # type: ignore[return-value]


def _param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: {key} must be a mapping such as {{int: [4, 128]}}, "
                          f"{{float: [0.0, 4.0], log: true}} or {{choices: [1, 2, 4]}}, "
                          f"got {spec!r}")
    kinds = [k for k in _KINDS if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: {key} must have exactly one of int, float, choices; "
                          f"got {', '.join(map(str, spec)) or 'none'}")
    kind = kinds[0]
    extra = set(spec) - {kind} - _OPTIONS[kind]
    if extra:
        raise ConfigError(f"{where}: {key}: unknown option(s) {', '.join(sorted(map(str, extra)))} "
                          f"for {kind} (known: {', '.join(sorted(_OPTIONS[kind])) or 'none'})")
    if kind == "choices":
        choices = spec["choices"]
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{where}: {key}: choices must be a non-empty list, got {choices!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: {key}: choices repeat a value: {list(choices)!r}")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{where}: {key}: choices must be numbers, strings, booleans "
                              f"or null, got {list(choices)!r}")
        return Param(key, kind, choices=tuple(choices))
    bounds = spec[kind]
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise ConfigError(f"{where}: {key}: {kind} must be a range [low, high], got {bounds!r}")
    low, high = (_number(where, key, end, v) for end, v in zip(("low", "high"), bounds))
    if kind == "int" and not all(isinstance(v, Integral) for v in (low, high)):
        raise ConfigError(f"{where}: {key}: an int range needs integer ends, got {list(bounds)!r}")
    if not low < high:
        raise ConfigError(f"{where}: {key}: the range's low must be below its high, "
                          f"got [{low}, {high}]")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key}: a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(where, key, "step", step)
        if step <= 0 or (kind == "int" and not isinstance(step, Integral)):
            raise ConfigError(f"{where}: {key}: step must be a positive "
                              f"{'integer' if kind == 'int' else 'number'}, got {step!r}")
        if log:
            raise ConfigError(f"{where}: {key}: step and log cannot be combined")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def load_space(source: str | Path | Mapping[str, Any], base: Any = None) -> SearchSpace:
    """Read and check a space (a YAML file or a mapping) against the config schema.

    Args:
        source: the space file, or its mapping.
        base: the base config (path, mapping, ServiceConfig or None for the baseline): every
            end of every range and every choice is set into it and the config built.

    Raises:
        ConfigError: naming the key: unknown section or key, a key that cannot be searched, a
            malformed range (ends, order, log with low <= 0), or a value the config refuses.
    """
    where = f"space {source}" if isinstance(source, (str, Path)) else "space"
    doc = read_mapping(source, what="space") if isinstance(source, (str, Path)) else source
    if not isinstance(doc, Mapping) or not doc:
        raise ConfigError(f"{where}: must map at least one config key to its values")
    base_cfg = load_config(base)
    params = []
    for key, spec in doc.items():
        _check_key(key, where)
        param = _param(key, spec, where)
        ends = param.choices if param.kind == "choices" else (param.low, param.high)
        for value in ends:
            if param.kind == "int":
                value = int(value)  # type: ignore[arg-type]
            try:
                ServiceConfig.from_dict(set_values(base_cfg.to_dict(), {key: value}))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {key}: {value!r} is not a value the config "
                                  f"takes: {exc}") from None
        params.append(param)
    return SearchSpace(tuple(params), source=str(source) if isinstance(source, (str, Path))
                       else "space")


@dataclass(frozen=True)
class Slo:
    """A latency objective: ``p99 <= 10 ms`` is ``Slo("p99_ms", 10.0)``."""

    metric: str
    bound_ms: float

    def __str__(self) -> str:
        return f"{self.metric.removesuffix('_ms')}<={self.bound_ms:g}ms"


_SLO = re.compile(r"^\s*(p50|p90|p99|p999)\s*<=\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*$")


def parse_slo(text: str | Slo) -> Slo:
    """``"p99<=10ms"`` -> ``Slo("p99_ms", 10.0)`` (p50, p90, p99, p999; ms, the default, or s)."""
    if isinstance(text, Slo):
        return text
    m = _SLO.match(str(text))
    if not m or float(m.group(2)) <= 0:
        raise ConfigError(f"--slo must read like p99<=10ms (p50, p90, p99 or p999, a bound "
                          f"> 0 in ms or s), got {text!r}")
    bound = float(m.group(2)) * (1000.0 if m.group(3) == "s" else 1.0)
    return Slo(f"{m.group(1)}_ms", bound)


_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*$")


def parse_budget(text: str | float | None) -> float | None:
    """``"15m"`` -> 900.0 seconds (``s``, ``m``/``min``, ``h``; a bare number is seconds)."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _BUDGET.match(str(text))
        if not m:
            raise ConfigError(f"--budget must read like 15m, 900s or 1h, got {text!r}")
        seconds = float(m.group(1)) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"--budget must be > 0, got {text!r}")
    return seconds
