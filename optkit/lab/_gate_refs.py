"""Two git refs of one project as two checkouts, each set up once, ready to be arms.

::

    git rev-parse --verify BASE^{commit}  HEAD^{commit}      a bad ref stops here (exit 2)
    git worktree add --detach <work>/base <sha>            one checkout per side, even when
    git worktree add --detach <work>/head <sha>            both refs are one commit (A/A)
    setup commands in each checkout, once, each bounded    (a venv, an install, models)
    ... the session runs ...
    git worktree remove --force (both), the folder too     whatever happened

Every git call and every setup command is bounded (``timeout_s``) and its output kept in
``<work>/<side>-setup.log``; a failure raises :class:`GateError` naming the side, the command
and the log's tail.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .._exceptions import OptkitError

__all__ = ["GateError", "Checkout", "resolve_ref", "checkouts"]

GIT_TIMEOUT_S = 120.0


class GateError(OptkitError):
    """The gate could not do its job (a bad ref, a setup that failed): exit 2, no verdict."""


@dataclass(frozen=True)
class Checkout:
    """One side's checkout: ``side`` (base/head), the ``ref`` asked for, its ``commit``."""

    side: str
    ref: str
    commit: str
    path: Path
    subject: str = ""
    setup_s: float = 0.0

    @property
    def label(self) -> str:
        """``base@1a2b3c4``: how tables and the summary name the arm."""
        return f"{self.side}@{self.commit[:7]}"


def _git(repo: Path, *args: str, timeout_s: float = GIT_TIMEOUT_S) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise GateError("git is not installed (comparing refs needs it)") from None
    except subprocess.TimeoutExpired:
        raise GateError(f"git {shlex.join(args)} did not finish within {timeout_s:g} s") from None
    if proc.returncode != 0:
        raise GateError(f"git {shlex.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def resolve_ref(repo: str | Path, ref: str) -> tuple[str, str]:
    """(commit, subject) of ``ref`` in ``repo``; a GateError naming it if it is no commit."""
    root = Path(repo)
    if not root.is_dir():
        raise GateError(f"repository {root} is not a folder")
    _git(root, "rev-parse", "--git-dir")  # not a repository: git says so
    if not ref or ref.startswith("-"):
        raise GateError(f"{ref!r} is not a git ref")
    try:
        commit = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except GateError:
        raise GateError(f"{ref!r} is not a commit in {root} (a shallow clone? fetch the base "
                        f"branch, e.g. `git fetch origin main`, or use fetch-depth: 0)") from None
    return commit, _git(root, "log", "-1", "--format=%s", commit)


def _run_setup(checkout: Checkout, commands: Sequence[Sequence[str]], log_path: Path,
               timeout_s: float) -> None:
    with log_path.open("w") as log:
        for command in commands:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            try:
                proc = subprocess.run(list(command), cwd=checkout.path, stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      timeout=timeout_s, check=False)
            except FileNotFoundError:
                raise GateError(f"{checkout.side} setup: {command[0]!r} not found") from None
            except subprocess.TimeoutExpired:
                raise GateError(f"{checkout.side} setup: {shlex.join(command)} did not finish "
                                f"within {timeout_s:g} s (log {log_path})") from None
            if proc.returncode != 0:
                log.flush()
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-12:])
                raise GateError(f"{checkout.side} setup: {shlex.join(command)} exited with "
                                f"code {proc.returncode} (log {log_path}):\n{tail}")


@contextlib.contextmanager
def checkouts(repo: str | Path, base: str, head: str, *,
              setup: Callable[[Path], Sequence[Sequence[str]]] | None = None,
              setup_timeout_s: float = 900.0, work_dir: str | Path | None = None,
              keep: bool = False, log_dir: str | Path | None = None,
              log: Callable[[str], None] | None = None
              ) -> Iterator[tuple[Checkout, Checkout]]:
    """Check ``base`` and ``head`` out into their own worktrees and set each up once.

    Args:
        repo: the project's git repository.
        base, head: any refs git resolves (branch, tag, sha, ``origin/main``, ``HEAD~1``).
        setup: checkout folder -> the commands to run there once (``GateSpec.setup_commands``).
        work_dir: where the checkouts go (default: a new temporary folder).
        keep: leave the checkouts in place after (to look at them).
        log_dir: where each side's ``<side>-setup.log`` goes (default: ``work_dir``).
    """
    root = Path(repo).resolve()
    resolved = [(side, ref, *resolve_ref(root, ref)) for side, ref in (("base", base),
                                                                         ("head", head))]
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="optkit-gate-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = Path(log_dir) if log_dir else work
    logs.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    try:
        sides = []
        for side, ref, commit, subject in resolved:
            path = work / side
            if path.exists():
                raise GateError(f"{path} exists: pass an empty --work-dir")
            _git(root, "worktree", "add", "--detach", str(path), commit)
            made.append(path)
            sides.append(Checkout(side, ref, commit, path, subject))
        done = []
        for checkout in sides:
            commands = setup(checkout.path) if setup else []
            started = time.perf_counter()
            if commands and log:
                log(f"{checkout.label}: setting up ({len(commands)} command(s), log "
                    f"{logs / f'{checkout.side}-setup.log'})")
            _run_setup(checkout, commands, logs / f"{checkout.side}-setup.log", setup_timeout_s)
            done.append(Checkout(checkout.side, checkout.ref, checkout.commit, checkout.path,
                                 checkout.subject, time.perf_counter() - started))
        yield done[0], done[1]
    finally:
        if not keep:
            for path in made:
                with contextlib.suppress(GateError):
                    _git(root, "worktree", "remove", "--force", str(path))
                shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(GateError):
                _git(root, "worktree", "prune")
            if not work_dir:
                shutil.rmtree(work, ignore_errors=True)
