"""Figures of the validation method: they draw results, they compute nothing.

Every function takes values already computed (the tidy trial table, ``MetricVerdict``s, percentile
curves from ``stats.percentile_curve``) and returns a ``matplotlib.figure.Figure`` built without
pyplot: no global backend is switched, no figure is left open, nothing is shown. Jupyter displays
the returned figure; elsewhere call ``fig.savefig(path)`` (rendered with Agg).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .stats import MetricVerdict, pct

__all__ = [
    "PERCENTILE_TICKS",
    "VERDICT_COLORS",
    "batch_sizes",
    "breakdown_bars",
    "effect_forest",
    "latency_percentiles",
    "latency_vs_load",
    "load_timeline",
    "paired_trials",
    "param_importances",
    "service_chain",
    "tuning_history",
    "tuning_pareto",
    "waterfall",
]

#: Percentiles marked on the x axis of ``latency_percentiles``.
PERCENTILE_TICKS: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9, 99.99)

_PALETTE = sns.color_palette("colorblind")
#: Colour of each verdict in ``effect_forest``.
VERDICT_COLORS: Mapping[str, tuple[float, float, float]] = {
    "improved": _PALETTE[2],
    "regressed": _PALETTE[3],
    "within noise": _PALETTE[1],
    "no change detected": _PALETTE[7],
}
_ARM_COLORS = {"A": _PALETTE[0], "B": _PALETTE[1]}


def _show_inline() -> None:
    """Teach a running IPython kernel to draw a ``Figure`` as a PNG.

    pyplot registers that formatter when it is imported under the inline backend;
    these figures are built without pyplot, so a notebook (papermill, nbmake,
    JupyterLab alike) would print ``<Figure size ...>`` instead of the picture.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # no IPython: nothing displays figures anyway
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def png(fig: Figure) -> bytes:
        import io

        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()

    shell.display_formatter.formatters["image/png"].for_type(Figure, png)


_show_inline()


def paired_trials(trials: pd.DataFrame, metric: str) -> Figure:
    """A slope chart of one metric: each pair's A and B trials joined by a line.

    Lines that mostly slope the same way are a consistent effect; a line sloping the other
    way is a pair that disagrees. Pairs with an invalid trial are drawn dashed (they are not
    analysed, but they are not hidden either).

    Args:
        trials: tidy trial table (columns pair, arm, label, valid, and ``metric``), one load.
        metric: the column to plot, e.g. "throughput_rps".
    Returns:
        a figure with one axes: one line per complete pair, one scatter per arm.
    """
    if metric not in trials.columns:
        raise ValueError(f"trial table has no column {metric!r}")
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x_of = {"A": 0, "B": 1}
    for _, pair in trials.sort_values("arm").groupby("pair"):
        if len(pair) == 2:
            solid = bool(pair["valid"].all())
            ax.plot([x_of[a] for a in pair["arm"]], pair[metric], color="0.6", lw=1,
                    ls="-" if solid else "--", zorder=1)
    for arm in ("A", "B"):
        rows = trials[trials["arm"] == arm]
        label = f"{arm}: {rows['label'].iloc[0]}" if "label" in rows and len(rows) else arm
        ax.scatter(np.full(len(rows), x_of[arm]), rows[metric], color=_ARM_COLORS[arm],
                   label=label, zorder=2)
    ax.set_xticks([0, 1], ["A", "B"])
    ax.set_xlim(-0.4, 1.4)
    ax.set_xlabel("arm")
    ax.set_ylabel(metric)
    load = trials["load"].iloc[0] if "load" in trials and len(trials) else ""
    ax.set_title(f"{metric}, paired trials {load}".strip())
    ax.legend(loc="best", fontsize="small")
    return fig


