"""The course website (`make site`, tools/site.py), as built in build/site/: every page's own links resolve, each
page links to its counterpart in the other language, and in Debian's Chromium a notebook page of each language
typesets its math with the vendored MathJax, shows its figures, and the search finds a word of that language.

The site is built by `make site` (.ci/run does, before the tests); without it these tests are skipped, with the
reason. The link check reads the HTML files; the browser checks open them from disk with the network off.
"""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "build" / "site"
CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(not (SITE / "en" / "index.html").exists() or not (SITE / "zh" / "index.html").exists(),
                                reason="needs the site: run `make site` first (.ci/run does)")


class Links(HTMLParser):
    """Every URL a page links to or loads: <a href>, <link href>, <img src>, <script src>, <iframe src>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name, tag) in {("href", "a"), ("href", "link"), ("src", "img"), ("src", "script"),
                                         ("src", "iframe")}:
                self.urls.append(value)


def own_targets(page: Path) -> list[tuple[str, Path]]:
    """(url, the file it names) for every link of `page` that stays inside the site."""
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    found = []
    for url in parser.urls:
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or not parts.path:
            continue  # another site, or a fragment of this page
        target = (page.parent / unquote(parts.path)).resolve()
        found.append((url, target / "index.html" if target.is_dir() else target))
    return found


def test_every_link_of_the_site_to_itself_resolves():
    pages = sorted(SITE.rglob("*.html"))
    assert len(pages) > 30, f"only {len(pages)} pages in {SITE}"
    broken = [f"{page.relative_to(SITE)} -> {url}" for page in pages if "slides" not in page.parts
              for url, target in own_targets(page) if not target.exists()]
    assert broken == [], f"{len(broken)} links of the site's own pages lead nowhere: {broken[:10]}"


@pytest.mark.parametrize("language, other", [("en", "zh"), ("zh", "en")])
def test_every_page_links_to_itself_in_the_other_language(language, other):
    pages = [page for page in (SITE / language).rglob("*.html") if "_static" not in page.parts]
    missing = []
    for page in pages:
        switch = re.search(r'<div class="language-switch"[^>]*><a href="([^"]+)"', page.read_text(encoding="utf-8"))
        if switch is None or not (page.parent / switch.group(1)).resolve().exists():
            missing.append(str(page.relative_to(SITE)))
        elif f"/{other}/" not in (page.parent / switch.group(1)).resolve().as_posix():
            missing.append(f"{page.relative_to(SITE)} (links to its own language)")
    assert missing == []


def test_every_notebook_is_a_page_of_both_sites():
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert (SITE / "en" / "notebooks" / f"{notebook.stem}.html").exists()
        assert (SITE / "zh" / "notebooks" / "zh" / f"{notebook.stem}.html").exists()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.mark.browser
@pytest.mark.timeout(120)
@pytest.mark.parametrize("language, page, word", [
    ("en", "notebooks/12_flow_matching.html", "posterior"),
    ("zh", "notebooks/zh/12_flow_matching.html", "后验"),
])
def test_a_notebook_page_shows_math_and_figures_and_search_works(browser, tmp_path, language, page, word):
    context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    remote = []
    tab.on("request", lambda request: remote.append(request.url) if not request.url.startswith(("file:", "data:"))
           else None)
    tab.goto((SITE / language / page).as_uri())
    tab.wait_for_function("document.querySelectorAll('mjx-container').length > 0", timeout=60_000)
    tab.wait_for_timeout(1000)
    tab.screenshot(path=tmp_path / "page.png")
    state = tab.evaluate("""() => ({math: document.querySelectorAll('mjx-container').length,
        errors: document.querySelectorAll('mjx-merror').length,
        images: [...document.querySelectorAll('img')].map(img => [img.getAttribute('src'), img.complete && img.naturalWidth > 0])})""")
    assert state["math"] > 20 and state["errors"] == 0, f"{state['math']} formulas, {state['errors']} errors; {tmp_path}"
    figures = [src for src, ok in state["images"] if src and src.endswith(".png")]
    assert len(figures) >= 4 and all(ok for _, ok in state["images"]), f"figures not shown: {state['images']}"
    assert remote == [], f"the page asked the network for {remote}"

    tab.goto((SITE / language / "search.html").as_uri() + f"?q={word}")
    tab.wait_for_function("document.querySelectorAll('#search-results ul.search li').length > 0", timeout=30_000)
    hits = tab.evaluate("[...document.querySelectorAll('#search-results ul.search li a')].map(a => a.textContent)")
    tab.screenshot(path=tmp_path / "search.png")
    assert len(hits) >= 2, f"search for {word!r} found {hits}; see {tmp_path}"
