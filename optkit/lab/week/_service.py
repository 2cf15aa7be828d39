"""A day on the team's own service (notebook 06): the server alone, then optkit's gateway in
front of it, one layer at a time, each step a paired session against the step before.

::

    service arm (command or url) ─────────────────────────────────────────── alone
    fronted arm (the service's fronted: key, a parameter, or the service itself)
      └ optkit's gateway in front, experiments/pooling.yaml   ────────────── + pooling
          (the same, experiments/batching.yaml)   ────────────────────────── + batching
          (the same, experiments/streaming.yaml)   ───────────────────────── + streaming
    step k = compare(arm k-1, arm k): its own verdicts, CIs and noise band
    target = compare(alone, + batching): the gateway's gain measured directly, not chained
             (service_target; the standard run only: quick mode checks the chain runs)

    service_chain(steps)    one row per (load, arm): throughput and p99 with their CIs, the
                            change against the step before, its verdict, the SLO at that load
    service_targets(target) the gain and the SLO judged on the direct session
    service_conclusion(...) the same in words, and plainly where the gateway did not help

The server setting measured alone need not be the one behind the gateway: a server that
batches on its own (MLServer's adaptive batching, Triton's dynamic batcher) serves best alone
with its batching on, and behind a gateway that merges with it off. ``service_fronted`` picks
the setting behind the gateway (the ``fronted`` parameter, else the service arm's ``fronted:``
key, else the service itself) and ``check_fronted`` makes sure it serves the same model; every
step after "alone" then runs it, and the chain, the targets, the conclusion and results.json
name both settings. (Both live in ``_fronted.py``.)

The gateway configs are the week's own by default (their model-server sections are ignored by a
gateway), so the layers put in front of the team's server are those the week measured on
optkit's; ``layers`` may name other config files (notebook 06's ``gateway_layers``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ..._exceptions import ConfigError
from .._arms import ExternalArm, load_arm
from .._comparison import Comparison, jsonable
from .._session import compare
from .._settings import CompareSettings
from ..stats import MetricVerdict, detectable_range
from ._days import experiment
from ._fronted import service_fronted
from ._sessions import _trial_doc, _trial_folders
from .report import _served, arm_interval

__all__ = ["SERVICE_LAYERS", "service_arm", "service_steps", "service_calibration",
           "service_target", "service_sessions", "service_chain", "service_headline",
           "service_targets", "service_conclusion", "service_servers", "service_settings_note",
           "gateway_summary", "record_service"]

#: The gateway's layers, cumulative: each is the experiment config of the week's day that adds it
SERVICE_LAYERS: tuple[str, ...] = ("pooling", "batching", "streaming")


def service_arm(service: str | Path, *, quick: bool = False,
                quick_service: str | Path | None = None) -> ExternalArm:
    """The arm measured: ``service``, or in quick mode ``quick_service`` when one is given.

    Quick mode (CI) only shows that the day runs end to end; it measures a service that is
    always installed (``quick_service``) unless none is given. Either must be an external
    arm file (``kind: command`` or ``kind: url``): an optkit config is not the team's server.
    """
    source = quick_service if quick and quick_service is not None else service
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ConfigError(f"service arm file {source} does not exist")
    arm = load_arm(source)
    if not isinstance(arm, ExternalArm):
        raise ConfigError(f"{source} is an optkit config, not a service: an arm file has "
                          f"kind: command or kind: url (see experiments/external/)")
    if arm.gateway is not None:
        raise ConfigError(f"{source} already puts optkit's gateway in front (gateway:); the day "
                          f"compares the service alone against it: drop that key")
    return arm


def service_steps(service: str | Path, *, quick: bool = False,
                  quick_service: str | Path | None = None,
                  layers: Sequence[str | Path] = SERVICE_LAYERS,
                  root: str | Path | None = None,
                  fronted: str | Path | None = None) -> list[ExternalArm]:
    """The chain's arms: the service alone, then behind optkit's gateway with each layer added.

    Returns ``[alone, fronted+pooling, fronted+batching, fronted+streaming]`` (named so),
    ``fronted`` being :func:`service_fronted`'s setting (the service itself unless one is
    named), each gateway configured by ``experiments/<layer>.yaml`` — or by the config file a
    layer names (``experiments/external/gateway-batching.yaml``); every trial starts the service
    and its gateway fresh.
    """
    alone = service_arm(service, quick=quick, quick_service=quick_service)
    behind = service_fronted(alone, fronted, quick=quick, quick_service=quick_service)
    return [alone, *(behind.behind_gateway(_layer_config(layer, root)) for layer in layers)]


def _layer_config(layer: str | Path, root: str | Path | None) -> Path:
    """A layer's gateway config: a file when ``layer`` is a path, else the week's own."""
    if isinstance(layer, Path) or str(layer).endswith((".yaml", ".yml")) or "/" in str(layer):
        path = Path(layer)
        if not path.is_file():
            raise ConfigError(f"gateway layer config {layer} is not a file")
        return path
    return experiment(str(layer), root)


def service_calibration(calibration: str | Path | None, service: ExternalArm) -> str | None:
    """The calibration file of this service: ``{service}`` in the path becomes its name.

    Each server has noise of its own, so its bands are measured into a file of its own
    (``runs/calibration-{service}.json``) rather than into the week's, whose cells are keyed
    by workload and load only.
    """
    if calibration is None:
        return None
    return str(calibration).replace("{service}", service.name)


def service_target(alone: Any, fronted: Any, *, repository: str | Path,
                   settings: CompareSettings, load: str = "closed:32", calibration: Any = None,
                   out_dir: str | Path | None = None,
                   log: Callable[[str], None] | None = None) -> Comparison | None:
    """The target's own session: the service alone (A) against it behind the gateway (B) at
    ``load``, with the day's pairs; the chain's steps multiply into a level, their CIs do not.

    Returns None in quick mode: CI only shows that the chain runs (four sessions of fresh
    services and gateways would not fit its budget), and the targets say they were not measured.
    """
    if settings.quick:
        return None
    return compare(alone, fronted, repository=repository, settings=settings, loads=(load,),
                   calibration=calibration, out_dir=out_dir, log=log)


def service_sessions(steps: Sequence[Comparison],
                     target: Comparison | None = None) -> list[Comparison]:
    """Every session of the day in order: the steps, then the target's where it ran."""
    return [*steps, *([target] if target is not None else [])]


