"""The environment manifest asks git for the commit and whether the tree was dirty."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from optkit.lab import environment_manifest, git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_git_state_names_the_commit_and_sees_a_dirty_tree(tmp_path: Path) -> None:
    """Clean after a commit, dirty after an edit to a tracked file or a new file, and the
    commit is git's own HEAD; outside any repository both are unknown (None), not guessed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_state(repo) == {"commit": head, "dirty": False}
    (repo / "a.txt").write_text("two\n")
    assert git_state(repo / "a.txt") == {"commit": head, "dirty": True}
    _git(repo, "checkout", "-q", "a.txt")
    (repo / "new.py").write_text("x = 1\n")
    assert git_state(repo)["dirty"] is True
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_state(outside) == {"commit": None, "dirty": None}


def test_the_manifest_records_the_state_it_is_given() -> None:
    """A session asks once and passes its state to every trial's manifest."""
    m = environment_manifest(git={"commit": "f" * 40, "dirty": True}, seed=1)
    assert m["git_commit"] == "f" * 40 and m["git_dirty"] is True and m["seed"] == 1
