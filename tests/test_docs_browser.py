"""The built docs in a real browser: every page loads with no error, its formulas typeset, its images shown.

The site is built with ``mkdocs build --strict`` (or read from ``KDL_DOCS_SITE``, a site already built from this
tree), served from a local HTTP server and opened in headless Chromium, the system's (Debian's ``chromium``, or the
executable ``KDL_CHROMIUM`` names), driven by Playwright. Nothing is fetched from the network: MathJax is served
with the docs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXCLUDED = ("_ext", "results")  # mkdocs.yml's exclude_docs: not pages of the site
PAGES = sorted(
    path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md") if path.relative_to(DOCS).parts[0] not in EXCLUDED
)
# pages that must have formulas, so that a formula left untypeset everywhere cannot pass as a site with none
WITH_MATH = {"index.md", "methods/vanilla_kd.md", "reference/losses.md"}
TIMEOUT_MS = 15_000


def url_path(page: str) -> str:
    """Where mkdocs (``use_directory_urls``) serves a page: ``methods/dml.md`` at ``methods/dml/``."""
    stem = page.removesuffix(".md")
    if stem == "index":
        return ""
    return stem.removesuffix("/index") + "/"


def find_chromium() -> str:
    path = os.environ.get("KDL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "Chromium is needed to test the docs in a browser and was not found: install it with "
            "`apt-get install -y chromium` (Debian; .ci/run does) or set KDL_CHROMIUM to a Chromium executable."
        )
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("KDL_DOCS_SITE"):
        return Path(os.environ["KDL_DOCS_SITE"]).resolve()
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return out


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


# every formula arithmatex marks holds MathJax's output, and no text outside code still reads as TeX delimiters
UNTYPESET = """() => {
  const left = [];
  for (const math of document.querySelectorAll(".arithmatex")) {
    if (!math.querySelector("mjx-container")) left.push(math.textContent.trim().slice(0, 80));
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest("pre, code, script, style, mjx-container, .arithmatex")) continue;
    if (/\\\\\\(|\\\\\\)|\\\\\\[|\\\\\\]|\\$\\$/.test(node.data)) left.push(node.data.trim().slice(0, 80));
  }
  return left;
}"""

# every image, lazy ones too, loaded (complete) and then shown (a broken one completes with naturalWidth 0)
IMAGES_SETTLED = """() => {
  const images = Array.from(document.images);
  images.forEach((image) => { image.loading = "eager"; });
  return images.every((image) => image.complete);
}"""
BROKEN_IMAGES = "() => Array.from(document.images).filter((i) => i.naturalWidth === 0).map((i) => i.src)"


def settle(page: Page, condition: str) -> None:
    """Wait until ``condition`` (a JavaScript function) holds, or ``TIMEOUT_MS`` has passed."""
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(condition)


@pytest.fixture(scope="module")
def context(browser: Browser) -> Iterator[BrowserContext]:
    """One browser profile for every page, as a reader's: MathJax and the theme's assets are fetched once."""
    opened = browser.new_context()
    opened.set_default_timeout(TIMEOUT_MS)
    yield opened
    opened.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    opened = context.new_page()
    yield opened
    opened.close()


@pytest.mark.parametrize("name", PAGES)
def test_the_page_loads_in_a_browser_with_no_error(page: Page, base_url: str, name: str) -> None:
    errors: list[str] = []
    page.on(
        "console",
        lambda message: errors.append(f"console {message.type}: {message.text}") if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url} ({request.failure})"))
    page.on(
        "response",
        lambda response: errors.append(f"HTTP {response.status}: {response.url}") if response.status >= 400 else None,
    )

    response = page.goto(base_url + url_path(name), wait_until="load")
    assert response is not None and response.ok, f"{name}: {response and response.status}"

    formulas = page.locator(".arithmatex").count()
    if name in WITH_MATH:
        assert formulas > 0, f"{name} has no formula marked for MathJax"
    if formulas:
        # MathJax typesets on its own startup, and again on mkdocs-material's document$; a page where it never
        # finishes is reported by the checks below, not by the wait
        settle(
            page,
            "() => window.MathJax && MathJax.startup && MathJax.startup.promise && MathJax.startup.promise.then(() => true)",
        )
        settle(
            page,
            "() => Array.from(document.querySelectorAll('.arithmatex')).every((m) => m.querySelector('mjx-container'))",
        )
    settle(page, IMAGES_SETTLED)
    # let callbacks queued by the load (document$ subscribers, promise chains) run before the errors are read
    page.evaluate(
        "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(done))))"
    )

    problems = errors + [f"formula left as TeX: {text}" for text in page.evaluate(UNTYPESET)]
    problems += [f"image not shown: {src}" for src in page.evaluate(BROKEN_IMAGES)]
    assert not problems, f"{name}:\n" + "\n".join(problems)
    if formulas:
        assert page.locator("mjx-container").count() >= formulas
