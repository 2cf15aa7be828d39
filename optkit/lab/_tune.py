"""``optkit tune``: search a declared space for the highest throughput that meets a latency SLO,
then prove the winner against the base in a paired session.

::

    base.yaml + space.yaml ──▶ candidate k = base with the space's keys set (Optuna TPE, seeded,
        │                      the SLO as its constraint; candidate 0 = the base's own settings)
        │   each candidate: one short trial on a fresh stack (run_trial), at the objective's load
        │   goodput = throughput if the trial is valid and p99 <= SLO, else 0 (and why, recorded)
        ▼   every candidate is stored at once in DIR/study.db: --resume continues the study
    best feasible candidate ──▶ compare(base, best): pairs fixed in advance, order randomized,
        │                       sign-flip test, BCa CI, noise band (the engine of optkit compare)
        ▼
    DIR/tuned.yaml (base + the winning overrides), history.csv, pareto.csv, importances.csv,
    validation/ (the session), tune.json, tune.md

**A service optkit does not own**: the base may be a ``kind: command`` arm file whose
``parameters:`` declare its own placeholders; the space then names them ``arm.NAME``, a
candidate is a fresh start of that server with those values, and ``tuned.yaml`` is the arm
file with the winning defaults (``optkit.lab._tune_arm``).

**Why validate.** The best of N noisy one-trial measurements is biased upward (the winner's
curse): the candidate that ranked first is partly the one that drew the luckiest trial. Only
a fresh paired session, planned before it runs, says whether the winner beats the base.

**The budget** is wall-clock time for the whole job: a candidate is started only while the
time left can hold one more candidate (the longest one so far) plus the validation session
(its 2 x pairs trials at the candidates' mean cost, a quarter more for re-runs); before the
first candidate both are estimated from warm-up + window + start-up. Ctrl-C stops the search,
keeps every candidate measured so far, and still writes the tables and the best so far (no
validation: it could not be finished).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from .._config import ServiceConfig
from .._exceptions import ConfigError, OptkitError
from ..bench import ValidityGates
from . import _tune_report as report
from ._arms import ExternalArm, preflight
from ._comparison import Comparison
from ._manifest import git_state
from ._session import compare
from ._settings import CompareSettings, parse_load
from ._trial import run_trial
from ._tune_arm import load_arm_space, load_tune_base, write_tuned_arm
from ._tune_space import (SearchSpace, Slo, load_space, parse_budget, parse_slo,
                          write_tuned_config)

__all__ = ["tune", "TuneResult", "resumed_candidates", "STUDY_NAME", "STARTUP_ESTIMATE_S"]

STUDY_NAME = "optkit-tune"
#: seconds a trial spends besides its warm-up and window (two processes started and stopped,
#: one request per model): the estimate of a candidate's cost before the first has run
STARTUP_ESTIMATE_S = 4.0
#: quick mode's candidates: enough for the search, the tables and a winner to exist
QUICK_CANDIDATES = 3
#: what a study remembers of how it was made; a resume with other values is refused
_IDENTITY = ("base", "space", "slo", "load", "workload", "warmup_s", "duration_s")


@dataclass(frozen=True)
class TuneResult:
    """A finished (or interrupted) tuning job: the search's tables, the winner, its validation.

    ``history``: one row per candidate (settings, measures, feasible or the reason not);
    ``best_curve``: the best goodput after each candidate; ``pareto``: throughput vs the SLO's
    latency; ``importances`` (and ``importance_note``); ``best``: the winning candidate's row
    (None if none met the SLO); ``comparison``: the validation session (None if not run);
    ``verdict``: the outcome in words; ``stopped``: why the search stopped.
    """

    out_dir: Path
    slo: Slo
    load: str
    space: SearchSpace
    history: pd.DataFrame
    best_curve: pd.DataFrame
    pareto: pd.DataFrame
    importances: pd.DataFrame
    importance_note: str
    best: dict[str, Any] | None
    tuned_path: Path | None
    comparison: Comparison | None
    verdict: str
    stopped: str
    interrupted: bool = False
    new_candidates: int = 0
    elapsed_s: float = 0.0
    validation: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        best = f"best #{self.best['candidate']}" if self.best else "no feasible candidate"
        return (f"<TuneResult {self.slo} at {self.load} [{len(self.history)} candidates, "
                f"{best} | {self.validation.get('throughput_verdict', 'not validated')}]>")

    @property
    def validated(self) -> bool:
        """A verdict was reached: the paired session judged the winner, or the winner was the
        base's own settings (nothing to judge)."""
        if self.validation.get("best_is_base"):
            return True
        return self.comparison is not None and bool(self.comparison.verdicts.get(self.load))

    def summary(self) -> dict[str, Any]:
        """The job as plain data (``tune.json``)."""
        feasible = int(self.history["feasible"].astype("boolean").fillna(False).sum()) \
            if len(self.history) else 0
        return {"schema_version": 1, "slo": str(self.slo), "load": self.load,
                "space": self.space.to_dict(), "candidates": len(self.history),
                "new_candidates": self.new_candidates, "feasible": feasible,
                "stopped": self.stopped, "interrupted": self.interrupted,
                "elapsed_s": round(self.elapsed_s, 1), "best": self.best,
                "tuned": str(self.tuned_path) if self.tuned_path else None,
                "validation": self.validation, "verdict": self.verdict,
                "importance_note": self.importance_note}


