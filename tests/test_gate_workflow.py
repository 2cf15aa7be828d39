"""The pull-request workflows of the gate (.github/workflows/perf-gate*.yml), checked here since
they cannot run here: valid against GitHub's workflow schema (as check-jsonschema vendors it,
offline), the gate's command line accepted by optkit's own parser, the base fetched, the
gate taken from the base, and the comment workflow wired to the gate's run and artifact."""

from __future__ import annotations

import json
import shlex
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from optkit.cli import build_parser
from optkit.lab import load_gate_spec

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict:
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on"
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


@pytest.mark.parametrize("name", ["perf-gate.yml", "perf-gate-comment.yml"])
def test_workflow_is_valid_against_githubs_schema(name: str) -> None:
    """Each workflow passes the GitHub workflow schema (check-jsonschema's vendored copy)."""
    schema_file = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / \
        "github-workflows.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(_load(name), schema)
    for job in _load(name)["jobs"].values():
        assert job["timeout-minutes"] <= 30  # every wait bounded, the runner's too


def test_gate_workflow_runs_the_gate_from_the_base_on_both_shas() -> None:
    """Full history (the base is checked out), the gate and its file from the base, the
    command line one optkit accepts, its exit status the job's."""
    steps = _load("perf-gate.yml")["jobs"]["gate"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0
    install = next(s for s in steps if s.get("name", "").startswith("Install the gate"))
    assert '"$BASE_SHA"' in install["run"]
    run = next(s for s in steps if s.get("id") == "gate")["run"]
    line = next(ln for ln in run.replace("\\\n", " ").splitlines() if "optkit\" gate" in ln)
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert args.command == "gate" and args.base == "$BASE_SHA" and args.head == "$HEAD_SHA"
    assert args.spec.endswith("gate-tool/perf-gate.yaml")
    assert 'exit "${{ steps.gate.outputs.exit }}"' in steps[-1]["run"]
    load_gate_spec(ROOT / "perf-gate.yaml")  # the file the base will hold checks


def test_comment_workflow_follows_the_gate_run_and_reads_its_artifact() -> None:
    """workflow_run on perf-gate (forks work), the same artifact name, the number sanitized."""
    gate, comment = _load("perf-gate.yml"), _load("perf-gate-comment.yml")
    assert comment["on"]["workflow_run"]["workflows"] == [gate["name"]]
    upload = next(s for s in gate["jobs"]["gate"]["steps"]
                  if s.get("uses", "").startswith("actions/upload-artifact"))
    download = comment["jobs"]["comment"]["steps"][0]
    assert download["with"]["name"] == upload["with"]["name"]
    assert "github.event.workflow_run.id" in download["with"]["run-id"]
    assert "tr -cd '0-9'" in comment["jobs"]["comment"]["steps"][1]["run"]
    assert gate["permissions"] == {"contents": "read"}
