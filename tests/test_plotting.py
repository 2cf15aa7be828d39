"""Figures of optkit.lab.plotting: each builds from small inputs with the expected axes and artists."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from optkit import plotting
from optkit.lab._simulate import simulate_trials
from optkit.lab.stats import MetricVerdict, percentile_curve


def verdict(metric: str, change: float, low: float, high: float, v: str,
            higher: bool = True) -> MetricVerdict:
    """A MetricVerdict with % fields given and log fields derived roughly."""
    return MetricVerdict(
        metric=metric, n_pairs=20, mean_d=np.log1p(change / 100), ci_low=np.log1p(low / 100),
        ci_high=np.log1p(high / 100), change_pct=change, ci_low_pct=low, ci_high_pct=high,
        p_value=0.001, p_adjusted=0.004, delta=0.02, verdict=v, higher_is_better=higher,
        outlier_pairs=(),
    )


def test_all_names_exist():
    """Every name in plotting.__all__ is defined."""
    assert all(hasattr(plotting, name) for name in plotting.__all__)


def test_paired_trials_one_line_per_pair_and_one_scatter_per_arm():
    """6 pairs -> 6 joining lines, 2 arm scatters of 6 points; invalid pairs drawn dashed."""
    df = simulate_trials(6, effect=0.1, seed=0, labels=("base", "pooled"))
    df.loc[df.pair == 2, "valid"] = [False, True]
    fig = plotting.paired_trials(df, "throughput_rps")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == 6 and [ln.get_linestyle() for ln in ax.lines].count("--") == 1
    assert [len(c.get_offsets()) for c in ax.collections] == [6, 6]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B"]
    assert ax.get_ylabel() == "throughput_rps"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A: base", "B: pooled"]
    with pytest.raises(ValueError):
        plotting.paired_trials(df, "nope")


def test_paired_trials_line_joins_the_pairs_values():
    """Each line runs from the pair's A value at x=0 to its B value at x=1."""
    df = simulate_trials(3, seed=5)
    ax = plotting.paired_trials(df, "p99_ms").axes[0]
    wide = df.pivot(index="pair", columns="arm")["p99_ms"]
    for line, (_, row) in zip(ax.lines, wide.iterrows()):
        assert list(line.get_xdata()) == [0, 1]
        np.testing.assert_allclose(line.get_ydata(), [row["A"], row["B"]])


def test_effect_forest_rows_bands_and_verdicts():
    """3 verdicts -> 3 δ bands, 3 errorbars coloured by verdict, verdicts in the row labels."""
    vs = [verdict("throughput_rps", 10.0, 8.0, 12.0, "improved"),
          verdict("p50_ms", 1.0, -3.0, 5.0, "no change detected", higher=False),
          verdict("p99_ms", 3.0, 1.0, 5.0, "within noise", higher=False)]
    fig = plotting.effect_forest(vs)
    ax = fig.axes[0]
    assert len(ax.patches) == 3
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3
    assert bars[0].lines[0].get_color() == plotting.VERDICT_COLORS["improved"]
    assert np.asarray(bars[0].lines[0].get_xdata(), dtype=float).tolist() == [10.0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert [lab.splitlines()[1] for lab in labels] == [v.verdict for v in vs]
    band = ax.patches[0]  # ±δ = ±0.02 on the log scale -> -1.98 % .. +2.02 %
    assert band.get_x() == pytest.approx(100 * np.expm1(-0.02))
    assert band.get_x() + band.get_width() == pytest.approx(100 * np.expm1(0.02))
    with pytest.raises(ValueError):
        plotting.effect_forest([])


def test_latency_percentiles_log_axis_and_ticks():
    """Two curves -> two lines on a log 1/(1-p) axis ticked 50 % .. 99.99 %."""
    rng = np.random.default_rng(0)
    curves = {"A": percentile_curve(rng.lognormal(1, 0.5, 2000), [0.5, 0.9, 0.99]),
              "B": percentile_curve(rng.lognormal(0.8, 0.5, 2000), [0.5, 0.9, 0.99])}
    ax = plotting.latency_percentiles(curves).axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [2, 10, 100])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), curves["B"][1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50%", "90%", "99%", "99.9%",
                                                            "99.99%"]
    assert ax.get_ylabel() == "latency (ms)"
    with pytest.raises(ValueError, match="fractions"):
        plotting.latency_percentiles({"A": ([50.0, 99.0], [1.0, 2.0])})


