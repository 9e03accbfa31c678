"""The HTML report in a real browser: headless Chromium driven by Playwright, scripts disabled.

Skips locally when Chromium or playwright is missing; fails when ``CI`` is set, since CI installs
both (Debian's ``chromium`` package and ``pip install playwright``, which needs no browser
download when given ``executable_path``). ``VLBENCH_CHROMIUM`` overrides the browser path.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlbench import cli
from vlbench.report import write_report
from vlbench.store import Store

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
MODELS = "vilt-b32-tiny,uniter-base-tiny,pixelbert-r50-tiny"


def _chromium() -> str:
    """The browser to drive, or skip (locally) / fail (under CI) with the reason."""
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
    path = os.environ.get("VLBENCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if reason is None and not Path(path).is_file():
        reason = f"Chromium not found at {path} (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run under CI: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Store, str]]:
    chromium = _chromium()  # before the run: a skip should cost nothing
    root = tmp_path_factory.mktemp("browser")
    db = root / "results.sqlite"
    assert cli.main(["run", "--suite", "smoke", "--models", MODELS, "--repeats", "2",
                     "--min-time", "0", "--warmup", "1", "--no-progress", "--db", str(db)]) == 0
    with Store.open(db) as store:
        yield write_report(store, [1], out=root / "report.html"), store, chromium


def test_report_renders_in_chromium(report: tuple[Path, Store, str]) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    path, store, chromium = report
    cases = store.cases(1)
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(java_script_enabled=False,
                                          viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.resolve().as_uri(), wait_until="load")

            assert problems == []
            assert [url for url in requests if not url.startswith("file:")] == []
            svgs = page.locator("figure.chart > svg")
            assert svgs.count() == 2 == page.locator("svg").count()
            for index in range(svgs.count()):
                box = svgs.nth(index).bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 100
            assert page.locator("tr.case-row").count() == len(cases)
            assert page.locator("tr.table6-row").count() == len({c.spec.model for c in cases})
            ok = [c for c in cases if c.status == "ok"]
            assert page.locator("tr.stage-row").count() == sum(len(c.stages) for c in ok)
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width >= 1280 and image.height > 2000
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, bars in seven colours, shading
