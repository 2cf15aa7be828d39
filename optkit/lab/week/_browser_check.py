"""Check the HTML reports the way a reader meets them: rendered in a real headless Chromium.

Reading the HTML text proves little about what a person sees (an ``<img>`` whose data does not
decode still matches ``<img``); so each report is opened in Chromium, driven by Playwright, and
the rendered page is asked what it shows:

- every ``<img>`` has loaded and has a natural size > 0, and a day report has at least one;
- no stderr output block (nbconvert writes ``data-mime-type="application/vnd.jupyter.stderr"``)
  and no ``<Figure size ...>`` text where a figure should be drawn;
- a day report shows its headline table (the columns ``week.headline`` writes);
- the page fits a laptop's window (``VIEWPORT``, 1200 px wide): nothing runs off its right
  edge (a wide table or output may scroll inside its own box, as JupyterLab's outputs do).

Used by ``optkit check-reports RUN_FOLDER`` and by the tests. Chromium comes from Debian
(``/usr/bin/chromium``; ``make test`` installs it): Playwright's own browser download does not
work on a machine without general internet. Pages are loaded offline: any request that is not
``file:`` or ``data:`` is refused, so a report cannot depend on the network to look right.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

from ._days import DAYS, SERVICE_DAY

__all__ = ["check_report_folder", "ReportCheck", "BrowserUnavailable", "browser_problem", "check_reports",
           "report_files", "failures",
           "chromium_path", "CHROMIUM_ARGS"]

#: Flags for Chromium on a closed, headless machine, run as root: without the networking and
#: update flags Chromium keeps trying hosts it cannot reach.
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync")
#: The header cells of the table ``optkit.week.headline`` renders.
HEADLINE_COLUMNS = ("metric", "change", "95 % CI", "verdict")
STDERR_MIME = "application/vnd.jupyter.stderr"
LOAD_TIMEOUT_MS = 30_000  # per page; a report is one self-contained file
#: the window every report is opened in: a laptop's screen, narrower than the 1,300 px the
#: run's index once ran over
VIEWPORT = {"width": 1200, "height": 900}

# Runs in the page: what the reader sees, in one round trip.
_PROBE_JS = """([stderrMime, headlineColumns]) => {
  const images = Array.from(document.images).map(img => ({
    src: img.currentSrc.slice(0, 60), loaded: img.complete && img.naturalWidth > 0}));
  const stderr = Array.from(document.querySelectorAll(`[data-mime-type="${stderrMime}"]`))
    .filter(el => el.innerText.trim().length > 0).length;
  const headline = Array.from(document.querySelectorAll('table')).some(table => {
    const heads = Array.from(table.querySelectorAll('th')).map(th => th.innerText.trim());
    return headlineColumns.every(c => heads.includes(c)) && table.offsetHeight > 0;
  });
  const placeholders = (document.body.innerText.match(/<Figure size [^>]*>/g) || []).length;
  const overflow = Math.max(0, document.documentElement.scrollWidth - window.innerWidth);
  return {images, stderr, headline, placeholders, overflow};
}"""


class BrowserUnavailable(RuntimeError):
    """Playwright or Chromium is missing or does not start: the check cannot run here."""


@dataclasses.dataclass(frozen=True)
class ReportCheck:
    """What one rendered report showed, and whether that passes."""

    path: Path
    images_total: int
    images_loaded: int
    stderr_blocks: int
    figure_placeholders: int
    headline: bool | None  # None: not a day report, no headline expected
    error: str = ""
    screenshot: Path | None = None
    overflow_px: int = 0  # how far the page runs past the window's right edge

    @property
    def problems(self) -> list[str]:
        """Each failed expectation in words (empty: the report reads as it should)."""
        found = [self.error] if self.error else []
        if self.images_loaded < self.images_total:
            found.append(f"{self.images_total - self.images_loaded} image(s) not loaded")
        if self.headline is not None and self.images_total == 0 and not self.error:
            found.append("no figure drawn")
        if self.stderr_blocks:
            found.append(f"{self.stderr_blocks} stderr block(s)")
        if self.figure_placeholders:
            found.append(f"{self.figure_placeholders} '<Figure size ...>' placeholder(s)")
        if self.headline is False:
            found.append("no headline table")
        if self.overflow_px > 0:
            found.append(f"runs {self.overflow_px} px past the right edge of a "
                         f"{VIEWPORT['width']} px window")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self, root: Path | None = None) -> str:
        """One line for the terminal."""
        name = self.path.relative_to(root) if root and self.path.is_relative_to(root) else self.path
        head = {None: "n/a", True: "yes", False: "NO"}[self.headline]
        text = (f"{'ok  ' if self.ok else 'FAIL'} {name}: images {self.images_loaded}/"
                f"{self.images_total} loaded, stderr blocks {self.stderr_blocks}, headline {head}")
        if self.problems:
            text += " — " + "; ".join(self.problems)
        if self.screenshot:
            text += f" [screenshot {self.screenshot}]"
        return text


def report_files(folder: str | Path) -> list[Path]:
    """Every ``*.html`` report under a run folder (day reports, final reports, the index)."""
    root = Path(folder)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such run folder: {root}")
    return sorted(p for p in root.rglob("*.html") if p.is_file())


def _is_day_report(path: Path) -> bool:
    return any(path.name == Path(day.notebook).with_suffix(".html").name
               for day in (*DAYS.values(), SERVICE_DAY))


def chromium_path() -> str:
    """The browser to drive: ``OPTKIT_CHROMIUM`` if set, else Debian's ``chromium``."""
    return os.environ.get("OPTKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def browser_problem() -> str:
    """Why the browser check cannot run here, or "" when it can (for a clear test skip)."""
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if not Path(chromium_path()).exists():
        return (f"Chromium not found at {chromium_path()} (make chromium: apt-get install "
                "chromium, needs root)")
    return ""


def check_reports(paths: Iterable[str | Path], *, screenshots: str | Path | None = None,
                  root: str | Path | None = None) -> list[ReportCheck]:
    """Open each report in headless Chromium and record what it shows.

    ``screenshots``: a folder for one full-page PNG per report (named after the report's path
    under ``root``). Raises ``BrowserUnavailable`` when the browser cannot be started.
    """
    problem = browser_problem()
    if problem:
        raise BrowserUnavailable(problem)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    files = [Path(p).resolve() for p in paths]
    shots = Path(screenshots) if screenshots else None
    base = Path(root).resolve() if root else None
    results = []
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_ARGS))
        except PlaywrightError as exc:
            raise BrowserUnavailable(f"Chromium did not start: {str(exc).splitlines()[0]}") from exc
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.route("**/*", _offline)
            for path in files:
                results.append(_check_one(context, path, shots, base, PlaywrightError))
        finally:
            browser.close()
    return results


