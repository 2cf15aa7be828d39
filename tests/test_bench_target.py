"""Target checks: loopback only, and a clear, fast error for unreachable or non-v2 targets."""

from __future__ import annotations

import socket
import time
from typing import Iterator

import pytest

from optkit import BenchError
from optkit.bench import LoadSpec, StubServer, run_bench
from optkit.bench._cli import main as cli_main
from optkit.bench._target import parse_target


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    """A stub v2 server with no service time."""
    with StubServer() as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com",
                                 "http://192.168.1.2", "http://0.0.0.0:80"])
def test_non_loopback_targets_are_refused(url: str) -> None:
    """Anything outside 127.0.0.0/8, ::1 and localhost is refused before any traffic."""
    with pytest.raises(BenchError, match="loopback"):
        parse_target(url)


@pytest.mark.parametrize("url,host", [("http://127.0.0.2:81/", "127.0.0.2"),
                                      ("http://[::1]:8000", "::1"),
                                      ("localhost:9000", "127.0.0.1")])
def test_loopback_targets_are_accepted(url: str, host: str) -> None:
    """127.0.0.0/8, [::1] and localhost (with or without a scheme) are accepted."""
    assert parse_target(url).host == host


def test_https_is_refused() -> None:
    """Only plain http targets are supported."""
    with pytest.raises(BenchError, match="http://"):
        parse_target("https://127.0.0.1:8443")


def test_unreachable_target_fails_fast() -> None:
    """Nothing listening: a clear 'connection refused' error within seconds."""
    started = time.monotonic()
    with pytest.raises(BenchError, match="connection refused"):
        run_bench(f"http://127.0.0.1:{free_port()}", LoadSpec.closed(1), duration_s=1)
    assert time.monotonic() - started < 5


def test_non_v2_target_fails_fast() -> None:
    """A server without /v2/health/ready is called out as not a v2 server."""
    with StubServer(v2=False) as server:
        with pytest.raises(BenchError, match="Open Inference Protocol v2"):
            run_bench(server.url, LoadSpec.closed(1), duration_s=1)


def test_missing_model_is_named(stub: StubServer) -> None:
    """A model the target does not serve is named in the error."""
    with pytest.raises(BenchError, match="'no-such-model'"):
        run_bench(stub.url, LoadSpec.closed(1), model="no-such-model", duration_s=1)


def test_stalled_target_fails_within_the_probe_timeout() -> None:
    """A target that accepts but never answers ends the run in about the probe timeout."""
    with StubServer() as server:
        server.stall(1500)
        started = time.monotonic()
        with pytest.raises(BenchError, match="did not answer"):
            run_bench(server.url, LoadSpec.closed(1), duration_s=1, probe_timeout_s=0.5)
        assert time.monotonic() - started < 1.4


def test_cli_reports_errors_with_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI prints a one-line error and exits 1 for a bad target, 2 for bad usage."""
    assert cli_main(["bench", "--target", "http://10.1.2.3:80"]) == 1
    assert "loopback" in capsys.readouterr().err
    assert cli_main(["bench", "--target", "http://127.0.0.1:1", "--mode", "open"]) == 2
    assert "--rate" in capsys.readouterr().err
