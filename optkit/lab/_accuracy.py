"""The generator's accuracy checks, reproducible: ``python -m optkit.lab._accuracy``.

::

    1. closed loop, same target and concurrency: builtin vs wrk (req/s, p50), interleaved
    2. open loop at 2,000 req/s (constant and Poisson): achieved / offered
    3. a 200 ms stall injected mid-window: open-loop p99 and late sends vs the closed loop's
    4. client CPU per request: the raw-socket client vs aiohttp's ClientSession

The target is the stub v2 server (``_stub_server``) as its own uvloop process,
or with ``--repository DIR`` optkit's model server for checks 1 and 2 too.
Prints Markdown tables (the figures in ``docs/measurement.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from ..bench import LoadSpec, run_bench, wrk_available
from ..service import launch_stack

__all__ = ["main"]


def _stub(port: int, service_ms: float = 0.0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "optkit.bench._stub_server", "--port",
                             str(port), "--service-ms", str(service_ms), "--lifetime-s", "900"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("stub server did not start")


def closed_builtin_vs_wrk(url: str, concurrency: int, reps: int, seconds: float) -> None:
    """Interleave builtin and wrk runs; print each and the medians."""
    rows: dict[str, list[tuple[float, float, float]]] = {"builtin": [], "wrk": []}
    engines = ["builtin", "wrk"] if wrk_available() else ["builtin"]
    for _ in range(reps):
        for engine in engines:
            s = run_bench(url, LoadSpec.closed(concurrency, engine=engine),  # type: ignore[arg-type]
                          warmup_s=1, duration_s=seconds).summary
            rows[engine].append((s["throughput_rps"], s["p50_ms"], s["generator"]["cpu_percent"]))
    print(f"\nclosed:{concurrency} on {url}, {reps} interleaved runs of {seconds:g} s each\n")
    print("| engine | req/s (median) | req/s runs | p50 ms (median) | generator CPU % |")
    print("|---|---|---|---|---|")
    for engine in engines:
        r = rows[engine]
        print(f"| {engine} | {statistics.median(x[0] for x in r):,.0f} | "
              f"{', '.join(f'{x[0]:,.0f}' for x in r)} | {statistics.median(x[1] for x in r):.2f} "
              f"| {statistics.median(x[2] for x in r):.0f} |")


def open_rate(url: str, rate: float, seconds: float) -> None:
    """Offer ``rate`` with both arrival processes; print achieved fraction and lags."""
    print(f"\nopen:{rate:g} on {url}, {seconds:g} s window\n")
    print("| arrival | offered req/s | achieved req/s | achieved % | p50 ms | p99 ms | late sends "
          "| timetable lag p99 ms | generator CPU % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arrival in ("constant", "poisson"):
        s = run_bench(url, LoadSpec.open(rate, arrival=arrival), warmup_s=1,  # type: ignore[arg-type]
                      duration_s=seconds).summary
        g = s["generator"]
        print(f"| {arrival} | {s['offered_rps']:,.1f} | {s['throughput_rps']:,.1f} | "
              f"{100 * s['achieved_fraction']:.2f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s['late_sends']} | {g['schedule_lag_ms']['p99']:.2f} | {g['cpu_percent']:.0f} |")


def stall(url: str, rate: float, concurrency: int, seconds: float) -> None:
    """A 200 ms stall (POST /stub/stall) half-way through the window, open vs closed."""
    print(f"\n200 ms stall at ~{seconds / 2 + 1:g} s into each run, {seconds:g} s window\n")
    print("| load | stall | req/s | p50 ms | p99 ms | p99.9 ms | max ms | late sends |")
    print("|---|---|---|---|---|---|---|---|")
    for load in (LoadSpec.open(rate), LoadSpec.closed(concurrency)):
        for injected in (False, True):
            timer = None
            if injected:
                def fire() -> None:
                    urllib.request.urlopen(urllib.request.Request(
                        f"{url}/stub/stall?ms=200", method="POST"), timeout=5)
                timer = threading.Timer(1.0 + 1.0 + seconds / 2, fire)  # start-up + warm-up
                timer.start()
            s = run_bench(url, load, warmup_s=1, duration_s=seconds).summary
            if timer:
                timer.join()
            print(f"| {load.label} | {'yes' if injected else 'no'} | {s['throughput_rps']:,.0f} | "
                  f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['p999_ms']:.2f} | "
                  f"{s['max_ms']:.1f} | {s['late_sends']} |")


def client_cpu(url: str, concurrency: int, seconds: float) -> None:
    """CPU µs per request: the builtin generator vs a closed loop on aiohttp's client."""
    import aiohttp
    import uvloop

    s = run_bench(url, LoadSpec.closed(concurrency), warmup_s=0.5, duration_s=seconds).summary
    own = 1e6 * s["generator"]["cpu_s"] / max(1, s["completed"])
    body = b'{"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","data":[' + \
        b",".join([b"1.0"] * 64) + b"]}]}"

    async def aio() -> tuple[int, float]:
        done = 0
        async with aiohttp.ClientSession() as session:
            end = time.monotonic() + seconds

            async def user() -> None:
                nonlocal done
                while time.monotonic() < end:
                    async with session.post(f"{url}/v2/models/digits-mlp/infer", data=body,
                                            headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                    done += 1
            c0 = time.process_time()
            await asyncio.gather(*(user() for _ in range(concurrency)))
            return done, time.process_time() - c0

    n, cpu = uvloop.run(aio())
    print(f"\nclient CPU per request, closed:{concurrency}, {seconds:g} s\n")
    print("| client | req/s | CPU µs / request |\n|---|---|---|")
    print(f"| optkit raw asyncio.Protocol | {s['throughput_rps']:,.0f} | {own:.0f} |")
    print(f"| aiohttp ClientSession | {n / seconds:,.0f} | {1e6 * cpu / max(1, n):.0f} |")


def main(argv: list[str] | None = None) -> int:
    """Run the checks and print the tables."""
    p = argparse.ArgumentParser(prog="python -m optkit.lab._accuracy")
    p.add_argument("--port", type=int, default=18090)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repository", help="also check against optkit's model server")
    args = p.parse_args(argv)
    proc = _stub(args.port)
    url = f"http://127.0.0.1:{args.port}"
    try:
        closed_builtin_vs_wrk(url, 32, args.reps, args.seconds)
        open_rate(url, 2000, args.seconds * 2)
        stall(url, 2000, 32, args.seconds * 2)
        client_cpu(url, 32, args.seconds)
    finally:
        proc.terminate()
        proc.wait(10)
    if args.repository:

        with launch_stack(None, repository=args.repository, gateway=False) as stack:
            closed_builtin_vs_wrk(stack.url, 32, args.reps, args.seconds)
            open_rate(stack.url, 2000, args.seconds * 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
