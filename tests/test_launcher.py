"""Launching stacks as processes, and stopping them without losing accepted requests."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from optkit import LaunchError, encode_infer_request
from optkit.service import launch_stack

INFER = "/v2/models/digits-mlp/infer"


async def _load_until_refused(url: str, stop_after_s: float, on_started: asyncio.Event,
                              concurrency: int = 32) -> tuple[int, int]:
    """Closed-loop load; returns (responses with 200, transport errors). Bounded in time."""
    body = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
    ok = failed = 0
    deadline = asyncio.get_running_loop().time() + stop_after_s
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def worker() -> None:
            nonlocal ok, failed
            while asyncio.get_running_loop().time() < deadline:
                try:
                    async with session.post(url + INFER, data=body) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status
                        ok += 1
                        if ok == 200:
                            on_started.set()
                except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                    failed += 1
                    await asyncio.sleep(0.01)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, failed


@pytest.mark.parametrize("tier", ["model-server", "gateway"])
async def test_sigterm_under_load_loses_no_accepted_request(repository: Path, tier: str) -> None:
    """SIGTERM mid-load: every request the server accepted is completed and answered 200."""
    stack = launch_stack(None, repository=repository)
    try:
        svc = stack.services[tier]
        started = asyncio.Event()
        load = asyncio.create_task(_load_until_refused(svc.url, 3.0, started))
        await asyncio.wait_for(started.wait(), 10)
        svc.process.terminate()
        ok, failed = await load
        assert await asyncio.to_thread(svc.process.wait, 15) == 0
        log = svc.log_path.read_text()  # before stop() removes the stack's work folder
    finally:
        stack.stop()
    receipt = re.search(r"accepted=(\d+) completed=(\d+) in_flight=(\d+) cancelled=(\d+) "
                        r"infer_requests=(\d+)", log)
    assert receipt, svc.log_tail()
    accepted, completed, in_flight, cancelled, inferred = map(int, receipt.groups())
    assert accepted == completed and in_flight == 0 and cancelled == 0
    assert ok == inferred, (ok, failed, inferred)  # every accepted inference reached the client
    assert failed > 0  # the load really ran into the shutdown


def test_launch_failure_reports_the_log(tmp_path: Path) -> None:
    """A repository that does not exist is a LaunchError before anything starts."""
    with pytest.raises(LaunchError, match="does not exist"):
        launch_stack(None, repository=tmp_path / "missing")


def test_launch_failure_of_a_process_carries_its_log(tmp_path: Path) -> None:
    """A server that exits at start-up fails the launch with the end of its log."""
    (tmp_path / "bad.yaml").write_text("server: {host: 256.0.0.1}\n")
    with pytest.raises(LaunchError, match="exited"):
        launch_stack(tmp_path / "bad.yaml", repository=tmp_path, ready_timeout_s=20)


def test_stack_stop_ends_processes(repository: Path) -> None:
    """stop() leaves no server process running."""
    with launch_stack(None, repository=repository, gateway=False) as stack:
        proc = stack.services["model-server"].process
        assert stack.url == stack.model_server_url and stack.gateway_url is None
    assert proc.poll() is not None
    assert stack.workdir is not None and not stack.workdir.exists()  # no /tmp litter


def test_cli_help_and_models_build(tmp_path: Path) -> None:
    """`optkit models build` writes a model with its accuracy; bad serve args exit non-zero."""
    run = [sys.executable, "-m", "optkit"]
    out = subprocess.run(run + ["models", "build", "--repository", str(tmp_path),
                                "--models", "digits-mlp-s"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert "digits-mlp-s" in out and "accuracy" in out
    bad = subprocess.run(run + ["serve", "gateway", "--upstream", "ftp://nowhere", "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not an http(s) or grpc:// URL" in bad.stderr


def test_a_port_taken_before_the_model_server_binds_is_retried(
        repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two tiers start at once on a port picked beforehand; if someone takes it first,
    the model server cannot bind and the pair starts again on a fresh port."""
    import socket

    from optkit.service import _launcher

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks = iter([taken])
    real = _launcher._free_port
    monkeypatch.setattr(_launcher, "_free_port", lambda: next(picks, None) or real())
    try:
        with launch_stack(None, repository=repository) as stack:
            assert stack.model_server_url != f"http://127.0.0.1:{taken}"
            assert stack.gateway_url is not None
            with urllib.request.urlopen(stack.gateway_url + "/v2/health/ready", timeout=5) as resp:
                assert resp.status == 200
    finally:
        squatter.close()


# -- how a server process starts: forked from pre-imported modules, or a fresh interpreter ----

def test_both_starts_fail_alike_with_the_log(tmp_path: Path) -> None:
    """A server that cannot bind exits the same way either start: the same status, the
    same last words in its log."""
    from optkit.service._launcher import start_service
    (tmp_path / "bad.yaml").write_text("server: {host: 256.0.0.1}\n")
    ends = {}
    for start in ("fork", "exec"):
        (tmp_path / start).mkdir()
        svc = start_service("gateway", ["--upstream", "http://127.0.0.1:9"],
                            workdir=tmp_path / start, config_path=tmp_path / "bad.yaml",
                            start=start)  # type: ignore[arg-type]
        ends[start] = (svc.process.wait(30), svc.log_tail(1))
    assert ends["fork"] == ends["exec"] and ends["fork"][0] != 0, ends
    assert "256.0.0.1" in (tmp_path / "fork" / "gateway.log").read_text()


@pytest.mark.parametrize("sig, status", [(15, 0), (9, -9)])
def test_a_forked_server_answers_and_ends_as_a_fresh_one(repository: Path, sig: int,
                                                         status: int) -> None:
    """Forked: it serves, SIGTERM drains to status 0, SIGKILL reads -9 (as Popen says)."""
    with launch_stack(None, repository=repository, start="fork") as stack:
        body = encode_infer_request({"pixels": np.zeros((1, 64), np.float32)})
        req = urllib.request.Request(stack.url + INFER, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        proc = stack.services["model-server"].process
        assert proc.poll() is None and proc.returncode is None
        proc.send_signal(sig)
        assert proc.wait(15) == status and proc.poll() == status


def test_an_unknown_start_is_refused(tmp_path: Path) -> None:
    from optkit.service._launcher import start_service
    with pytest.raises(LaunchError, match="'fork' or 'exec'"):
        start_service("gateway", [], workdir=tmp_path, config_path=tmp_path / "c.yaml",
                      start="thread")  # type: ignore[arg-type]


def test_forked_servers_left_running_stop_with_the_lab_and_main_is_not_rerun(
        repository: Path, tmp_path: Path) -> None:
    """A script that starts a forked stack and exits without stopping it: the servers are
    stopped at its exit (nothing left behind, no hang), and the children never ran the
    script's own top level again (multiprocessing's forkserver would import ``__main__``)."""
    marks = tmp_path / "marks.txt"
    pids = tmp_path / "pids.txt"
    script = tmp_path / "leaves.py"
    script.write_text(
        "import os\n"
        f"open({str(marks)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "from optkit.service import launch_stack\n"
        f"stack = launch_stack(None, repository={str(repository)!r}, start='fork')\n"
        f"open({str(pids)!r}, 'w').write(' '.join(map(str, stack.pids.values())))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(marks.read_text().split()) == 1  # the top level ran once, in the script
    left = [int(p) for p in pids.read_text().split()]
    assert len(left) == 2
    for pid in left:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", f"pid {pid} left running"
