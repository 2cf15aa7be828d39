"""External arms for ``optkit compare``: a service started by a command, or a fixed URL.

An arm is what one side of a paired session measures. Besides an optkit config (the
reference stack, launched fresh per trial), an arm file may describe any v2 service::

    kind: command                              kind: url
    name: mlserver                             name: shared-server
    command: [mlserver, start, .]              url: http://127.0.0.1:8080
    cwd: mlserver-settings                     ready_url: ...      (default url + /v2/health/ready)
    url: http://127.0.0.1:{port}
    ready_url: http://127.0.0.1:{port}/v2/health/ready   (default url + /v2/health/ready)
    env: {MLSERVER_HTTP_PORT: "{port}"}
    startup_timeout_s: 60
    stop_timeout_s: 10

``gateway: CONFIG`` (an optkit config file, relative to the arm file, or the config inline)
puts optkit's gateway in front of either kind, with that config's layers: the trial measures
the gateway's URL, the upstream is the service above (``optkit serve gateway --upstream``).

``fronted: OTHER.yaml`` (another arm file, relative to this one) names the setting of the same
server that should sit behind optkit's gateway when this one is measured alone: notebook 06 and
``optkit week --service`` compare this arm alone against OTHER behind the gateway (a server that
batches on its own serves best behind a gateway that merges with its batching off).
``optkit compare`` measures the arm itself and ignores the key.

``command`` starts fresh for every trial, in its own process group, with its output in
``service.log`` of the trial folder; it is ready when ``ready_url`` answers 200 (bounded by
``startup_timeout_s``) and is stopped after the trial (SIGTERM to the group, SIGKILL after
``stop_timeout_s``). ``{port}`` anywhere in ``command``, ``url``, ``ready_url`` or ``env``
is a free loopback port picked per start, so two trials never race for one; ``{grpc_port}``
is a second one, for a service's gRPC front end.

**Over gRPC.** ``url: grpc://127.0.0.1:{grpc_port}`` makes the trials' load go to the v2 gRPC
service (``GRPCInferenceService``, the built-in engine; wrk speaks HTTP only)::

    kind: command
    command: [optkit, serve, model-server, ..., --port, "{port}", --grpc-port, "{grpc_port}"]
    url: grpc://127.0.0.1:{grpc_port}
    ready_url: http://127.0.0.1:{port}/v2/models/digits-sklearn/ready   (or grpc://...: its
                                            ServerReady; the default for a gRPC url is the url)

When ``ready_url`` is HTTP, its origin (``http://127.0.0.1:{port}``) is the service's REST side,
where a trial reads its Triton statistics (the breakdown); a gRPC-only service gives none.
optkit's model server serves gRPC from one process: a command with ``--grpc-port`` and
``--workers`` > 1 is refused when the arm is loaded. A ``url`` arm is
never restarted: its trials share one process and are *not independent* (state, caches and
memory carry over), which the results say. Relative ``cwd`` is taken from the arm file's
folder. Only loopback URLs are accepted, like ``optkit bench``. :func:`preflight` finds,
before a session's first trial, what would make every trial fail (no model repository, a
missing program, a URL that does not answer).

``parameters: {NAME: DEFAULT, ...}`` declares a command arm's own placeholders: ``{NAME}`` in
``command``, ``env``, ``url`` or ``ready_url`` is rendered with the arm's value at every start
(the default, or a candidate's when ``optkit tune`` searches ``arm.NAME``). An undeclared
placeholder, a parameter without a default and one no placeholder uses are errors when the
file loads (``optkit.lab._arm_params``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

from .._config import load_config
from .._exceptions import BenchError, ConfigError, LaunchError, OptkitError
from .._schema import Document, read_mapping
from ..bench import Workload
from ..bench._target import parse_target
from ._arm_params import RESERVED, check_parameters, render

__all__ = ["ExternalArm", "ExternalStack", "load_arm", "is_arm", "preflight"]

_KEYS = {"kind", "name", "command", "url", "ready_url", "env", "cwd", "startup_timeout_s",
         "stop_timeout_s", "description", "gateway", "fronted", "parameters"}
_KINDS = ("command", "url")
#: the per-start port placeholders: the service's (REST) port, and a second for its gRPC
_PLACEHOLDERS = tuple(f"{{{name}}}" for name in RESERVED)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(n: int) -> list[str]:
    """``n`` distinct free loopback ports (held open together, so never the same one twice)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [str(sock.getsockname()[1]) for sock in socks]



