"""The notebooks in a real browser: notebook 01's x_t slider in JupyterLab, and an offline slide deck.

Both drive Debian's Chromium (`apt-get install chromium`; .ci/run installs it) through Python playwright, never a
browser that playwright downloads. Without chromium they are skipped, with the reason; in CI they run. Screenshots
go to the test's tmp_path, which a failure message names. Marked `browser`: `pytest -m "not browser"` leaves them out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from tools import slides

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "01_forward_process.ipynb"
CHROMIUM = shutil.which("chromium")
# --no-sandbox: Chromium's sandbox refuses to start as root (CI runs as root); the rest keeps it off the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SLIDER = ".widget-vbox:has(.widget-slider)"  # xt_slider's VBox: [HBox(t slider, schedule), Output]
IMAGE = f"{SLIDER} .jp-OutputArea-output img"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); CI installs it"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def private_home(tmp_path, monkeypatch):
    """A HOME (and Jupyter/IPython/matplotlib dirs) under tmp_path, so nothing is written to the real home."""
    home = tmp_path / "home"
    env = {"HOME": home, "JUPYTER_CONFIG_DIR": home / "jupyter-config", "JUPYTER_RUNTIME_DIR": home / "jupyter-runtime",
           "IPYTHONDIR": home / "ipython", "MPLCONFIGDIR": home / "matplotlib", "XDG_CONFIG_HOME": home / "config",
           "XDG_CACHE_HOME": home / "cache"}
    for name, path in env.items():
        path.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("DDPM_LITE_OFFLINE", "1")  # MNIST from the bundled digits, no download attempt
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return home


@pytest.fixture
def jupyterlab(tmp_path, private_home):
    """JupyterLab on 127.0.0.1 serving a copy of notebook 01 from tmp_path; yields the notebook's URL."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = private_home / "lab-settings"
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # its toast would cover the notebook
    port, token = free_port(), secrets.token_hex(16)
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={private_home / 'workspaces'}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start; see {tmp_path / 'jupyterlab.log'}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}&reset"
    finally:
        server.send_signal(signal.SIGTERM)  # the server shuts its kernel down
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def slider_image(page) -> str | None:
    return page.locator(IMAGE).first.get_attribute("src") if page.locator(IMAGE).count() else None


def digest(src: str | None) -> str:
    """A short name for an image's data URI, for assertion messages."""
    return "none" if src is None else hashlib.sha256(src.encode()).hexdigest()[:12]


def wait_for_image(page, changed_from: str | None = None, equal_to: str | None = None, timeout_s: float = 30):
    """Poll the slider's image src until it differs from `changed_from` (and has been stable for 1.5 s: each key
    press is one redraw) or equals `equal_to`; return the last src seen."""
    deadline = time.monotonic() + timeout_s
    src, stable_since = slider_image(page), time.monotonic()
    while time.monotonic() < deadline:
        now = slider_image(page)
        if now != src:
            src, stable_since = now, time.monotonic()
        if equal_to is not None and src == equal_to:
            break
        if changed_from is not None and src not in (changed_from, None) and time.monotonic() - stable_since > 1.5:
            break
        time.sleep(0.1)
    return src


@pytest.mark.timeout(240)
def test_xt_slider_redraws_when_moved_with_the_keyboard(jupyterlab, browser, tmp_path):
    """Run notebook 01 in JupyterLab, press ArrowRight on the t slider: x_t is redrawn; ArrowLeft brings it back.

    The figure's noise is drawn once, so the drawing is a function of t: back at the first t the image must be the
    first image again, byte for byte (a redraw that ignored t, or no redraw at all, fails).
    """
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page.goto(jupyterlab)
    page.locator("#jp-main-statusbar").get_by_text("Idle").wait_for()  # the kernel is up (see browser-testing note)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.locator(f"{SLIDER} .widget-slider .noUi-handle").wait_for(timeout=180_000)
    page.locator(IMAGE).first.wait_for()
    page.locator(IMAGE).first.scroll_into_view_if_needed()
    readout = page.locator(f"{SLIDER} .widget-slider .widget-readout").first
    first_t, first_src = readout.inner_text(), slider_image(page)
    page.screenshot(path=shots / "1-before.png")
    assert first_src.startswith("data:image/png"), f"no x_t image; see {shots}"

    page.locator(f"{SLIDER} .widget-slider .noUi-handle").first.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    moved_src = wait_for_image(page, changed_from=first_src)
    page.screenshot(path=shots / "2-after-right.png")
    moved_t = readout.inner_text()
    assert int(moved_t) == int(first_t) + 3, f"the slider did not move with the keyboard; see {shots}"
    changed = moved_src != first_src
    assert changed, f"t went {first_t} -> {moved_t} but the x_t image stayed {digest(first_src)}; see {shots}"

    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    back_src = wait_for_image(page, equal_to=first_src)
    page.screenshot(path=shots / "3-back-left.png")
    assert readout.inner_text() == first_t, f"the slider did not come back to t = {first_t}; see {shots}"
    same = back_src == first_src
    assert same, (f"back at t = {first_t} the image is {digest(back_src)}, not the {digest(first_src)} drawn there "
                  f"first; see {shots}")


