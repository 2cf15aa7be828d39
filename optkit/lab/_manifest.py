"""The environment manifest: what a trial ran on, recorded next to what it measured.

Python and key package versions, CPU model and cores (and the CPUs this process
may use), memory, load average, the git commit of optkit's code and whether the working tree
was dirty (asked of git, once per session), and whatever the caller adds (config, seed).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

__all__ = ["environment_manifest", "git_commit", "git_state"]

_PACKAGES = ("optkit", "aiohttp", "uvloop", "numpy", "orjson", "scikit-learn", "pandas",
             "pyarrow", "psutil", "scipy")


def git_state(start: str | Path | None = None) -> dict[str, Any]:
    """The commit of the repository holding ``start`` (default: optkit's own code) and whether
    its working tree differs from it, asked of git itself.

    Returns ``{"commit": <40 hex digits>, "dirty": bool}``; both ``None`` where there is no git
    or no repository (an installed package). A measurement taken on a dirty tree did not
    measure that commit: the manifest says so. A session asks once and hands the answer to
    each of its trials (``run_trial(git=...)``), so every trial records the same state.
    """
    folder = Path(start or __file__).resolve()
    folder = folder if folder.is_dir() else folder.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def git_commit(start: str | Path | None = None) -> str | None:
    """The commit checked out where ``start`` lies (None without git or a repository)."""
    return git_state(start)["commit"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_manifest(*, git: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A JSON-ready record of the machine and software; ``extra`` is merged in.

    ``git``: the session's :func:`git_state` (asked here when not given).
    """
    git = git_state() if git is None else git
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    manifest: dict[str, Any] = {
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "platform": platform.platform(), "packages": versions,
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": git.get("commit"), "git_dirty": git.get("dirty"),
    }
    try:
        import psutil

        manifest["memory_total_mb"] = round(psutil.virtual_memory().total / 2**20)
    except ImportError:  # pragma: no cover - psutil is a dependency
        manifest["memory_total_mb"] = None
    manifest.update(extra)
    return manifest
