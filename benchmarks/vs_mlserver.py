"""optkit's model server vs MLServer on the same scikit-learn artefact, side by side.

::

    .venv/bin/python benchmarks/vs_mlserver.py [--rounds 3] [--duration 10] [--warmup 2]
        [--mlserver-configs all|NAME,NAME] [--optkit-config [NAME=]CONFIG.yaml ...]
        [--optkit-workers NAME=N ...]

Both servers serve ``build/models/digits-sklearn/1/model.joblib`` (a scikit-learn
pipeline) under the name ``digits-sklearn`` and get the same request: one real
digits row (FP32, shape [1, 64]) as a v2 JSON body, POSTed to
``/v2/models/digits-sklearn/infer`` by ``wrk`` at 32 connections.

An *arm* is one server in one configuration (each MLServer settings preset, each
optkit config YAML). A *round* runs every arm once, in an order shuffled by a
seeded RNG; each run starts a fresh server process, checks one request answers
200 with a label, runs wrk for ``--warmup`` s (discarded) and then ``--duration``
s (measured), and stops the server (SIGTERM, then SIGKILL of its process group
after a bound) whatever happens. The summary gives per arm the median req/s
across rounds (min-max), the median p99, and for each optkit arm the ratio of its
median req/s to the best MLServer arm's median, plus the same ratio per round.

MLServer runs from its own virtualenv (``--mlserver-venv``, default
``.venv-mlserver``), created on first use with pinned versions; see
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent.parent / "optkit" / "bench" / "v2.lua"  # optkit's own wrk script
MODEL = "digits-sklearn"

# MLServer 1.7.1 is the newest release (checked with `pip index versions mlserver`).
# uvloop >= 0.22 breaks its worker processes ("RuntimeError: There is no current
# event loop in thread 'MainThread'" in mlserver/parallel/worker.py; SeldonIO/MLServer
# issue #2286, still open for 1.7.1), so the venv pins uvloop < 0.22.
MLSERVER_VERSION = "1.7.1"
MLSERVER_EXTRA_PINS = ("uvloop<0.22",)

# MLServer presets: "settings" goes into settings.json (server-wide), "model" into
# the model's model-settings.json. host/ports/name/implementation/uri are added by
# the script. MLServer's own defaults: parallel_workers=1 (one inference worker
# process), debug=true (uvicorn access log on), metrics_endpoint="/metrics"
# (Prometheus middleware on every request), gzip_enabled=true, no adaptive batching.
_BATCH = {"max_batch_size": 32, "max_batch_time": 0.002}
_LEAN = {"debug": False, "metrics_endpoint": None, "gzip_enabled": False}
MLSERVER_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {"settings": {}, "model": {}},
    "batch": {"settings": {}, "model": dict(_BATCH)},
    "pw0": {"settings": {"parallel_workers": 0}, "model": {}},
    "pw0-batch": {"settings": {"parallel_workers": 0}, "model": dict(_BATCH)},
    "lean": {"settings": dict(_LEAN), "model": {}},
    "pw0-lean": {"settings": {"parallel_workers": 0, **_LEAN}, "model": {}},
    "pw0-batch-lean": {"settings": {"parallel_workers": 0, **_LEAN}, "model": dict(_BATCH)},
    "pw2-lean": {"settings": {"parallel_workers": 2, **_LEAN}, "model": {}},
}
DEFAULT_OPTKIT_CONFIG = {"loading": {"models": [MODEL]}}

# Output asked for in the request, per --outputs mode: (optkit name, MLServer name).
OUTPUTS = {"label": ("label", "predict"), "proba": ("probabilities", "predict_proba")}


class BenchFailure(RuntimeError):
    """A run (or the whole benchmark) cannot go on; the message says why."""


def log(msg: str) -> None:
    print(msg, flush=True)


# -- environment -----------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while choosing)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_text(cmd: list[str], **kw: Any) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def ensure_models(repository: Path) -> Path:
    artefact = repository / MODEL / "1" / "model.joblib"
    if not artefact.is_file():
        log(f"{artefact} missing: building the model repository (optkit models build) ...")
        cmd = [str(REPO / ".venv" / "bin" / "optkit"), "models", "build",
               "--repository", str(repository)]
        if subprocess.run(cmd).returncode != 0 or not artefact.is_file():
            raise BenchFailure(f"could not build {artefact}; run: {' '.join(cmd)}")
    return artefact


def ensure_mlserver_venv(venv: Path, sklearn_version: str, reinstall: bool) -> dict[str, str]:
    """Create/refresh MLServer's own venv; return the versions it holds."""
    reqs = [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}",
            f"scikit-learn=={sklearn_version}", *MLSERVER_EXTRA_PINS]
    marker = venv / ".vs_mlserver-requirements.json"
    py = venv / "bin" / "python"
    current = None
    if marker.is_file():
        try:
            current = json.loads(marker.read_text())
        except ValueError:
            current = None
    if reinstall or current != reqs or not (venv / "bin" / "mlserver").exists():
        if not py.exists():
            base = shutil.which("python3.11")
            if base is None and sys.version_info[:2] == (3, 11):
                base = sys.executable
            if base is None:
                raise BenchFailure("python3.11 not found on PATH: "
                                   "needed to create the MLServer venv")
            log(f"creating MLServer venv {venv} with {base} ...")
            if subprocess.run([base, "-m", "venv", str(venv)]).returncode != 0:
                raise BenchFailure(f"could not create a virtualenv at {venv}")
        log(f"installing into {venv}: {' '.join(reqs)} (takes a minute or two the first time) ...")
        proc = subprocess.run([str(py), "-m", "pip", "install", "--quiet", *reqs],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise BenchFailure(f"installing MLServer into {venv} failed "
                               f"(pip exit {proc.returncode}):\n{tail}")
        marker.write_text(json.dumps(reqs))
    probe = ("import json, importlib.metadata as m; print(json.dumps({k: m.version(k) for k in "
             "('mlserver', 'mlserver-sklearn', 'scikit-learn', 'numpy', 'uvloop', 'uvicorn', "
             "'fastapi', 'pandas')}))")
    proc = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchFailure(f"MLServer venv {venv} is broken:\n{proc.stderr.strip()[-2000:]}")
    versions = json.loads(proc.stdout)
    if versions["scikit-learn"] != sklearn_version:
        raise BenchFailure(f"MLServer venv has scikit-learn {versions['scikit-learn']}, optkit has "
                           f"{sklearn_version}; rerun with --reinstall-mlserver")
    return versions


# -- servers ---------------------------------------------------------------------------

@dataclass
class Arm:
    name: str           # e.g. "mlserver:pw0-batch" or "optkit:default"
    kind: str           # "mlserver" | "optkit"
    spec: dict[str, Any]  # mlserver: {"settings": {...}, "model": {...}}; optkit: {"config": dict}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    logfile: Any
    descendants: set[int] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.descendants.update(p.pid for p in procs[1:])
        return procs


LIVE: list[Server] = []


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLSERVER_", "OPTKIT_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_mlserver(arm: Arm, venv: Path, artefact: Path, workdir: Path, logpath: Path) -> Server:
    http, grpc, metrics = free_ports(3)
    settings = {"host": "127.0.0.1", "http_port": http, "grpc_port": grpc,
                "metrics_port": metrics, **arm.spec.get("settings", {})}
    model = {"name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
             "parameters": {"uri": str(artefact), "version": "1"}, **arm.spec.get("model", {})}
    (workdir / MODEL).mkdir(parents=True)
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2))
    (workdir / MODEL / "model-settings.json").write_text(json.dumps(model, indent=2))
    env = _clean_env()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    logfile = logpath.open("wb")
    proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(workdir)], cwd=workdir,
                            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    server = Server(proc, http, workdir, logfile)
    LIVE.append(server)
    return server