@dataclass(frozen=True)
class ExternalStack:
    """What a trial measures on an external arm (the shape ``run_trial`` reads)."""

    url: str
    pids: dict[str, int] = field(default_factory=dict)
    log_path: Path | None = None
    model_server_url: str | None = None  # not optkit's: no /stats, no churn
    gateway_url: str | None = None
    #: the service itself when optkit's gateway is in front of it (``url`` is the gateway's)
    upstream_url: str | None = None
    #: the service's REST side when its url is gRPC (its statistics are read there), or None
    stats_url: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExternalArm:
    """One external arm, checked when loaded (see the module docstring for the keys)."""

    kind: str
    name: str
    url: str
    command: tuple[str, ...] = ()
    ready_url: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    startup_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0
    description: str = ""
    #: an optkit service config (plain data) for a gateway in front of the service, or None
    gateway: Mapping[str, Any] | None = None
    #: ``fronted:``, the arm file (absolute) of the setting to put behind the gateway, or None
    fronted: str | None = None
    #: ``parameters:``, the arm's own placeholders and their values (the defaults, or a
    #: candidate's): rendered into command, env, url and ready_url at every start
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, base: Path | None = None,
                  name: str = "external") -> "ExternalArm":
        """Build from plain data; an unknown key or a bad value is named in a ConfigError."""
        name = doc.get("name", name) if isinstance(doc, Mapping) else name
        fields = Document(doc, where=f"arm {name!r}", known=_KEYS)
        kind = fields.choice("kind", _KINDS)
        kw: dict[str, Any] = {"kind": kind, "name": fields.text("name", name),
                              "url": fields.text("url")}
        if kind == "command":
            kw["command"] = fields.strings("command", split=shlex.split)
            if "cwd" in fields:
                path = Path(fields.text("cwd"))
                kw["cwd"] = str(path if path.is_absolute() or base is None else base / path)
            env = fields.mapping("env", {}) or {}
            if not all(isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool)
                       for k, v in env.items()):
                raise fields.fail("env", "a mapping of names to strings", env)
            kw["env"] = {k: str(v) for k, v in env.items()}
            for key in ("startup_timeout_s", "stop_timeout_s"):
                if key in fields:
                    kw[key] = fields.number(key)
        else:
            extra = {"command", "cwd", "env", "startup_timeout_s", "stop_timeout_s",
                     "parameters"} & set(doc)
            if extra:
                raise ConfigError(f"{fields.where}: a url arm is never started; drop "
                                  f"{', '.join(sorted(extra))}")
            for placeholder in _PLACEHOLDERS:
                if placeholder in kw["url"]:
                    raise ConfigError(f"{fields.where}: a url arm needs a fixed port, not "
                                      f"{placeholder}")
        grpc_url = kw["url"].startswith("grpc://")
        kw["ready_url"] = fields.text(
            "ready_url", kw["url"] if grpc_url else kw["url"].rstrip("/") + "/v2/health/ready")
        kw["parameters"] = check_parameters(
            fields.get("parameters", None), [
                *((f"command[{i}]", c) for i, c in enumerate(kw.get("command", ()))),
                *((f"env.{k}", v) for k, v in kw.get("env", {}).items()),
                ("url", kw["url"]), ("ready_url", kw["ready_url"])], where=fields.where)
        if fields.get("description", None) is not None:
            kw["description"] = fields.text("description")
        if fields.get("gateway", None) is not None:
            kw["gateway"] = _gateway_config(doc["gateway"], base)
        if fields.get("fronted", None) is not None:
            path = Path(fields.text("fronted"))
            path = path if path.is_absolute() or base is None else base / path
            if not path.is_file():
                raise ConfigError(f"{fields.where}: fronted: {path} is not a file (an arm file "
                                  f"of the setting to put behind the gateway)")
            kw["fronted"] = str(path.resolve())
        arm = cls(**kw)
        probe = {"port": 1, "grpc_port": 2, **arm.parameters}
        arm._check_urls(render(arm.url, probe), render(arm.ready_url, probe))
        arm._check_grpc()
        return arm

    @property
    def transport(self) -> str:
        """How the trials' load reaches the arm: "grpc" when it goes to a ``grpc://`` url, else
        "http" (also with optkit's gateway in front: the gateway takes REST, and calls a gRPC
        url as its upstream over gRPC)."""
        return "grpc" if self.url.startswith("grpc://") and self.gateway is None else "http"

    def _check_grpc(self) -> None:
        """What cannot work over gRPC, said when the arm is loaded."""
        where = f"arm {self.name!r}"
        if self.kind != "command" or "--grpc-port" not in self.command:
            return
        command = list(self.command)
        if "model-server" in command and "serve" in command:
            workers = next((command[i + 1] for i, c in enumerate(command[:-1])
                            if c == "--workers"), None)
            workers = workers or next((c.split("=", 1)[1] for c in command
                                       if c.startswith("--workers=")), "1")
            if workers.isdigit() and int(workers) > 1:
                raise ConfigError(f"{where}: optkit's model server serves gRPC from one process; "
                                  f"--grpc-port with --workers {workers} cannot start (use "
                                  f"--workers 1, or REST for {workers} workers)")

    def _check_urls(self, *urls: str) -> None:
        for url in urls:
            try:
                parse_target(url)
            except BenchError as exc:
                raise ConfigError(f"arm {self.name!r}: {exc}") from None

    def replace(self, **changes: Any) -> "ExternalArm":
        """A copy with ``changes`` (``name=...`` when both arms share a name)."""
        return dataclasses.replace(self, **changes)

    def behind_gateway(self, config: Any, *, name: str | None = None) -> "ExternalArm":
        """This service with optkit's gateway in front, configured by ``config`` (an optkit
        config: a path, a mapping or a ServiceConfig); named ``<name>+<config's name>``."""
        cfg = load_config(config)
        return dataclasses.replace(self, gateway=cfg.to_dict(), fronted=None,
                                   name=name or f"{self.name}+{cfg.name}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for result files."""
        doc = dataclasses.asdict(self)
        doc["command"], doc["env"] = list(self.command), dict(self.env)
        doc["parameters"] = dict(self.parameters)
        for key in ("gateway", "fronted"):
            if doc[key] is None:
                del doc[key]
        if not doc["parameters"]:
            del doc["parameters"]
        return doc

    @property
    def independent(self) -> bool:
        """False for a url arm: every trial hits the same long-running process."""
        return self.kind == "command"

    def preflight(self) -> None:
        """Cheap checks before the first trial: the program exists, the URL answers."""
        where = f"arm {self.name!r}"
        if self.kind == "command":
            if self.cwd is not None and not Path(self.cwd).is_dir():
                raise ConfigError(f"{where}: cwd {self.cwd} is not a folder")
            program = self.command[0]
            found = shutil.which(program, path=self.env.get("PATH", os.environ.get("PATH")))
            if found is None and not (Path(self.cwd or ".") / program).is_file():
                raise ConfigError(f"{where}: command {program!r} is not found on PATH")
            return
        status = _get_status(self.ready_url, 2.0)
        if status != 200:
            raise LaunchError(f"{where}: {self.ready_url} is not ready "
                              f"({'unreachable' if status is None else f'status {status}'})")

    @contextlib.contextmanager
    def launch(self, config: Any = None, *, log_dir: str | Path | None = None,
               **_ignored: Any) -> Iterator[ExternalStack]:
        """Start (command) or check (url) the service for one trial; stop it after.

        The keyword arguments of ``launch_stack`` (repository, gateway, cpus) are accepted
        and ignored: an external service brings its own models and processes.
        """
        if self.gateway is None:
            with self._service(log_dir) as stack:
                yield stack
            return
        with self._service(log_dir) as upstream, _gateway_in_front(
                upstream, self.gateway, log_dir, self.startup_timeout_s) as stack:
            yield stack

    @contextlib.contextmanager
    def _service(self, log_dir: str | Path | None) -> Iterator[ExternalStack]:
        if self.kind == "url":
            self.preflight()
            yield ExternalStack(self.url, stats_url=self._stats_url(self.url, self.ready_url))
            return
        port, grpc_port = _free_ports(2)
        values = {**self.parameters, "port": port, "grpc_port": grpc_port}
        fill = lambda s: render(s, values)  # noqa: E731 - the ports and the arm's parameters
        url, ready = fill(self.url), fill(self.ready_url)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **{k: fill(v) for k, v in self.env.items()}}
        folder = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="optkit-arm-"))
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "service.log"
        with log_path.open("wb") as log:
            try:
                proc = subprocess.Popen([fill(c) for c in self.command], cwd=self.cwd, env=env,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                raise LaunchError(f"arm {self.name!r}: cannot start {self.command[0]!r}: "
                                  f"{exc}") from None
            try:
                self._wait_ready(proc, ready, log_path)
                yield ExternalStack(url, _process_tree(proc.pid), log_path,
                                    stats_url=self._stats_url(url, ready))
            finally:
                _stop_group(proc, self.stop_timeout_s)
        if not log_dir:
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _stats_url(url: str, ready: str) -> str | None:
        """Where a trial reads the service's statistics: its url when that is REST; for a gRPC
        url, the origin of an HTTP ``ready_url`` (its REST side), else none."""
        if not url.startswith("grpc://"):
            return None  # the trial reads the url itself
        parts = urlsplit(ready)
        return f"{parts.scheme}://{parts.netloc}" if parts.scheme == "http" else None

    def _wait_ready(self, proc: subprocess.Popen[bytes], ready: str, log_path: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LaunchError(f"arm {self.name!r}: {shlex.join(self.command)} exited with "
                                  f"code {proc.returncode} before {ready} answered 200; "
                                  f"log:\n{_tail(log_path)}")
            if _get_status(ready, 1.0) == 200:
                return
            time.sleep(0.1)
        raise LaunchError(f"arm {self.name!r}: {ready} did not answer 200 within "
                          f"{self.startup_timeout_s:g} s; log:\n{_tail(log_path)}")


def _gateway_config(value: Any, base: Path | None) -> dict[str, Any]:
    """An arm's ``gateway:``, a config file (relative to the arm file) or inline, as plain data."""
    if isinstance(value, str):
        path = Path(value)
        value = path if path.is_absolute() or base is None else base / path
        if not value.is_file():
            raise ConfigError(f"gateway config {value} is not a file")
    elif not isinstance(value, Mapping):
        raise ConfigError(f"an arm's gateway must be a config file or a mapping, got {value!r}")
    return load_config(value).to_dict()


@contextlib.contextmanager
def _gateway_in_front(upstream: ExternalStack, config: Mapping[str, Any],
                      log_dir: str | Path | None, timeout_s: float) -> Iterator[ExternalStack]:
    """optkit's gateway over ``upstream`` for one trial (its log: gateway.log beside the
    service's), stopped before the upstream is."""
    import yaml

    from ..service import launch_service

    folder = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="optkit-gw-"))
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "gateway-config.yaml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    gateway = launch_service("gateway", ["--upstream", upstream.url], workdir=folder,
                             config_path=config_path, ready_timeout_s=timeout_s)
    try:
        yield ExternalStack(gateway.url, {**upstream.pids, "gateway": gateway.pid},
                            upstream.log_path, gateway_url=gateway.url, upstream_url=upstream.url,
                            stats_url=upstream.stats_url)
    finally:
        gateway.stop(load_config(dict(config)).server.shutdown_timeout_s + 5)
        if not log_dir:
            shutil.rmtree(folder, ignore_errors=True)


