"""The sprint week: one parameterized notebook per day, executed into a run folder, and reports.

Every public name is re-exported here from a private module; ``report`` is the roll-up and the
final reports, a namespace of its own.
"""

from . import report
from ._runner import (DAYS, Day, batch_histogram, batch_summary, bulk_scoring, conclusion, config,
                      day_settings, ensure_repository, experiment, headline, key_figure,
                      latency_curve, layer_summary, load_events, load_timeline, pool_summary,
                      project_root, record_day, run_week, startup_times, week_summary)

__all__ = ["Day", "DAYS", "project_root", "experiment", "config", "ensure_repository",
           "day_settings", "pool_summary", "batch_summary", "batch_histogram", "layer_summary",
           "load_events", "load_timeline", "headline", "key_figure", "startup_times",
           "bulk_scoring", "latency_curve", "conclusion", "record_day", "run_week",
           "week_summary", "report"]