def effect_forest(verdicts: Sequence[MetricVerdict]) -> Figure:
    """One row per metric: the effect in % with its CI, against that metric's ±delta band.

    A row whose whole interval lies outside the grey band (and is significant) is a real change;
    the verdict is written in the row's label and sets the colour.

    Args:
        verdicts: results of ``stats.analyse``.
    Returns:
        a figure with one axes: one errorbar and one band per metric.
    """
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("no verdicts to plot")
    fig = Figure(figsize=(7, 1.0 + 0.7 * len(verdicts)), layout="constrained")
    ax = fig.add_subplot()
    for i, v in enumerate(verdicts):
        lo, hi = float(pct(-v.delta)), float(pct(v.delta))
        ax.barh(i, hi - lo, left=lo, height=0.6, color="0.85", zorder=0)
        ax.errorbar(
            v.change_pct, i,
            xerr=[[v.change_pct - v.ci_low_pct], [v.ci_high_pct - v.change_pct]],
            fmt="o", color=VERDICT_COLORS[v.verdict], capsize=4, zorder=2,
        )
    ax.axvline(0.0, color="0.3", lw=0.8, zorder=1)
    ax.set_yticks(range(len(verdicts)), [
        f"{v.metric} ({'higher' if v.higher_is_better else 'lower'} is better)\n{v.verdict}"
        for v in verdicts
    ])
    ax.invert_yaxis()
    ax.set_xlabel("change B vs A (%), CI; grey: ±δ noise band")
    ax.set_title("effect per metric")
    return fig


