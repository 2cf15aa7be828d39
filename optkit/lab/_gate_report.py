"""What a reviewer reads: the gate as Markdown (a pull-request comment), JSON and JUnit XML.

::

    ## ❌ performance gate: 1 regression          (or ✅ passed, or ⚠️ could not run)
    base@1a2b3c4 (main) vs head@5d6e7f8 (pr) · 20 pairs · closed:8 · 6 min 12 s on <CPU>, 2 cores
    | load | metric | base | head | change [95 % CI] | allowed | verdict |
    ...
    the band's source, what a pass rules out (detectable), the simulated false-alarm rate and
    power at this gate's pairs, bands and measured noise; the other metrics in a <details>

``write_outputs`` writes ``gate.md``, ``gate.json`` and ``gate-junit.xml`` into a folder and
appends the Markdown to ``$GITHUB_STEP_SUMMARY`` when that is set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping
from xml.etree import ElementTree as ET

from ._comparison import jsonable
from ._gate import GateResult
from ._gate_judge import GateCheck
from ._gate_spec import GateSpec
from .stats import detectable_range

__all__ = ["markdown", "to_json", "junit_xml", "write_outputs", "error_markdown"]

_ICON = {"passed": "✅", "failed": "❌", "error": "⚠️"}
_UNITS = {"throughput_rps": "req/s", "mem_per_client_kb": "KiB"}


def _value(metric: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    unit = _UNITS.get(metric, "ms" if metric.endswith("_ms") else
                      "MB" if metric.endswith("_mb") else "")
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f} {unit}".strip()


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s" if seconds >= 60 \
        else f"{seconds:.0f} s"


def _headline(result: GateResult) -> str:
    status = result.status
    if status == "failed":
        bad = result.regressions()
        words = ", ".join(f"{c.metric} at {c.load} {c.change_pct:+.1f} %" for c in bad)
        return f"{_ICON[status]} {result.spec.name}: {len(bad)} regression(s) — {words}"
    if status == "error":
        return f"{_ICON[status]} {result.spec.name}: could not judge every gated metric"
    return f"{_ICON[status]} {result.spec.name}: passed"


def _row(c: GateCheck) -> str:
    change = (f"{c.change_pct:+.1f} % [{c.ci_low_pct:+.1f}, {c.ci_high_pct:+.1f}]")
    worse = "drop" if c.higher_is_better else "rise"
    verdict = f"**{c.verdict}**" if not c.passed else c.verdict
    return (f"| {c.load} | {c.metric} | {_value(c.metric, c.base_mean)} | "
            f"{_value(c.metric, c.head_mean)} | {change} | {worse} ≤ {c.band_pct:.1f} % | "
            f"{detectable_range(c.mde_pct)} | {c.p_adjusted:.3g} | {verdict} |")


def _rates(result: GateResult) -> list[str]:
    rates = result.rates
    if rates is None or not len(rates):
        return []
    lines = []
    for row in rates.itertuples():
        what = ("false alarms (A/A)" if row.effect_pct == 0
                else f"catches a {-row.effect_pct:.0f} % throughput regression")
        lines.append(f"{what}: {100 * row.rate:.1f} % [{100 * row.ci_low:.1f}, "
                     f"{100 * row.ci_high:.1f}]")
    first = rates.iloc[0]
    return [f"- **This gate's error rates** (simulated: {int(first.sessions)} gates at "
            f"{int(first.pairs)} pairs × {int(first.loads)} load(s), these bands, trial noise "
            f"{100 * first.cv:.1f} % as measured here): " + "; ".join(lines) + "."]


def _noise(result: GateResult) -> list[str]:
    """The A/A session that measured the bands, when the gate ran one: what noise alone did."""
    aa = result.noise_session
    if aa is None:
        return []
    table = aa.verdict_table()
    gated = table[table["metric"].isin(list(result.spec.gate))] if len(table) else table
    seen = "; ".join(f"{r.metric} at {r.load} {r.change_pct:+.1f} % [{r.ci_low_pct:+.1f}, "
                     f"{r.ci_high_pct:+.1f}]" for r in gated.itertuples())
    return [f"- **Noise measured here first**: base against itself, {aa.settings.pairs} A/A "
            f"pairs per load ({_duration(aa.elapsed_s)}); what noise alone did: {seen}."]


def markdown(result: GateResult) -> str:
    """The Markdown a pull request shows: headline, verdict table with CIs, what it rests on."""
    spec, cmp = result.spec, result.comparison
    s = spec.settings
    sides = result.checkouts
    who = (f"`{sides[0].label}` ({sides[0].ref}) vs `{sides[1].label}` ({sides[1].ref})"
           if sides else f"`{result.base}` vs `{result.head}`")
    runner = result.runner
    lines = [f"## {_headline(result)}", "",
             f"{who} · {s.pairs} pairs per load, order randomized in each pair · "
             f"{s.warmup_s:g} s warm-up + {s.duration_s:g} s per trial · "
             f"{_duration(result.elapsed_s)} on {runner.get('cpu_model', '?')} "
             f"({runner.get('cpu_count', '?')} cores)" + (" · **quick mode: provisional**"
                                                         if s.quick else ""),
             "", "| load | metric | base | head | change [95 % CI] | allowed | detectable "
             "| Holm p | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(c) for c in result.checks]
    lines += [""]
    sources: dict[str, list[str]] = {}
    for c in result.checks:
        sources.setdefault(c.band_source, []).append(f"{c.metric} at {c.load}")
    lines += ["- **Allowed band** = the wider of the declared regression and the A/A noise "
              "band of the cell: " + "; ".join(f"{', '.join(where)}: {source}"
                                                for source, where in sources.items()) + "."]
    lines += [f"- **Verdict**: *regressed* = Holm-significant at α = {spec.alpha:g} over the "
              f"{len(result.checks)} gated tests (exact sign-flip p) and the whole 95 % BCa "
              f"interval beyond the allowed band; *detectable* = the change this gate finds "
              f"with 80 % power (what a pass rules out)."]
    lines += _noise(result)
    lines += _rates(result)
    if result.missing:
        lines += [f"- **Not judged**: {', '.join(result.missing)} (too few valid pairs or no "
                  f"reading): the gate cannot pass what it did not measure."]
    if result.error:
        lines += [f"- **Error**: {result.error}"]
    if cmp is not None:
        lost = {k: v for k, v in cmp.pairs_lost().items() if v}
        bad = cmp.invalid_by_arm()
        lines += [f"- Trials: {len(cmp.trials)} run, {sum(bad.values())} invalid and re-run "
                  f"(base {bad['A']}, head {bad['B']})"
                  + (f"; pairs lost: {lost}" if lost else "") + "."]
        table = cmp.verdict_table()
        others = table[~table["metric"].isin(list(spec.gate))] if len(table) else table
        if len(others):
            lines += ["", "<details><summary>Metrics reported, not gated</summary>", "",
                      "| load | metric | change [95 % CI] | verdict |", "|---|---|---|---|"]
            lines += [f"| {r.load} | {r.metric} | {r.change_pct:+.1f} % [{r.ci_low_pct:+.1f}, "
                      f"{r.ci_high_pct:+.1f}] | {r.verdict} |" for r in others.itertuples()]
            lines += ["", "</details>"]
    lines += ["", f"<sub>optkit gate · {time.strftime('%Y-%m-%d %H:%M %Z')}</sub>", ""]
    return "\n".join(lines)


def error_markdown(spec: GateSpec | None, message: str) -> str:
    """The Markdown of a gate that could not run at all (a bad ref, a failed setup)."""
    name = spec.name if spec else "performance gate"
    return (f"## {_ICON['error']} {name}: could not run\n\n```\n{message.strip()}\n```\n\n"
            f"No verdict: nothing was measured, so nothing passed.\n")


def to_json(result: GateResult) -> dict[str, Any]:
    """The gate as plain data (schema 1): status, exit code, checks, rates, the session's."""
    return {
        "schema_version": 1, "status": result.status, "exit_code": result.exit_code,
        "base": result.base, "head": result.head,
        "refs": {c.side: {"ref": c.ref, "commit": c.commit, "subject": c.subject,
                          "setup_s": c.setup_s} for c in result.checkouts or ()},
        "spec": result.spec.to_dict(), "elapsed_s": result.elapsed_s, "runner": result.runner,
        "checks": [{**dataclasses.asdict(c), "passed": c.passed} for c in result.checks],
        "missing": result.missing, "error": result.error,
        "rates": result.rates.to_dict(orient="records") if result.rates is not None else None,
        "session": result.comparison.to_json() if result.comparison is not None else None,
        "noise_session": (result.noise_session.to_json()
                          if result.noise_session is not None else None),
    }