def _verdict(cmp: Comparison, load: str, metric: str) -> MetricVerdict | None:
    return next((v for v in cmp.verdicts.get(load, []) if v.metric == metric), None)


def _valid(cmp: Comparison, load: str, arm: str) -> pd.DataFrame:
    t = cmp.trials
    return t[t["valid"].astype(bool) & (t["pair"] >= 0) & (t["load"] == load) & (t["arm"] == arm)]


def _slo(cmp: Comparison, load: str, arm: str, slo_ms: float) -> str:
    """Whether an arm's p99 is within ``slo_ms`` at ``load``, judged on the whole 95 % CI of
    its trials' p99 and, for an open loop, only where the load offered was served."""
    trials = _valid(cmp, load, arm)
    if trials.empty:
        return "not measured"
    if load.startswith("open:"):
        served = _served(trials, cmp.settings.duration_s)
        if served is not None:
            return f"not judged: {served}"
    mean, low, high, n = arm_interval(trials["p99_ms"])
    if n < 2:
        return "holds (1 trial)" if mean <= slo_ms else "does not hold (1 trial)"
    if high <= slo_ms:
        return "holds"
    if low > slo_ms:
        return "does not hold"
    return f"undecided (its CI spans {slo_ms:g} ms)"


def _split(service: str, arm: Any) -> tuple[str, str]:
    """(server setting, layer) of a chain's arm: ``("mlserver-pw0-lean", "+ batching")`` for
    ``mlserver-pw0-lean+batching`` (as ``behind_gateway`` names it, the gateway config's name
    after the ``+``); the service alone is ``(service, "alone")``."""
    name = getattr(arm, "name", arm)
    gateway = getattr(arm, "gateway", None)
    layer = str((gateway or {}).get("name") or "")
    if layer and name.endswith(f"+{layer}"):
        return name[:-len(layer) - 1], f"+ {layer}"
    if name.startswith(f"{service}+"):
        return service, f"+ {name[len(service) + 1:]}"
    if "+" in name:
        server, layer = name.rsplit("+", 1)
        return server, f"+ {layer}"
    return name, "alone" if name == service else name


