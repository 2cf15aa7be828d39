"""A gateway over three model-server processes; one is SIGKILLed under steady load.

Promised (``optkit.layers.balancing``): the gateway keeps serving from the other two;
the only requests that can fail are those in flight on the killed upstream at the
kill, and with ``balancing.resend_infer`` (the default) those are resent to another
upstream and answered 200, marked ``optkit-retried: 1``; without it (the heavy
``no-resend`` case, ``make faults``) they are 502s, or requests sent to the victim
before the gateway saw it die, and nothing else fails. The killed upstream shows as
ejected in ``/stats`` and ``/metrics`` while it is down; restarted on its port, it is
probed back and takes traffic again. Counted exactly from the generator's records, and
the gateway's books agree with them request for request.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from _harness import Books, SteadyLoad, Tally, get_json, post_json, wait_until
from optkit._config import ServiceConfig
from optkit.service._launcher import ServiceProcess, _free_port, _wait_ready, launch_service, \
    start_service

def _config(resend: bool) -> ServiceConfig:
    return ServiceConfig.from_dict({
    "name": "balanced",
    "pooling": {"enabled": True},
    "server": {"upstream_timeout_s": 2.0},
    "balancing": {"eject_initial_s": 0.2, "eject_max_s": 1.0, "resend_infer": resend},
    "loading": {"models": ["digits-mlp"]},  # one model each: three servers start quickly
    })
REPLICAS = 3
DIGIT = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                "data": [0.0] * 64}]}).encode()
CONCURRENCY = 16


class Replicas:
    """N model servers on fixed ports (one workdir each) and a gateway over them."""

    def __init__(self, repository: Path, root: Path, config: ServiceConfig) -> None:
        self.repository, self.root = repository, root
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        self.ports = [_free_port() for _ in range(REPLICAS)]
        self.servers: list[ServiceProcess] = []
        self.gateway: ServiceProcess | None = None
        self.resend = True

    def start(self) -> "Replicas":
        deadline = time.monotonic() + 30
        for i, port in enumerate(self.ports):  # all at once: each spends ~0.5 s importing
            self.servers.append(start_service(
                "model-server", ["--repository", str(self.repository)], workdir=self._wd(i),
                config_path=self.config_path, port=port))
        for i, svc in enumerate(self.servers):
            svc.url = _wait_ready(svc, self._wd(i) / "model-server.port", deadline)
        self.gateway = launch_service(
            "gateway", ["--upstream", ",".join(s.url for s in self.servers)],
            workdir=self.root, config_path=self.config_path)
        return self

    def _wd(self, i: int) -> Path:
        wd = self.root / f"replica{i}"
        wd.mkdir(exist_ok=True)
        return wd

    def kill(self, i: int) -> int:
        at = time.monotonic_ns()
        self.servers[i].process.send_signal(signal.SIGKILL)
        self.servers[i].process.wait(5)
        return at

    def restart(self, i: int) -> None:
        self.servers[i] = launch_service(
            "model-server", ["--repository", str(self.repository)], workdir=self._wd(i),
            config_path=self.config_path, port=self.ports[i])

    def upstream(self, i: int) -> dict:
        assert self.gateway is not None
        return get_json(self.gateway.url + "/stats")["balancing"]["upstream"][self.servers[i].url]

    def stop(self) -> None:
        for svc in [self.gateway, *self.servers]:
            if svc is not None:
                svc.stop(10)


@pytest.fixture(params=[True, pytest.param(False, marks=pytest.mark.heavy)],
                ids=["resend", "no-resend"])
def replicas(request: pytest.FixtureRequest, repository: Path,
             tmp_path: Path) -> Iterator[Replicas]:
    r = Replicas(repository, tmp_path, _config(request.param))
    r.resend = request.param
    try:
        yield r.start()
    finally:
        r.stop()


def test_one_of_three_killed_under_load(replicas: Replicas) -> None:
    assert replicas.gateway is not None
    gw = replicas.gateway.url
    victim = 1
    before = get_json(gw + "/stats")["server"]
    with SteadyLoad(gw, concurrency=CONCURRENCY, duration_s=2.5) as load:
        load.wait_sending(200)
        served_before = [get_json(s.url + "/stats")["server"]["infer_requests"]
                         for s in replicas.servers]
        assert all(n > 0 for n in served_before), served_before  # every replica took load
        kill_at = replicas.kill(victim)
        # ejected, shown in /stats and /metrics; the gateway stays ready on the other two
        wait_until(lambda: replicas.upstream(victim)["ejections"] >= 1, "the victim ejected")
        ejected_by = time.monotonic_ns()
        down = replicas.upstream(victim)
        assert down["state"] in ("ejected", "probing") and down["healthy"] == 0, down
        assert get_json(gw + "/v2/health/ready")["ready"] is True
        with urllib.request.urlopen(gw + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        line = (f'optkit_gateway_balancing_upstream_healthy{{upstream='
                f'"{replicas.servers[victim].url}"}} 0.0')
        assert line in metrics
    tally = Tally.of(load.result())
    books = Books.between(before, get_json(gw + "/stats")["server"])
    replicas.restart(victim)  # on its port: probed back, then it takes traffic again
    wait_until(lambda: replicas.upstream(victim)["state"] == "healthy", "the victim readmitted")
    back = replicas.upstream(victim)
    for _ in range(3 * REPLICAS):  # one at a time: the tie rotates over all three again
        assert post_json(gw + "/v2/models/digits-mlp/infer", DIGIT)[0] == 200
    assert replicas.upstream(victim)["requests"] - back["requests"] >= 2
    tally.reconcile()
    retried = int(load.result().records["retried"][load.result().records["start_ns"] > 0].sum())
    stats = get_json(gw + "/stats")["balancing"]
    in_flight = tally.in_flight_at(kill_at)
    failed = np.flatnonzero(tally.status != 200)
    print("counts:", tally.summary(), "in flight at the kill:", in_flight.size,
          "failed of those:", np.intersect1d(failed, in_flight).size,
          "answered after a resend:", retried, "resends:", stats["resends"],
          "victim:", {k: back[k] for k in ("ejections", "probes", "readmissions", "resent_away")})
    assert tally.by_transport == {}, tally.summary()
    # the gateway's books: each request (a resent one once) and the generator's check,
    # answered as the client saw it; a 502 only from an upstream call
    books.reconcile(tally, preflight=1)
    assert set(books.by_cause()) <= {"upstream"}, books
    # the only failures possible are requests in flight at the kill, or sent to the victim
    # before the gateway saw it die (502s); resent, there are none
    window = [(kill_at, ejected_by)]
    assert tally.failed_outside(window).size == 0, tally.summary()
    assert set(tally.by_status) <= {200, 502}, tally.summary()
    # every answer marked resent is one the gateway resent after a drop: counted both ends
    assert retried == stats["resends"] - stats["resends_unsent"]
    if replicas.resend:
        assert failed.size == 0, tally.summary()
        assert retried <= in_flight.size <= CONCURRENCY
    else:
        assert retried == 0 and failed.size <= CONCURRENCY, tally.summary()
    assert back["ejections"] >= 1 and back["readmissions"] >= 1 and back["probes"] >= 1
    assert stats["upstreams_healthy"] == REPLICAS
