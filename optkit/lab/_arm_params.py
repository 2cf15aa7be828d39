"""An arm file's own parameters: ``{name}`` placeholders with declared defaults.

A ``kind: command`` arm may hold placeholders besides ``{port}`` in ``command``, ``env``
(values), ``url`` and ``ready_url``; each one must be declared, with its default, under
``parameters:``::

    kind: command
    name: mlserver-batching
    command: [../../.venv-mlserver/bin/mlserver, start, .]
    env: {MLSERVER_HTTP_PORT: "{port}",
          MLSERVER_MODEL_MAX_BATCH_SIZE: "{max_batch_size}",
          MLSERVER_MODEL_MAX_BATCH_TIME: "{max_batch_time}"}
    parameters: {max_batch_size: 32, max_batch_time: 0.002}

Every start renders the placeholders with the arm's values: the declared defaults, or a
candidate's (``optkit tune ARM.yaml`` searches them as ``arm.max_batch_size`` ...). The rules,
checked when the file loads:

- a placeholder is ``{identifier}``; other braces (JSON in an env value, say) are left alone;
- ``{port}`` and ``{grpc_port}`` are the per-trial ports and cannot be declared;
- a placeholder that is not declared, a parameter without a default (``null``) or with a value
  that is not a number, string or boolean, and a parameter no placeholder uses are errors;
- values are written as text: an int as ``32``, a float as Python writes it (``0.002``), a
  boolean as ``true``/``false``.
"""

from __future__ import annotations

import math
import re
from numbers import Real
from typing import Any, Iterable, Mapping

from .._exceptions import ConfigError

__all__ = ["PLACEHOLDER", "RESERVED", "placeholders", "check_parameters", "render", "as_text"]

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: placeholders every command arm has, filled per start (the service's port, and a second for
#: its gRPC front end); a parameter may not take their names
RESERVED = ("port", "grpc_port")


def placeholders(text: str) -> list[str]:
    """The placeholder names in ``text``, in order (``"{a}-{port}"`` -> ``["a", "port"]``)."""
    return PLACEHOLDER.findall(text)


def as_text(value: Any) -> str:
    """A parameter's value as it is written into a command or an env value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(text: str, values: Mapping[str, Any]) -> str:
    """``text`` with every ``{name}`` of ``values`` replaced; other braces are kept as they are."""
    return PLACEHOLDER.sub(lambda m: as_text(values[m.group(1)]) if m.group(1) in values
                           else m.group(0), text)


def _is_value(value: Any) -> bool:
    if isinstance(value, (str, bool)):
        return True
    return isinstance(value, Real) and math.isfinite(value)


def check_parameters(declared: Any, texts: Iterable[tuple[str, str]], *, where: str
                     ) -> dict[str, Any]:
    """The arm's ``parameters:`` as a checked mapping of name -> default.

    Args:
        declared: the ``parameters:`` value of the arm file (None: none declared).
        texts: ``(field, text)`` for every text that may hold placeholders (``command``,
            ``env.NAME``, ``url``, ``ready_url``).
        where: the arm, for the messages.

    Raises:
        ConfigError: naming the placeholder or parameter: one used but not declared, one
            declared without a default or with a value that is not a number, string or
            boolean, a reserved name, or one declared but used nowhere.
    """
    if declared is None:
        declared = {}
    if not isinstance(declared, Mapping):
        raise ConfigError(f"{where}: parameters must map each placeholder's name to its "
                          f"default, e.g. {{max_batch_size: 32}}, got {declared!r}")
    params: dict[str, Any] = {}
    for name, value in declared.items():
        if not isinstance(name, str) or not PLACEHOLDER.fullmatch("{" + name + "}"):
            raise ConfigError(f"{where}: parameters: {name!r} is not a placeholder name "
                              f"(letters, digits and _, not starting with a digit)")
        if name in RESERVED:
            raise ConfigError(f"{where}: parameters: {{{name}}} is filled per trial by optkit "
                              f"and cannot be declared")
        if value is None:
            raise ConfigError(f"{where}: parameters: {name} has no default: give the value the "
                              f"arm runs with when nothing is tuned, e.g. {name}: 32")
        if not _is_value(value):
            raise ConfigError(f"{where}: parameters: {name}: a default must be a number, a "
                              f"string or a boolean, got {value!r}")
        params[name] = value
    used: dict[str, str] = {}
    for field, text in texts:
        for name in placeholders(text):
            used.setdefault(name, field)
            if name not in params and name not in RESERVED:
                known = ", ".join(f"{{{n}}}" for n in (*RESERVED, *params))
                raise ConfigError(f"{where}: {field}: unknown placeholder {{{name}}}: declare "
                                  f"it with its default under parameters: (known: {known})")
    unused = [name for name in params if name not in used]
    if unused:
        raise ConfigError(f"{where}: parameters: {', '.join(unused)} declared but no "
                          f"placeholder uses {'it' if len(unused) == 1 else 'them'} (write "
                          f"{{{unused[0]}}} in command, env, url or ready_url)")
    return params
