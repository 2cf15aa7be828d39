"""``optkit tune ARM.yaml``: search a service optkit does not own through its arm file's own
parameters.

An arm file (``kind: command``) may declare placeholders with defaults (``parameters:``,
``optkit.lab._arm_params``); a space over an arm names them as ``arm.NAME``::

    # the arm                                       # the space
    env: {MLSERVER_MODEL_MAX_BATCH_SIZE:            arm.max_batch_size: {int: [1, 64], log: true}
            "{max_batch_size}", ...}                arm.max_batch_time: {float: [0.0005, 0.02],
    parameters: {max_batch_size: 32,                                     log: true}
                 max_batch_time: 0.002}

A candidate is the arm with those parameters set (a fresh server per trial, rendered at its
start); candidate 0 is the arm's declared defaults where the space holds them; the validation
runs the winner against the arm at its defaults, paired, like any tune. ``tuned.yaml`` is the
arm file with the winning values as its defaults, named ``<name>-tuned``, its relative paths
(``cwd``, ``fronted``, a ``gateway`` file) rewritten to hold from the folder it is written to.

Checked before any server starts: a space key that is not ``arm.NAME``, or names a parameter
the arm does not declare, and a range whose kind does not fit the parameter's default (a
number range for a string default) are errors naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .._exceptions import ConfigError
from .._schema import read_mapping
from ._arms import ExternalArm, is_arm, load_arm
from ._tune_space import SearchSpace, _param

__all__ = ["ArmSpace", "ARM_PREFIX", "load_tune_base", "load_arm_space", "write_tuned_arm"]

#: a space key over an arm's parameters: ``arm.max_batch_size``
ARM_PREFIX = "arm."


def _arm(base: Any) -> ExternalArm:
    arm = load_arm(base)
    if not isinstance(arm, ExternalArm):
        raise ConfigError(f"{base!r} is not an arm file (kind: command)")
    return arm


@dataclass(frozen=True)
class ArmSpace(SearchSpace):
    """A space over an arm's own parameters (keys ``arm.NAME``)."""

    def apply(self, base: Any, values: Mapping[str, Any], *,  # type: ignore[override]
              name: str | None = None) -> ExternalArm:
        """The arm with ``values`` (``arm.NAME`` keys) as its parameters: a candidate."""
        arm = _arm(base)
        params = {**arm.parameters,
                  **{key.removeprefix(ARM_PREFIX): value for key, value in values.items()}}
        return arm.replace(parameters=params, name=name or arm.name)

    def base_values(self, base: Any) -> dict[str, Any]:
        """The arm's declared default of every key of the space."""
        arm = _arm(base)
        return {key: arm.parameters[key.removeprefix(ARM_PREFIX)] for key in self.keys}


def load_tune_base(base: Any) -> Any:
    """What ``optkit tune`` starts from: an optkit config, or a ``kind: command`` arm.

    Raises:
        ConfigError: a ``kind: url`` arm (it is never restarted: a candidate could not differ).
    """
    from .._config import load_config

    if not is_arm(base):
        return load_config(base)
    arm = _arm(base)
    if arm.kind != "command":
        raise ConfigError(f"arm {arm.name!r}: a url arm is one long-running process optkit "
                          f"never restarts: it cannot be tuned (tune a kind: command arm)")
    return arm


def load_arm_space(source: str | Path | Mapping[str, Any], arm: ExternalArm) -> ArmSpace:
    """Read and check a space over ``arm``'s parameters.

    Raises:
        ConfigError: naming the key: a key not of the form ``arm.NAME``, a NAME the arm does
            not declare (or an arm that declares none), a malformed range, or a range over a
            parameter whose default is not a number.
    """
    where = f"space {source}" if isinstance(source, (str, Path)) else "space"
    doc = read_mapping(source, what="space") if isinstance(source, (str, Path)) else source
    if not isinstance(doc, Mapping) or not doc:
        raise ConfigError(f"{where}: must map at least one arm.NAME to its values")
    declared = dict(arm.parameters)
    known = ", ".join(ARM_PREFIX + n for n in declared) or "none: the arm declares no parameters"
    params = []
    for key, spec in doc.items():
        if not isinstance(key, str) or not key.startswith(ARM_PREFIX):
            raise ConfigError(f"{where}: {key!r}: the base is an arm file ({arm.name}): a space "
                              f"over it names the arm's parameters as arm.NAME (known: {known})")
        name = key.removeprefix(ARM_PREFIX)
        if name not in declared:
            raise ConfigError(f"{where}: {key} names nothing: arm {arm.name!r} declares no "
                              f"parameter {name!r} (known: {known}); declare it under "
                              f"parameters: with its default and write {{{name}}} where it goes")
        param = _param(key, spec, where)
        default = declared[name]
        if param.kind != "choices" and (isinstance(default, (bool, str))):
            raise ConfigError(f"{where}: {key}: the arm's default {default!r} is not a number: "
                              f"search it with choices: [...], not a range")
        params.append(param)
    return ArmSpace(tuple(params), source=str(source) if isinstance(source, (str, Path))
                    else "space")


def _rebase(value: str, old: Path | None, new: Path) -> str:
    """A path relative to ``old`` (the arm file's folder), made relative to ``new``."""
    path = Path(value)
    if path.is_absolute() or old is None:
        return value
    return os.path.relpath((old / path).resolve(), new.resolve())


def write_tuned_arm(path: Path, source: Any, arm: ExternalArm, overrides: Mapping[str, Any],
                    best: Mapping[str, Any], slo: Any, load: str) -> Path:
    """The arm file with the winning values as its defaults, named ``<name>-tuned``.

    Relative ``cwd``, ``fronted`` and ``gateway`` (a file) are rewritten relative to ``path``'s
    folder, so the file starts the same server from where it is written.
    """
    if isinstance(source, (str, Path)) and Path(source).is_file():
        doc = dict(read_mapping(source, what="arm"))
        old: Path | None = Path(source).parent
    else:
        doc, old = arm.to_dict(), None
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    values = {key.removeprefix(ARM_PREFIX): value for key, value in overrides.items()}
    doc["parameters"] = {**(doc.get("parameters") or {}), **values}
    for key in ("cwd", "fronted", "gateway"):
        if isinstance(doc.get(key), str):
            doc[key] = _rebase(doc[key], old, folder)
    doc = {"name": f"{arm.name}-tuned", **{k: v for k, v in doc.items() if k != "name"}}
    ExternalArm.from_dict(doc, base=folder)  # what is written loads as an arm
    head = (f"# optkit tune: {arm.name} + the winning candidate #{best['candidate']} at {slo}, "
            f"{load}\n" + "".join(
                f"#   {k}: {arm.parameters[k]!r} -> {v!r}\n" if arm.parameters[k] != v
                else f"#   {k}: {v!r} (the arm's default)\n" for k, v in values.items())
            + "# relative paths are rewritten to hold from this file's folder\n")
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False))
    return path
