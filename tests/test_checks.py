"""The strict value checks shared by service configs and workloads (optkit._checks)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest

from optkit import BenchError, ConfigError
from optkit._checks import check_bool, check_int, check_number, check_real


def test_good_values_pass_through_unchanged() -> None:
    """A value that passes comes back as given (a numpy integer as a Python int)."""
    assert check_bool("x", False) is False
    assert check_int("x", 3) == 3 and check_int("x", 0, allow_zero=True) == 0
    assert type(check_int("x", np.int64(4))) is int
    assert check_number("x", 2.5) == 2.5 and check_number("x", math.inf) == math.inf
    assert check_real("x", -1.5) == -1.5 and check_real("x", 0) == 0


@pytest.mark.parametrize(("check", "value", "words"), [
    (check_bool, 1, "true or false"), (check_bool, "yes", "true or false"),
    (check_int, 2.7, "integer"), (check_int, 2.0, "integer"), (check_int, True, "integer"),
    (check_int, "3", "integer"), (check_int, 0, "> 0"), (check_int, -1, "> 0"),
    (check_number, "1", "number"), (check_number, None, "number"), (check_number, False, "number"),
    (check_number, 0.0, "> 0"), (check_number, math.nan, "> 0"),
    (check_real, math.inf, "finite"), (check_real, math.nan, "finite"), (check_real, [1], "number"),
])
def test_bad_values_are_refused_naming_the_parameter(check: Callable[..., object], value: object,
                                                     words: str) -> None:
    """No coercion: floats are not counts, bools not numbers, NaN not positive; the name is said."""
    with pytest.raises(ConfigError, match=f"section.key must .*{words}"):
        check("section.key", value)


def test_the_caller_chooses_the_exception_class() -> None:
    """error=BenchError raises BenchError (not ConfigError); allow_zero admits exactly 0."""
    with pytest.raises(BenchError, match="rows"):
        check_int("rows", 2.7, error=BenchError)
    with pytest.raises(ConfigError, match=">= 0"):
        check_number("delay", -0.1, allow_zero=True)
    assert check_number("delay", 0, allow_zero=True) == 0


def test_config_keeps_its_old_helper_names() -> None:
    """optkit._config's _bool/_integer/_positive are these checks (one strict rule everywhere)."""
    from optkit import _config

    assert (_config._bool, _config._integer, _config._positive) == (check_bool, check_int,
                                                                    check_number)