def _layer(service: str, arm: Any) -> str:
    """``+ batching`` for the arm ``<setting>+batching``."""
    return _split(service, arm)[1]


def service_servers(steps: Sequence[Comparison]) -> dict[str, Any]:
    """Which server settings the day ran: ``alone`` (the service measured alone), ``fronted``
    (the setting behind the gateway in every later step) and whether they ``differ``."""
    if not steps:
        return {"alone": None, "fronted": None, "differ": False}
    alone = steps[0].a.name
    fronted = _split(alone, steps[0].b)[0]
    return {"alone": alone, "fronted": fronted, "differ": fronted != alone}


def service_settings_note(steps: Sequence[Comparison]) -> str:
    """One plain sentence when the arms run different server settings, else ""."""
    servers = service_servers(steps)
    if not servers["differ"]:
        return ""
    return (f"Two server settings: {servers['alone']} is measured alone; behind optkit's "
            f"gateway every step runs {servers['fronted']} instead. So step 1 and the target "
            f"compare different settings of the server, not the gateway alone: their change is "
            f"the gateway's and the setting's together.")


def service_chain(steps: Sequence[Comparison], *, slo_ms: float = 10.0) -> pd.DataFrame:
    """The chain as one table: per load, the service alone and each step after it.

    ``server`` names the server setting of each row (the service alone's, then the setting
    behind the gateway, which may be another: :func:`service_fronted`).
    Each arm's figures come from the session where it is the new arm (B), the service alone's
    from the first session's A: throughput and p99 as the mean of valid trials with a 95 % CI
    (Student t over trials), the change against the step before with its paired CI and
    verdict (that session's), and whether p99 is within ``slo_ms`` at that load (``_slo``).
    """
    rows = []
    loads = list(dict.fromkeys(load for cmp in steps for load in cmp.settings.loads))
    for load in loads:
        for number in range(len(steps) + 1):
            cmp = steps[max(0, number - 1)]
            if load not in cmp.settings.loads:
                continue
            side = "A" if number == 0 else "B"
            arm = cmp.a if side == "A" else cmp.b
            trials = _valid(cmp, load, side)
            tp = arm_interval(trials["throughput_rps"]) if "throughput_rps" in trials else (
                math.nan,) * 3 + (0,)
            p99 = arm_interval(trials["p99_ms"]) if "p99_ms" in trials else (math.nan,) * 3 + (0,)
            server, layer = _split(steps[0].a.name, arm)
            row: dict[str, Any] = {
                "load": load, "step": number, "arm": arm.name, "server": server,
                "layer": "alone" if number == 0 else layer,
                "trials": tp[3], "throughput_rps": tp[0], "throughput_low": tp[1],
                "throughput_high": tp[2], "p99_ms": p99[0], "p99_low": p99[1], "p99_high": p99[2],
                "slo": _slo(cmp, load, side, slo_ms)}
            for metric, key in (("throughput_rps", "throughput"), ("p99_ms", "p99")):
                v = _verdict(cmp, load, metric) if number > 0 else None
                row.update({f"{key}_change_pct": v.change_pct if v else math.nan,
                            f"{key}_ci_low_pct": v.ci_low_pct if v else math.nan,
                            f"{key}_ci_high_pct": v.ci_high_pct if v else math.nan,
                            f"{key}_verdict": v.verdict if v else "",
                            f"{key}_reading": v.reading() if v else "",
                            f"{key}_mde_pct": v.mde_pct if v else math.nan})
            rows.append(row)
    return pd.DataFrame(rows)


def _change(row: Any, key: str) -> str:
    if not row[f"{key}_verdict"]:
        return ""
    return (f"{row[f'{key}_change_pct']:+.1f} % [{row[f'{key}_ci_low_pct']:+.1f}, "
            f"{row[f'{key}_ci_high_pct']:+.1f}]")


def _level(mean: float, low: float, high: float, fmt: str) -> str:
    if not math.isfinite(mean):
        return "not measured"
    ci = f" [{fmt.format(low)}, {fmt.format(high)}]" if math.isfinite(low) else ""
    return fmt.format(mean) + ci