def _offline(route: Any) -> None:
    url = route.request.url
    if url.startswith(("file:", "data:")):
        route.continue_()
    else:  # a report must read the same offline; and the check must not touch the network
        route.abort()


def _check_one(context: Any, path: Path, shots: Path | None, base: Path | None,
               error_type: type[Exception]) -> ReportCheck:
    day = _is_day_report(path)
    page = context.new_page()
    try:
        page.goto(path.as_uri(), wait_until="load", timeout=LOAD_TIMEOUT_MS)
        seen = page.evaluate(_PROBE_JS, [STDERR_MIME, list(HEADLINE_COLUMNS)])
        shot = None
        if shots is not None:
            relative = path.relative_to(base) if base and path.is_relative_to(base) else path.name
            shot = shots / (str(relative).replace(os.sep, "__").removesuffix(".html") + ".png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        images = seen["images"]
        return ReportCheck(path, len(images), sum(1 for i in images if i["loaded"]),
                           seen["stderr"], seen["placeholders"],
                           bool(seen["headline"]) if day else None, screenshot=shot,
                           overflow_px=int(seen["overflow"]))
    except error_type as exc:
        return ReportCheck(path, 0, 0, 0, 0, False if day else None,
                           error=f"page did not render: {str(exc).splitlines()[0]}")
    finally:
        page.close()


def check_report_folder(folder: str | Path, *, screenshots: str | Path | None = None,
                        out: Any = None) -> int:
    """``optkit check-reports``: one line per report; 0 if all pass, 1 if any fails, 2 if none
    or the browser is unavailable."""
    import sys

    out = out or sys.stdout
    root = Path(folder)
    try:
        files = report_files(root)
    except FileNotFoundError as exc:
        print(f"optkit check-reports: {exc}", file=sys.stderr)
        return 2
    if not files:
        print(f"optkit check-reports: no *.html report under {root}", file=sys.stderr)
        return 2
    try:
        results = check_reports(files, screenshots=screenshots, root=root)
    except BrowserUnavailable as exc:
        print(f"optkit check-reports: cannot check in a browser: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(result.line(root.resolve()), file=out)
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} report(s) passed", file=out)
    return 1 if failed else 0


def failures(results: Sequence[ReportCheck]) -> str:
    """The failing reports' lines, for an assertion message."""
    return "\n".join(r.line() for r in results if not r.ok)
