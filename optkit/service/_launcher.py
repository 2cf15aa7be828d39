"""Start a stack (model server + gateway) as subprocesses, and stop it.

::

    launch_stack(config, repository=DIR)
      ├─ model server  python -m optkit serve model-server --port 0 --port-file F1
      │    wait for F1 (the port it bound), then GET /v2/health/ready == 200
      └─ gateway       python -m optkit serve gateway --upstream http://127.0.0.1:<p1> ...
           wait the same way

With ``pooling.transport: grpc`` the model server is also given ``--grpc-port <g1>`` and
the gateway ``--upstream grpc://127.0.0.1:<g1>``: its upstream calls go over the v2 gRPC
service (``optkit.layers.ChannelPool``), its clients still come over REST (and gRPC if
``server.grpc_port`` is set).
    stack.stop()  SIGTERM each (the server drains in-flight requests), SIGKILL after a bound

Ports are picked by the servers themselves (port 0) and reported through a file,
so concurrent launches never race for a port. Everything binds 127.0.0.1.

How a process starts (``start=``):

    "fork"  (default) forked from a pre-imported server process (multiprocessing's
            forkserver, preloading optkit's serving modules once per lab process): the
            child starts with aiohttp, numpy and optkit already imported, then runs exactly
            what ``optkit serve`` runs. A trial starts two tiers, and importing them was
            ~1 s of CPU of every ~4 s trial (0.4-0.5 s of wall time, both tiers at once).
    "exec"  a fresh ``python -m optkit serve`` (what a user runs; what start-up time
            measurements must use: lab/_startup.py starts its own, always fresh)

Both give the same server: same code path (``optkit.cli.main``), same log file, same
signals (SIGTERM drains, SIGKILL kills), the same exit status (negative: the signal).
A forked child holds the environment of the call that started it, not of the server
process it was forked from. Processes a lab process started and did not stop are stopped
(SIGTERM, then SIGKILL) when it exits: nothing is left behind.
"""

from __future__ import annotations

import atexit
import io
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_forkserver
import multiprocessing.spawn
import multiprocessing.util  # registers its exit hook before ours: ours then runs first
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from .._config import ServiceConfig, load_config
from .._exceptions import LaunchError

__all__ = ["Stack", "ServiceProcess", "launch_stack", "launch_service", "Start"]

#: how a server process starts: forked from pre-imported modules, or a fresh interpreter
Start = Literal["fork", "exec"]
#: what the fork server imports once (everything ``optkit serve`` needs before it reads a
#: config): the CLI imports the service, the layers, the models and the v2 protocol
_PRELOAD = ["optkit.cli"]


