"""``optkit bench --out`` writes perf_analyzer's CSV: its columns, its units, its arithmetic."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from optkit.bench import StubServer
from optkit.bench._cli import main as cli_main
from optkit.bench._perf_csv import perf_analyzer_row, write_perf_analyzer_csv
from optkit.service import Stack

#: perf_analyzer's header with server statistics (report_writer.cc, no cache, not decoupled)
HEADER = ["Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv",
          "Server Queue", "Server Compute Input", "Server Compute Infer",
          "Server Compute Output", "Client Recv", "p50 latency", "p90 latency", "p95 latency",
          "p99 latency"]


def _run(mode: str = "closed") -> tuple[dict, dict]:
    """Four requests in the window, 2/4/6/8 ms each, the last 0.5 ms of each receiving."""
    sched = np.array([100, 200, 300, 400]) * 10**6
    lat = np.array([2, 4, 6, 8]) * 10**6
    records = {"scheduled_ns": sched, "start_ns": sched, "end_ns": sched + lat,
               "first_byte_ns": sched + lat - 500_000, "error_code": np.zeros(4, np.int8)}
    summary = {"mode": mode, "load_spec": {"concurrency": 4, "rate": 250.0},
               "throughput_rps": 1234.56, "workload": {"rows": {"values": [1, 3],
                                                                "weights": [1, 1]}},
               "window_start_ns": 0, "window_end_ns": 10**9, "mean_ms": 5.0,
               "p50_ms": 5.0, "p90_ms": 7.4, "p99_ms": 7.94}
    return summary, records


def test_a_row_follows_perf_analyzers_arithmetic_in_whole_microseconds() -> None:
    """Server parts truncated to µs; network = mean - send - recv - parts; rows make inferences."""
    summary, records = _run()
    server = {"queue_ms": 1.2345, "compute_input_ms": 0.0105, "compute_infer_ms": 2.0,
              "compute_output_ms": 0.0009}
    row = perf_analyzer_row(summary, records, server)
    assert list(row) == HEADER
    assert row["Concurrency"] == 4 and row["Inferences/Second"] == "2469.12"  # 2 rows a request
    assert row["Client Send"] == 0 and row["Client Recv"] == 500
    assert [row[c] for c in HEADER[3:8]] == [1254, 1234, 10, 2000, 0]  # 5 - .5 - 3.2459 ms
    # optkit's quantiles (the inverted CDF: a latency that happened), from the records
    assert [row[c] for c in HEADER[9:]] == [4000, 8000, 8000, 8000]


def test_no_server_statistics_leaves_the_server_columns_out_and_open_loops_say_rate() -> None:
    """As perf_analyzer without server stats: no server columns; an open loop's Request Rate."""
    summary, records = _run("open")
    row = perf_analyzer_row(summary, records, None)
    assert list(row) == ["Request Rate", "Inferences/Second", "Client Send", "Client Recv",
                         *HEADER[9:]]
    assert row["Request Rate"] == 250.0


def test_parts_beyond_the_client_mean_floor_the_network_at_zero(tmp_path: Path) -> None:
    """perf_analyzer caps Network+Server Send/Recv at 0; the file is its header and one row."""
    summary, records = _run()
    server = {"queue_ms": 9.0, "compute_input_ms": 0.0, "compute_infer_ms": 1.0,
              "compute_output_ms": 0.0}
    row = perf_analyzer_row(summary, records, server)
    assert row["Network+Server Send/Recv"] == 0
    path = write_perf_analyzer_csv(tmp_path / "pa.csv", row)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(HEADER) and len(lines) == 2


def test_bench_out_writes_the_csv_with_a_real_servers_statistics(stack: Stack,
                                                                 tmp_path: Path) -> None:
    """optkit bench --out against a real model server: every server column is filled."""
    code = cli_main(["bench", "--target", stack.model_server_url, "--model", "digits-mlp",
                     "--concurrency", "4", "--warmup", "0.3", "--duration", "1",
                     "--out", str(tmp_path / "run")])
    assert code == 0
    with (tmp_path / "run" / "perf_analyzer.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert list(row) == HEADER
    assert row["Concurrency"] == "4" and float(row["Inferences/Second"]) > 50
    assert int(row["Server Compute Infer"]) > 0 and int(row["p99 latency"]) > 0
    # the server's parts fit inside the client's p99
    parts = sum(int(row[c]) for c in HEADER[4:8])
    assert parts <= int(row["p99 latency"])


def test_bench_out_against_a_server_without_statistics(tmp_path: Path) -> None:
    """A server without Triton's statistics (the stub: 404) gets the client columns only."""
    with StubServer() as server:
        code = cli_main(["bench", "--target", server.url, "--warmup", "0.2", "--duration",
                         "0.5", "--out", str(tmp_path / "run")])
    assert code == 0
    header = (tmp_path / "run" / "perf_analyzer.csv").read_text().splitlines()[0].split(",")
    assert header == ["Concurrency", "Inferences/Second", "Client Send", "Client Recv",
                      *HEADER[9:]]