def _get_status(url: str, timeout_s: float) -> int | None:
    """The status a GET of ``url`` answers (None: no answer); for a ``grpc://host:port`` url,
    200 when its ``ServerReady`` says ready, 503 when not, None when it does not answer."""
    if url.startswith("grpc://"):
        from ..bench._grpc_client import grpc_ready  # grpc only for gRPC arms

        ready = grpc_ready(parse_target(url).grpc_target, timeout_s)
        return None if ready is None else 200 if ready else 503
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _process_tree(pid: int) -> dict[str, int]:
    """The service and its children (e.g. MLServer's worker), for CPU and RSS sampling."""
    import psutil

    pids = {"service": pid}
    try:
        for child in psutil.Process(pid).children(recursive=True):
            pids[f"service-{child.pid}"] = child.pid
    except psutil.Error:
        pass
    return pids


def _stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout_s``; never leave it running."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait_s)
            # the leader is gone; make sure no member of its group outlives it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        except subprocess.TimeoutExpired:
            continue


def preflight(*arms: Any, repository: str | Path, workload: Any = "digits") -> None:
    """Find, before the first trial, the errors that would make every trial fail.

    An optkit config needs the model repository built, with every model the workload
    hits; an external arm needs its program on PATH (command) or an answering URL (url).
    A trial that still cannot run is caught by ``compare`` at each arm's first trial.
    """
    for arm in arms:
        if isinstance(arm, ExternalArm):
            arm.preflight()
    if all(isinstance(arm, ExternalArm) for arm in arms):
        return
    repo = Path(repository)
    hint = f"build it with `optkit models build --repository {repo}`"
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} does not exist: {hint}")
    try:
        models = Workload.resolve(workload).models
    except OptkitError as exc:
        raise ConfigError(f"workload {workload!r}: {exc}") from None
    missing = [m for m in models if not (repo / m).is_dir()]
    if missing:
        raise ConfigError(f"model repository {repo} lacks {', '.join(missing)} (the workload's "
                          f"models): {hint}")


def is_arm(source: Any) -> bool:
    """True when ``source`` is an external arm (object, mapping or YAML with ``kind``)."""
    if isinstance(source, ExternalArm):
        return True
    if isinstance(source, Mapping):
        return "kind" in source
    if isinstance(source, (str, Path)) and Path(source).is_file():
        try:
            return "kind" in read_mapping(source, what="arm")
        except ConfigError:  # not an arm file; load_config will say what is wrong with it
            return False
    return False


def load_arm(source: Any) -> Any:
    """An :class:`ExternalArm` for an arm file/mapping, else the optkit config (load_config)."""
    if isinstance(source, ExternalArm):
        return source
    if isinstance(source, Mapping) and "kind" in source:
        return ExternalArm.from_dict(source)
    if is_arm(source):
        path = Path(source)
        return ExternalArm.from_dict(read_mapping(path, what="arm"), base=path.parent,
                                     name=path.stem)
    return load_config(source)
