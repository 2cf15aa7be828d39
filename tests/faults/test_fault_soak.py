"""A short soak (about 25 s): mixed checked load with reloads, every layer on.

The full run is ``make soak`` (10 minutes); this one asserts only what holds at any
length: every request sent is accounted for, every answer is the right one for its
own request (zero misattributed), no errors, the swaps happened, the gateway's books
agree with the client, no descriptor but connections was added, and the connections
stayed within their pools' bounds and were all closed once the load stopped (the pools'
idle timeout: a bounded wait, not a timing). No timing is asserted.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from _harness import INTEGRATED
from optkit.lab._soak import SoakSettings, run_soak


@pytest.mark.heavy
def test_short_soak_accounts_for_every_answer(repository: Path, tmp_path: Path) -> None:
    settings = SoakSettings(minutes=25 / 60, rate=100.0, reload_every_s=6.0, sample_every_s=1.0)
    report = run_soak(repository, tmp_path, config=INTEGRATED, settings=settings)
    c = report["counts"]
    assert c["sent"] > 1000 and c["unaccounted"] == 0, c
    assert c["answered"] == c["sent"] and c["transport_failures"] == 0, c
    assert c["misattributed"] == 0, report["mismatch_samples"]
    assert c["correct"] == c["sent"] and c["by_status"] == {"200": c["sent"]}, c
    assert set(c["by_kind"]) == {"json", "binary", "swap", "stream", "wide"}, c
    assert [r["status"] for r in report["reloads"]] == [200] * len(report["reloads"]) != []
    assert report["final_swap_version"] == 1 + len(report["reloads"])
    assert report["books"]["agrees"] and report["books"]["received"] == c["sent"], report["books"]
    for tier in ("gateway", "model_server"):
        assert report["trends"][f"{tier}_other_fds"]["flat"], report["trends"]
    for name, pool in report["pools"].items():
        assert pool["peak"] <= pool["bound"] and pool["left_after_load"] == 0, (name, pool)
    saved = orjson.loads((tmp_path / "soak.json").read_bytes())
    assert saved["counts"] == c and len(saved["samples"]) >= 10
    assert (tmp_path / "soak.md").read_text().startswith("# Soak")
    assert (tmp_path / "soak.png").stat().st_size > 0
