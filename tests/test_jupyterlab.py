"""Monday's notebook in JupyterLab, as a person runs it: a real JupyterLab server on loopback
(a token, no browser of its own), Debian's Chromium driven by Playwright (the browser the
report check uses, ``optkit/lab/week/_browser_check.py``), the menu's *Run All Cells*, then
*Save*.

What it pins down (issue #32): while the session cell runs, its progress is on the page (trial
k of n, updated in place); when the notebook ends the verdict table and the figures are drawn
and no cell wrote to stderr or raised; the first output is the line saying where the day's
latest executed report is; and the notebook the person saves, and its HTML export, hold
nothing of the progress. Screenshots go to the test's folder (and to ``OPTKIT_SCREENSHOTS``
when set: ``make jupyterlab-check`` keeps them in ``runs/jupyterlab/``).

Heavy (about 40 s here: JupyterLab's start, a kernel, a quick session of 3 pairs); ``make
jupyterlab-check``, part of ``make heavy``. Skips, saying why, without Chromium or Playwright.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01-connection-pooling.ipynb"
PROGRESS = re.compile(r"trial (\d+) of (\d+)")
START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 600

pytestmark = [pytest.mark.heavy, pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + 300)]


def _with_parameters(notebook: dict, **values: Any) -> dict:
    """The notebook with its ``parameters`` cell's assignments replaced, as a person edits them."""
    cell = next(c for c in notebook["cells"]
                if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = "".join(cell["source"]).splitlines()
    for name, value in values.items():
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} ="))
        lines[index] = f"{name} = {value!r}"
    cell["source"] = [line + "\n" for line in lines[:-1]] + lines[-1:]
    return notebook