def _clean(value: Any) -> Any:
    """Plain JSON/YAML values from numpy and pandas scalars (NaN -> None)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _open_study(out: Path, identity: dict[str, Any], *, resume: bool, fresh: bool,
                seed: int) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress lines say it
    path = out / "study.db"
    if fresh and not resume:  # start over: the old study and its trials go, not just the db
        path.unlink(missing_ok=True)
        for folder in ("trials", "validation"):
            shutil.rmtree(out / folder, ignore_errors=True)
    if path.exists() and not resume:
        raise ConfigError(f"{out} already holds a study ({path}): pass --resume to continue "
                          f"it, or choose another --out")
    if resume and not path.exists():
        raise ConfigError(f"--resume: {out} holds no study ({path} is missing)")
    out.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
    if resume:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        stored = {k: study.user_attrs.get(k) for k in _IDENTITY}
        differ = [k for k in _IDENTITY if json.dumps(stored[k], sort_keys=True)
                  != json.dumps(identity[k], sort_keys=True)]
        if differ:
            raise ConfigError(f"--resume: the study in {out} was made with another "
                              f"{', '.join(differ)}; resume with the same, or choose another --out")
    else:
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize")
        for key, value in identity.items():
            study.set_user_attr(key, value)
    # the sampler is not stored: a resumed study gets one seeded past its trials, so its
    # random start-up points are not the first run's again. The SLO is its constraint: Optuna 5
    # reads each trial's own (Trial.set_constraint, in _tell); Optuna 4 needs constraints_func
    kwargs: dict[str, Any] = {}
    if not hasattr(optuna.trial.Trial, "set_constraint"):
        kwargs["constraints_func"] = lambda t: (float(t.user_attrs.get("violation", 1.0)),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), **kwargs)
    return study


def _measure(study: Any, space: SearchSpace, base: ServiceConfig | ExternalArm, slo: Slo, *,
             repository: Path, load: str, workload: Any, warmup_s: float, duration_s: float,
             engine: str, seed: int, out: Path, git: Any, base_candidate: int | None,
             gates: Any = None) -> tuple[Any, dict[str, Any]]:
    """Ask for a candidate, run its trial, and return the trial with what to record."""
    trial = study.ask()
    values = {p.key: p.suggest(trial) for p in space.params}
    attrs: dict[str, Any] = {"valid": False, "feasible": False, "goodput_rps": 0.0,
                             "source": "base settings" if trial.number == base_candidate
                             else "sampler"}
    try:
        cfg = space.apply(base, values, name=f"candidate-{trial.number}")
    except ConfigError as exc:
        attrs.update(reason=f"not a valid config: {exc}", violation=1e6)
        return trial, attrs
    folder = out / "trials" / f"c{trial.number:03d}"
    try:
        result = run_trial(cfg, repository=repository, load=parse_load(load, engine=engine),
                           workload=workload, warmup_s=warmup_s, duration_s=duration_s,
                           seed=seed * 1000 + trial.number, git=git, out_dir=folder,
                           gates=gates)
    except OptkitError as exc:
        attrs.update(reason=f"trial failed: {exc}"[:500], violation=1e6)
        return trial, attrs
    row = result.row()
    attrs.update({k: _clean(row.get(k)) for k in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms",
                                                   "p999_ms", "errors")})
    attrs.update(valid=bool(result.valid), trial_dir=str(folder))
    latency = attrs.get(slo.metric)
    if not result.valid:
        attrs.update(reason="invalid trial: " + "; ".join(result.invalid_reasons),
                     violation=1e3 + max(0.0, (latency or slo.bound_ms) - slo.bound_ms))
    elif latency is None:
        attrs.update(reason=f"no {slo.metric} measured", violation=1e3)
    else:
        attrs["violation"] = float(latency - slo.bound_ms)
        if latency <= slo.bound_ms:
            attrs.update(feasible=True, goodput_rps=float(attrs["throughput_rps"] or 0.0),
                         reason="")
        else:
            attrs["reason"] = (f"{slo.metric.removesuffix('_ms')} {latency:.2f} ms over the SLO "
                               f"({slo.bound_ms:g} ms)")
    return trial, attrs


def _tell(study: Any, trial: Any, attrs: dict[str, Any]) -> None:
    """Store what the candidate measured, its SLO violation (<= 0: feasible), its goodput."""
    for key, value in attrs.items():
        trial.set_user_attr(key, _clean(value))
    if hasattr(trial, "set_constraint"):
        trial.set_constraint("slo", float(attrs.get("violation", 1.0)))
    study.tell(trial, float(attrs.get("goodput_rps") or 0.0))


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else repr(value)


def _progress(k: int, n: str, trial: Any, attrs: dict[str, Any], best: tuple[float, int | None],
              space: SearchSpace) -> str:
    settings = ", ".join(f"{key.split('.')[-1]}={_short(trial.params.get(key))}"
                         for key in space.keys)
    if attrs.get("throughput_rps") is not None:
        got = (f"{attrs['throughput_rps']:,.0f} req/s, p99 {attrs.get('p99_ms') or math.nan:.2f} "
               f"ms")
    else:
        got = "not measured"
    status = "meets the SLO" if attrs.get("feasible") else f"infeasible: {attrs.get('reason')}"
    holder = f"{best[0]:,.0f} req/s (#{best[1]})" if best[1] is not None else "none yet"
    return (f"candidate {k} of {n} (#{trial.number}: {settings}): {got}, {status} | best so far "
            f"{holder}")


def tune(base: Any, space: Any, *, slo: str | Slo, repository: str | Path,
         load: str = "closed:32", trials: int | None = None, budget: str | float | None = None,
         out_dir: str | Path = "runs/tune", workload: Any = "digits", pairs: int = 16,
         warmup_s: float = 1.0, duration_s: float = 2.0, seed: int = 0, engine: str = "auto",
         calibration: Any = None, quick: bool = False, resume: bool = False,
         fresh: bool = False, validate: bool = True, clock: Callable[[], float] = time.monotonic,
         gates: ValidityGates | Mapping[str, Any] | None = None,
         log: Callable[[str], None] | None = print) -> TuneResult:
    """Search ``space`` around ``base`` for the highest goodput at ``slo``, then validate it.

    Args:
        base: the starting config (an experiment file, a mapping, a ServiceConfig), or a
            ``kind: command`` arm file (or ExternalArm) whose ``parameters:`` are searched.
        space: the space file or mapping (``optkit.lab._tune_space``; over an arm,
            ``arm.NAME`` keys: ``optkit.lab._tune_arm``).
        slo: the objective, ``"p99<=10ms"``.
        repository: the model repository.
        load: the objective's load (``closed:N`` or ``open:RATE``), for the search and the
            validation alike.
        trials: the most candidates this run adds; ``budget`` (``"15m"``, seconds) bounds its
            wall clock, validation included. Neither: 15 minutes.
        out_dir: the study (``study.db``), the trials and every result file.
        pairs: the validation session's pairs, fixed before it starts.
        warmup_s, duration_s: each trial's warm-up and window, candidates and validation alike.
        quick: CI mode (also ``OPTKIT_QUICK=1`` in the environment, as ``make test`` runs the
            notebooks): at most 3 candidates of 0.4 + 0.8 s trials and 2 validation pairs;
            the verdict is provisional.
        resume: continue the study in ``out_dir`` (made with the same base, space, SLO, load).
        fresh: start over: remove a study (and its trials) already in ``out_dir``.
        validate: run the validation session (off: the search only).
        clock: the wall clock the budget is kept by (tests pass a fake one).
        gates: the validity gates of every trial, candidates and validation alike (None: the
            defaults; a mapping of ``ValidityGates`` fields, e.g. ``{"check_stability": False}``
            for windows too short to hold the stability gate's five sub-windows).
        log: where the progress lines go (None: nowhere).

    Raises:
        ConfigError: a bad space, SLO, budget or load; a study already in ``out_dir`` without
            ``resume`` (or none with it); a budget that cannot hold one candidate plus the
            validation.
    """
    started = clock()
    say = log or (lambda line: None)
    if quick or os.environ.get("OPTKIT_QUICK") == "1":  # CI: does every step run?
        quick, warmup_s, duration_s, pairs = True, 0.4, 0.8, min(pairs, 2)
        trials = QUICK_CANDIDATES if trials is None else min(trials, QUICK_CANDIDATES)
    slo = parse_slo(slo)
    budget_s = parse_budget(budget)
    if trials is None and budget_s is None:
        budget_s = 15 * 60.0
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    parse_load(load, engine="builtin")
    settings = CompareSettings(pairs=pairs, warmup_s=warmup_s, duration_s=duration_s,
                               loads=(load,), workload=str(workload) if isinstance(
                                   workload, Path) else workload, seed=seed, engine=engine,
                               quick=quick, gates=gates)
    base_cfg = load_tune_base(base)  # an optkit config, or a command arm
    if isinstance(space, SearchSpace):
        spc = space
    elif isinstance(base_cfg, ExternalArm):
        spc = load_arm_space(space, base_cfg)
    else:
        spc = load_space(space, base_cfg)
    repo = Path(repository)
    preflight(base_cfg, repository=repo, workload=workload)
    estimate = warmup_s + duration_s + STARTUP_ESTIMATE_S
    validation_s = 2 * pairs * 1.25 * estimate if validate else 0.0
    if budget_s is not None and budget_s < estimate + validation_s:
        raise ConfigError(f"--budget {budget_s:g} s cannot hold one candidate (~{estimate:.0f} s) "
                          f"plus the validation ({pairs} pairs, ~{validation_s:.0f} s)")
    out = Path(out_dir)
    identity = {"base": base_cfg.to_dict(), "space": spc.to_dict(), "slo": str(slo),
                "load": load, "workload": str(workload), "warmup_s": warmup_s,
                "duration_s": duration_s}
    study = _open_study(out, identity, resume=resume, fresh=fresh, seed=seed)
    base_candidate = None
    if not study.trials:  # candidate 0: the base's own settings, where the space holds them
        inside = {p.key: v for p, v in zip(spc.params, spc.base_values(base_cfg).values())
                  if p.contains(v)}
        if inside:
            study.enqueue_trial(inside)
            base_candidate = 0
    git = git_state()
    n_text = str(trials) if trials is not None else "? (until the budget)"
    say(f"searching {len(spc.params)} knob(s) for the best throughput at {slo}, {load}: "
        + "; ".join(f"{p.key} {p.describe()}" for p in spc.params)
        + (f" | {len(study.trials)} candidate(s) already in {out / 'study.db'}"
           if study.trials and resume else ""))
    best = _best_so_far(study)
    stopped, interrupted, new = "", False, 0
    took: list[float] = []  # seconds each candidate of this run took
    while True:
        if trials is not None and new >= trials:
            stopped = f"{trials} candidate(s) measured, as asked"
            break
        if budget_s is not None:
            left = budget_s - (clock() - started)
            # the next candidate may be as slow as the slowest; the validation's 2 x pairs
            # trials cost what candidates do on average (+25 % for re-runs of invalid pairs)
            mean = sum(took) / len(took) if took else estimate
            need = (max(took) if took else estimate) + (
                2 * pairs * 1.25 * mean if validate else 0.0)
            if left < need:
                stopped = (f"budget: {left:.0f} s left, a candidate plus the validation needs "
                           f"~{need:.0f} s")
                break
        try:  # Ctrl-C anywhere in a candidate: keep the study, drop the unfinished one
            t0 = clock()
            trial, attrs = _measure(study, spc, base_cfg, slo, repository=repo, load=load,
                                    workload=workload, warmup_s=warmup_s,
                                    duration_s=duration_s, engine=engine, seed=seed, out=out,
                                    git=git, base_candidate=base_candidate,
                                    gates=settings.gates)
            attrs["duration_s"] = round(clock() - t0, 2)
            took.append(attrs["duration_s"])
            _tell(study, trial, attrs)
            new += 1
            if attrs["feasible"] and attrs["goodput_rps"] > best[0]:
                best = (attrs["goodput_rps"], trial.number)
            say(_progress(new, n_text, trial, attrs, best, spc))
        except KeyboardInterrupt:
            interrupted, stopped = True, "interrupted (Ctrl-C): the candidate under way is dropped"
            _drop_running(study)
            break
    return _finish(study, spc, base, base_cfg, slo, settings, out, repo, calibration,
                   stopped=stopped, interrupted=interrupted, new=new, validate=validate,
                   started=started, clock=clock, seed=seed, say=say)


def _drop_running(study: Any) -> None:
    """The candidate Ctrl-C cut short: failed, with the reason, so the study stays clean."""
    import optuna

    for t in study.trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def _best_so_far(study: Any) -> tuple[float, int | None]:
    best: tuple[float, int | None] = (0.0, None)
    for t in study.trials:
        g = float(t.user_attrs.get("goodput_rps") or 0.0)
        if t.user_attrs.get("feasible") and g > best[0]:
            best = (g, t.number)
    return best


def _finish(study: Any, space: SearchSpace, base: Any, base_cfg: ServiceConfig | ExternalArm,
            slo: Slo, settings: CompareSettings, out: Path, repo: Path, calibration: Any, *,
            stopped: str,
            interrupted: bool, new: int, validate: bool, started: float,
            clock: Callable[[], float], seed: int, say: Callable[[str], None]) -> TuneResult:
    """The tables, tuned.yaml, the validation session and the result files."""
    hist = report.history(study, space.keys)
    curve = report.best_curve(hist)
    front = report.pareto(hist, slo.metric)
    imp, imp_note = report.importances(study, seed=seed)
    best_score, best_number = _best_so_far(study)
    best_row = None
    tuned_path = None
    comparison = None
    validation: dict[str, Any] = {}
    load = settings.loads[0]
    if best_number is None:
        verdict = (f"no candidate met {slo} at {load}: nothing to validate; see the reasons "
                   f"in {out / 'history.csv'}")
        measured = hist[hist["valid"].astype("boolean").fillna(False).astype(bool)
                        & hist[slo.metric].notna()]
        if len(measured):  # how far the SLO is: the closest any valid candidate came
            near = measured.loc[measured[slo.metric].astype(float).idxmin()]
            verdict += (f" (the closest: candidate #{int(near['candidate'])}, "
                        f"{slo.metric.removesuffix('_ms')} {float(near[slo.metric]):.2f} ms at "
                        f"{float(near['throughput_rps']):,.0f} req/s)")
    else:
        row = hist[hist["candidate"] == best_number].iloc[0]
        best_row = {k: _clean(row[k]) for k in ("candidate", *space.keys, "throughput_rps",
                                                slo.metric)}
        overrides = {k: best_row[k] for k in space.keys}
        tuned_cfg = space.apply(base_cfg, overrides, name=f"{base_cfg.name}-tuned")
        if isinstance(base_cfg, ExternalArm):
            tuned_path = write_tuned_arm(out / "tuned.yaml", base, base_cfg, overrides, best_row,
                                         slo, load)
        else:
            tuned_path = write_tuned_config(out / "tuned.yaml", base, base_cfg, overrides,
                                            best_row, slo, load)
        verdict = (f"best found: candidate #{best_number}, {best_score:,.0f} req/s at "
                   f"{slo.metric.removesuffix('_ms')} {best_row[slo.metric]:.2f} ms "
                   f"(one trial: not yet a claim)")
        if overrides == space.base_values(base_cfg):  # an A/A session would prove nothing
            verdict = (f"the base's own settings were the best found (candidate "
                       f"#{best_number}, {best_score:,.0f} req/s): the defaults are within 0 % "
                       f"of the best found; nothing to validate")
            validation = {"throughput_verdict": "best is the base", "best_is_base": True}
        elif validate and not interrupted:
            say(f"validating candidate #{best_number} against the base: {settings.pairs} pairs "
                f"at {load}, fixed in advance")
            try:
                comparison = compare(base_cfg, tuned_cfg, repository=repo, settings=settings,
                                     calibration=calibration, out_dir=out / "validation",
                                     progress=False)
                verdict, validation = _judge(comparison, slo, load)
            except KeyboardInterrupt:
                interrupted = True
                verdict += "; the validation was interrupted: no verdict"
    result = TuneResult(out_dir=out, slo=slo, load=load, space=space, history=hist,
                        best_curve=curve, pareto=front, importances=imp,
                        importance_note=imp_note, best=best_row, tuned_path=tuned_path,
                        comparison=comparison, verdict=verdict, stopped=stopped,
                        interrupted=interrupted, new_candidates=new,
                        elapsed_s=clock() - started, validation=validation)
    _save(result)
    say(verdict)
    return result


def _judge(cmp: Comparison, slo: Slo, load: str) -> tuple[str, dict[str, Any]]:
    """The validation's outcome in words, and as data."""
    if not cmp.verdicts.get(load):
        return (f"the validation at {load} lost too many pairs to invalid trials: no verdict",
                {"throughput_verdict": "no verdict"})
    v = cmp.verdict("throughput_rps", load)
    means = cmp.means()
    tuned_latency = _clean(means.loc[(load, "B"), slo.metric]) if slo.metric in means else None
    data = {"pairs": v.n_pairs, "throughput_change_pct": v.change_pct,
            "ci_low_pct": v.ci_low_pct, "ci_high_pct": v.ci_high_pct,
            "p_adjusted": v.p_adjusted, "noise_band_pct": 100 * v.delta,
            "throughput_verdict": v.verdict, "provisional": cmp.provisional,
            f"tuned_{slo.metric}": tuned_latency,
            "tuned_meets_slo": tuned_latency is not None and tuned_latency <= slo.bound_ms}
    ci = (f"{v.change_pct:+.1f} %, 95 % CI {v.ci_low_pct:+.1f} to {v.ci_high_pct:+.1f} %, "
          f"Holm p = {v.p_adjusted:.3g}, {v.n_pairs} pairs, noise band ±{100 * v.delta:.1f} %"
          + ("; provisional (quick)" if cmp.provisional else ""))
    if v.verdict == "improved":
        text = f"validated: the tuned config's throughput at {load} is improved ({ci})"
    elif v.verdict == "regressed":
        text = (f"not validated: the winner served less than the base in the paired session "
                f"({ci}); its search score was the winner's curse: keep the base")
    else:
        within = max(abs(v.ci_low_pct), abs(v.ci_high_pct))
        text = (f"the defaults are within {within:.1f} % of the best found "
                f"(throughput {v.verdict}: {ci})")
    if tuned_latency is not None and tuned_latency > slo.bound_ms:
        text += (f"; note: the tuned config's mean {slo.metric.removesuffix('_ms')} in the "
                 f"validation was {tuned_latency:.2f} ms, over the SLO")
    return text, data


def _save(result: TuneResult) -> None:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    result.history.to_csv(out / "history.csv", index=False)
    result.best_curve.to_csv(out / "best_curve.csv", index=False)
    result.pareto.to_csv(out / "pareto.csv", index=False)
    result.importances.to_csv(out / "importances.csv", index=False)
    doc = result.summary()
    (out / "tune.json").write_text(json.dumps(doc, indent=2, default=_clean))
    lines = [f"# optkit tune: {result.slo} at {result.load}", "",
             f"- candidates: {doc['candidates']} ({doc['new_candidates']} this run), "
             f"{doc['feasible']} met the SLO", f"- stopped: {result.stopped}",
             f"- {result.verdict}", f"- importances: {result.importance_note}"]
    if result.tuned_path:
        lines.append(f"- tuned config: {result.tuned_path}")
    (out / "tune.md").write_text("\n".join(lines) + "\n")


def resumed_candidates(out_dir: str | Path) -> int:
    """How many candidates the study in ``out_dir`` holds (0 if none)."""
    import optuna

    path = Path(out_dir) / "study.db"
    if not path.exists():
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return len(optuna.load_study(study_name=STUDY_NAME,
                                 storage=f"sqlite:///{path.resolve()}").trials)


