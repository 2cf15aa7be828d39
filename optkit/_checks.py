"""Strict checks of plain values from YAML or keyword arguments, naming what is wrong.

A check is a gate that lets a value through unchanged or stops it with a message that names
the parameter::

    check_int("workload.rows", 2)     -> 2
    check_int("workload.rows", 2.7)   -> ConfigError: workload.rows must be an integer, got 2.7
    check_int("workload.rows", True)  -> ConfigError (a bool is not a count)

Nothing is coerced: ``2.7`` is not truncated to 2, ``"3"`` is not parsed and ``True`` is
not 1 (a numpy integer is an integer, and comes back as a Python ``int``). The exception
class is the caller's (``ConfigError`` for service configs, ``BenchError`` for workloads),
so each layer reports its own kind of fault. ``check_bool``, ``check_int`` and
``check_number`` (> 0, or >= 0) gate settings; ``check_real`` takes any finite number.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import cast

from ._exceptions import ConfigError, OptkitError

__all__ = ["check_bool", "check_int", "check_number", "check_real"]


def check_bool(name: str, value: object, *, error: type[OptkitError] = ConfigError) -> bool:
    """``value`` if it is a bool.

    Raises:
        error: anything else (``"yes"``, 1, None).
    """
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {value!r}")
    return value


def check_int(name: str, value: object, *, allow_zero: bool = False,
              error: type[OptkitError] = ConfigError) -> int:
    """``value`` if it is an int > 0 (>= 0 with ``allow_zero``).

    Raises:
        error: a bool, a float (even 2.0), a string, or an int out of range.
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise error(f"{name} must be an integer, got {value!r}")
    return int(check_number(name, value, allow_zero=allow_zero, error=error))


def check_number(name: str, value: object, *, allow_zero: bool = False,
                 error: type[OptkitError] = ConfigError) -> float:
    """``value`` if it is an int or float > 0 (>= 0 with ``allow_zero``); inf passes, NaN not.

    Raises:
        error: a bool, a string, NaN, or a number out of range.
    """
    number = check_real(name, value, finite=False, error=error)
    if math.isnan(number) or number < 0 or (number == 0 and not allow_zero):
        raise error(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return number


def check_real(name: str, value: object, *, finite: bool = True,
               error: type[OptkitError] = ConfigError) -> float:
    """``value`` if it is an int or float of any sign (and finite, unless ``finite=False``).

    Raises:
        error: a bool, a string, None, or (with ``finite``) NaN or ±inf.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise error(f"{name} must be a number, got {value!r}")
    number = cast(float, value)  # an int stays an int: nothing is converted
    if finite and not math.isfinite(number):
        raise error(f"{name} must be a finite number, got {value!r}")
    return number