@pytest.fixture(scope="module")
def project(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder as a person has it: ``notebooks/`` with Monday (``quick = True``),
    the repository's ``experiments/``, the models in ``build/models``, and an earlier week's
    report under ``runs/``."""
    root = tmp_path_factory.mktemp("project")
    (root / "notebooks").mkdir()
    (root / "experiments").symlink_to(ROOT / "experiments")
    (root / "build").mkdir()
    (root / "build" / "models").symlink_to(repository)  # the notebook's default repository
    notebook = json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())
    _with_parameters(notebook, quick=True)  # the rest as committed: paths in the project
    (root / "notebooks" / NOTEBOOK).write_text(json.dumps(notebook, indent=1))
    earlier = root / "runs" / "week-20261201-090000" / "mon"
    earlier.mkdir(parents=True)
    (earlier / NOTEBOOK).write_text("{}")
    (earlier / NOTEBOOK.replace(".ipynb", ".html")).write_text("<html></html>")
    return root


@pytest.fixture(scope="module")
def jupyterlab(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """JupyterLab serving ``project`` on 127.0.0.1 (a free port, a token): its base URL with
    the token. Its own config, data and runtime folders, so nothing of the user's applies."""
    from optkit.lab.week._browser_check import browser_problem

    problem = browser_problem()
    if problem:
        pytest.skip(f"JupyterLab check skipped: {problem}")
    if importlib.util.find_spec("jupyterlab") is None:
        pytest.skip("JupyterLab check skipped: jupyterlab is not installed (pip install -e '.[dev]')")
    home = tmp_path_factory.mktemp("jupyter")
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    env.pop("OPTKIT_QUICK", None)  # the notebook's own parameters say quick
    env.pop("JPY_SESSION_NAME", None)
    log = (home / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port=0", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={project}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--ServerApp.allow_root=True"],  # CI and this machine run as root
        cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        info = _server_info(home / "runtime", server, log.name)
        yield f"http://127.0.0.1:{info['port']}/lab/tree/notebooks/{NOTEBOOK}?token={token}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernels down
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _server_info(runtime: Path, server: subprocess.Popen, log: str) -> dict[str, Any]:
    """The running server's ``jpserver-<pid>.json`` (its port), once it has written it."""
    deadline = time.monotonic() + START_TIMEOUT_S
    path = runtime / f"jpserver-{server.pid}.json"
    while time.monotonic() < deadline and server.poll() is None:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:  # being written
                pass
        time.sleep(0.2)
    raise AssertionError(f"JupyterLab did not start (exit status {server.poll()}):\n"
                         + Path(log).read_text()[-3000:])


def _executed(path: Path) -> bool:
    """Whether the notebook on disk has every code cell executed (saved after the run)."""
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return False
    return all(c.get("execution_count") for c in cells if c["cell_type"] == "code")


def _loopback_only(route: Any) -> None:
    # Runs in this process, when Playwright's sync API is handling events: the test waits
    # with page.wait_for_timeout, never time.sleep, or the page's requests wait with it.
    url = route.request.url
    if url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")):
        route.continue_()
    else:  # JupyterLab's news and update checks, or anything else off this machine
        route.abort()


# Runs in the page: each code cell's prompt and the text of each of its outputs. textContent,
# not innerText: JupyterLab skips rendering cells out of view (content-visibility), and
# innerText reads what is rendered.
_CELLS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell')).map(cell => ({
  prompt: ((cell.querySelector('.jp-InputPrompt') || {}).textContent || '').trim(),
  outputs: Array.from(cell.querySelectorAll('.jp-OutputArea-output')).map(o => o.textContent)}))"""

# Runs in the page once the notebook ran: what the person sees in its outputs.
_SEEN_JS = """([headlineColumns]) => {
  const area = document.querySelector('.jp-Notebook');
  const images = Array.from(area.querySelectorAll('.jp-OutputArea-output img'));
  const stderr = Array.from(area.querySelectorAll(
    '[data-mime-type="application/vnd.jupyter.stderr"]'))
    .map(el => el.textContent.trim()).filter(text => text.length > 0);
  const headline = Array.from(area.querySelectorAll('.jp-OutputArea-output table')).some(t => {
    const heads = Array.from(t.querySelectorAll('th')).map(th => th.textContent.trim());
    return headlineColumns.every(c => heads.includes(c));
  });
  return {images: images.length, loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
          stderr, headline};
}"""

# Runs in the page: the progress line in the middle of the window, for the screenshot.
_SHOW_PROGRESS_JS = """() => {
  const line = document.querySelector('.optkit-progress');
  if (line) line.scrollIntoView({block: 'center'});
  return line !== null;
}"""


# Runs in the page: answer what JupyterLab asks on the way as a person would. Its kernel
# dialog (it may ask which kernel to start, the notebook's own preselected): Select. Its
# offer of news: No.
_ANSWER_JS = """() => {
  const dialog = document.querySelector('.jp-Dialog');
  if (dialog && dialog.textContent.includes('Select Kernel')) {
    dialog.querySelector('.jp-mod-accept').click();
    return 'kernel selected';
  }
  const no = Array.from(document.querySelectorAll('.Toastify button, .jp-Notification-Toast button'))
    .find(b => b.textContent.trim() === 'No');
  if (no) { no.click(); return 'news declined'; }
  return '';
}"""

# Runs in the page: whether the kernel is up and idle (the status bar says so).
_KERNEL_IDLE_JS = """() => /\\| Idle/.test(
  (document.querySelector('#jp-main-statusbar') || document.body).textContent)"""


def _menu(page: Any, menu: str, item: str) -> None:
    """Pick ``item`` (its label) from the menu bar's ``menu``, as a person clicks it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.click(f".lm-MenuBar-item:has(.lm-MenuBar-itemLabel:text-is('{menu}'))")
    try:
        page.click(f".lm-Menu-item:has(.lm-Menu-itemLabel:text-is('{item}'))", timeout=10_000)
    except PlaywrightTimeout:
        shown = page.evaluate("() => Array.from(document.querySelectorAll('.lm-Menu-item'))"
                              ".map(e => `${e.dataset.command}: ${e.textContent}`)")
        raise AssertionError(f"no {item!r} in the {menu} menu; it shows {shown}") from None