def latency_percentiles(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> Figure:
    """HDR-style latency by percentile: the tail stretched so p99.9 is as visible as p50.

    x is 1/(1 - p) on a log axis, so each extra "9" gets the same width.

    Args:
        curves: label -> (quantiles as fractions in [0, 1), latencies in ms), e.g. from
            ``stats.percentile_curve``.
    Returns:
        a figure with one axes and one line per label.
    """
    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, (quantiles, latencies) in curves.items():
        q = np.asarray(quantiles, dtype=float)
        if np.any((q < 0) | (q >= 1)):
            raise ValueError(f"{label}: quantiles must be fractions in [0, 1), not percents")
        ax.plot(1.0 / (1.0 - q), latencies, label=str(label))
    ax.set_xscale("log")
    ax.set_xticks([1.0 / (1.0 - p / 100.0) for p in PERCENTILE_TICKS],
                  [f"{p:g}%" for p in PERCENTILE_TICKS])
    ax.minorticks_off()
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency by percentile")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def latency_vs_load(df: pd.DataFrame, *, slo_ms: float | None = None) -> Figure:
    """p50 and p99 against the offered rate, one line per label: where each curve bends up
    is the service's knee; with ``slo_ms`` the SLO is drawn on the p99 panel.

    Args:
        df: columns label, offered_rps, p50_ms, p99_ms (one row per label and rate).
        slo_ms: optional latency SLO to draw.
    Returns:
        a figure with two axes (p50, p99) sharing x, one line per label on each.
    """
    need = {"label", "offered_rps", "p50_ms", "p99_ms"}
    if missing := need - set(df.columns):
        raise ValueError(f"latency_vs_load needs columns {sorted(missing)}")
    fig = Figure(figsize=(9, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    labels = list(df["label"].unique())
    colors = sns.color_palette("colorblind", len(labels))
    for ax, col in zip(axes, ("p50_ms", "p99_ms")):
        for label, color in zip(labels, colors):
            rows = df[df["label"] == label].sort_values("offered_rps")
            ax.plot(rows["offered_rps"], rows[col], marker="o", color=color, label=str(label))
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel(f"{col.removesuffix('_ms')} latency (ms)")
        ax.set_title(col.removesuffix("_ms"))
    if slo_ms is not None:
        axes[1].axhline(slo_ms, color="0.3", ls=":", lw=1, label=f"SLO {slo_ms:g} ms")
    for ax in axes:
        ax.legend(fontsize="small")
    return fig



def batch_sizes(hist: pd.DataFrame) -> Figure:
    """How many rows each batch carried, one panel per tier: the batcher's work at a glance.

    Args:
        hist: columns arm, tier, rows_le, batches (``week.batch_histogram``): batches whose
            size fell in the bucket ending at ``rows_le``.
    Returns:
        a figure with one bar panel per tier (bars per bucket, one colour per arm).
    """
    need = {"arm", "tier", "rows_le", "batches"}
    if missing := need - set(hist.columns):
        raise ValueError(f"batch_sizes needs columns {sorted(missing)}")
    tiers = list(dict.fromkeys(hist["tier"])) or ["(no batches)"]
    fig = Figure(figsize=(4.5 * len(tiers), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tiers), sharey=False))
    for ax, tier in zip(axes, tiers):
        data = hist[hist["tier"] == tier]
        bounds = sorted(data["rows_le"].unique())
        labels = [f"≤{b:g}" if np.isfinite(b) else f">{bounds[-2]:g}" for b in bounds]
        arms = list(dict.fromkeys(data["arm"]))
        width = 0.8 / max(len(arms), 1)
        for i, arm in enumerate(arms):
            counts = data[data["arm"] == arm].set_index("rows_le")["batches"]
            ax.bar(np.arange(len(bounds)) + i * width, [counts.get(b, 0) for b in bounds],
                   width=width, label=str(arm), color=_PALETTE[i % len(_PALETTE)])
        ax.set_xticks(np.arange(len(bounds)) + width * (len(arms) - 1) / 2, labels,
                      rotation=45, fontsize="small")
        ax.set_xlabel("rows per batch")
        ax.set_ylabel("batches")
        ax.set_title(tier.replace("_", " "))
        if arms:
            ax.legend(fontsize="small")
    return fig


#: the breakdown's parts as drawn, in the order a request meets them: (column, legend)
BREAKDOWN_PARTS: tuple[tuple[str, str], ...] = (
    ("queue_ms", "queue"), ("compute_input_ms", "decode + validate"),
    ("compute_infer_ms", "model"), ("compute_output_ms", "encode"),
    ("rest_ms", "rest: network, framework, client"))


def breakdown_bars(table: pd.DataFrame) -> Figure:
    """Where each arm's mean request time goes: one stacked horizontal bar per arm.

    Args:
        table: ``breakdown_table`` output (index (load, label) or label; columns mean_ms and
            the parts queue_ms .. rest_ms, in ms per request).
    Returns:
        a figure with one bar per row, its segments the parts (a part is labelled with its
        ms when it is wide enough to hold it); an arm whose servers kept no statistics is one
        hatched bar of its client mean. A negative rest (the servers' parts exceed the client's
        mean: clocks or spans disagree) is drawn as zero and said at the bar's end.
    """
    need = {"mean_ms", *(c for c, _ in BREAKDOWN_PARTS)}
    if missing := need - set(table.columns):
        raise ValueError(f"breakdown_bars needs columns {sorted(missing)}")
    rows = list(table.itertuples())
    loads = {r.Index[0] for r in rows if isinstance(r.Index, tuple)}
    labels = [(r.Index[1] if len(loads) <= 1 else f"{r.Index[1]} @ {r.Index[0]}")
              if isinstance(r.Index, tuple) else str(r.Index) for r in rows]
    fig = Figure(figsize=(8, 1.0 + 0.55 * max(len(rows), 1)), layout="constrained")
    ax = fig.subplots()
    colors = [_PALETTE[i] for i in (7, 0, 2, 1, 4)]
    widest = max([float(r.mean_ms) for r in rows if pd.notna(r.mean_ms)] or [1.0])
    for y, row in enumerate(rows):
        values = [getattr(row, column) for column, _ in BREAKDOWN_PARTS]
        if any(pd.isna(v) for v in values):
            if pd.notna(row.mean_ms):
                ax.barh(y, row.mean_ms, color="0.9", edgecolor="0.4", hatch="//")
                ax.annotate("no server statistics", (row.mean_ms, y), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize="small")
            continue
        left = 0.0
        for value, color in zip(values, colors):
            width = max(float(value), 0.0)
            ax.barh(y, width, left=left, color=color, edgecolor="white")
            if width > 0.08 * widest:
                ax.annotate(f"{width:.2f}", (left + width / 2, y), ha="center", va="center",
                            fontsize="x-small")
            left += width
        note = f"{row.mean_ms:.2f} ms" + (" (rest < 0)" if row.rest_ms < 0 else "")
        ax.annotate(note, (left, y), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize="small")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()  # the first arm on top
    ax.set_xlim(0, widest * 1.3)
    ax.set_xlabel("mean time per request (ms)")
    title = "where a request's time goes (median over trials)"
    ax.set_title(title + (f", {next(iter(loads))}" if len(loads) == 1 else ""))
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=name) for (_, name), c in zip(BREAKDOWN_PARTS, colors)],
              fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.1 / max(len(rows), 1)),
              ncol=3, frameon=False)
    return fig


