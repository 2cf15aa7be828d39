"""The kernel a report notebook runs in when papermill executes it (``optkit week``).

::

    optkit week ─ papermill ─ ReportKernelManager ─▶ ipykernel, over IPC (Unix sockets in
                                                     Jupyter's runtime folder, this user's only)

jupyter_client starts kernels over TCP on loopback by default, and ipykernel >= 7 then warns
on the terminal, once per kernel: ``[IPKernelApp] WARNING | Kernel is running over TCP without
encryption``. The papermill process and its kernel are on one machine, so the sockets need
no network at all: over IPC there is no port for anyone else to reach, nothing to encrypt,
and nothing to warn about (the warning is not silenced; its cause is gone).

The kernel's environment is the runner's, minus ``JPY_SESSION_NAME``: a Jupyter server sets it
for a notebook a person runs, and the lab's progress reads it to show a live line in the cell
(``optkit.lab._progress``). A report is run unattended, even when ``optkit week`` itself runs
from a notebook, so its progress stays on the terminal, out of the report.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

__all__ = ["ReportKernelManager", "papermill_kernel"]

#: a Unix socket's path is at most 107 bytes; the suffix ipykernel adds is "-<n>" (n <= 5)
_MAX_SOCKET_PREFIX = 100


class ReportKernelManager(AsyncKernelManager):
    """``AsyncKernelManager`` (what papermill's nbclient uses) over IPC, unattended."""

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    @default("ip")
    def _default_ip(self) -> str:
        # An absolute prefix: the kernel's working directory (the notebook's) is not ours.
        from jupyter_core.paths import jupyter_runtime_dir

        name = f"optkit-kernel-{uuid.uuid4().hex[:12]}-ipc"
        for folder in (jupyter_runtime_dir(), tempfile.gettempdir()):
            prefix = str(Path(folder) / name)
            if len(prefix.encode()) <= _MAX_SOCKET_PREFIX:
                Path(folder).mkdir(mode=0o700, parents=True, exist_ok=True)
                return prefix
        raise OSError(f"no folder with a path short enough for a Unix socket: {folder}")

    async def _async_pre_start_kernel(self, **kw: Any) -> Any:
        env = dict(kw.get("env") or os.environ)
        env.pop("JPY_SESSION_NAME", None)  # not a notebook a person runs: see the module
        kw["env"] = env
        return await super()._async_pre_start_kernel(**kw)


def papermill_kernel() -> dict[str, Any]:
    """Keyword arguments for ``papermill.execute_notebook``: the kernel runs as above."""
    return {"kernel_name": "python3", "kernel_manager_class": ReportKernelManager}