@pytest.fixture(scope="module")
def session(jupyterlab: str, project: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Any]:
    """Open Monday in Chromium, run all cells from the menu, watch, save: what was seen."""
    from playwright.sync_api import sync_playwright

    from optkit.lab.week._browser_check import CHROMIUM_ARGS, HEADLINE_COLUMNS, chromium_path

    shots = Path(os.environ.get("OPTKIT_SCREENSHOTS") or tmp_path_factory.mktemp("screens"))
    shots.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Any] = {"progress": [], "shots": shots}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.route("**/*", _loopback_only)
            page.goto(jupyterlab, wait_until="load", timeout=START_TIMEOUT_S * 1000)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=START_TIMEOUT_S * 1000)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and not page.evaluate(_KERNEL_IDLE_JS):
                page.evaluate(_ANSWER_JS)
                page.wait_for_timeout(200)
            page.wait_for_timeout(1000)
            page.evaluate(_ANSWER_JS)
            _menu(page, "Run", "Run All Cells")
            deadline = time.monotonic() + RUN_TIMEOUT_S
            shot_taken = False
            while time.monotonic() < deadline:
                page.evaluate(_ANSWER_JS)
                cells = page.evaluate(_CELLS_JS)
                for cell in cells:
                    for text in cell["outputs"]:
                        found = PROGRESS.search(text)
                        if found and text not in seen["progress"]:
                            seen["progress"].append(text)
                            if not shot_taken and int(found.group(1)) >= 2 \
                                    and page.evaluate(_SHOW_PROGRESS_JS):
                                page.screenshot(path=str(shots / "jupyterlab-progress.png"))
                                shot_taken = True
                prompts = [c["prompt"] for c in cells]
                if prompts and all(re.search(r"\[\d+\]", p) for p in prompts):
                    break
                page.wait_for_timeout(200)
            else:
                page.screenshot(path=str(shots / "jupyterlab-timeout.png"), full_page=True)
            seen["prompts"] = [c["prompt"] for c in page.evaluate(_CELLS_JS)]
            seen["outputs"] = [c["outputs"] for c in page.evaluate(_CELLS_JS)]
            seen.update(page.evaluate(_SEEN_JS, [list(HEADLINE_COLUMNS)]))
            page.screenshot(path=str(shots / "jupyterlab-done.png"), full_page=True)
            _menu(page, "File", "Save Notebook")  # as the person would
            saved = project / "notebooks" / NOTEBOOK
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not _executed(saved):
                page.wait_for_timeout(200)
            if not _executed(saved):  # what stopped it, for the assertion below
                page.screenshot(path=str(shots / "jupyterlab-save.png"))
                seen["dialog"] = page.evaluate(
                    "() => (document.querySelector('.jp-Dialog') || {}).textContent || ''")
        finally:
            browser.close()
    seen["saved"] = json.loads((project / "notebooks" / NOTEBOOK).read_text())
    return seen


def test_the_notebook_runs_to_the_end_with_its_verdict_and_figures(session: dict) -> None:
    """Every code cell ran (a number in each prompt); the headline verdict table and the
    figures are drawn; nothing was written to stderr (a raised cell shows there too)."""
    assert session["prompts"] and all(re.search(r"\[\d+\]", p) for p in session["prompts"]), \
        session["prompts"]
    assert session["headline"], "no verdict table with the headline's columns"
    assert session["images"] >= 2 and session["loaded"] == session["images"], session
    assert session["stderr"] == [], session["stderr"]


def test_progress_was_shown_in_the_cell_while_the_session_ran(session: dict) -> None:
    """Trial k of n appeared in the page and moved on (updated in place, one line), with the
    running pair and arm and the time; a screenshot of it was kept."""
    shown = session["progress"]
    numbers = {int(PROGRESS.search(text).group(1)) for text in shown}
    assert len(numbers) >= 2, shown
    assert any("pair" in text and "elapsed" in text for text in shown), shown
    assert (session["shots"] / "jupyterlab-progress.png").stat().st_size > 10_000


def test_no_progress_is_left_on_the_page_or_in_the_saved_notebook(session: dict) -> None:
    """Once the session ends the line is gone; the notebook the person saved, and its HTML
    export, hold no trace of it, while they do hold the run's outputs."""
    import nbformat
    from nbconvert import HTMLExporter

    assert not any(PROGRESS.search(text) for cell in session["outputs"] for text in cell)
    saved = session["saved"]
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), \
        f"the saved notebook was not executed (dialog: {session.get('dialog')!r})"
    text = json.dumps(saved)
    assert not PROGRESS.search(text) and "optkit-progress" not in text
    body, _ = HTMLExporter().from_notebook_node(nbformat.reads(text, as_version=4))
    assert not PROGRESS.search(body) and "optkit-progress" not in body
    assert "<table" in body and "data:image/png;base64" in body


def test_the_first_output_says_where_the_latest_report_is(session: dict) -> None:
    """The day opens with one line pointing at its latest executed report (here the earlier
    week's, put in the project's runs/ by the fixture)."""
    first = next(outputs for outputs in session["outputs"] if outputs)
    assert len(first) == 1 and "Latest executed report of Connection pooling (mon)" in first[0]
    assert "runs/week-20261201-090000/mon/01-connection-pooling.html" in first[0]
