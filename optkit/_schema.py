"""Plain data to checked values: one reader for every YAML file optkit takes.

A service config, an arm file and a workload file are all read the same way::

    read_mapping("experiments/pooling.yaml", what="config")
        -> the file's mapping, or an error naming the file (unreadable, bad YAML, not a mapping)
    doc = Document(data, where="arm 'mlserver'", known={"kind", "name", ...})
        -> unknown keys refused at once, each named, with the keys that are known
    doc.text("name")  doc.choice("kind", ("command", "url"))  doc.number("startup_timeout_s")
    doc.integer("pool_size")  doc.real("low")  doc.strings("command")  doc.mapping("env")
    doc.record(PoolingConfig)          a frozen dataclass built from the whole mapping

Every refusal reads ``<where>: <key> must be ..., got <value>`` and is raised as the caller's
exception class (``ConfigError`` for configs and arms, ``BenchError`` for workloads). Nothing
is coerced (see :mod:`optkit._checks`): ``"10"`` is not a number and ``2.7`` is not a count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import yaml

from ._checks import check_bool, check_int, check_number, check_real
from ._exceptions import ConfigError, OptkitError

__all__ = ["read_mapping", "Document", "MISSING"]

T = TypeVar("T")

#: the default of a key that must be present
MISSING: Any = object()


def read_mapping(path: str | Path, *, what: str,
                 error: type[OptkitError] = ConfigError) -> dict[str, Any]:
    """The YAML file at ``path`` as a mapping (an empty file is an empty mapping).

    Raises:
        error: the file cannot be read, is not YAML, or is not a mapping at the top level.
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise error(f"{what} {path} must be a mapping at the top level, "
                    f"got {type(data).__name__}")
    return dict(data)


class Document:
    """One mapping read key by key; each getter checks its key's value and names it if wrong.

    Args:
        data: the mapping (from YAML or keyword arguments).
        where: what the mapping is, for messages (``"arm 'mlserver'"``, ``"pooling"``).
        known: the keys allowed; any other is refused when the document is opened.
        error: the exception class raised.
    """

    def __init__(self, data: Any, *, where: str, known: Iterable[str],
                 error: type[OptkitError] = ConfigError, prefix: str = "") -> None:
        self.where, self.error, self.prefix = where, error, prefix
        if not isinstance(data, Mapping):
            what = f"{where}: {prefix.rstrip('.')}" if prefix else where
            raise error(f"{what} must be a mapping, got {data!r}")
        self.data: Mapping[str, Any] = data
        self.known = frozenset(known)
        unknown = sorted(map(str, set(data) - self.known))
        if unknown:
            raise error(f"{self.name('').rstrip(': .')}: unknown key(s) {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(self.known))})")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def name(self, key: str) -> str:
        """How a message names ``key``: ``<where>: <prefix><key>``."""
        return f"{self.where}: {self.prefix}{key}"

    def within(self, key: str, value: Any, *, known: Iterable[str]) -> "Document":
        """The mapping ``value`` found at ``key`` (``"rows"``, ``"models[0]"``), read as a
        document whose keys are named ``<key>.<inner>``."""
        return Document(value, where=self.where, known=known, error=self.error,
                        prefix=f"{self.prefix}{key}.")

    def fail(self, key: str, expected: str, value: Any) -> OptkitError:
        """The error for ``key``: ``<where>: <key> must be <expected>, got <value>``."""
        return self.error(f"{self.name(key)} must be {expected}, got {value!r}")

    def get(self, key: str, default: Any = MISSING,
            check: Callable[[str, Any], Any] | None = None) -> Any:
        """The value of ``key`` passed through ``check(name, value)``; ``default`` if absent
        (a key without a default must be present)."""
        if key not in self.data:
            if default is MISSING:
                raise self.error(f"{self.name(key)} is missing")
            return default
        value = self.data[key]
        return check(self.name(key), value) if check is not None else value

    def _checked(self, key: str, default: Any, ok: Callable[[Any], bool], expected: str) -> Any:
        def check(_: str, value: Any) -> Any:
            if not ok(value):
                raise self.fail(key, expected, value)
            return value
        return self.get(key, default, check)

    def text(self, key: str, default: Any = MISSING) -> str:
        """A non-empty string."""
        return self._checked(key, default, lambda v: isinstance(v, str) and bool(v.strip()),
                             "a non-empty string")

    def choice(self, key: str, choices: Iterable[str], default: Any = MISSING) -> str:
        """One of ``choices``."""
        options = tuple(choices)
        return self._checked(key, default, lambda v: v in options, f"one of {', '.join(options)}")

    def boolean(self, key: str, default: Any = MISSING) -> bool:
        return self.get(key, default, lambda n, v: check_bool(n, v, error=self.error))

    def integer(self, key: str, default: Any = MISSING, *, allow_zero: bool = False) -> int:
        """An int > 0 (>= 0 with ``allow_zero``)."""
        return self.get(key, default, lambda n, v: check_int(n, v, allow_zero=allow_zero,
                                                             error=self.error))

    def number(self, key: str, default: Any = MISSING, *, allow_zero: bool = False) -> float:
        """An int or float > 0 (>= 0 with ``allow_zero``)."""
        return self.get(key, default, lambda n, v: check_number(n, v, allow_zero=allow_zero,
                                                                error=self.error))

    def real(self, key: str, default: Any = MISSING) -> float:
        """A finite number of any sign."""
        return self.get(key, default, lambda n, v: check_real(n, v, error=self.error))

    def sequence(self, key: str, default: Any = MISSING) -> list[Any]:
        """A list (a YAML sequence)."""
        return list(self._checked(key, default, lambda v: isinstance(v, (list, tuple)), "a list"))

    def strings(self, key: str, default: Any = MISSING,
                split: Callable[[str], list[str]] | None = None) -> tuple[str, ...]:
        """A non-empty list of non-empty strings; one string is split by ``split`` if given."""
        def ok(value: Any) -> bool:
            items = split(value) if split is not None and isinstance(value, str) else value
            return isinstance(items, (list, tuple)) and bool(items) \
                and all(isinstance(item, str) and item for item in items)
        value = self._checked(key, default, ok, "a non-empty list of strings"
                              + (" (or one string)" if split is not None else ""))
        return tuple(split(value) if split is not None and isinstance(value, str) else value)

    def mapping(self, key: str, default: Any = MISSING) -> Mapping[str, Any]:
        """A mapping (a YAML mapping)."""
        return self._checked(key, default, lambda v: isinstance(v, Mapping), "a mapping")

    def record(self, cls: type[T]) -> T:
        """A frozen dataclass built from the whole mapping (its fields are the known keys; its
        own ``__post_init__`` checks the values)."""
        try:
            return cls(**self.data)
        except TypeError as exc:  # a missing required field, say
            raise self.error(f"{self.where}: {exc}") from None

    @classmethod
    def of_record(cls, data: Any, record: type[Any], *, where: str,
                  error: type[OptkitError] = ConfigError) -> "Document":
        """A document whose known keys are the fields of the dataclass ``record``."""
        return cls(data, where=where, error=error,
                   known=(f.name for f in dataclasses.fields(record)))
