"""Start-up time of a model server: how soon it is live, ready, and answering a model.

::

    t=0  spawn `optkit serve model-server --port 0`   (a fresh process)
         ├─ port     the port file appears (it bound its socket)
         ├─ live     GET /v2/health/live  == 200
         ├─ ready    GET /v2/health/ready == 200       (the models in loading.models)
         └─ first    POST /v2/models/<model>/infer == 200, one zero row

With synchronous loading the server binds only after every configured model has
loaded, so all four times are the whole load; with background loading it is
live at once and answers ``model`` as soon as *that* model is loaded (and
warmed up), whatever else is still loading. Each phase is polled every
``poll_s`` and bounded by ``timeout_s``; the process is always stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .._config import load_config
from .._exceptions import LaunchError

__all__ = ["startup_time"]


def _get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read(1024 * 1024)
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""
    except (OSError, urllib.error.URLError):
        return 0, b""


def _post(url: str, body: bytes, timeout: float = 2.0) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return 0


def _zero_request(metadata: dict[str, Any]) -> bytes:
    """One row of zeros for every input the metadata lists (``-1`` dimensions -> 1)."""
    inputs = []
    for spec in metadata.get("inputs") or []:
        shape = [1 if int(d) < 0 else int(d) for d in spec["shape"]]
        count = 1
        for d in shape:
            count *= d
        value: Any = False if spec["datatype"] == "BOOL" else 0
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"],
                       "data": [value] * count})
    return json.dumps({"inputs": inputs}).encode()


def startup_time(config: Any, *, repository: str | Path, model: str, timeout_s: float = 60.0,
                 poll_s: float = 0.01) -> dict[str, float | None]:
    """Seconds from spawning a model server to: port bound, live, ready, first answer of ``model``.

    Returns ``{"port_s", "live_s", "ready_s", "first_answer_s"}``; a phase not reached
    within ``timeout_s`` raises :class:`LaunchError` (with the end of the server's log).
    """
    cfg = load_config(config)
    with tempfile.TemporaryDirectory(prefix="optkit-startup-") as tmp:
        wd = Path(tmp)
        config_path, port_file, log_path = wd / "config.yaml", wd / "port", wd / "server.log"
        config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        cmd = [sys.executable, "-m", "optkit", "serve", "model-server", "--repository",
               str(Path(repository).resolve()), "--port", "0", "--port-file", str(port_file),
               "--config", str(config_path)]
        out: dict[str, float | None] = {"port_s": None, "live_s": None, "ready_s": None,
                                        "first_answer_s": None}
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=dict(os.environ))
        try:
            def wait(phase: str, check: Any) -> None:
                while not check():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = log_path.read_text(errors="replace")[-2000:]
                        raise LaunchError(f"model server never reached {phase!r} "
                                          f"(exit {proc.poll()}):\n{tail}")
                    time.sleep(poll_s)
                out[f"{phase}_s"] = time.perf_counter() - started

            wait("port", port_file.exists)
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            wait("live", lambda: _get(url + "/v2/health/live")[0] == 200)
            body: list[bytes] = []

            def answered() -> bool:
                if not body:
                    status, doc = _get(f"{url}/v2/models/{model}")
                    if status != 200:
                        return False
                    body.append(_zero_request(json.loads(doc)))
                return _post(f"{url}/v2/models/{model}/infer", body[0]) == 200

            # the first answer is polled before readiness: in background mode it may come
            # first (its model is ready while others still load)
            wait("first_answer", answered)
            wait("ready", lambda: _get(url + "/v2/health/ready")[0] == 200)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return out
