"""The gate file: what a pull request is measured on, and how much worse each metric may get.

A small YAML file beside the code (``perf-gate.yaml``), read strictly::

    name: model-server                 # the summary's title
    setup:                             # run once in each checkout before any trial (optional)
      - "{python} -m venv .venv-gate"
      - .venv-gate/bin/pip install --quiet -e .
    setup_timeout_s: 900               # per setup command
    service:                           # how a checkout starts: an arm file's `command` keys
      command: .venv-gate/bin/python -m optkit serve model-server --repository m --port {port}
      url: http://127.0.0.1:{port}
      ready_url: http://127.0.0.1:{port}/v2/models/digits-mlp/ready
      env: {}
      startup_timeout_s: 60
    workload: digits                   # built-in name or a workload file (relative: to this file)
    loads: [closed:8]
    pairs: 20                          # fixed in advance, order randomized per pair as compare does
    warmup_s: 1
    duration_s: 2
    calibration: runs/calibration.json # the runner's A/A noise band (optional)
    calibrate_pairs: 0                 # > 0: measure it first, base vs base (_gate_noise)
    gate:                              # the gated metrics: the regression each may show, in %
      throughput_rps: 0                #   0: only the noise band counts
      p99_ms: 5
    alpha: 0.01                        # family-wise, Holm over every gated (load, metric)

In ``setup`` and ``service``, ``{python}`` is the interpreter running the gate and
``{checkout}`` the checkout's folder; commands run in the checkout. A metric's *allowed band*
is the wider of its declared regression and the noise band of its cell (the A/A calibration,
else the lab's defaults); the gate fails when a metric is judged *regressed* beyond it.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .._exceptions import ConfigError
from .._schema import Document, read_mapping
from ._arms import ExternalArm
from ._settings import CompareSettings
from .stats import EXTRA_METRICS, METRICS, RETIRED_METRICS

__all__ = ["GateSpec", "load_gate_spec", "DEFAULT_GATE"]

_KEYS = {"name", "setup", "setup_timeout_s", "service", "workload", "loads", "pairs",
         "warmup_s", "duration_s", "calibration", "calibrate_pairs", "gate", "alpha", "seed",
         "max_reruns", "engine"}
_SERVICE_KEYS = {"command", "url", "ready_url", "env", "startup_timeout_s", "stop_timeout_s"}

#: gated when a file names no metrics: throughput may not drop beyond the noise band, p99
#: may not rise beyond it
DEFAULT_GATE: Mapping[str, float] = {"throughput_rps": 0.0, "p99_ms": 0.0}

#: pairs and family-wise alpha when the file does not say. On the simulator (4 % trial noise,
#: drift, 5 % of trials 20 % slow; optkit.lab._gate_sim, 300 gates each), one load, throughput
#: and p99 gated at the default bands: 16 pairs at alpha 0.05 fail 1.3 % of A/A gates and
#: catch 92 % of 10 % regressions; 16 at 0.01: 0.7 % and 86 %; 20 at 0.01: 0 % (exact 95 %
#: bound 1.2 %) and 93 %. A gate that cries wolf is ignored (conbench raised its threshold
#: from z = 5 to 30 and then missed a real regression), so the default is 20 pairs at 0.01.
DEFAULT_GATE_PAIRS = 20
DEFAULT_GATE_ALPHA = 0.01


@dataclass(frozen=True, kw_only=True)
class GateSpec:
    """A checked gate file (see the module docstring). ``gate``: metric -> allowed regression %."""

    name: str = "performance gate"
    setup: tuple[tuple[str, ...], ...] = ()
    setup_timeout_s: float = 900.0
    service: Mapping[str, Any] | None = None
    settings: CompareSettings = field(default_factory=CompareSettings)
    calibration: str | None = None
    calibrate_pairs: int = 0
    gate: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_GATE))
    alpha: float = DEFAULT_GATE_ALPHA
    path: Path | None = None

    def arm(self, checkout: str | Path, name: str) -> ExternalArm:
        """The service of one checkout as a ``command`` arm started in it."""
        if self.service is None:
            raise ConfigError(f"gate file {self.path or ''}: comparing git refs needs a "
                              f"'service' section saying how a checkout starts")
        fill = _filler(checkout)
        doc = {"kind": "command", "name": name, "cwd": str(checkout),
               **{k: _fill_any(v, fill) for k, v in self.service.items()}}
        return ExternalArm.from_dict(doc)

    def setup_commands(self, checkout: str | Path) -> list[list[str]]:
        """The setup commands with ``{python}`` and ``{checkout}`` filled in."""
        fill = _filler(checkout)
        return [[fill(part) for part in command] for command in self.setup]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "setup": [list(c) for c in self.setup],
                "setup_timeout_s": self.setup_timeout_s,
                "service": dict(self.service) if self.service else None,
                "settings": self.settings.to_dict(), "calibration": self.calibration,
                "calibrate_pairs": self.calibrate_pairs,
                "gate": dict(self.gate), "alpha": self.alpha,
                "path": str(self.path) if self.path else None}


def _filler(checkout: str | Path) -> Any:
    values = {"{python}": sys.executable, "{checkout}": str(Path(checkout).resolve())}

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text
    return fill


def _fill_any(value: Any, fill: Any) -> Any:
    if isinstance(value, str):
        return fill(value)
    if isinstance(value, (list, tuple)):
        return [_fill_any(v, fill) for v in value]
    if isinstance(value, Mapping):
        return {k: _fill_any(v, fill) for k, v in value.items()}
    return value


def load_gate_spec(source: str | Path | Mapping[str, Any] | None = None, *,
                   quick: bool = False) -> GateSpec:
    """Read and check a gate file (or mapping); every bad value is a ConfigError naming it.

    ``quick`` shortens the trials (CI smoke of the gate itself: provisional verdicts).
    """
    path: Path | None = None
    if source is None:
        data: Mapping[str, Any] = {}
    elif isinstance(source, Mapping):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"gate file {path} does not exist")
        data = read_mapping(path, what="gate file")
    doc = Document(data, where=f"gate file {path}" if path else "gate", known=_KEYS)
    setup = tuple(tuple(shlex.split(c) if isinstance(c, str) else c)
                  for c in doc.sequence("setup", []))
    for i, command in enumerate(setup):
        if not command or not all(isinstance(p, str) and p for p in command):
            raise doc.fail(f"setup[{i}]", "a command (a string or a list of strings)",
                           list(command))
    service = None
    if "service" in doc:
        inner = doc.within("service", doc.mapping("service"), known=_SERVICE_KEYS)
        inner.strings("command", split=shlex.split)
        inner.text("url")
        service = dict(inner.data)
        # checks it, with the gate's own {python} and {checkout} filled as arm() fills them
        ExternalArm.from_dict({"kind": "command", "name": "service",
                               **_fill_any(service, _filler("."))})
    gate = dict(doc.mapping("gate", DEFAULT_GATE))
    known = {**METRICS, **EXTRA_METRICS}
    for metric, allowed in gate.items():
        if metric in RETIRED_METRICS:
            raise ConfigError(f"{doc.name('gate')}: metric {metric!r} is no longer judged: "
                              f"{RETIRED_METRICS[metric]}")
        if metric not in known:
            raise ConfigError(f"{doc.name('gate')}: unknown metric {metric!r} (known: "
                              f"{', '.join(known)})")
        if isinstance(allowed, bool) or not isinstance(allowed, (int, float)) \
                or not 0 <= allowed < 100:
            raise doc.fail(f"gate.{metric}", "a regression in % (0 <= x < 100)", allowed)
    if not gate:
        raise doc.fail("gate", "at least one metric", gate)
    alpha = doc.number("alpha", DEFAULT_GATE_ALPHA)
    if not alpha < 0.5:
        raise doc.fail("alpha", "a level below 0.5", alpha)
    workload = doc.text("workload", "digits")
    if path is not None and (path.parent / workload).is_file():
        workload = str(path.parent / workload)
    calibration = doc.text("calibration", None) if "calibration" in doc else None
    if calibration and path is not None and not Path(calibration).is_absolute():
        calibration = str(path.parent / calibration)
    calibrate_pairs = doc.integer("calibrate_pairs", 0, allow_zero=True)
    if calibrate_pairs == 1:
        raise doc.fail("calibrate_pairs", "0 (off) or at least 2", calibrate_pairs)
    loads = doc.strings("loads", ("closed:8",))
    changes: dict[str, Any] = {
        "pairs": doc.integer("pairs", DEFAULT_GATE_PAIRS), "loads": tuple(loads),
        "warmup_s": doc.number("warmup_s", 1.0, allow_zero=True),
        "duration_s": doc.number("duration_s", 2.0), "workload": workload,
        "seed": doc.integer("seed", 0, allow_zero=True),
        "max_reruns": doc.integer("max_reruns", 2, allow_zero=True),
        "engine": doc.choice("engine", ("auto", "builtin", "wrk"), "auto"),
        "metrics": tuple(m for m in gate if m in EXTRA_METRICS)}
    if quick:
        changes.update(warmup_s=min(changes["warmup_s"], 0.3),
                       duration_s=min(changes["duration_s"], 0.6), quick=True)
    settings = dataclasses.replace(CompareSettings(), **changes)  # __post_init__ checks them
    return GateSpec(name=doc.text("name", "performance gate"), setup=setup,
                    setup_timeout_s=doc.number("setup_timeout_s", 900.0), service=service,
                    settings=settings, calibration=calibration, calibrate_pairs=calibrate_pairs,
                    gate={m: float(v) for m, v in gate.items()}, alpha=alpha, path=path)
