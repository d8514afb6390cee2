"""`make slides` and `make slides-offline` (tools/slides.py): one notebook exported both ways, checked against itself.

The deck's structure is read off the notebook's own slide metadata, so the test holds for any notebook; 02 is used
because it is small (17 cells, 3 figures). These tests need no network: the offline deck's vendored files are
`make slides-offline`'s job, and tests/test_browser.py opens such a deck with the network off.
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from tools import slides

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "02_posterior.ipynb"



class Sections(HTMLParser):
    """Counts reveal.js's <section>s by depth: depth 1 = slides (left/right), depth 2 = subslides (up/down)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.by_depth = 0, {}

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.depth += 1
            self.by_depth[self.depth] = self.by_depth.get(self.depth, 0) + 1

    def handle_endtag(self, tag):
        if tag == "section":
            self.depth -= 1


def slide_types(nb) -> list[str]:
    return [cell.metadata.get("slideshow", {}).get("slide_type", "-") for cell in nb.cells]


@pytest.fixture(scope="module")
def nb():
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    return slides.export(NOTEBOOK, tmp_path_factory.mktemp("online")).read_text()


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    return slides.export(NOTEBOOK, tmp_path_factory.mktemp("offline"), offline=True).read_text()


@pytest.mark.parametrize("variant", ["online", "offline"])
def test_one_section_per_slide_and_subslide(variant, nb, request):
    """Every cell of type "slide" opens a slide (a <section> holding <section>s), every "subslide" a section in it."""
    html = request.getfixturevalue(variant)
    types = [t for t in slide_types(nb) if t not in {"skip", "notes"}]
    types[0] = "slide"  # nbconvert starts the deck with the first shown cell, whatever its type
    sections = Sections()
    sections.feed(html)
    assert sections.depth == 0, "unbalanced <section> tags"
    assert sections.by_depth == {1: types.count("slide"), 2: types.count("slide") + types.count("subslide")}
    assert types.count("slide") >= 5, "notebook 02 has at least five slides; a deck of one slide would pass trivially"


@pytest.mark.parametrize("variant", ["online", "offline"])
def test_figures_shown_without_their_code_and_setup_skipped(variant, nb, request):
    """Each committed figure of a shown cell is in the deck; `remove-input` hides the plotting code, not the figure;
    the setup cell (slide type "skip") and the Colab badge are left out; equations reach MathJax as TeX."""
    html = request.getfixturevalue(variant)
    shown = [cell for cell, t in zip(nb.cells, slide_types(nb)) if t != "skip"]
    figures = sum("image/png" in output.get("data", {}) for cell in shown if cell.cell_type == "code"
                  for output in cell.outputs)
    assert figures >= 3
    assert len(re.findall(r"<img[^>]*src=\"data:image/png;base64,", html)) >= figures

    text = unescape(re.sub(r"<[^>]+>", "", html))  # what the slides show, syntax highlighting undone
    hidden = [cell for cell in shown if "remove-input" in cell.metadata.get("tags", [])]
    kept = [cell for cell in shown if cell.cell_type == "code" and cell not in hidden]
    kept_lines = {line.strip() for cell in kept for line in cell.source.splitlines() if len(line.strip()) > 20}
    hidden_lines = {line.strip() for cell in hidden for line in cell.source.splitlines()
                    if len(line.strip()) > 20} - kept_lines
    assert hidden and kept and hidden_lines and kept_lines
    assert not [line for line in hidden_lines if line in text], "a remove-input cell shows its code"
    assert [line for line in kept_lines if line not in text] == [], "a code cell lost its code"
    assert "google.colab" not in html and "colab-badge" not in html
    assert "MathJax.Hub.Config" in html and r"q(x_{t-1} \mid x_t, x_0)" in html


def test_offline_deck_loads_nothing_from_the_internet(offline):
    """Acceptance: the offline deck references no http(s) resource, and every local file it loads is vendored."""
    assert slides.external_references(offline) == []
    local = set(re.findall(r"vendor/[\w.\-/]+", offline))
    assert {"vendor/reveal.js/dist/reveal.js", "vendor/mathjax/MathJax.js", "vendor/requirejs/require.js"} <= local
    for path in local:
        package, inside = path.split("/", 2)[1:]
        assert inside.startswith(slides.VENDOR[package][1]), f"{path} is not among the files vendored for {package}"


def test_online_deck_loads_reveal_and_mathjax_from_the_cdns(online):
    """The checker is not blind: in the default deck it finds the CDN copies of what the offline deck vendors."""
    remote = " ".join(slides.external_references(online))
    version = {package: version for package, (version, _) in slides.VENDOR.items()}
    # the same versions as the offline deck; jQuery 2.0.3 is not on npm, VENDOR has 2.1.0
    reveal = f"reveal.js@{version['reveal.js']}"
    for fragment in [f"{reveal}/dist/reveal.js", f"{reveal}/dist/reveal.css", f"mathjax/{version['mathjax']}/",
                     f"require.js/{version['requirejs']}/", "jquery/2.0.3/"]:
        assert fragment in remote, f"{fragment} not found among {remote}"


@pytest.mark.parametrize(("html", "found"), [
    ('<script src="https://cdn.example/x.js"></script>', 1),
    ('<link rel="stylesheet" href="//cdn.example/x.css">', 1),
    ('<img src="http://example.org/badge.svg">', 1),
    ("<style>@import url(https://fonts.example/css);</style>", 1),
    ('<div style="background: url(\'https://example.org/a.png\')"></div>', 1),
    ("<script type=\"module\">import m from 'https://cdn.example/m.mjs';</script>", 1),
    ('<script>\n// docs: https://example.org/api\nload("vendor/x.js")</script>', 0),  # a comment is not a request
    ("<style>/* colours from https://example.org */ a { color: red }</style>", 0),
    ('<a href="https://arxiv.org/abs/2006.11239">DDPM</a> see https://example.org', 0),  # links and text
    ('<svg xmlns="http://www.w3.org/2000/svg"></svg>', 0),
    ("<style>.i { background: url(\"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E\") }</style>", 0),
])
def test_external_references_tells_resources_from_links_and_text(html, found):
    assert len(slides.external_references(html)) == found
