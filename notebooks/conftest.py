"""Under nbmake each notebook is one test that runs whole A/B sessions on real servers: it
gets a longer hang guard than the unit tests' 120 s (quick mode keeps each to a few minutes)."""

from __future__ import annotations

import pytest

NOTEBOOK_TIMEOUT_S = 420


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.timeout(NOTEBOOK_TIMEOUT_S))

# The final reports read a finished week's run folder: they are executed by `optkit week` (and
# by tests/test_report.py over a recorded run), not on their own by nbmake.
# Monday's notebook is executed end to end by tests/test_compare.py::test_week_runs_the_monday_notebook
# (through `optkit week`, with its HTML export): running it here again would only cost time.
# Notebook 06 (your service) likewise, by tests/test_service_day.py through `optkit week --service`.
collect_ignore = ["reports", "01-connection-pooling.ipynb", "06-your-service.ipynb"]
