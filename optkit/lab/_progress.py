"""Progress of a session: a bar in a terminal, plain lines on the terminal from a notebook."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A progress bar in a terminal; inside a notebook kernel, lines on the *terminal*.

    In a kernel (papermill under ``optkit week``, nbmake, JupyterLab) ``sys.stderr`` is the
    notebook's stream, so a bar there ends up in the report as pages of red text. The
    kernel process's original stderr is the terminal that started it: progress goes there,
    one line per trial, and the report stays clean. ipykernel >= 6 also captures file
    descriptor 2 into the notebook (so ``sys.__stderr__`` lands in the report too) and keeps a
    copy of the original, which its ``sys.stderr.fileno()`` returns: that copy is the terminal.
    """
    if not enabled:
        return None
    if sys.stderr is not sys.__stderr__:
        try:
            terminal = sys.stderr.fileno()  # ipykernel: the original stderr, not the capture
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
            terminal = sys.__stderr__.fileno() if sys.__stderr__ is not None else -1
        return _KernelProgress(total, desc, terminal)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="trial", leave=False)


class _KernelProgress:
    """``trial k of n``, the trial just run, elapsed and estimated remaining time."""

    def __init__(self, total: int, desc: str, fd: int) -> None:
        self.total, self.desc, self.fd = total, desc, fd
        self.done, self.note = 0, ""
        self.started = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.done * max(0, self.total - self.done) if self.done else 0.0
        if self.fd >= 0:
            line = (f"  {self.desc}: trial {self.done} of {self.total} {self.note}"
                    f" | {elapsed:.0f} s elapsed, ~{left:.0f} s left\n")
            try:
                os.write(self.fd, line.encode())
            except OSError:  # no terminal behind the kernel: stay silent
                self.fd = -1

    def set_postfix_str(self, note: str) -> None:
        self.note = note

    def close(self) -> None:
        pass
