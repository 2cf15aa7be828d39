"""Progress of a session, shown where the person running it is looking.

::

    where the session runs                    where its progress goes
    a terminal (optkit compare, calibrate)    a tqdm bar on stderr
    a notebook a person runs (JupyterLab)     one line in the running cell, updated in place
                                              (display_id), emptied when the session ends
    a notebook run unattended (papermill,     one line per trial on the kernel's terminal
      optkit week, nbmake)                    (the report stays clean)

A notebook a person runs is one whose kernel a Jupyter server started for a notebook
session: jupyter_server gives such a kernel ``JPY_SESSION_NAME`` (the notebook's path);
papermill and nbclient, which run reports, do not (and ``optkit week`` takes it out of the
environment of the kernels it starts, should it itself run inside a notebook).
``OPTKIT_PROGRESS=notebook`` or ``=terminal`` decides instead.
"""

from __future__ import annotations

import html
import os
import sys
import time
from typing import Any

__all__ = ["progress_bar", "progress_target"]

#: the environment variable that overrides where a kernel's progress goes
PROGRESS_ENV = "OPTKIT_PROGRESS"
#: what the cell's progress line is replaced with when the session ends
EMPTY = {"text/plain": ""}


def progress_target() -> str:
    """Where a session's progress goes from here: ``"terminal"`` (a process on a terminal,
    tqdm), ``"notebook"`` (the cell a person is running) or ``"kernel-terminal"`` (the
    terminal behind a kernel that runs unattended)."""
    if sys.stderr is sys.__stderr__:
        return "terminal"
    chosen = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if chosen in ("notebook", "terminal"):
        return "notebook" if chosen == "notebook" else "kernel-terminal"
    return "notebook" if os.environ.get("JPY_SESSION_NAME") else "kernel-terminal"


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A progress object with tqdm's ``update``, ``set_postfix_str``, ``total`` and ``close``.

    In a terminal, a tqdm bar. In a kernel (``sys.stderr`` is the notebook's stream), a bar
    there would end up in the report as pages of red text: a notebook a person runs gets one
    line in the running cell, updated in place and emptied by ``close()``; an unattended one
    writes a line per trial to the kernel's original stderr, the terminal that started it.
    ipykernel >= 6 also captures file descriptor 2 into the notebook (so ``sys.__stderr__``
    lands in the report too) and keeps a copy of the original, which its
    ``sys.stderr.fileno()`` returns: that copy is the terminal.
    """
    if not enabled:
        return None
    target = progress_target()
    if target == "notebook":
        return _CellProgress(total, desc)
    if target == "kernel-terminal":
        try:
            terminal = sys.stderr.fileno()  # ipykernel: the original stderr, not the capture
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
            terminal = sys.__stderr__.fileno() if sys.__stderr__ is not None else -1
        return _KernelProgress(total, desc, terminal)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="trial", leave=False)


class _Progress:
    """``trial k of n``, the trial running or just run, elapsed and estimated remaining time."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc = total, desc
        self.done, self.note = 0, ""
        self.started = time.perf_counter()

    def times(self) -> tuple[float, float]:
        """Seconds elapsed, and the estimate of those left (from the mean trial so far)."""
        elapsed = time.perf_counter() - self.started
        return elapsed, elapsed / self.done * max(0, self.total - self.done) if self.done else 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        self.show()

    def set_postfix_str(self, note: str) -> None:
        self.note = note

    def show(self) -> None:
        """Put the current state where it is shown."""

    def close(self) -> None:
        pass


class _KernelProgress(_Progress):
    """A line per trial run, on the terminal behind an unattended kernel."""

    def __init__(self, total: int, desc: str, fd: int) -> None:
        super().__init__(total, desc)
        self.fd = fd

    def show(self) -> None:
        if self.fd < 0:
            return
        elapsed, left = self.times()
        line = (f"  {self.desc}: trial {self.done} of {self.total} {self.note}"
                f" | {elapsed:.0f} s elapsed, ~{left:.0f} s left\n")
        try:
            os.write(self.fd, line.encode())
        except OSError:  # no terminal behind the kernel: stay silent
            self.fd = -1


class _CellProgress(_Progress):
    """One line in the cell a person is running, replaced at each trial and emptied at the end.

    The line is a display with an id (IPython's ``display_id``): each change replaces it
    in place, and ``close()`` replaces it with an empty text, so the saved notebook and any
    export of it hold nothing of it (a front end has no way to remove one output of a cell).
    The cell's end closes it too, however the cell ended (an exception, the person's
    interrupt). The trial shown is the one running now.
    """

    def __init__(self, total: int, desc: str) -> None:
        super().__init__(total, desc)
        from IPython import get_ipython
        from IPython.display import display

        self.closed = False
        self.handle = display(self.bundle(), raw=True, display_id=True)
        self.shell = get_ipython()
        if self.shell is not None:
            self.shell.events.register("post_run_cell", self._cell_ended)

    def set_postfix_str(self, note: str) -> None:
        self.note = note
        self.show()

    def text(self) -> str:
        """The line as plain text."""
        elapsed, left = self.times()
        running = min(self.done + 1, self.total)
        eta = f", ~{left:.0f} s left" if self.done else ""
        return (f"{self.desc}: trial {running} of {self.total} {self.note}".rstrip()
                + f" | {elapsed:.0f} s elapsed{eta}")

    def bundle(self) -> dict[str, str]:
        """The line as a display bundle: plain text, and HTML with a bar for the browser."""
        line = self.text()
        bar = (f'<progress value="{self.done}" max="{max(self.total, 1)}" '
               f'style="width:8em;vertical-align:middle"></progress> ')
        style = ("font-family:var(--jp-code-font-family,monospace);"
                 "font-size:var(--jp-code-font-size,13px)")
        return {"text/plain": line,
                "text/html": f'<div class="optkit-progress" style="{style}">{bar}'
                             f'{html.escape(line)}</div>'}

    def show(self) -> None:
        if self.handle is not None and not self.closed:
            self.handle.update(self.bundle(), raw=True)

    def close(self) -> None:
        if self.handle is not None and not self.closed:
            self.closed = True
            # nothing of it stays in the saved notebook: an empty text (an empty bundle is
            # no better, and exporters warn that they cannot represent it)
            self.handle.update(EMPTY, raw=True)

    def _cell_ended(self, result: Any = None) -> None:
        self.close()
        if self.shell is not None:
            self.shell.events.unregister("post_run_cell", self._cell_ended)