def start_optkit(arm: Arm, repository: Path, workdir: Path, logpath: Path,
                 limit_s: float) -> Server:
    config = workdir / "optkit.yaml"
    config.write_text(yaml.safe_dump(arm.spec["config"], sort_keys=False))
    port_file = workdir / "port"
    logfile = logpath.open("wb")
    cmd = [str(REPO / ".venv" / "bin" / "optkit"), "serve", "model-server",
           "--repository", str(repository), "--host", "127.0.0.1", "--port", "0",
           "--port-file", str(port_file), "--config", str(config),
           "--workers", str(arm.spec.get("workers", 1))]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=logfile, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=_clean_env(), start_new_session=True)
    server = Server(proc, 0, workdir, logfile)
    LIVE.append(server)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchFailure(f"optkit exited with code {proc.returncode} before listening "
                               f"(log: {logpath})")
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text.isdigit():
            server.port = int(text)
            return server
        time.sleep(0.05)
    raise BenchFailure(f"optkit wrote no port file within {limit_s:.0f} s (log: {logpath})")


def http_get(port: int, path: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return 0


_OPTKIT_MODEL_GRACE_S = 5.0


def wait_ready(server: Server, limit_s: float, what: str, logpath: Path) -> float:
    """Poll until server and model are ready; return seconds since the process started.

    optkit (loading.mode sync) loads its models before it listens: if it is ready
    but the model is not (404, or 503 for a model it was not told to load) for
    ``_OPTKIT_MODEL_GRACE_S``, its config does not load the model: fail then.
    MLServer answers 400/404 while still loading, so it gets the whole ``limit_s``."""
    start = server.started
    health = model = 0
    up_since = None
    while time.monotonic() - start < limit_s:
        if server.proc.poll() is not None:
            raise BenchFailure(f"{what} exited with code {server.proc.returncode} while starting"
                               f"{log_tail(logpath)}")
        health = http_get(server.port, "/v2/health/ready")
        model = http_get(server.port, f"/v2/models/{MODEL}/ready")
        if health == 200 and model == 200:
            return time.monotonic() - start
        if what.startswith("optkit") and health == 200:
            up_since = up_since or time.monotonic()
            if time.monotonic() - up_since > _OPTKIT_MODEL_GRACE_S:
                raise BenchFailure(f"{what} is ready but /v2/models/{MODEL}/ready answers {model}: "
                                   f"does its config's loading.models include {MODEL}?")
        time.sleep(0.2)
    raise BenchFailure(f"{what} not ready within {limit_s:.0f} s (last: /v2/health/ready {health}, "
                       f"/v2/models/{MODEL}/ready {model}){log_tail(logpath)}")


def log_tail(logpath: Path, lines: int = 6) -> str:
    """The interesting end of a server log, for error messages."""
    try:
        text = logpath.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    words = ("Error", "error", "Traceback", "Exception")
    picked = [ln for ln in text if any(w in ln for w in words)]
    tail = (picked or text)[-lines:]
    return ("; log " + str(logpath) + ":\n      " + "\n      ".join(tail)) if tail else ""


def stop_server(server: Server, grace_s: float) -> dict[str, Any]:
    """SIGTERM the server, SIGKILL its process group and any leftover descendant after
    ``grace_s``; always reaps. Returns how it went."""
    server.tree()  # remember every descendant's pid before the parent goes away
    info: dict[str, Any] = {"killed": False, "leftovers_killed": []}
    proc = server.proc
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                info["killed"] = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        info["exit_code"] = proc.returncode
        # workers may outlive the parent for a moment: give them the same bound, then kill
        deadline = time.monotonic() + grace_s
        for pid in sorted(server.descendants):
            try:
                p = psutil.Process(pid)
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                p.wait(max(0.0, deadline - time.monotonic()))
            except psutil.TimeoutExpired:
                try:
                    p.kill()
                    info["leftovers_killed"].append(pid)
                except psutil.NoSuchProcess:
                    pass
            except psutil.NoSuchProcess:
                pass
    finally:
        server.logfile.close()
        if server in LIVE:
            LIVE.remove(server)
    return info


def _busy(t: Any) -> float:
    """Host CPU seconds spent not idle (guest time is already inside user/nice)."""
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def tree_usage(server: Server) -> dict[int, tuple[float, int]]:
    """pid -> (CPU seconds user+system, RSS bytes) for the server and its descendants."""
    out = {}
    for p in server.tree():
        try:
            t = p.cpu_times()
            out[p.pid] = (t.user + t.system, p.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


# -- requests --------------------------------------------------------------------------

def build_bodies(row: int, outputs_mode: str) -> tuple[dict[str, bytes], int]:
    """The v2 JSON bodies (per server kind) for digits row ``row``, and its true label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    if not 0 <= row < len(digits.data):
        raise BenchFailure(f"--row must be in [0, {len(digits.data)})")
    data = [float(v) for v in digits.data[row].astype("float32")]
    bodies = {}
    for kind, out_name in zip(("optkit", "mlserver"), OUTPUTS[outputs_mode]):
        doc = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": data}],
               "outputs": [{"name": out_name}]}
        bodies[kind] = json.dumps(doc, separators=(",", ":")).encode()
    return bodies, int(digits.target[row])


def verify(port: int, body: bytes, out_name: str) -> dict[str, Any]:
    """POST one request; return {"status", "label", "output"}; raise on anything but a sane 200."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        raise BenchFailure(f"verification request answered {e.code}: {e.read()[:300]!r}") from None
    except OSError as e:
        raise BenchFailure(f"verification request failed: {e}") from None
    try:
        doc = json.loads(text)
        out = next(o for o in doc["outputs"] if o["name"] == out_name)
        data = out["data"]
        label = int(data[0]) if out_name in ("label", "predict") else \
            max(range(len(data)), key=data.__getitem__)
    except (ValueError, KeyError, StopIteration, TypeError, IndexError):
        raise BenchFailure(f"verification: no usable output {out_name!r} "
                           f"in {text[:300]!r}") from None
    if status != 200:
        raise BenchFailure(f"verification request answered {status}")
    return {"status": status, "label": label, "output": out}


# -- wrk -------------------------------------------------------------------------------

def run_wrk(port: int, body_file: Path, seconds: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
           f"--timeout={args.wrk_timeout}s", "-s", str(LUA), f"http://127.0.0.1:{port}",
           "--", str(body_file)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = start + seconds + args.wrk_timeout + 15
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                cpu_s = usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise BenchFailure(f"wrk did not finish within {deadline - start:.0f} s; killed it")
            time.sleep(0.02)
        out = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    wall = time.monotonic() - start
    line = next((ln for ln in out.splitlines() if ln.startswith("OPTKIT_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchFailure(f"wrk failed (exit {proc.returncode}): {out.strip()[-500:]}")
    doc = json.loads(line[len("OPTKIT_JSON "):])
    doc["wrk_cpu_s"] = cpu_s
    doc["wrk_wall_s"] = wall
    doc["non2xx_line"] = next((ln.strip() for ln in out.splitlines() if "Non-2xx" in ln), None)
    return doc


# -- one run ---------------------------------------------------------------------------

def one_run(arm: Arm, round_no: int, ctx: dict[str, Any],
            args: argparse.Namespace) -> dict[str, Any]:
    run: dict[str, Any] = {"arm": arm.name, "kind": arm.kind, "round": round_no, "valid": False}
    slug = arm.name.replace(":", "-")
    logpath = ctx["out"] / "logs" / f"r{round_no}-{slug}.log"
    run["log"] = str(logpath.relative_to(ctx["out"]))
    workdir = Path(tempfile.mkdtemp(prefix=f"vsml-{slug}-", dir=ctx["tmp"]))
    server = None
    t0 = time.monotonic()
    try:
        if arm.kind == "mlserver":
            server = start_mlserver(arm, ctx["venv"], ctx["artefact"], workdir, logpath)
            run["settings"] = json.loads((workdir / "settings.json").read_text())
            run["model_settings"] = json.loads(
                (workdir / MODEL / "model-settings.json").read_text())
        else:
            server = start_optkit(arm, ctx["repository"], workdir, logpath, args.ready_timeout)
        run["port"] = server.port
        run["startup_s"] = round(wait_ready(server, args.ready_timeout, arm.name, logpath), 3)
        kind_out = OUTPUTS[args.outputs][0 if arm.kind == "optkit" else 1]
        check = verify(server.port, ctx["bodies"][arm.kind], kind_out)
        run["verify"] = {"status": check["status"], "label": check["label"],
                         "expected_label": ctx["label"]}
        mark = "ok" if check["label"] == ctx["label"] else f"WRONG (expected {ctx['label']})"
        log(f"    {arm.name}: up in {run['startup_s']:.1f} s, verify 200, label {check['label']} "
            f"[{mark}]")
        if args.warmup > 0:
            warm = run_wrk(server.port, ctx["body_files"][arm.kind], args.warmup, args)
            run["warmup"] = {"requests": warm["requests"], "errors": warm["errors"]}
        before = tree_usage(server)
        host_before = psutil.cpu_times()
        doc = run_wrk(server.port, ctx["body_files"][arm.kind], args.duration, args)
        after = tree_usage(server)
        host_after = psutil.cpu_times()
        if server.proc.poll() is not None:
            raise BenchFailure(f"server exited (code {server.proc.returncode}) during the window")
        secs = doc["duration_us"] / 1e6
        e = doc["errors"]
        socket_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
        ok = doc["requests"] - e["status"]
        cpu_s = sum(c - before.get(pid, (0.0, 0))[0] for pid, (c, _) in after.items())
        host_busy = _busy(host_after) - _busy(host_before)
        run.update({
            "requests": doc["requests"], "non2xx": e["status"], "socket_errors": socket_errors,
            "errors": e, "wrk_non2xx_line": doc["non2xx_line"],
            "rps": ok / secs if secs else 0.0, "duration_s": secs,
            "p50_ms": doc["latency_us"]["p50"] / 1e3, "p90_ms": doc["latency_us"]["p90"] / 1e3,
            "p99_ms": doc["latency_us"]["p99"] / 1e3, "p999_ms": doc["latency_us"]["p999"] / 1e3,
            "mean_ms": doc["latency_us"]["mean"] / 1e3, "max_ms": doc["latency_us"]["max"] / 1e3,
            "server_cpu_s": cpu_s, "server_cpu_cores": cpu_s / secs if secs else None,
            "server_rss_mb": sum(r for _, r in after.values()) / 2**20,
            "server_main_rss_mb": after.get(server.proc.pid, (0, 0))[1] / 2**20,
            "server_processes": len(after),
            "wrk_cpu_s": doc["wrk_cpu_s"], "wrk_cpu_cores": doc["wrk_cpu_s"] / doc["wrk_wall_s"],
            "host_busy_cores": host_busy / doc["wrk_wall_s"],
            # CPU the rest of the machine used meanwhile (other people's work): noise indicator
            "other_cores": max(0.0, host_busy / doc["wrk_wall_s"] - cpu_s / doc["wrk_wall_s"]
                               - doc["wrk_cpu_s"] / doc["wrk_wall_s"]),
            "wrk_raw": {k: doc[k] for k in
                        ("duration_us", "requests", "bytes", "errors", "latency_us")},
        })
        reasons = []
        if e["status"]:
            reasons.append(f"{e['status']} non-2xx responses")
        if socket_errors:
            reasons.append(f"{socket_errors} socket errors/timeouts")
        if ok <= 0:
            reasons.append("no successful requests")
        if check["label"] != ctx["label"]:
            reasons.append("verification label differs from the dataset's")
        run["valid"] = not reasons
        run["invalid_reasons"] = reasons
    except BenchFailure as exc:
        run["error"] = str(exc)
        run["invalid_reasons"] = [str(exc)]
        log(f"    {arm.name}: FAILED: {exc}")
    finally:
        if server is not None:
            run["stop"] = stop_server(server, args.stop_timeout)
        shutil.rmtree(workdir, ignore_errors=True)
        run["wall_s"] = round(time.monotonic() - t0, 2)
    if "rps" in run:
        flag = "" if run["valid"] else f"  INVALID: {'; '.join(run['invalid_reasons'])}"
        log(f"    {arm.name}: {run['rps']:8.1f} req/s  p50 {run['p50_ms']:6.2f} ms  "
            f"p99 {run['p99_ms']:7.2f} ms  server {run['server_cpu_cores']:.2f} cores "
            f"{run['server_rss_mb']:.0f} MB  wrk {run['wrk_cpu_cores']:.2f} cores{flag}")
    return run


# -- summary ---------------------------------------------------------------------------

def summarise(runs: list[dict[str, Any]], arms: list[Arm], rounds: int) -> dict[str, Any]:
    per_arm: dict[str, Any] = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm.name]
        valid = [r for r in mine if r["valid"]]
        row: dict[str, Any] = {"kind": arm.kind, "runs": len(mine), "valid_runs": len(valid)}
        if valid:
            rps = [r["rps"] for r in valid]

            def med(key: str) -> float:
                return statistics.median(r[key] for r in valid)

            row.update(median_rps=statistics.median(rps), min_rps=min(rps), max_rps=max(rps),
                       median_p50_ms=med("p50_ms"), median_p99_ms=med("p99_ms"),
                       median_server_cpu_cores=med("server_cpu_cores"),
                       median_server_rss_mb=med("server_rss_mb"),
                       median_wrk_cpu_cores=med("wrk_cpu_cores"),
                       median_host_busy_cores=med("host_busy_cores"),
                       median_other_cores=med("other_cores"))
        per_arm[arm.name] = row
    mls = {n: a for n, a in per_arm.items() if a["kind"] == "mlserver" and a.get("median_rps")}
    best = max(mls, key=lambda n: mls[n]["median_rps"]) if mls else None
    by_round = {(r["arm"], r["round"]): r for r in runs}
    for name, row in per_arm.items():
        if row["kind"] != "optkit" or best is None or not row.get("median_rps"):
            continue
        row["ratio_vs_best_mlserver"] = row["median_rps"] / per_arm[best]["median_rps"]
        per_round = []
        for rnd in range(1, rounds + 1):
            o, m = by_round.get((name, rnd)), by_round.get((best, rnd))
            round_best = max((r["rps"] for r in runs if r["round"] == rnd
                              and r["kind"] == "mlserver" and r["valid"]), default=None)
            o_ok = bool(o and o["valid"])
            per_round.append({
                "round": rnd,
                "vs_best_arm": o["rps"] / m["rps"] if o_ok and m and m["valid"] else None,
                "vs_round_best": o["rps"] / round_best if o_ok and round_best else None})
        row["ratio_per_round"] = per_round
    return {"per_arm": per_arm, "best_mlserver_arm": best}


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summary_markdown(meta: dict[str, Any], summary: dict[str, Any],
                     args: argparse.Namespace) -> str:
    best = summary["best_mlserver_arm"]
    lines = [
        f"# optkit vs MLServer: {MODEL}, wrk -t{args.threads} -c{args.connections}, "
        f"{args.rounds} round(s) x {args.duration} s (+{args.warmup} s warm-up)",
        "",
        f"optkit {meta['versions']['optkit']} | MLServer {meta['versions'].get('mlserver')} "
        f"(mlserver-sklearn {meta['versions'].get('mlserver-sklearn')}) | scikit-learn "
        f"{meta['versions']['scikit-learn']} | {meta['machine']['cpu_model']}, "
        f"{meta['machine']['nproc']} CPUs | seed {args.seed} | outputs: {args.outputs}",
        "",
        "| arm | valid | req/s median | req/s min-max | p50 ms | p99 ms | server cores | "
        "server RSS MB | wrk cores | other load cores | vs best MLServer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(summary["per_arm"].items(),
                  key=lambda kv: (kv[1]["kind"] != "optkit", -(kv[1].get("median_rps") or 0)))
    for name, a in rows:
        if a["kind"] == "optkit":
            r = a.get("ratio_vs_best_mlserver")
            ratio = "-" if r is None else f"{r:.2f}x"
        else:
            ratio = "**best**" if name == best else (
                fmt(a["median_rps"] / summary["per_arm"][best]["median_rps"], ".2f") + "x"
                if best and a.get("median_rps") else "-")
        rng = (f"{a['min_rps']:.0f}-{a['max_rps']:.0f}" if a.get("median_rps") else "-")
        lines.append(
            f"| {name} | {a['valid_runs']}/{a['runs']} | "
            f"{fmt(a.get('median_rps'), '.0f')} | {rng} | "
            f"{fmt(a.get('median_p50_ms'), '.2f')} | {fmt(a.get('median_p99_ms'), '.2f')} | "
            f"{fmt(a.get('median_server_cpu_cores'), '.2f')} | "
            f"{fmt(a.get('median_server_rss_mb'), '.0f')} | "
            f"{fmt(a.get('median_wrk_cpu_cores'), '.2f')} | "
            f"{fmt(a.get('median_other_cores'), '.2f')} | {ratio} |")
    lines += ["", "req/s: 2xx responses per second in the measured window; p50/p99: wrk's latency "
              "percentiles; server cores/RSS: CPU seconds per second and resident memory of the "
              "server's process tree (MLServer workers included); wrk cores: the load generator's "
              "own CPU; other load cores: the rest of the machine's CPU use meanwhile (others' "
              "work: noise). Medians over valid runs.", ""]
    if best:
        lines.append(f"Best MLServer arm (highest median req/s): **{best}**. "
                     "Per-round ratios, optkit arm / MLServer in the same round "
                     "(vs that arm's run; in brackets vs the round's best MLServer run):")
        lines.append("")
        for name, a in rows:
            if a["kind"] == "optkit" and a.get("ratio_per_round"):
                parts = [f"r{p['round']}: {fmt(p['vs_best_arm'], '.2f')} "
                         f"[{fmt(p['vs_round_best'], '.2f')}]" for p in a["ratio_per_round"]]
                lines.append(f"- {name}: " + ", ".join(parts))
    else:
        lines.append("No MLServer arm produced a valid run: no ratio.")
    invalid = [r for r in meta["runs"] if not r["valid"]]
    if invalid:
        lines += ["", "Invalid / failed runs (excluded from medians):", ""]
        lines += [f"- round {r['round']} {r['arm']}: {'; '.join(r.get('invalid_reasons', []))}"
                  for r in invalid]
    lines += ["", "Run order per round (shuffled, seed above): " + " | ".join(
        f"r{i + 1}: {', '.join(order)}" for i, order in enumerate(meta["orders"])), ""]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="MLServer presets: " + "; ".join(
                                    f"{k}={json.dumps(v)}" for k, v in MLSERVER_PRESETS.items()))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="measured seconds per run (wrk -d)")
    p.add_argument("--warmup", type=int, default=2, help="discarded wrk seconds before each window")
    p.add_argument("--connections", type=int, default=32)
    # one wrk thread drives 32 connections far past 13k req/s at about a quarter of a core;
    # a second thread only takes CPU from the servers on a 2-core machine (measured: optkit
    # with 2 workers, p99 6.1 ms with -t2 against 5.0 ms with -t1, same rounds otherwise)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    p.add_argument("--wrk-timeout", type=int, default=5, help="wrk --timeout seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-round arm order shuffle")
    p.add_argument("--out", type=Path, default=None, help="default runs/vs-mlserver-<timestamp>/")
    p.add_argument("--repository", type=Path, default=REPO / "build" / "models")
    p.add_argument("--mlserver-venv", type=Path, default=REPO / ".venv-mlserver")
    p.add_argument("--reinstall-mlserver", action="store_true",
                   help="re-run pip install in the MLServer venv")
    p.add_argument("--mlserver-configs", default="all",
                   help="comma-separated MLServer presets (see below), 'all', or 'none'")
    p.add_argument("--mlserver-arm", action="append", default=[], metavar="NAME=JSON",
                   help='extra MLServer arm, JSON {"settings": {...}, "model": {...}}; repeatable')
    p.add_argument("--optkit-config", action="append", default=[], metavar="[NAME=]PATH",
                   help="optkit config YAML, one arm each; repeatable (default: one arm that "
                        f"only sets loading.models: [{MODEL}])")
    p.add_argument("--optkit-workers", action="append", default=[], metavar="NAME=N",
                   help="run that optkit arm as `optkit serve model-server --workers N` "
                        "(N processes on one port); repeatable")
    p.add_argument("--outputs", choices=sorted(OUTPUTS), default="label",
                   help="label: optkit 'label' vs MLServer 'predict'; proba: 'probabilities' vs "
                        "'predict_proba'")
    p.add_argument("--row", type=int, default=0, help="which sklearn digits row to send")
    p.add_argument("--ready-timeout", type=float, default=90.0)
    p.add_argument("--stop-timeout", type=float, default=10.0,
                   help="seconds between SIGTERM and SIGKILL")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0 or args.connections < 1 \
            or args.threads < 1:
        p.error("--rounds/--duration/--connections/--threads must be >= 1, --warmup >= 0")
    return args


def build_arms(args: argparse.Namespace) -> list[Arm]:
    arms: list[Arm] = []
    names = [] if args.mlserver_configs == "none" else (
        list(MLSERVER_PRESETS) if args.mlserver_configs == "all"
        else [n.strip() for n in args.mlserver_configs.split(",") if n.strip()])
    for n in names:
        if n not in MLSERVER_PRESETS:
            raise BenchFailure(f"unknown MLServer preset {n!r}; "
                               f"known: {', '.join(MLSERVER_PRESETS)}")
        arms.append(Arm(f"mlserver:{n}", "mlserver", MLSERVER_PRESETS[n]))
    for item in args.mlserver_arm:
        name, sep, text = item.partition("=")
        try:
            spec = json.loads(text) if sep else None
        except ValueError as e:
            raise BenchFailure(f"--mlserver-arm {item!r}: bad JSON ({e})") from None
        if not isinstance(spec, dict) or set(spec) - {"settings", "model"}:
            raise BenchFailure('--mlserver-arm wants NAME={"settings": {...}, "model": {...}}, '
                               f'got {item!r}')
        arms.append(Arm(f"mlserver:{name}", "mlserver", spec))
    if not args.optkit_config:
        arms.append(Arm("optkit:default", "optkit", {"config": DEFAULT_OPTKIT_CONFIG,
                                                      "path": None}))
    for item in args.optkit_config:
        name, sep, path = item.partition("=")
        if not sep:
            path, name = item, Path(item).stem
        cfg_path = Path(path)
        try:
            config = yaml.safe_load(cfg_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise BenchFailure(f"--optkit-config {path}: {e}") from None
        models = (config.get("loading") or {}).get("models") or []
        if models and MODEL not in models:
            log(f"warning: {path} loads {models}, not {MODEL}: its runs will fail verification")
        arms.append(Arm(f"optkit:{name}", "optkit", {"config": config, "path": str(cfg_path)}))
    for item in args.optkit_workers:
        name, _, count = item.partition("=")
        match = [a for a in arms if a.name == f"optkit:{name}"]
        if not match or not count.isdigit() or int(count) < 1:
            raise BenchFailure(f"--optkit-workers {item!r}: wants NAME=N for an optkit arm NAME")
        match[0].spec["workers"] = int(count)
    seen = set()
    for a in arms:
        if a.name in seen:
            raise BenchFailure(f"two arms are named {a.name}; use NAME=PATH to tell them apart")
        seen.add(a.name)
    if not any(a.kind == "mlserver" for a in arms):
        log("warning: no MLServer arm: no ratio will be computed")
    return arms


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM/SIGHUP to this script: unwind through the finally blocks (servers get stopped)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    try:
        return _main(args)
    except BenchFailure as exc:
        print(f"vs_mlserver: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for server in list(LIVE):  # only reached with a server alive on an unexpected error
            stop_server(server, args.stop_timeout)


def _main(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise BenchFailure("wrk is not on PATH (Debian/Ubuntu: apt-get install -y wrk)")
    arms = build_arms(args)
    repository = args.repository.resolve()
    artefact = ensure_models(repository)
    sklearn_version = importlib.metadata.version("scikit-learn")
    versions: dict[str, Any] = {
        "optkit": importlib.metadata.version("optkit"), "scikit-learn": sklearn_version,
        "optkit_numpy": importlib.metadata.version("numpy"),
        "optkit_python": platform.python_version(),
        "wrk": (run_text(["wrk", "-v"]).splitlines() or ["?"])[0],
    }
    venv = args.mlserver_venv.resolve()
    if any(a.kind == "mlserver" for a in arms):
        mls = ensure_mlserver_venv(venv, sklearn_version, args.reinstall_mlserver)
        mls["python"] = run_text([str(venv / "bin" / "python"), "-c",
                                  "import platform; print(platform.python_version())"])
        versions.update({"mlserver": mls["mlserver"], "mlserver-sklearn": mls["mlserver-sklearn"],
                         "mlserver_venv": mls})
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "runs" / f"vs-mlserver-{stamp}").resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    bodies, label = build_bodies(args.row, args.outputs)
    body_files = {}
    for kind, body in bodies.items():
        body_files[kind] = out / f"body-{kind}.tsv"  # "PATH<TAB>BODY", as v2.lua reads it
        body_files[kind].write_bytes(f"/v2/models/{MODEL}/infer\t".encode() + body + b"\n")
    for a in arms:
        if a.kind == "optkit":
            (out / f"config-{a.name.replace(':', '-')}.yaml").write_text(
                yaml.safe_dump(a.spec["config"], sort_keys=False))
    meta: dict[str, Any] = {
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": versions,
        "machine": {"cpu_model": cpu_model(), "nproc": os.cpu_count(),
                    "affinity": len(os.sched_getaffinity(0)), "loadavg_start": os.getloadavg(),
                    "platform": platform.platform()},
        "git": {"commit": run_text(["git", "rev-parse", "HEAD"], cwd=REPO),
                "dirty": bool(run_text(["git", "status", "--porcelain"], cwd=REPO))},
        "model": {"name": MODEL, "artefact": str(artefact), "row": args.row, "label": label,
                  "outputs": dict(zip(("optkit", "mlserver"), OUTPUTS[args.outputs]))},
        "arms": {a.name: {"kind": a.kind, **({"config": a.spec["config"], "path": a.spec["path"]}
                                             if a.kind == "optkit" else a.spec)} for a in arms},
        "orders": [], "runs": [],
    }
    log(f"optkit vs MLServer -> {out}")
    log(f"  arms: {', '.join(a.name for a in arms)}; {args.rounds} round(s) x "
        f"({args.warmup} s warm-up + {args.duration} s); digits row {args.row} (label {label})")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="vs-mlserver-") as tmp:
        ctx = {"out": out, "tmp": tmp, "venv": venv, "artefact": artefact,
               "repository": repository, "bodies": bodies, "body_files": body_files,
               "label": label}
        for rnd in range(1, args.rounds + 1):
            order = list(arms)
            rng.shuffle(order)
            meta["orders"].append([a.name for a in order])
            log(f"round {rnd}/{args.rounds}: {', '.join(a.name for a in order)}")
            for arm in order:
                meta["runs"].append(one_run(arm, rnd, ctx, args))
                _write(out, meta, None, args)  # partial results survive an interruption
    summary = summarise(meta["runs"], arms, args.rounds)
    meta["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    md = _write(out, meta, summary, args)
    log("")
    log(md)
    log(f"results: {out / 'results.json'}  summary: {out / 'summary.md'}")
    return 0 if any(r["valid"] for r in meta["runs"]) else 1


def _write(out: Path, meta: dict[str, Any], summary: dict[str, Any] | None,
           args: argparse.Namespace) -> str:
    doc = dict(meta)
    if summary is not None:
        doc["summary"] = summary
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if summary is None:
        return ""
    md = summary_markdown(meta, summary, args)
    (out / "summary.md").write_text(md)
    return md


if __name__ == "__main__":
    sys.exit(main())