def waterfall(steps: pd.DataFrame, *, metric: str = "throughput") -> Figure:
    """The week as a waterfall: each day's gain on top of the day before, then Friday measured.

    Args:
        steps: ``report.waterfall_steps`` output (day, measured, change_pct, ci_low_pct,
            ci_high_pct, verdict, cumulative_pct).
        metric: the metric's name for the axis label.
    Returns:
        a figure: Mon..Thu bars float from the previous cumulative level to the next
        (coloured by verdict, the day's own CI as a whisker at its end); Friday's bar is
        the integrated configuration measured against the baseline directly, with its CI.
        A day that did not measure this metric is labelled so and drawn flat.
    """
    fig = Figure(figsize=(7.5, 4), layout="constrained")
    ax = fig.subplots()
    level = 0.0
    for i, row in enumerate(steps.itertuples()):
        color = VERDICT_COLORS.get(row.verdict, "0.8")
        if row.day == "fri":
            if row.measured:
                ax.bar(i, row.change_pct, color=color, edgecolor="0.2", hatch="//")
                ax.errorbar(i, row.change_pct, yerr=[[row.change_pct - row.ci_low_pct],
                                                     [row.ci_high_pct - row.change_pct]],
                            color="0.1", capsize=4)
            continue
        if not row.measured:
            ax.annotate("not measured", (i, level), ha="center", va="bottom", fontsize="small")
            continue
        top = row.cumulative_pct
        ax.bar(i, top - level, bottom=level, color=color, edgecolor="0.2")
        # the day's own CI, scaled onto the chained level it starts from
        base = 1 + level / 100
        lo, hi = 100 * (base * (1 + row.ci_low_pct / 100) - 1), \
            100 * (base * (1 + row.ci_high_pct / 100) - 1)
        ax.errorbar(i, top, yerr=[[max(0.0, top - lo)], [max(0.0, hi - top)]], color="0.1",
                    capsize=4)
        ax.annotate(f"{row.change_pct:+.1f} %", (i, max(top, level)), ha="center",
                    va="bottom", fontsize="small", xytext=(0, 6), textcoords="offset points")
        level = top
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(steps)), [d.capitalize() if d != "fri" else "Fri (integrated\nvs baseline)"
                                      for d in steps["day"]])
    ax.set_ylabel(f"{metric} change vs baseline (%)")
    ax.set_title(f"{metric}: day by day (chained) and integrated (measured)")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=v) for v, c in VERDICT_COLORS.items() if v in set(steps["verdict"])]
    if handles:
        ax.legend(handles=handles, fontsize="small", loc="upper left")
    return fig


