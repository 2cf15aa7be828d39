"""Why a heavy test's third-party install is missing, for its skip reason.

``make third-party`` and ``make ray-check`` install from the package registry; an install
that fails leaves pip's last lines in ``build/third-party/<name>.failed``. A test needing
it skips quoting that record, so a failed install is said, never passed over in silence.
"""

from __future__ import annotations

from pathlib import Path

FAILED = Path(__file__).resolve().parent.parent / "build" / "third-party"


def missing(name: str, how: str) -> str:
    """The skip reason when ``name`` is not there: its failed install, or ``how`` to get it."""
    failed = FAILED / f"{name}.failed"
    if failed.is_file():
        lines = failed.read_text(errors="replace").strip().splitlines() or ["(no output)"]
        return f"installing {name} from the package registry failed: {lines[-1]} (see {failed})"
    return f"{name} is not installed: {how}"
