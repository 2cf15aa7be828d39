"""Typed statistics: each number a component reports says what kind of metric it is.

A component's ``statistics()`` returns a frozen dataclass. Each numeric field is
declared with :func:`counter` (only goes up) or :func:`gauge` (goes up and down,
a level now); a distribution is a :class:`HistogramSnapshot`; a nested record is
another such dataclass. The service serializes that record whole, to JSON for
``/stats`` (:func:`to_plain`) and to Prometheus for ``/metrics``
(:func:`iter_families`), so the type is declared once, where the statistic is
defined, and never guessed from a name::

    @dataclass(frozen=True)
    class QueueStatistics:
        submitted: int = counter("items offered")
        waiting: int = gauge("items waiting now")
        delay_s: HistogramSnapshot = histogram_field("time in the queue")

A numeric field without a declared kind is a programming error:
:func:`iter_families` raises ``TypeError`` rather than export it as something.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

__all__ = ["counter", "gauge", "histogram_field", "Histogram", "HistogramSnapshot",
           "to_plain", "iter_families", "LabelledDict"]

_KIND = "optkit_metric"
_HELP = "optkit_help"


def counter(help: str = "", *, default: Any = dataclasses.MISSING) -> Any:
    """Declare a dataclass field as a monotonically increasing count."""
    return field(default=default, metadata={_KIND: "counter", _HELP: help})


def gauge(help: str = "", *, default: Any = dataclasses.MISSING) -> Any:
    """Declare a dataclass field as a level (may go down): in use, waiting, ratios."""
    return field(default=default, metadata={_KIND: "gauge", _HELP: help})


def histogram_field(help: str = "") -> Any:
    """Declare a dataclass field holding a :class:`HistogramSnapshot`."""
    return field(metadata={_KIND: "histogram", _HELP: help})


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Counts of observations per bucket.

    ``counts[i]`` counts values ``<= bounds[i]`` and above the previous bound;
    the last entry (``len(bounds)``) counts values above every bound.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus' buckets: ``(le, count of values <= le)``, ending with ``+Inf``."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((_fmt(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class Histogram:
    """A fixed-bucket histogram, cheap enough to observe on the hot path."""

    __slots__ = ("_bounds", "_counts", "_sum", "_count")

    def __init__(self, bounds: Sequence[float]) -> None:
        b = tuple(float(x) for x in bounds)
        if not b or any(x >= y for x, y in zip(b, b[1:])):
            raise ValueError(f"histogram bounds must be strictly increasing, got {bounds!r}")
        self._bounds = b
        self._counts = [0] * (len(b) + 1)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._count += 1

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self._bounds, tuple(self._counts), self._sum, self._count)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def to_plain(record: Any) -> Any:
    """A statistics record as JSON-ready data (nested dicts, histograms as dicts)."""
    if isinstance(record, HistogramSnapshot):
        return {"bounds": list(record.bounds), "counts": list(record.counts),
                "sum": record.sum, "count": record.count}
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        out = {f.name: to_plain(getattr(record, f.name)) for f in dataclasses.fields(record)}
        for name in getattr(type(record), "__derived__", ()):  # documented properties
            out[name] = getattr(record, name)
        return out
    if isinstance(record, dict):
        return {str(k): to_plain(v) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [to_plain(v) for v in record]
    return record


def iter_families(prefix: str, record: Any, *, label: str = "model") -> Iterator[Any]:
    """Prometheus metric families for a statistics record, typed as declared.

    A mapping of records (one per model, say) becomes one family per field with
    the mapping's key as the ``label`` label, not one family per key. A field declared
    ``counter()`` or ``gauge()`` may hold a mapping of numbers (nested for several
    labels, each a :class:`LabelledDict` naming its label): one family, a sample per key.

    Raises:
        TypeError: a numeric field has no declared kind.
    """
    families: dict[str, Any] = {}
    for name, kind, help_, labels, value in _walk(prefix, record, (), label):
        family = families.get(name)
        if family is None:
            names = [k for k, _ in labels]
            if kind == "histogram":
                family = HistogramMetricFamily(name, help_, labels=names)
            elif kind == "counter":
                family = CounterMetricFamily(name, help_, labels=names)
            else:
                family = GaugeMetricFamily(name, help_, labels=names)
            families[name] = family
        values = [v for _, v in labels]
        if kind == "histogram":
            family.add_metric(values, value.cumulative(), value.sum)
        else:
            family.add_metric(values, float(value))
    yield from families.values()


def _is_text(value: Any) -> bool:
    """None, a flag, a string, a sequence of strings, or a non-empty mapping of them."""
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, dict) and not isinstance(value, LabelledDict) and bool(value) \
        and all(isinstance(v, str) for v in value.values())


class LabelledDict(dict):  # type: ignore[type-arg]
    """A mapping of records whose keys export under their own label name (not ``model``)."""

    def __init__(self, label: str, *args: Any) -> None:
        super().__init__(*args)
        self.label = label

    @staticmethod
    def factory(label: str) -> Any:
        """A ``default_factory`` for a dataclass field holding one."""
        return lambda: LabelledDict(label)


def _walk(prefix: str, record: Any, labels: tuple[tuple[str, str], ...], label: str,
          declared: tuple[str, str] | None = None,
          ) -> Iterator[tuple[str, str, str, tuple[tuple[str, str], ...], Any]]:
    if isinstance(record, dict):
        key_label = getattr(record, "label", label)
        for key, value in record.items():
            keyed = labels + ((key_label, str(key)),)
            if declared is not None and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                yield prefix, declared[0], declared[1], keyed, value  # a labelled count
            else:
                yield from _walk(prefix, value, keyed, label, declared)
        return
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        name = f"{prefix}_{f.name}"
        kind = f.metadata.get(_KIND)
        help_ = f.metadata.get(_HELP) or f.name.replace("_", " ")
        if isinstance(value, HistogramSnapshot):
            yield name, "histogram", help_, labels, value
        elif _is_text(value):
            continue  # names, states, flags: /stats shows them, Prometheus does not
        elif isinstance(value, dict) and kind in ("counter", "gauge"):
            yield from _walk(name, value, labels, label, (kind, help_))
        elif (dataclasses.is_dataclass(value) and not isinstance(value, type)) \
                or isinstance(value, dict):
            yield from _walk(name, value, labels, label)
        elif not isinstance(value, (int, float)):
            raise TypeError(f"{type(record).__name__}.{f.name}: cannot export "
                            f"{type(value).__name__}")
        elif kind in ("counter", "gauge"):
            yield name, kind, help_, labels, value
        else:
            raise TypeError(f"{type(record).__name__}.{f.name} is numeric but declares no "
                            "metric kind (use counter() or gauge())")