def service_chain(chain: pd.DataFrame, *, slo_ms: float | None = None) -> Figure:
    """A team's server alone, then behind optkit's gateway one layer at a time.

    Args:
        chain: ``week.service_chain`` output (load, step, layer, throughput_rps and its
            ``_low``/``_high``, p99_ms and its ``_low``/``_high``, throughput_verdict,
            p99_verdict, and the change against the step before).
        slo_ms: the p99 target, drawn as a line on the p99 panel.
    Returns:
        a figure with one row per load: throughput per step (left) and p99 per step (right),
        each bar the arm's mean with its 95 % CI over trials, coloured by the verdict of that
        step against the one before (the first bar, the service alone, in grey), each later
        bar labelled with its paired change. Where the chain runs another setting of the server
        behind the gateway (its ``server`` column), the first bar of each setting names it.
    """
    loads = list(dict.fromkeys(chain["load"]))
    fig = Figure(figsize=(10, 3.4 * max(1, len(loads))), layout="constrained")
    axes = fig.subplots(max(1, len(loads)), 2, squeeze=False)
    for row, load in enumerate(loads):
        steps = chain[chain["load"] == load].sort_values("step")
        labels = [str(layer) for layer in steps["layer"]]
        if "server" in steps and steps["server"].nunique() > 1:
            # two settings of the server: where the setting changes, the label names it
            servers = list(steps["server"])
            labels = [f"{label}\n{server}" if i == 0 or server != servers[i - 1] else label
                      for i, (label, server) in enumerate(zip(labels, servers))]
        for col, (key, metric, unit) in enumerate((("throughput", "throughput_rps", "req/s"),
                                                    ("p99", "p99_ms", "ms"))):
            ax = axes[row][col]
            x = np.arange(len(steps))
            mean = steps[metric].to_numpy(dtype=float)
            low = steps[f"{key}_low"].to_numpy(dtype=float)
            high = steps[f"{key}_high"].to_numpy(dtype=float)
            colors = [VERDICT_COLORS.get(v, "0.75") for v in steps[f"{key}_verdict"]]
            ax.bar(x, mean, color=colors, edgecolor="0.2")
            ok = np.isfinite(low) & np.isfinite(high)
            ax.errorbar(x[ok], mean[ok], yerr=[mean[ok] - low[ok], high[ok] - mean[ok]],
                        fmt="none", color="0.1", capsize=4)
            for i, change in enumerate(steps[f"{key}_change_pct"]):
                if np.isfinite(change):  # above the whisker, where there is one
                    top = high[i] if ok[i] else mean[i]
                    ax.annotate(f"{change:+.1f} %", (i, top), ha="center", va="bottom",
                                fontsize="small", xytext=(0, 4), textcoords="offset points")
            if key == "p99" and slo_ms is not None:
                ax.axhline(slo_ms, color=_PALETTE[3], ls="--", lw=1, label=f"SLO {slo_ms:g} ms")
                ax.legend(fontsize="small", loc="upper right")
            ax.set_ylim(0, ax.get_ylim()[1] * 1.08)  # room for the labels above the whiskers
            ax.set_xticks(x, labels)
            ax.set_ylabel(f"{key} ({unit})")
            ax.set_title(f"{key} at {load}")
    from matplotlib.patches import Patch

    seen = set(chain["throughput_verdict"]) | set(chain["p99_verdict"])
    handles = [Patch(color=c, label=v) for v, c in VERDICT_COLORS.items() if v in seen]
    if handles:
        fig.legend(handles=handles, fontsize="small", loc="outside lower center",
                   ncol=len(handles))
    fig.suptitle("the service alone, then behind optkit's gateway (colour: verdict vs the "
                 "step before)")
    return fig


def load_timeline(requests: pd.DataFrame, events: pd.DataFrame, *,
                  slo_ms: float | None = None) -> Figure:
    """Request latency against time, one panel per arm, with model-load events shaded.

    Args:
        requests: columns arm, t_s (when the request was sent, from the run's start),
            latency_ms.
        events: columns arm, start_s, end_s, model, action (``week.load_timeline``).
        slo_ms: optional latency SLO line.
    Returns:
        a figure with one panel per arm sharing both axes; latency on a log scale.
    """
    need = {"arm", "t_s", "latency_ms"}
    if missing := need - set(requests.columns):
        raise ValueError(f"load_timeline needs columns {sorted(missing)}")
    arms = list(dict.fromkeys(requests["arm"])) or ["(none)"]
    fig = Figure(figsize=(9, 2.6 * len(arms)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(arms), 1, sharex=True, sharey=True))
    positive = pd.to_numeric(requests["latency_ms"], errors="coerce")
    positive = positive[positive > 0]
    if positive.empty or positive.min() == positive.max():  # one value or none (a pair with no
        middle = float(positive.iloc[0]) if not positive.empty else (slo_ms or 1.0)  # valid
        axes[0].set_ylim(middle / 2, middle * 2)  # trial): a log axis needs a range, or
        # matplotlib warns (into the report) about identical limits
    for ax, arm in zip(axes, arms):
        data = requests[requests["arm"] == arm]
        ax.scatter(data["t_s"], data["latency_ms"], s=2, alpha=0.4, color=_PALETTE[0],
                   rasterized=True, label="requests")
        for k, ev in enumerate(events[events["arm"] == arm].itertuples()):
            ax.axvspan(ev.start_s, ev.end_s, color=_PALETTE[3], alpha=0.18,
                       label="model load" if k == 0 else None)
        if slo_ms is not None:
            ax.axhline(slo_ms, color="0.3", ls=":", lw=1, label=f"SLO {slo_ms:g} ms")
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(str(arm), fontsize="medium")
        ax.legend(fontsize="small", loc="upper right")
    axes[-1].set_xlabel("time since the run started (s)")
    return fig


