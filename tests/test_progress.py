"""Where a session's progress goes (optkit/lab/_progress.py): the cell a person runs in
JupyterLab (one line replaced in place, emptied at the end), the terminal behind an
unattended kernel (papermill, optkit week, nbmake), or a tqdm bar. The real thing in
JupyterLab and Chromium is tests/test_jupyterlab.py (heavy)."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import pytest

from optkit.lab import _progress
from optkit.lab._progress import progress_bar, progress_target


class FakeHandle:
    """A display's handle as IPython returns it; records what the front end would show."""

    def __init__(self, shown: list) -> None:
        self.shown = shown

    def update(self, bundle: dict, raw: bool = False) -> None:
        assert raw
        self.shown.append(bundle)


class FakeEvents:
    def __init__(self) -> None:
        self.callbacks: list = []

    def register(self, event: str, callback: Any) -> None:
        assert event == "post_run_cell"
        self.callbacks.append(callback)

    def unregister(self, event: str, callback: Any) -> None:
        self.callbacks.remove(callback)


class NotebookStream(io.StringIO):
    """ipykernel's ``sys.stderr``: text goes to the notebook; ``fileno()`` is the terminal's."""

    terminal = -1

    def fileno(self) -> int:
        if self.terminal < 0:
            raise io.UnsupportedOperation("fileno")
        return self.terminal


def in_a_kernel(monkeypatch: pytest.MonkeyPatch) -> NotebookStream:
    """``sys.stderr`` is the notebook's stream, not the process's own (as in a kernel).
    Called in the test's body: pytest sets its own ``sys.stderr`` when the test starts."""
    stream = NotebookStream()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("OPTKIT_PROGRESS", raising=False)
    return stream


@pytest.fixture
def front_end(monkeypatch: pytest.MonkeyPatch) -> dict:
    """IPython's ``display`` and shell replaced by fakes: what the cell would show."""
    import IPython
    import IPython.display

    seen: dict = {"shown": [], "events": FakeEvents()}

    def display(bundle: dict, raw: bool = False, display_id: bool = False) -> FakeHandle:
        assert raw and display_id is True
        seen["shown"].append(bundle)
        return FakeHandle(seen["shown"])

    shell = type("Shell", (), {"events": seen["events"]})()
    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    return seen


def test_where_progress_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel a Jupyter server started for a notebook shows it in the cell; one papermill
    or nbclient started writes it to its terminal; OPTKIT_PROGRESS decides over both."""
    in_a_kernel(monkeypatch)
    assert progress_target() == "kernel-terminal"
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/01-connection-pooling.ipynb")
    assert progress_target() == "notebook"
    monkeypatch.setenv("OPTKIT_PROGRESS", "terminal")
    assert progress_target() == "kernel-terminal"
    monkeypatch.delenv("JPY_SESSION_NAME")
    monkeypatch.setenv("OPTKIT_PROGRESS", "notebook")
    assert progress_target() == "notebook"
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    assert progress_target() == "terminal"
    assert progress_bar(4, False, "a vs b") is None


def test_the_cell_shows_one_line_updated_in_place_then_nothing(
        front_end: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial k of n (the one running), its load, pair and arm, elapsed and left, as plain
    text and HTML with a bar; close() leaves an empty text: nothing of it stays in the notebook."""
    stream = in_a_kernel(monkeypatch)
    monkeypatch.setenv("JPY_SESSION_NAME", "x.ipynb")
    clock = iter([0.0, 0.0, 10.0, 10.0, 20.0, 20.0, 20.0])
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: next(clock))
    bar = progress_bar(4, True, "baseline vs pooling")
    bar.set_postfix_str("(closed:32, pair 1, B: pooling)")
    bar.update(1)
    bar.set_postfix_str("(closed:32, pair 1, A: baseline)")
    shown = front_end["shown"]
    assert shown[0]["text/plain"] == "baseline vs pooling: trial 1 of 4 | 0 s elapsed"
    assert shown[1]["text/plain"] == ("baseline vs pooling: trial 1 of 4 (closed:32, pair 1, "
                                      "B: pooling) | 10 s elapsed")
    assert shown[-1]["text/plain"] == ("baseline vs pooling: trial 2 of 4 (closed:32, pair 1, "
                                       "A: baseline) | 20 s elapsed, ~60 s left")
    assert '<progress value="1" max="4"' in shown[-1]["text/html"]
    assert 'class="optkit-progress"' in shown[-1]["text/html"]
    bar.close()
    assert shown[-1] == {"text/plain": ""}
    bar.close()  # once is enough
    assert shown[-1] == {"text/plain": ""} and shown[-2]["text/plain"]
    assert stream.getvalue() == ""  # nothing on the notebook's stderr either


def test_the_line_goes_when_the_cell_ends_however_it_ended(
        front_end: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that raised (or was interrupted) never closed its bar: the cell's end does."""
    in_a_kernel(monkeypatch)
    monkeypatch.setenv("JPY_SESSION_NAME", "x.ipynb")
    bar = progress_bar(2, True, "a vs b")
    bar.update(1)
    events = front_end["events"]
    assert len(events.callbacks) == 1
    events.callbacks[0](None)  # IPython's post_run_cell
    assert front_end["shown"][-1] == {"text/plain": ""} and events.callbacks == []
    assert bar.closed


def test_an_unattended_kernel_writes_lines_to_its_terminal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """papermill / optkit week: a line per trial to the kernel's original stderr, none into
    the notebook's stream."""
    stream = in_a_kernel(monkeypatch)
    read, write = os.pipe()
    stream.terminal = write
    bar = progress_bar(2, True, "a vs b")
    bar.set_postfix_str("(closed:32, pair 1, A: a)")
    bar.update(1)
    bar.close()
    os.close(write)
    with os.fdopen(read) as terminal:
        line = terminal.read()
    assert line.startswith("  a vs b: trial 1 of 2 (closed:32, pair 1, A: a) | ")
    assert line.endswith(" s left\n") and stream.getvalue() == ""
