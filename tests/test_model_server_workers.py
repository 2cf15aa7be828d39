"""``optkit serve model-server --workers 2``: two processes on one port, then a drain.

Real processes on 127.0.0.1: the parent deals connections to the workers in turn (each
answer says which worker gave it in ``optkit-worker``), a keep-alive connection stays
with its worker, each worker's own port reports exactly the requests it answered (in
``/stats`` and in Triton's statistics extension), and
SIGTERM to the parent drains both: every request in flight is answered 200.
"""

from __future__ import annotations

import collections
import http.client
import json
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from optkit._config import ServiceConfig
from optkit.service._launcher import launch_service

CONFIG = ServiceConfig.from_dict({
    "name": "workers",
    # predict in a thread: a worker's loop keeps accepting while a slow request runs
    "batching": {"enabled": True, "executor": "thread"},
    "loading": {"models": ["digits-mlp", "synthetic"],
                "parameters": {"synthetic": {"cost_a_us": 300000.0}}},  # 0.3 s a call
})
DIGIT = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                "data": [0.0] * 64}]}).encode()
SLOW = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                               "data": [0.0] * 16}]}).encode()


def _post(url: str, body: bytes) -> tuple[int, str]:
    """One request on a new connection (urllib keeps none): the parent picks the worker."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as resp:
        return resp.status, resp.headers["optkit-worker"]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_two_workers_share_the_port_and_drain_on_sigterm(repository: Path,
                                                         tmp_path: Path) -> None:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG.to_dict(), sort_keys=False))
    svc = launch_service("model-server", ["--repository", str(repository), "--workers", "2"],
                         workdir=tmp_path, config_path=config_path)
    try:
        table = json.loads((tmp_path / "model-server.port.workers.json").read_text())
        assert [row["worker"] for row in table] == [0, 1]
        assert len({row["pid"] for row in table} | {svc.pid}) == 3
        # dealt in turn: 40 new connections, 20 to each worker; each one's books match
        answered = collections.Counter(
            _post(svc.url + "/v2/models/digits-mlp/infer", DIGIT)[1] for _ in range(40))
        assert answered == {"0": 20, "1": 20}, answered
        for row in table:
            own = _get(str(row["url"]) + "/stats")["server"]
            assert own["infer_requests"] == answered[str(row["worker"])], (row, answered)
            # Triton's statistics extension too: each worker's own, nothing summed
            (model,) = _get(str(row["url"]) + "/v2/models/digits-mlp/stats")["model_stats"]
            assert model["inference_stats"]["success"]["count"] == answered[str(row["worker"])]
        # drain: slow requests in flight on both workers, then SIGTERM to the parent alone
        results: list[tuple[int, str] | BaseException] = []

        def one() -> None:
            try:
                results.append(_post(svc.url + "/v2/models/synthetic/infer", SLOW))
            except BaseException as exc:  # handed to the assertion below
                results.append(exc)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while sum(_get(str(r["url"]) + "/stats")["server"]["in_flight"] for r in table) < 8 \
                + 2 and time.monotonic() < deadline:  # 8 slow ones + each /stats call itself
            time.sleep(0.01)
        svc.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert svc.process.wait(30) == 0
        assert len(results) == 8, results
        assert all(r[0] == 200 for r in results), results  # type: ignore[index]
        log = svc.log_tail(50).splitlines()
        receipts = [line for line in log if "after draining" in line]
        assert len(receipts) == 2 and all("in_flight=0" in r for r in receipts), receipts
        # the parent's count: the 40 above, the 8 slow ones (and the launcher's probe), in turn
        dealt = next(line for line in log if "connections dealt" in line)
        counts = json.loads(dealt.rsplit(": ", 1)[1])
        assert abs(counts[0] - counts[1]) <= 1 and sum(counts) >= 48, dealt
    finally:
        svc.stop(10)


def test_keep_alive_connections_are_dealt_evenly_and_stay(repository: Path,
                                                          tmp_path: Path) -> None:
    """Eight keep-alive connections: four per worker, each answered by one worker only;
    clients that leave before being served (connect, close) cost nothing and nobody."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG.to_dict(), sort_keys=False))
    svc = launch_service("model-server", ["--repository", str(repository), "--workers", "2"],
                         workdir=tmp_path, config_path=config_path)
    host, port = "127.0.0.1", int(svc.url.rsplit(":", 1)[1])
    conns: list[http.client.HTTPConnection] = []
    try:
        for _ in range(10):  # gone before a worker sees them
            with socket.create_connection((host, port), timeout=5):
                pass
        table = json.loads((tmp_path / "model-server.port.workers.json").read_text())
        for _ in range(8):
            conns.append(http.client.HTTPConnection(host, port, timeout=20))
        seen: list[set[str]] = []
        for _ in range(3):  # three requests on each connection, round after round
            for i, conn in enumerate(conns):
                conn.request("POST", "/v2/models/digits-mlp/infer", DIGIT,
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                assert resp.status == 200, resp.read()
                resp.read()
                if len(seen) <= i:
                    seen.append(set())
                seen[i].add(resp.headers["optkit-worker"])
        assert all(len(workers) == 1 for workers in seen), seen  # a connection stays put
        per_worker = collections.Counter(next(iter(w)) for w in seen)
        assert per_worker == {"0": 4, "1": 4}, per_worker
        for row in table:  # the worker's own books agree (its /stats call is a 5th one)
            assert _get(str(row["url"]) + "/stats")["server"]["open_connections"] == 5
    finally:
        for conn in conns:
            conn.close()
        svc.stop(10)
