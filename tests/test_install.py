"""The two installs: ``pip install optkit`` serves (gateway, model server, load generator) with
none of the lab's libraries; ``optkit[lab]`` adds them, and a lab command says so without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the lab's libraries, as imported (``optkit[lab]`` in pyproject.toml)
LAB_MODULES = ("scipy", "pandas", "matplotlib", "seaborn", "psutil", "tqdm", "papermill",
               "nbclient", "nbconvert", "nbformat", "ipykernel", "IPython", "jupyter_client",
               "optuna")

#: a Python whose import system refuses the lab's libraries, as a serving install would lack them
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {LAB_MODULES!r}
    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Absent())
""")


def run_without_lab(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_serving_part_imports_none_of_the_lab() -> None:
    """The service, the layers, the models, the codec, the load generator and the CLI import
    with the lab's libraries absent, and pull none of them in."""
    done = run_without_lab("""
        import sys
        import optkit, optkit.cli, optkit.service, optkit.layers, optkit.models, optkit.v2
        import optkit.bench, optkit.bench._worker, optkit.bench._engine
        optkit.cli.build_parser()
        for name in optkit.bench.__all__:
            getattr(optkit.bench, name)
        for name in optkit._FACE:  # every serving name of the face (the lab's are below)
            if name != ".lab":
                for attr in optkit._FACE[name]:
                    getattr(optkit, attr)
        print(sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_lab_command_without_the_lab_says_what_to_install() -> None:
    """``optkit compare`` on a serving install exits 2 naming ``optkit[lab]``; the face's lab
    names raise the same advice."""
    done = run_without_lab("""
        import sys
        from optkit.cli import main
        try:
            main(["compare", "a.yaml", "b.yaml"])
        except SystemExit as exc:
            print("exit", exc.code)
        import optkit
        try:
            optkit.compare
        except ModuleNotFoundError as exc:
            print("face:", exc)
    """)
    assert done.returncode == 0, done.stderr
    assert "exit 2" in done.stdout
    assert "pip install 'optkit[lab]'" in done.stderr
    assert "optkit.compare is part of the measurement lab" in done.stdout


def test_the_core_dependencies_hold_none_of_the_lab() -> None:
    """pyproject.toml: the lab's libraries are in the ``lab`` extra, not in what every install
    gets; ``dev`` (what make test installs) includes the lab."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("=")[0].split(";")[0].strip().lower()
            for dep in project["dependencies"]}
    lab = {dep.split(">")[0].strip().lower() for dep in project["optional-dependencies"]["lab"]}
    assert core and lab and not core & lab
    assert {"pandas", "scipy", "matplotlib", "papermill", "ipykernel"} <= lab
    assert "optkit[lab]" in project["optional-dependencies"]["dev"]