def _run_forked(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """The forked child: the same stdio, environment and code as ``python -m optkit ...``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["optkit", *argv]
    # The program ``python -m optkit`` runs, as that command runs it (its modules are already
    # imported here): the launcher starts the CLI as a process either way, never imports it.
    # It ends by SystemExit; multiprocessing's exit then runs its finalizers and passes the
    # status on.
    runpy.run_module("optkit", run_name="__main__", alter_sys=True)


class _Forked:
    """A forked server process with the part of ``subprocess.Popen``'s face the launcher
    and its callers use: pid, poll, wait, send_signal, terminate, kill, returncode."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self.pid = int(process.pid or 0)
        self.args = ["optkit (forked)"]

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _ServerPopen(multiprocessing.popen_forkserver.Popen):
    """multiprocessing's forkserver start, minus one step: the child does not import the
    starting process's ``__main__`` again (a notebook kernel's, a script's, pytest's), which
    a server needs nothing from and which may start things of its own on import."""

    def _launch(self, process_obj: Any) -> None:
        prep = multiprocessing.spawn.get_preparation_data(process_obj._name)
        prep.pop("init_main_from_path", None)
        prep.pop("init_main_from_name", None)
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            multiprocessing.context.reduction.dump(prep, buf)
            multiprocessing.context.reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        self.sentinel, w = multiprocessing.forkserver.connect_to_new_process(self._fds)
        parent_w = os.dup(w)  # the child's sign that this process is alive
        self.finalizer = multiprocessing.util.Finalize(
            self, multiprocessing.util.close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = multiprocessing.forkserver.read_signed(self.sentinel)


class _ServerProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> _ServerPopen:
        return _ServerPopen(process_obj)


_preloaded = False
_running: list[_Forked] = []  # until they exit (pruned at each start)


def _fork(argv: list[str], env: dict[str, str], log_path: Path, name: str) -> _Forked:
    global _preloaded
    if not _preloaded:
        multiprocessing.forkserver.set_forkserver_preload(_PRELOAD)
        atexit.register(_stop_leftovers)
        _preloaded = True
    process = _ServerProcess(target=_run_forked, name=name, args=(argv, env, str(log_path)))
    process.start()
    forked = _Forked(process)
    _running[:] = [p for p in _running if p.poll() is None] + [forked]
    return forked


def _stop_leftovers() -> None:
    """At exit: stop what this process forked and did not stop (multiprocessing would
    otherwise wait for each, forever)."""
    left = [p for p in list(_running) if p.poll() is None]
    for p in left:
        p.terminate()
    deadline = time.monotonic() + 10
    for p in left:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@dataclass
class ServiceProcess:
    """One running server process."""

    name: str
    process: "subprocess.Popen[bytes] | _Forked"
    url: str
    log_path: Path
    #: ``127.0.0.1:PORT`` of its gRPC front end (``server.grpc_port`` set), else None
    grpc_target: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s`` for the drain, then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


@dataclass
class Stack:
    """A running model server and (optionally) gateway; a context manager."""

    config: ServiceConfig
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    workdir: Path | None = None
    remove_workdir: bool = False

    @property
    def model_server_url(self) -> str:
        return self.services["model-server"].url

    @property
    def gateway_url(self) -> str | None:
        gw = self.services.get("gateway")
        return gw.url if gw else None

    @property
    def url(self) -> str:
        """Where clients go: the gateway if there is one, else the model server."""
        return self.gateway_url or self.model_server_url

    @property
    def pids(self) -> dict[str, int]:
        return {name: svc.pid for name, svc in self.services.items()}

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the gateway first (it drains into the model server), then the rest."""
        bound = timeout_s if timeout_s is not None else self.config.server.shutdown_timeout_s + 5
        for name in sorted(self.services, key=lambda n: n != "gateway"):
            self.services[name].stop(bound)
        if self.remove_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        parts = ", ".join(f"{n} pid {s.pid} at {s.url}" for n, s in self.services.items())
        return f"<Stack {self.config.name!r}: {parts}>"


def _wait_ready(svc: ServiceProcess, port_file: Path, deadline: float) -> str:
    while not port_file.exists():
        if svc.process.poll() is not None:
            raise LaunchError(f"{svc.name} exited with {svc.process.returncode}:\n{svc.log_tail()}")
        if time.monotonic() > deadline:
            svc.stop(2)
            raise LaunchError(f"{svc.name} did not bind a port in time:\n{svc.log_tail()}")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{int(port_file.read_text())}"
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    grpc_port_file = port_file.with_suffix(".grpc-port")
                    if grpc_port_file.exists():  # written before the REST port file
                        svc.grpc_target = f"127.0.0.1:{int(grpc_port_file.read_text())}"
                    return url
        except (urllib.error.URLError, OSError):
            pass
        if svc.process.poll() is not None:
            raise LaunchError(f"{svc.name} exited with {svc.process.returncode}:\n{svc.log_tail()}")
        if time.monotonic() > deadline:
            svc.stop(2)
            raise LaunchError(f"{svc.name} at {url} not ready in time:\n{svc.log_tail()}")
        time.sleep(0.05)


def launch_service(kind: str, args: list[str], *, workdir: Path, config_path: Path,
                   ready_timeout_s: float = 30.0, cpus: set[int] | None = None,
                   env: Mapping[str, str] | None = None, port: int = 0,
                   start: Start = "fork") -> ServiceProcess:
    """Start ``optkit serve KIND ...`` and wait until it answers ready.

    ``port`` 0 lets the server pick a free one; a fixed ``port`` is for restarting a
    killed server where its clients (a gateway) still point. ``start``: see the module.
    """
    svc = start_service(kind, args, workdir=workdir, config_path=config_path, cpus=cpus,
                        env=env, port=port, start=start)
    try:
        svc.url = _wait_ready(svc, workdir / f"{kind}.port", time.monotonic() + ready_timeout_s)
    except BaseException:  # never leave a half-launched process behind
        svc.stop(2)
        raise
    return svc


def start_service(kind: str, args: list[str], *, workdir: Path, config_path: Path,
                  cpus: set[int] | None = None, env: Mapping[str, str] | None = None,
                  port: int = 0, start: Start = "fork") -> ServiceProcess:
    """Start ``optkit serve KIND ...`` without waiting (see :func:`launch_service`)."""
    if start not in ("fork", "exec"):
        raise LaunchError(f"start must be 'fork' or 'exec', got {start!r}")
    port_file = workdir / f"{kind}.port"
    log_path = workdir / f"{kind}.log"
    grpc_port_file = workdir / f"{kind}.grpc-port"
    port_file.unlink(missing_ok=True)
    grpc_port_file.unlink(missing_ok=True)
    argv = ["serve", kind, *args, "--port", str(port), "--port-file", str(port_file),
            "--config", str(config_path), "--grpc-port-file", str(grpc_port_file)]
    environment = {**os.environ, **(env or {})}
    proc: Any
    if start == "fork":
        log_path.write_bytes(b"")
        proc = _fork(argv, environment, log_path, f"optkit-{kind}")
    else:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "optkit", *argv], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=environment)
    svc = ServiceProcess(kind, proc, "", log_path)
    if cpus:
        try:
            os.sched_setaffinity(proc.pid, cpus)
        except BaseException:
            svc.stop(2)
            raise
    return svc


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_stack(config: ServiceConfig | str | Path | Mapping[str, Any] | None = None, *,
                 repository: str | Path, gateway: bool = True,
                 cpus: Mapping[str, set[int]] | None = None, ready_timeout_s: float = 30.0,
                 workdir: str | Path | None = None, start: Start = "fork") -> Stack:
    """Start a model server over ``repository`` and, if ``gateway``, a gateway in front.

    Args:
        config: the service config (a ServiceConfig, a YAML path, a mapping, or None
            for the baseline). Both tiers get the same config.
        repository: the model repository folder (build it with ``optkit models build``).
        cpus: optional CPU pinning, e.g. ``{"model-server": {0}, "gateway": {0}}``.
        workdir: where port files and logs go (default: a temporary folder, removed on stop;
            a launch failure carries the end of the failing process's log in its message).
        start: "fork" (from pre-imported modules, the default) or "exec" (a fresh
            interpreter); see the module.

    Raises:
        LaunchError: a process exited or was not ready within ``ready_timeout_s``
            (the message carries the end of its log).
    """
    cfg = load_config(config)
    repo = Path(repository).resolve()
    if not repo.is_dir():
        raise LaunchError(f"model repository {repo} does not exist; run `optkit models build`")
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="optkit-stack-"))
    wd.mkdir(parents=True, exist_ok=True)
    config_path = wd / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    stack = Stack(cfg, workdir=wd, remove_workdir=workdir is None)
    pin = cpus or {}
    try:
        if not gateway:
            stack.services["model-server"] = launch_service(
                "model-server", ["--repository", str(repo)], workdir=wd, config_path=config_path,
                ready_timeout_s=ready_timeout_s, cpus=pin.get("model-server"), start=start)
            return stack
        _launch_pair(stack, repo, wd, config_path, ready_timeout_s, pin, start)
    except BaseException:
        stack.stop(5)
        raise
    return stack


def _launch_pair(stack: Stack, repo: Path, wd: Path, config_path: Path, ready_timeout_s: float,
                 pin: Mapping[str, set[int]], start: Start) -> None:
    """Both tiers started at once (each spends ~0.5 s importing; a trial starts a stack).

    The model server gets a port picked beforehand so the gateway can be told it (and a
    gRPC port, with ``pooling.transport: grpc``); if another process takes that port in
    between, the model server cannot bind, and the pair is started again on a new one
    (at most three times).
    """
    grpc_upstream = stack.config.pooling.transport == "grpc"
    for attempt in range(3):
        port = _free_port()
        server_args, upstream = ["--repository", str(repo)], f"http://127.0.0.1:{port}"
        if grpc_upstream:
            grpc_port = _free_port()
            server_args += ["--grpc-port", str(grpc_port)]
            upstream = f"grpc://127.0.0.1:{grpc_port}"
        server = stack.services["model-server"] = start_service(
            "model-server", server_args, workdir=wd, config_path=config_path,
            cpus=pin.get("model-server"), port=port, start=start)
        gw = stack.services["gateway"] = start_service(
            "gateway", ["--upstream", upstream], workdir=wd,
            config_path=config_path, cpus=pin.get("gateway"), start=start)
        deadline = time.monotonic() + ready_timeout_s
        try:
            server.url = _wait_ready(server, wd / "model-server.port", deadline)
        except LaunchError as exc:
            gw.stop(2)
            if attempt < 2 and any(sign in str(exc).lower() for sign in
                                   ("address already in use", "failed to bind")):
                continue
            raise
        gw.url = _wait_ready(gw, wd / "gateway.port", deadline)
        return
