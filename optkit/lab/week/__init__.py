"""The sprint week: one parameterized notebook per day, executed into a run folder, and reports.

::

    _days.py       the days (one place), where the experiments are, a day's session settings
    _sessions.py   what a day's notebook shows about a session (headline, summaries, conclusion)
    _measures.py   what a day measures beside its session (start-up, bulk scoring, curves)
    report.py      the roll-up, Friday's target table, the final reports, the run's index
    _runner.py     record_day (a day's results.json) and run_week (papermill, then the reports)
    _service.py    notebook 06: a team's own server alone, then behind the gateway layer by layer
    _kernel.py     the kernel papermill runs a report in (over IPC, unattended)
    _summary.py    what the week found and where its reports are: the index's table, the
                   last screen of optkit week, the line each day notebook opens with
    _browser_check.py  the HTML reports opened in headless Chromium, as a reader would

Every public name is re-exported here; ``report`` is a namespace of its own.
"""

from . import report
from ._browser_check import ReportCheck, browser_problem, check_report_folder, check_reports
from ._days import (CALIBRATION_PAIRS, DAYS, MIN_SESSION_PAIRS, SERVICE_DAY, Day, config,
                    day_settings, ensure_repository, experiment, plan_day, project_root)
from ._measures import bulk_scoring, latency_curve, slo_table, startup_times
from ._runner import record_day, run_week
from ._fronted import check_fronted, same_answers, service_fronted
from ._service import (SERVICE_LAYERS, gateway_summary, record_service,
                       service_arm, service_calibration, service_sessions,
                       service_target, service_chain, service_conclusion,
                       service_headline, service_servers, service_settings_note, service_steps,
                       service_targets)
from ._sessions import (batch_histogram, batch_summary, conclusion, headline, key_figure,
                        layer_summary, load_events, load_timeline, pool_summary,
                        during_loads, explain_load_costs)
from ._summary import latest_report, summary_rows, week_summary

__all__ = ["Day", "DAYS", "project_root", "experiment", "config", "ensure_repository",
           "day_settings", "plan_day", "CALIBRATION_PAIRS", "MIN_SESSION_PAIRS", "pool_summary",
           "batch_summary",
           "batch_histogram", "layer_summary", "load_events", "load_timeline", "during_loads", "explain_load_costs", "headline",
           "key_figure", "startup_times", "bulk_scoring", "latency_curve", "slo_table",
           "conclusion", "record_day", "run_week", "week_summary", "summary_rows",
           "latest_report", "report", "check_reports", "check_report_folder", "ReportCheck",
           "browser_problem", "SERVICE_DAY", "SERVICE_LAYERS", "service_arm", "service_steps",
           "service_calibration", "service_chain", "service_headline", "service_targets",
           "service_conclusion", "gateway_summary", "record_service", "service_target",
           "service_sessions", "service_fronted", "check_fronted", "same_answers",
           "service_servers", "service_settings_note"]
