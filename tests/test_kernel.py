"""The kernel papermill runs a report in (optkit/lab/week/_kernel.py): over IPC, so ipykernel
has no unencrypted TCP to warn about on ``make week``'s terminal, and without the Jupyter
session variable that would send the lab's progress into the report."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest


def test_a_report_kernel_runs_over_ipc_without_a_warning_or_a_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
        ) -> None:
    """One cell reports the kernel's transport and its JPY_SESSION_NAME: ``ipc`` and none,
    even when the runner itself has one (optkit week run from a notebook); the kernel wrote
    no transport warning on the terminal."""
    import papermill as pm

    from optkit.lab.week._kernel import papermill_kernel

    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/a-notebook-a-person-runs.ipynb")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nfrom ipykernel.kernelapp import IPKernelApp\n"
        "print(IPKernelApp.instance().transport, os.environ.get('JPY_SESSION_NAME'))")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    source = tmp_path / "in.ipynb"
    nbformat.write(notebook, source)
    done = pm.execute_notebook(str(source), str(tmp_path / "out.ipynb"), cwd=str(tmp_path),
                               progress_bar=False, **papermill_kernel())
    assert done.cells[0].outputs[0]["text"] == "ipc None\n"
    assert "without encryption" not in capfd.readouterr().err
