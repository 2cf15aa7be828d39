"""The performance gate: base vs head on one runner, a verdict per gated metric, an exit status.

::

    gate file (perf-gate.yaml) ─▶ base, head: two git refs ─▶ two checkouts, set up once
                                  (or two arm files / optkit configs, as `optkit compare`)
        compare(base, head): pairs, order a coin flip each (AB/BA), a fresh service per trial
        judge(): the gated metrics only, Holm over them (every load), each against its
                 allowed band = max(declared regression, the cell's A/A noise band: the
                 runner's calibration, or measured first, base vs base: _gate_noise)
                 ─▶ regressed beyond its band ─▶ exit 1;  all judged, none regressed ─▶ 0;
                    could not run or judge (bad ref, no valid pairs) ─▶ exit 2

Nothing here is new statistics: the sign-flip p-values, BCa intervals and noise bands are the
session's (``compare``); ``judge`` re-applies ``holm``, ``decide`` and ``detectable_effect``
from :mod:`optkit.lab.stats` to the gated family with the gate's bands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ._arms import load_arm
from ._comparison import Comparison
from ._gate_judge import GateCheck, judge
from ._gate_noise import measure_noise
from ._gate_refs import Checkout, GateError, checkouts
from ._gate_sim import gate_error_rates
from ._gate_spec import GateSpec
from ._manifest import environment_manifest
from ._session import compare
from .stats import min_pairs_for

__all__ = ["GateCheck", "GateResult", "judge", "run_gate", "EXIT_PASSED", "EXIT_REGRESSED",
           "EXIT_ERROR"]

EXIT_PASSED, EXIT_REGRESSED, EXIT_ERROR = 0, 1, 2


@dataclass
class GateResult:
    """A finished gate: its checks, the session behind them, and what could not be judged."""

    spec: GateSpec
    checks: list[GateCheck]
    base: str
    head: str
    comparison: Comparison | None = None
    checkouts: tuple[Checkout, Checkout] | None = None
    missing: list[str] = field(default_factory=list)
    error: str | None = None
    elapsed_s: float = 0.0
    rates: Any = None  # the simulated false-alarm rate and power (optkit.lab._gate_sim)
    #: the A/A session (base vs base) that measured the bands first, when the spec asked
    noise_session: Comparison | None = None
    runner: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """passed, failed (a gated metric regressed) or error (the gate could not judge)."""
        if any(not c.passed for c in self.checks):
            return "failed"
        if self.error or self.missing or not self.checks:
            return "error"
        return "passed"

    @property
    def exit_code(self) -> int:
        return {"passed": EXIT_PASSED, "failed": EXIT_REGRESSED}.get(self.status, EXIT_ERROR)

    def regressions(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]


def _sessions(spec: GateSpec, a: Any, b: Any, *, repository: str | Path,
              out_dir: Path | None, log: Callable[[str], None] | None,
              progress: bool) -> tuple[Comparison, Comparison | None]:
    """(the A/B session, the A/A one that measured its bands first, if the spec asks)."""
    calibration: Any = spec.calibration
    aa = None
    if spec.calibrate_pairs:
        calibration, aa = measure_noise(load_arm(a), spec.settings, pairs=spec.calibrate_pairs,
                                        repository=repository, calibration=spec.calibration,
                                        out_dir=out_dir, progress=progress, log=log)
    cmp = compare(a, b, repository=repository, settings=spec.settings,
                  calibration=calibration, out_dir=out_dir / "session" if out_dir else None,
                  progress=progress, log=log)
    return cmp, aa


def run_gate(spec: GateSpec, *, base: str | None = None, head: str | None = None,
             arms: tuple[Any, Any] | None = None, repo: str | Path = ".",
             repository: str | Path = "build/models", out_dir: str | Path | None = None,
             work_dir: str | Path | None = None, keep: bool = False,
             simulate_sessions: int = 200, progress: bool = False,
             log: Callable[[str], None] | None = None) -> GateResult:
    """Run the gate: two git refs (``base``, ``head`` of ``repo``) or two ``arms``.

    Raises OptkitError (GateError, ConfigError, LaunchError) when it cannot run at all; a
    session that ran but left a gated metric unjudged returns status ``error``.
    """

    if (arms is None) == (base is None or head is None):
        raise GateError("give two git refs (base and head) or two arms, not both or neither")
    if spec.calibrate_pairs < 0 or spec.calibrate_pairs == 1:
        raise GateError(f"calibrate_pairs must be 0 (off) or >= 2, got {spec.calibrate_pairs}")
    family = len(spec.settings.loads) * len(spec.gate)
    fewest = min_pairs_for(spec.alpha, family)
    if spec.settings.pairs < fewest:  # a gate that can never fail would pass everything
        raise GateError(f"{spec.settings.pairs} pairs can never reach alpha {spec.alpha:g} "
                        f"over {family} gated tests (exact sign-flip p >= 2/2^pairs): use at "
                        f"least {fewest} pairs")
    started = time.perf_counter()
    out = Path(out_dir) if out_dir else None
    sides: tuple[Checkout, Checkout] | None = None
    aa: Comparison | None = None
    if arms is not None:
        cmp, aa = _sessions(spec, arms[0], arms[1], repository=repository, out_dir=out,
                            log=log, progress=progress)
    else:
        with checkouts(repo, base or "", head or "", setup=spec.setup_commands,
                       setup_timeout_s=spec.setup_timeout_s, work_dir=work_dir, keep=keep,
                       log_dir=out, log=log) as sides:
            if log:
                log(f"base {sides[0].label} ({sides[0].ref}), head {sides[1].label} "
                    f"({sides[1].ref}): {spec.settings.pairs} pairs x "
                    f"{len(spec.settings.loads)} load(s)")
            cmp, aa = _sessions(spec, spec.arm(sides[0].path, sides[0].label),
                                spec.arm(sides[1].path, sides[1].label),
                                repository=sides[0].path, out_dir=out, log=log,
                                progress=progress)
    means = {(str(load), str(arm)): row.dropna().to_dict()
             for (load, arm), row in cmp.means().iterrows()}
    checks = judge(cmp.verdicts, spec.gate, bands=cmp.bands, means=means,
                   alpha=spec.alpha)
    judged = {(c.load, c.metric) for c in checks}
    missing = [f"{m} at {load}" for load in spec.settings.loads for m in spec.gate
               if (load, m) not in judged]
    result = GateResult(spec, checks, base=cmp.a.name, head=cmp.b.name, comparison=cmp,
                        checkouts=sides, missing=missing, noise_session=aa,
                        runner={k: v for k, v in environment_manifest(git={}).items()
                                if k in ("cpu_model", "cpu_count", "platform", "python")})
    if simulate_sessions and checks:
        result.rates = gate_error_rates(spec, checks, sessions=simulate_sessions)
    result.elapsed_s = time.perf_counter() - started
    return result