def formulas(notebook: Path) -> int:
    """How many $...$ and $$...$$ formulas the shown markdown cells hold (code spans left out)."""
    nb = json.loads(notebook.read_text())
    shown = [cell for cell in nb["cells"] if cell["cell_type"] == "markdown"
             and cell["metadata"].get("slideshow", {}).get("slide_type") != "skip"]
    text = re.sub(r"`[^`]*`", "", "\n".join("".join(cell["source"]) for cell in shown))
    return len(re.findall(r"\$\$.+?\$\$|\$[^$]+?\$", text, flags=re.DOTALL))


@pytest.mark.timeout(120)
def test_offline_deck_renders_with_the_network_off(browser, tmp_path, private_home):
    """An offline deck (`make slides-offline`) opened from disk with no network: reveal.js starts, MathJax typesets
    every formula, the arrow key moves to the next slide, and the browser asks for nothing but local files."""
    vendored = ROOT / "build" / "slides" / "vendor"
    if not (vendored / "mathjax" / "MathJax.js").exists():
        pytest.skip("needs the vendored reveal.js and MathJax: run `make slides-offline` first (.ci/run does)")
    deck = slides.export(NOTEBOOK, tmp_path, offline=True)
    (tmp_path / "vendor").symlink_to(vendored)
    context = browser.new_context(offline=True, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    requests, failed = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("requestfailed", lambda request: failed.append(f"{request.url}: {request.failure}"))
    page.goto(deck.as_uri())
    try:
        page.wait_for_function("document.querySelector('.reveal.ready') !== null", timeout=30_000)
        page.wait_for_function("window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0"
                               " && document.querySelectorAll('.MathJax_CHTML').length > 0", timeout=60_000)
        page.keyboard.press("ArrowRight")
        page.wait_for_function("location.hash === '#/1'", timeout=10_000)
    except PlaywrightTimeout:
        pass  # the assertions below say what is missing
    page.screenshot(path=tmp_path / "deck.png")
    state = page.evaluate("""() => ({ready: document.querySelector('.reveal.ready') !== null, hash: location.hash,
        typeset: document.querySelectorAll('.MathJax_CHTML').length,
        errors: document.querySelectorAll('.MathJax_CHTML .mjx-merror, .MathJax_Error').length})""")
    remote = [url for url in requests if not url.startswith(("file:", "data:"))]
    assert remote == [] and failed == [], f"the offline deck asked for {remote} and failed on {failed}"
    assert state["ready"] and state["hash"] == "#/1", f"reveal.js did not start or move: {state}; see {tmp_path}"
    assert state["errors"] == 0 and state["typeset"] >= formulas(NOTEBOOK), (
        f"{state['typeset']} formulas typeset ({state['errors']} errors), {formulas(NOTEBOOK)} in the markdown")


CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.timeout(120)
def test_chinese_deck_renders_cjk_text_and_math(browser, tmp_path, private_home):
    """The Chinese edition's deck of notebook 02 (`make slides-offline` builds build/slides/zh/), offline: MathJax
    typesets every formula, and Chromium draws the Chinese text of the title slide with a font that has the glyphs.
    Asked through the DevTools protocol (CSS.getPlatformFontsForNode, the fonts the renderer used for a node's
    text): at least as many glyphs come from a CJK font as the heading has Chinese characters. Without one
    (fonts-noto-cjk; .ci/run installs it) the characters fall back to a Latin font and show as empty boxes."""
    vendored = ROOT / "build" / "slides" / "vendor"
    if not (vendored / "mathjax" / "MathJax.js").exists():
        pytest.skip("needs the vendored reveal.js and MathJax: run `make slides-offline` first (.ci/run does)")
    notebook = ROOT / "notebooks" / "zh" / "02_posterior.ipynb"
    deck = slides.export(notebook, tmp_path, offline=True)
    (tmp_path / "vendor").symlink_to(vendored)
    context = browser.new_context(offline=True, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(deck.as_uri())
    try:
        page.wait_for_function("document.querySelector('.reveal.ready') !== null", timeout=30_000)
        page.wait_for_function("window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0"
                               " && document.querySelectorAll('.MathJax_CHTML').length > 0", timeout=60_000)
    except PlaywrightTimeout:
        pass  # the assertions below say what is missing
    page.screenshot(path=tmp_path / "deck.png")
    typeset = page.evaluate("document.querySelectorAll('.MathJax_CHTML').length")
    errors = page.evaluate("document.querySelectorAll('.MathJax_CHTML .mjx-merror, .MathJax_Error').length")
    assert errors == 0 and typeset >= formulas(notebook), f"{typeset} formulas typeset ({errors} errors); see {tmp_path}"

    heading = page.locator(".reveal .slides h1").first
    text = heading.inner_text()
    assert len(CJK.findall(text)) >= 4, f"the title is not Chinese: {text!r}"
    session = context.new_cdp_session(page)
    session.send("DOM.enable")
    session.send("CSS.enable")
    root = session.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = session.send("DOM.querySelector", {"nodeId": root, "selector": ".reveal .slides h1"})["nodeId"]
    fonts = session.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    cjk_glyphs = sum(font["glyphCount"] for font in fonts if re.search(r"CJK|Han|Hei|Ming|Song|Kai|WenQuanYi", font["familyName"]))
    assert cjk_glyphs >= len(CJK.findall(text)), (
        f"the title's {len(CJK.findall(text))} Chinese characters were drawn with {fonts}: no CJK font (empty boxes); "
        f"see {tmp_path / 'deck.png'}")
