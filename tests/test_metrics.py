"""Tests for typed statistics (optkit._metrics): declared kinds, histograms, labels."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from optkit._metrics import (Histogram, HistogramSnapshot, counter, gauge, histogram_field,
                             iter_families, to_plain)


@dataclass(frozen=True)
class Record:
    done: int = counter("things done")
    waiting: int = gauge("things waiting now")
    delay_s: HistogramSnapshot = histogram_field("time waited")
    name: str = "queue"


@dataclass(frozen=True)
class Untyped:
    count: int = 0


def _render(record: object) -> str:
    class Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            return iter_families("t", record)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_histogram_buckets_are_upper_inclusive_and_cumulative_for_prometheus() -> None:
    """A value equal to a bound counts in that bucket; Prometheus gets cumulative counts."""
    h = Histogram([1, 2, 4])
    for value in (0.5, 1, 2, 3, 9):
        h.observe(value)
    snap = h.snapshot()
    assert snap.counts == (2, 1, 1, 1) and snap.count == 5 and snap.sum == 15.5
    assert snap.cumulative() == [("1", 2), ("2", 3), ("4", 4), ("+Inf", 5)]
    assert snap.mean == pytest.approx(3.1)
    with pytest.raises(ValueError):
        Histogram([2, 1])


def test_declared_kinds_reach_the_exposition() -> None:
    """Counters, gauges and histograms are exported as declared; strings are left out."""
    h = Histogram([1.0])
    h.observe(0.5)
    text = _render(Record(done=3, waiting=2, delay_s=h.snapshot()))
    assert "# TYPE t_done_total counter" in text and "t_done_total 3.0" in text
    assert "# TYPE t_waiting gauge" in text and "t_waiting 2.0" in text
    assert "# TYPE t_delay_s histogram" in text and 't_delay_s_bucket{le="1"} 1.0' in text
    assert "queue" not in text


def test_a_mapping_of_records_becomes_labels() -> None:
    """One record per model: one family per field, the model as a label."""
    h = Histogram([1.0]).snapshot()
    text = _render({"a": Record(done=1, waiting=0, delay_s=h),
                    "b": Record(done=5, waiting=1, delay_s=h)})
    assert text.count("# TYPE t_done_total counter") == 1
    assert 't_done_total{model="a"} 1.0' in text and 't_done_total{model="b"} 5.0' in text


def test_an_undeclared_number_is_refused() -> None:
    """A numeric field without counter()/gauge() is an error, never a guess."""
    with pytest.raises(TypeError, match="declares no metric kind"):
        list(iter_families("t", Untyped(count=1)))


def test_to_plain_keeps_the_nesting_for_json() -> None:
    """/stats gets the record as nested plain data, histograms as bounds/counts."""
    h = Histogram([1.0])
    h.observe(2.0)
    doc = to_plain({"m": Record(done=1, waiting=0, delay_s=h.snapshot())})
    assert doc == {"m": {"done": 1, "waiting": 0, "name": "queue",
                         "delay_s": {"bounds": [1.0], "counts": [0, 1], "sum": 2.0, "count": 1}}}


def test_a_counter_may_hold_labelled_counts() -> None:
    """A counter field holding (nested) LabelledDicts of numbers is one family, a sample per
    key, each key under its own label name; /stats sees the plain nested mapping."""
    from optkit._metrics import LabelledDict

    @dataclass(frozen=True)
    class Books:
        refused: dict = counter("refusals by cause and status")

    inner = LabelledDict("status", {"400": 2, "413": 1})
    record = Books(refused=LabelledDict("cause", {"body": inner}))
    text = _render(record)
    assert "# TYPE t_refused_total counter" in text
    assert 't_refused_total{cause="body",status="400"} 2.0' in text
    assert 't_refused_total{cause="body",status="413"} 1.0' in text
    assert to_plain(record) == {"refused": {"body": {"400": 2, "413": 1}}}