def junit_xml(result: GateResult) -> str:
    """One test case per gated (load, metric); a regression is a failure, unjudged an error."""
    suite = ET.Element("testsuite", name=f"optkit gate: {result.spec.name}",
                       tests=str(len(result.checks) + len(result.missing)),
                       failures=str(len(result.regressions())),
                       errors=str(len(result.missing) + bool(result.error)),
                       time=f"{result.elapsed_s:.1f}")
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{c.load}", name=c.metric)
        text = (f"{c.metric} at {c.load}: {c.change_pct:+.2f} % [{c.ci_low_pct:+.2f}, "
                f"{c.ci_high_pct:+.2f}], allowed {c.band_pct:.2f} %, Holm p {c.p_adjusted:.3g}: "
                f"{c.verdict}")
        if not c.passed:
            ET.SubElement(case, "failure", message=text).text = text
        else:
            ET.SubElement(case, "system-out").text = text
    for what in result.missing:
        case = ET.SubElement(suite, "testcase", classname="gate", name=what)
        ET.SubElement(case, "error", message=f"not judged: {what}")
    if result.error:
        case = ET.SubElement(suite, "testcase", classname="gate", name="run")
        ET.SubElement(case, "error", message=result.error)
    return ET.tostring(suite, encoding="unicode")


def write_outputs(out_dir: str | Path, md: str, doc: Mapping[str, Any] | None = None,
                  junit: str | None = None, *, step_summary: bool = True) -> Path:
    """``gate.md`` (and ``gate.json``, ``gate-junit.xml`` when given) in ``out_dir``; the
    Markdown also appended to ``$GITHUB_STEP_SUMMARY`` when set and ``step_summary``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.md").write_text(md)
    if doc is not None:
        (out / "gate.json").write_text(json.dumps(doc, indent=2, default=jsonable))
    if junit is not None:
        (out / "gate-junit.xml").write_text(junit)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and summary:
        with open(summary, "a") as fh:
            fh.write(md + "\n")
    return out
