"""optkit.lab: the measurement lab (``pip install 'optkit[lab]'``): turn runs into verdicts.

::

    arms (optkit configs, commands, URLs) ──run_trial──▶ one fresh service, warm-up, window, gates
                                                         + the breakdown: the servers' statistics
                                                           over the window (breakdown_table)
    compare(A, B): n pairs, A/B order by a seeded coin ──▶ d = ln(B/A) per pair
        ──▶ sign-flip p, BCa CI, Holm, noise band δ (calibrate) ──▶ improved / regressed / ...
    run_gate(spec, base=REF, head=REF)     two git checkouts as arms of one session; exit 1
                                           when a gated metric regressed beyond its band
    throughput_at_slo, latency_vs_load      open-loop searches and curves
    tune(base, space, slo="p99<=10ms")     an Optuna search of a config space for the best
                                           goodput at the SLO, the winner validated vs the base
    week/                                   the days, the runner, the roll-up and the reports
    stats, plotting                         pure statistics, and figures drawn from results
    soak, smoke, simulate                   long checked load, a quick check, the method's test bed

The lab stands on the serving part and the load generator (:mod:`optkit.bench`) and nothing
there imports it back.
"""

from . import plotting, stats, week
from ._arms import ExternalArm, ExternalStack, is_arm, load_arm, preflight
from ._breakdown import (BREAKDOWN_COLUMNS, PARTS, breakdown_table, client_mean_ms, combine_tiers,
                         tier_means)
from ._churn import Churn, ChurnEvent, ChurnPlan
from ._manifest import environment_manifest, git_commit, git_state
from ._calibration import calibrate
from ._comparison import Comparison
from ._gate import GateCheck, GateResult, judge, run_gate
from ._gate_refs import GateError
from ._gate_sim import gate_error_rates
from ._gate_spec import GateSpec, load_gate_spec
from ._noise import NoiseBand, load_deltas, noise_band
from ._plan import Plan, plan_pairs
from ._session import compare
from ._settings import QUICK, STANDARD, CompareSettings, parse_load
from ._simulate import simulate_trials
from ._slo import SloSearch, compare_at_slo, latency_vs_load, throughput_at_slo
from ._smoke import run_smoke
from ._soak import SoakSettings, run_soak
from ._tune import STUDY_NAME, TuneResult, resumed_candidates, tune
from ._tune_space import Param, SearchSpace, Slo, load_space, parse_budget, parse_slo
from ._trial import (ROW_COLUMNS, ProcessSampler, TrialResult, flatten_stats, load_trial,
                     memory_held_mb, memory_per_client_kb, run_trial)
from .week import report

__all__ = [
    # sessions and verdicts
    "compare", "calibrate", "Comparison", "CompareSettings", "QUICK", "STANDARD", "parse_load",
    "load_deltas", "noise_band", "NoiseBand", "plan_pairs", "Plan",
    # trials and arms
    "run_trial", "TrialResult", "ROW_COLUMNS", "load_trial", "memory_per_client_kb",
    "memory_held_mb",
    "flatten_stats", "ProcessSampler", "environment_manifest", "git_commit", "git_state", "ExternalArm",
    "ExternalStack", "load_arm", "is_arm", "preflight", "ChurnPlan", "ChurnEvent", "Churn",
    # where the time goes (Triton's statistics over each trial's window)
    "breakdown_table", "BREAKDOWN_COLUMNS", "PARTS", "tier_means", "combine_tiers",
    "client_mean_ms",
    # the performance gate
    "run_gate", "GateResult", "GateCheck", "GateSpec", "GateError", "load_gate_spec", "judge",
    "gate_error_rates",
    # searches, soak, smoke, simulation
    "throughput_at_slo", "compare_at_slo", "latency_vs_load", "SloSearch", "SoakSettings",
    "run_soak", "run_smoke", "simulate_trials",
    # tuning
    "tune", "TuneResult", "load_space", "SearchSpace", "Param", "Slo", "parse_slo",
    "parse_budget", "resumed_candidates", "STUDY_NAME",
    # namespaces
    "stats", "plotting", "week", "report",
]
