"""The environment manifest: what a trial ran on, recorded next to what it measured.

Python and key package versions, CPU model and cores (and the CPUs this process
may use), memory, load average, the git commit of the working tree (read from
``.git`` files, without running git), and whatever the caller adds (config, seed).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["environment_manifest", "git_commit"]

_PACKAGES = ("optkit", "aiohttp", "uvloop", "numpy", "orjson", "scikit-learn", "pandas",
             "pyarrow", "psutil", "scipy")


def git_commit(start: str | Path | None = None) -> str | None:
    """The commit checked out in the repository containing ``start`` (None if not found)."""
    here = Path(start or __file__).resolve()
    for folder in (here, *here.parents):
        git = folder / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            text = git.read_text().strip()
            if text.startswith("gitdir:"):
                git = (folder / text[7:].strip()).resolve()
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
        except OSError:
            return None
        if not head.startswith("ref:"):
            return head
        ref = head[4:].strip()
        common = git
        if (git / "commondir").exists():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).exists():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
        return None
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_manifest(**extra: Any) -> dict[str, Any]:
    """A JSON-ready record of the machine and software; ``extra`` is merged in."""
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
        "git_commit": git_commit(),
    }
    try:
        import psutil

        manifest["memory_total_mb"] = round(psutil.virtual_memory().total / 2**20)
    except ImportError:  # pragma: no cover - psutil is a dependency
        manifest["memory_total_mb"] = None
    manifest.update(extra)
    return manifest