def service_headline(chain: pd.DataFrame, *, provisional: bool = False) -> Any:
    """The chain for a person: step, arm, throughput and p99 with their CIs, each change
    against the step before with its CI and verdict in words, and the SLO at that load."""
    rows = []
    for r in chain.to_dict(orient="records"):
        rows.append({
            "load": r["load"], "step": f"{r['step']}: {r['layer']}", "arm": r["arm"],
            "server setting": r.get("server", ""),
            "throughput (req/s, 95 % CI)": _level(r["throughput_rps"], r["throughput_low"],
                                                   r["throughput_high"], "{:,.0f}"),
            "p99 (ms, 95 % CI)": _level(r["p99_ms"], r["p99_low"], r["p99_high"], "{:.2f}"),
            "throughput vs step before": _change(r, "throughput"),
            "throughput verdict": r["throughput_reading"] + (
                " (provisional)" if provisional and r["throughput_verdict"] else ""),
            "p99 vs step before": _change(r, "p99"),
            "p99 verdict": r["p99_reading"] + (
                " (provisional)" if provisional and r["p99_verdict"] else ""),
            "p99 within the SLO": r["slo"]})
    frame = pd.DataFrame(rows)
    if not frame.empty and frame["server setting"].nunique() <= 1:
        frame = frame.drop(columns="server setting")  # one setting: the arm names say it
    return frame.style.hide(axis="index") if not frame.empty else frame


def service_targets(target: Comparison | None, *, load: str = "closed:32", gain: float = 3.0,
                    slo_ms: float = 10.0) -> pd.DataFrame:
    """The targets, judged on the direct session (service alone = A, behind the gateway = B);
    without one (quick mode) each target says it was not measured.

    - throughput behind the gateway >= ``gain`` x the service alone: met when the whole 95 %
      CI of the paired ratio clears ``gain``; "met by its mean only" when the mean does but
      the CI's lower end does not; otherwise not met.
    - p99 behind the gateway <= ``slo_ms`` at that load, on the whole CI of its trials' p99
      (an open loop only where the load was served).
    """
    rows: list[dict[str, Any]] = []
    what = f"throughput >= {gain:g}x the service alone ({load})"
    slo_what = f"p99 <= {slo_ms:g} ms behind the gateway ({load})"
    if target is None:
        return pd.DataFrame([{"target": t, "measured": "", "ci": "", "service alone": "",
                              "status": "not measured (quick mode runs the chain only)",
                              "arms": ""} for t in (what, slo_what)],
                            columns=["target", "measured", "ci", "service alone", "status",
                                     "arms"])
    name = f"{target.b.name} vs {target.a.name}"
    server = _split(target.a.name, target.b)[0]
    if server != target.a.name:
        name += f" (different server settings: {server} behind the gateway, {target.a.name} alone)"
    v = _verdict(target, load, "throughput_rps")
    if v is None:
        rows.append({"target": what, "measured": "no verdict", "ci": "", "service alone": "",
                     "status": "not measured", "arms": name})
    else:
        ratio, low, high = (1 + v.change_pct / 100, 1 + v.ci_low_pct / 100,
                            1 + v.ci_high_pct / 100)
        alone = arm_interval(_valid(target, load, "A")["throughput_rps"])
        behind = arm_interval(_valid(target, load, "B")["throughput_rps"])
        status = ("met" if low >= gain else "met by its mean only (the CI reaches below)"
                  if ratio >= gain else "not met")
        rows.append({"target": what,
                     "measured": f"{ratio:.2f}x ({behind[0]:,.0f} req/s)",
                     "ci": f"[{low:.2f}x, {high:.2f}x]", "service alone": f"{alone[0]:,.0f} req/s",
                     "status": status + (" (provisional)" if target.provisional else ""),
                     "arms": name})
    what = slo_what
    behind_trials = _valid(target, load, "B")
    if behind_trials.empty:
        rows.append({"target": what, "measured": "not measured", "ci": "", "service alone": "",
                     "status": "not measured", "arms": name})
    else:
        b = arm_interval(behind_trials["p99_ms"])
        a = arm_interval(_valid(target, load, "A")["p99_ms"])
        slo = _slo(target, load, "B", slo_ms)
        status = "met" if slo == "holds" else "not met" if slo == "does not hold" else slo
        rows.append({"target": what, "measured": f"{b[0]:.2f} ms",
                     "ci": f"[{b[1]:.2f}, {b[2]:.2f}]" if b[3] >= 2 else "(1 trial)",
                     "service alone": f"{a[0]:.2f} ms",
                     "status": status + (" (provisional)" if target.provisional else ""),
                     "arms": name})
    return pd.DataFrame(rows, columns=["target", "measured", "ci", "service alone", "status",
                                       "arms"])