def test_latency_vs_load_two_panels_one_line_per_label():
    """p50 and p99 panels, one line per label each; the SLO line lands on the p99 panel."""
    df = pd.DataFrame([(lab, r, 2 + r / 1000, 5 + r / 200) for lab in ("base", "pooled")
                       for r in (500, 1000, 2000)],
                      columns=["label", "offered_rps", "p50_ms", "p99_ms"])
    fig = plotting.latency_vs_load(df, slo_ms=10)
    p50, p99 = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["p50", "p99"]
    assert len(p50.lines) == 2 and len(p99.lines) == 3
    np.testing.assert_allclose(p99.lines[2].get_ydata(), [10, 10])
    assert [t.get_text() for t in p99.get_legend().get_texts()] == ["base", "pooled",
                                                                    "SLO 10 ms"]
    assert p50.get_xlabel() == "offered rate (req/s)"
    with pytest.raises(ValueError):
        plotting.latency_vs_load(df.drop(columns="p99_ms"))


def test_figures_render_to_png():
    """A returned figure saves as PNG without pyplot (Agg renders it)."""
    buf = io.BytesIO()
    plotting.paired_trials(simulate_trials(3, seed=0), "p50_ms").savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_batch_sizes_one_panel_per_tier_one_bar_per_bucket_and_arm():
    """batch_sizes draws a panel per tier with a bar per (bucket, arm); it refuses missing columns."""
    hist = pd.DataFrame({"arm": ["B"] * 4, "tier": ["gateway", "gateway", "model-server",
                                                    "model-server"],
                         "rows_le": [1.0, 16.0, 1.0, float("inf")], "batches": [3, 9, 1, 2]})
    fig = plotting.batch_sizes(hist)
    assert len(fig.axes) == 2
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights == [3, 9]
    with pytest.raises(ValueError, match="columns"):
        plotting.batch_sizes(hist.drop(columns="batches"))


def test_service_chain_one_row_per_load_bars_per_step_and_the_slo():
    """Two loads -> 2 x 2 panels; 4 bars per panel (alone, + each layer), CI whiskers where
    a CI exists, each later bar labelled with its change; the SLO line on the p99 panels."""
    rows = []
    for load in ("closed:32", "closed:1"):
        for step, layer in enumerate(["alone", "+ pooling", "+ batching", "+ streaming"]):
            first = step == 0
            rows.append({"load": load, "step": step, "layer": layer,
                         "throughput_rps": 1000.0 * (step + 1), "throughput_low": 900.0 * (step + 1),
                         "throughput_high": 1100.0 * (step + 1), "p99_ms": 20.0 / (step + 1),
                         "p99_low": np.nan if first else 15.0 / (step + 1),
                         "p99_high": np.nan if first else 25.0 / (step + 1),
                         "throughput_change_pct": np.nan if first else 50.0,
                         "p99_change_pct": np.nan if first else -30.0,
                         "throughput_verdict": "" if first else "improved",
                         "p99_verdict": "" if first else "no change detected"})
    fig = plotting.service_chain(pd.DataFrame(rows), slo_ms=10.0)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    throughput, p99 = fig.axes[0], fig.axes[1]
    assert len(throughput.patches) == 4 and [t.get_text() for t in throughput.texts] == \
        ["+50.0 %"] * 3
    whiskers = [c for c in p99.containers if isinstance(c, ErrorbarContainer)]
    assert len(whiskers) == 1 and len(whiskers[0].lines[2][0].get_segments()) == 3
    assert any(line.get_ydata()[0] == 10.0 for line in p99.get_lines())
    fig.savefig(io.BytesIO(), format="png")


def test_service_chain_names_the_server_setting_where_it_changes():
    """A chain that runs another setting behind the gateway names each setting under the
    first bar that runs it; with one setting the labels are the layers only."""
    rows = [{"load": "closed:32", "step": step, "layer": layer, "server": server,
             "throughput_rps": 1000.0, "throughput_low": 900.0, "throughput_high": 1100.0,
             "p99_ms": 10.0, "p99_low": 9.0, "p99_high": 11.0, "throughput_change_pct": 5.0,
             "p99_change_pct": 1.0, "throughput_verdict": "", "p99_verdict": ""}
            for step, (layer, server) in enumerate([("alone", "svc-batch"),
                                                    ("+ pooling", "svc-lean"),
                                                    ("+ batching", "svc-lean")])]
    fig = plotting.service_chain(pd.DataFrame(rows))
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["alone\nsvc-batch", "+ pooling\nsvc-lean", "+ batching"]
    one = pd.DataFrame(rows).assign(server="svc")
    labels = [t.get_text() for t in plotting.service_chain(one).axes[0].get_xticklabels()]
    assert labels == ["alone", "+ pooling", "+ batching"]