def tuning_history(history: pd.DataFrame) -> Figure:
    """A tuning study's candidates in the order they ran: each one's throughput (filled when
    it met the SLO, hollow when not, with why in the table) and the best goodput so far.

    Args:
        history: ``TuneResult.history`` (candidate, throughput_rps, feasible,
            best_goodput_rps).
    """
    need = {"candidate", "throughput_rps", "feasible", "best_goodput_rps"}
    if missing := need - set(history.columns):
        raise ValueError(f"tuning_history needs columns {sorted(missing)}")
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    ax = fig.subplots()
    ok = history["feasible"].astype("boolean").fillna(False).astype(bool)
    tput = pd.to_numeric(history["throughput_rps"], errors="coerce")
    ax.scatter(history.loc[ok, "candidate"], tput[ok], color=_PALETTE[2], zorder=3,
               label="met the SLO")
    ax.scatter(history.loc[~ok, "candidate"], tput[~ok], facecolors="none",
               edgecolors=_PALETTE[3], zorder=3, label="infeasible (measured)")
    ax.step(history["candidate"], history["best_goodput_rps"], where="post", color="0.3",
            label="best goodput so far")
    ax.set_xlabel("candidate")
    ax.set_ylabel("throughput (req/s)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return fig


def tuning_pareto(history: pd.DataFrame, front: pd.DataFrame, *, metric: str = "p99_ms",
                  slo_ms: float | None = None) -> Figure:
    """Throughput against the SLO's latency for every measured candidate, the Pareto front
    joined up, the SLO drawn: the best goodput is the front's highest point left of the line.

    Args:
        history: ``TuneResult.history``; front: ``TuneResult.pareto``.
        metric: the latency column the SLO bounds; slo_ms: its bound.
    """
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    measured = history[pd.to_numeric(history[metric], errors="coerce").notna()]
    ax.scatter(measured[metric], measured["throughput_rps"], color=_PALETTE[0], alpha=0.6,
               label="candidate")
    if len(front):
        ax.plot(front[metric], front["throughput_rps"], marker="o", color=_PALETTE[1],
                label="Pareto front")
    if slo_ms is not None:
        ax.axvline(slo_ms, color="0.3", ls=":", lw=1, label=f"SLO {slo_ms:g} ms")
    ax.set_xlabel(f"{metric.removesuffix('_ms')} latency (ms)")
    ax.set_ylabel("throughput (req/s)")
    ax.legend(fontsize="small")
    return fig


def param_importances(importances: pd.DataFrame) -> Figure:
    """Each knob's share of the goodput's variance (``TuneResult.importances``), as bars."""
    fig = Figure(figsize=(7, 0.5 + 0.45 * max(1, len(importances))), layout="constrained")
    ax = fig.subplots()
    rows = importances.sort_values("importance")
    ax.barh(rows["parameter"], rows["importance"], color=_PALETTE[0])
    ax.set_xlabel("importance (fANOVA, share of goodput variance)")
    ax.set_xlim(0, 1)
    if not len(rows):
        ax.text(0.5, 0.5, "not enough candidates", ha="center", va="center",
                transform=ax.transAxes)
    return fig