_GATEWAY_COUNTERS = {"gateway.server.infer_requests": "requests",
                     "gateway.passed_through": "passed_through",
                     "gateway.pool.requests": "upstream_requests",
                     "gateway.merged_calls": "merged_calls",
                     "gateway.fallback_answers": "fallback_answers",
                     "gateway.unmergeable": "not_merged",
                     "gateway.pool.connections_opened": "connections_opened"}


def gateway_summary(cmp: Comparison) -> pd.DataFrame:
    """What optkit's gateway did in front of the service, per load and arm, summed over trials.

    Columns: how each model was validated (``passthrough``: the upstream's metadata lists no
    inputs; ``config``: a signature in ``gateway.models``; ``upstream``: its metadata), the
    requests it served and passed through, its upstream calls (fewer than requests where it
    merged), merged calls, answers that needed the row-for-row fallback, models found not to
    merge, and connections opened. An arm without a gateway (the service alone) has no row.
    """
    stats = cmp.server_stats
    have = [c for c in _GATEWAY_COUNTERS if c in stats.columns]
    if stats.empty or not have:
        return pd.DataFrame()
    modes: dict[str, str] = {}
    if cmp.path is not None:
        for folder in _trial_folders(cmp):
            doc = _trial_doc(folder)
            models = ((doc.get("stats_after") or {}).get("gateway") or {}).get("models")
            if models and doc.get("arm") not in modes:
                modes[doc["arm"]] = ", ".join(f"{m}: {mode}" for m, mode in models.items())
    rows = []
    for (load, arm), group in stats.groupby(["load", "arm"], sort=False):
        if group[have].isna().all().all():
            continue
        row: dict[str, Any] = {"load": load,
                               "arm": f"{arm}: {cmp.a.name if arm == 'A' else cmp.b.name}",
                               "models": modes.get(arm, "")}
        row.update({name: int(group[c].fillna(0).sum()) for c, name in _GATEWAY_COUNTERS.items()
                    if c in group})
        rows.append(row)
    return pd.DataFrame(rows)


_WORDS = {"improved": "improved", "regressed": "regressed",
          "within noise": "changed within the noise band",
          "no change detected": "showed no change we can detect"}


def _said(verdict: str, change: float, low: float, high: float, mde: float,
          metric: str) -> str:
    beyond = (f"; a change beyond {detectable_range(mde)} would have been seen"
              if verdict == "no change detected" and math.isfinite(mde) else "")
    return (f"{metric} {_WORDS.get(verdict, verdict)} ({change:+.1f} %, 95 % CI {low:+.1f} to "
            f"{high:+.1f} %{beyond})")


def _short(r: dict[str, Any], key: str, name: str) -> str:
    """``throughput regressed -12.0 %`` or ``p99 no change detected (beyond -4.0 % / +4.2 %
    it would have been seen)``: one metric of one step, for the "does not help" line."""
    verdict = r[f"{key}_verdict"]
    if verdict == "no change detected":
        mde = r[f"{key}_mde_pct"]
        seen = (f", a change beyond {detectable_range(mde)} would have been seen"
                if math.isfinite(mde) else "")
        return f"{name}: no change detected{seen}"
    return f"{name}: {verdict} {r[f'{key}_change_pct']:+.1f} %"


def service_conclusion(steps: Sequence[Comparison], target: Comparison | None = None, *,
                       slo_ms: float = 10.0, gain: float = 3.0,
                       target_load: str = "closed:32") -> str:
    """The day in words, generated from the verdicts: each step, then plainly where the
    gateway did not help (a step whose throughput did not improve and whose p99 did not
    either, or where either regressed), the SLO at each load, and the targets."""
    chain = service_chain(steps, slo_ms=slo_ms)
    service = steps[0].a.name if steps else "the service"
    lines, no_help = [], []
    note = service_settings_note(steps)
    if note:
        lines.append(note)
    for r in chain[chain["step"] > 0].to_dict(orient="records"):
        where = f"{r['layer']} ({r['arm']}) at {r['load']}"
        if not r["throughput_verdict"] and not r["p99_verdict"]:
            lines.append(f"{where}: no verdict (too few valid pairs).")
            no_help.append(f"{where}: no verdict")
            continue
        said = [_said(r[f"{k}_verdict"], r[f"{k}_change_pct"],
                      r[f"{k}_ci_low_pct"], r[f"{k}_ci_high_pct"], r[f"{k}_mde_pct"], name)
                for k, name in (("throughput", "throughput"), ("p99", "p99"))
                if r[f"{k}_verdict"]]
        lines.append(f"{where}, against the step before: " + "; ".join(said) + ".")
        verdicts = {r["throughput_verdict"], r["p99_verdict"]}
        if "regressed" in verdicts or "improved" not in verdicts:
            no_help.append(f"{r['layer']} at {r['load']} (" + ", ".join(
                _short(r, k, name) for k, name in (("throughput", "throughput"), ("p99", "p99"))
                if r[f"{k}_verdict"]) + ")")
    if no_help:
        lines.append("Where the gateway does not help: " + "; ".join(no_help) + ".")
    else:
        lines.append("The gateway helped at every step and load measured.")
    for load, group in chain.groupby("load", sort=False):
        holds = [f"{r['layer']} {r['slo']}" for r in group.to_dict(orient="records")]
        lines.append(f"p99 <= {slo_ms:g} ms at {load}: " + "; ".join(holds) + ".")
    if target is None:
        lines.append("Targets not measured: quick mode runs the chain only.")
    else:
        targets = service_targets(target, load=target_load, gain=gain, slo_ms=slo_ms)
        for t in targets.to_dict(orient="records"):
            lines.append(f"Target {t['target']} — {t['status']}: {t['measured']} "
                         f"{t['ci']} (service alone: {t['service alone']}; {t['arms']}).")
    sessions = service_sessions(steps, target)
    invalid = sum(sum(s.invalid_by_arm().values()) for s in sessions)
    lines.append(f"{service}: {len(sessions)} sessions, {sum(len(s.trials) for s in sessions)} "
                 f"trials in {sum(s.elapsed_s for s in sessions):.0f} s, {invalid} invalid "
                 f"(kept on record, their pairs re-run).")
    if any(s.provisional for s in sessions):
        lines.append("QUICK MODE: few, short trials - these verdicts are provisional.")
    return "\n".join(lines)


def record_service(steps: Sequence[Comparison], target: Comparison | None = None, *,
                   out_dir: str | Path, slo_ms: float = 10.0, gain: float = 3.0,
                   target_load: str = "closed:32", extra: dict[str, Any] | None = None) -> Path:
    """The day's ``results.json``: every step's verdicts (each row says its step), the chain,
    the targets and the conclusion. The sessions themselves were saved by ``compare``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sessions = [(f"step {i}: {_layer(steps[0].a.name, s.b.name)}", s)
                for i, s in enumerate(steps, 1)]
    if target is not None:
        sessions.append(("target", target))
    verdicts = [{"step": step, "a": s.a.name, "b": s.b.name, "workload": s.settings.workload,
                 **row}
                for step, s in sessions for row in s.verdict_table().to_dict(orient="records")]
    doc = {"schema_version": 2, "day": "service", "title": "Your service behind optkit's gateway",
           "service": steps[0].a.name if steps else None,
           "servers": {**service_servers(steps), "note": service_settings_note(steps)},
           "a": steps[0].a.name if steps else None, "b": steps[-1].b.name if steps else None,
           "provisional": any(s.provisional for _, s in sessions),
           "conclusion": service_conclusion(steps, target, slo_ms=slo_ms, gain=gain,
                                            target_load=target_load),
           "sessions": [{"step": step, "a": s.a.name, "b": s.b.name, "loads": list(s.settings.loads),
                         "path": str(s.path) if s.path else None, "elapsed_s": s.elapsed_s}
                        for step, s in sessions],
           "verdicts": verdicts,
           "chain": service_chain(steps, slo_ms=slo_ms).to_dict(orient="records"),
           "targets": service_targets(target, load=target_load, gain=gain,
                                      slo_ms=slo_ms).to_dict(orient="records"),
           **(extra or {})}
    path = out / "results.json"
    path.write_text(json.dumps(doc, indent=2, default=jsonable))
    return path
