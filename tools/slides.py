"""Export notebooks to reveal.js slide decks (`make slides`, `make slides-offline`).

Each notebook becomes `OUT/NN_name.slides.html`, laid out by its cells' slide metadata (`slideshow.slide_type`,
STYLE.md rule 15). This is nbconvert's slides exporter, the same as

    jupyter nbconvert --to slides --TagRemovePreprocessor.enabled=True \\
        --TagRemovePreprocessor.remove_input_tags remove-input --output-dir build/slides notebooks/*.ipynb

plus one preprocessor for slides only: it drops the Colab badge (a badge is no use on a projected slide, and it is an
image on the internet) and the output of widgets, which a static deck cannot run: progress bars frozen at 0% go,
a slider becomes a one-line note. Cells tagged `remove-input` show their output (the figure) without their code;
cells with slide type "skip" (the setup cells) are left out. MathJax renders the equations.

By default the deck loads reveal.js, MathJax, require.js and jQuery from public CDNs, as nbconvert does. `--offline`
(`make slides-offline`) instead fetches those packages from the npm registry with `npm pack` (versions pinned in
VENDOR) into OUT/vendor/ and points the decks at them, so OUT/ is self-contained and opens from a USB stick with no
network. Nothing fetched is committed (build/ is git-ignored); the tarballs are kept in build/npm/ for the next run.
The offline export is checked: `external_references` must find no http(s) resource in any deck.

    python tools/slides.py [--offline] [--out build/slides] notebooks/*.ipynb
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import nbformat
from jinja2 import DictLoader
from nbconvert import SlidesExporter
from nbconvert.preprocessors import Preprocessor
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
# npm package -> (version, files kept: path prefixes inside the package). The versions are those nbconvert 7's reveal
# template loads from its CDNs (reveal.js 4.0.2, MathJax 2.7.7, require.js 2.1.10); jQuery 2.0.3 is not on npm,
# 2.1.0 is the nearest (the template only calls $(...).height/find/filter/css).
VENDOR = {
    "reveal.js": ("4.0.2", ("dist/reveal.js", "dist/reveal.css", "dist/reset.css", "dist/theme/", "plugin/notes/",
                            "LICENSE")),
    # MathJax: the one configuration the deck asks for (TeX-AMS_CHTML-full,Safe), its renderers but SVG and HTML-CSS,
    # English, the TeX fonts as woff/otf; not its unpacked sources, tests or other fonts: 71 MB -> 5 MB.
    "mathjax": ("2.7.7", ("MathJax.js", "LICENSE", "config/TeX-AMS_CHTML-full.js", "config/Safe.js", "extensions/",
                          "localization/en/", "jax/input/", "jax/element/", "jax/output/CommonHTML/",
                          "jax/output/PreviewHTML/", "jax/output/NativeMML/", "fonts/HTML-CSS/TeX/woff/",
                          "fonts/HTML-CSS/TeX/otf/")),
    "requirejs": ("2.1.10", ("require.js",)),
    "jquery": ("2.1.0", ("dist/jquery.min.js", "MIT-LICENSE.txt")),
}
# Where the offline deck finds each library, relative to the deck (OUT/vendor/<package>/...).
OFFLINE_URLS = {
    "reveal_url_prefix": "vendor/reveal.js",
    "mathjax_url": "vendor/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe",  # not latest.js: that asks the CDN
    "require_js_url": "vendor/requirejs/require.js",
    "jquery_url": "vendor/jquery/dist/jquery.min.js",
}
# nbconvert's reveal template always imports mermaid.js from a CDN (mermaid_js_url is not configurable). The course
# has no mermaid diagrams, so the offline template drops the import; `export` refuses a notebook that has one.
OFFLINE_TEMPLATE = {"offline.html.j2": "{%- extends 'index.html.j2' -%}\n"
                                       "{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}\n"}
BADGE = re.compile(r"^\s*\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)[ \t]*\n?", re.MULTILINE)
WIDGET = "application/vnd.jupyter.widget-view+json"
PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's text form, "DDPM:   0%|          | 0/1000"
WIDGET_NOTES = {"en": "<p><em>Interactive widget: open the notebook to use it.</em></p>",
                "zh-CN": "<p><em>交互控件：请打开笔记本使用。</em></p>"}  # by the notebook's metadata.language


class SlidesOnly(Preprocessor):
    """Drop the Colab badge from markdown and replace widget outputs, which a static deck cannot run."""

    def preprocess(self, nb, resources):
        self.note = WIDGET_NOTES[nb.metadata.get("language", "en")]  # the Chinese edition's notebooks say zh-CN
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "markdown":
            cell.source = BADGE.sub("", cell.source)
        if cell.cell_type == "code":
            outputs = []
            for output in cell.outputs:
                data = output.get("data", {})
                if WIDGET not in data:
                    outputs.append(output)
                elif not PROGRESS_BAR.search(data.get("text/plain", "")):
                    outputs.append(nbformat.v4.new_output("display_data", data={"text/html": self.note}))
            cell.outputs = outputs
        return cell, resources


def slides_config(offline: bool) -> Config:
    """nbconvert configuration for the course's decks; `offline` points them at OUT/vendor/ (see OFFLINE_URLS)."""
    config = Config()
    config.TagRemovePreprocessor.enabled = True
    config.TagRemovePreprocessor.remove_input_tags = {"remove-input"}
    config.SlidesExporter.preprocessors = [SlidesOnly]
    if offline:
        for name, url in OFFLINE_URLS.items():
            setattr(config.SlidesExporter, name, url)
        config.SlidesExporter.template_file = "offline.html.j2"
    return config


def export(notebook: Path, out_dir: Path, offline: bool = False) -> Path:
    """Write `out_dir/<notebook stem>.slides.html` and return its path (the vendored files are `vendor`'s job)."""
    nb = nbformat.read(notebook, as_version=4)
    if offline and any("```mermaid" in cell.source or any("text/vnd.mermaid" in output.get("data", {})
                                                          for output in cell.get("outputs", [])) for cell in nb.cells):
        raise ValueError(f"{notebook} has a mermaid diagram, which the offline deck cannot draw (see OFFLINE_TEMPLATE)")
    exporter = SlidesExporter(config=slides_config(offline), extra_loaders=[DictLoader(OFFLINE_TEMPLATE)])
    html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{notebook.stem}.slides.html"
    path.write_text(html, encoding="utf-8")
    return path


class _References(HTMLParser):
    """Collects every http(s) or protocol-relative URL that a browser would load while showing the page."""

    RESOURCE = re.compile(r"(?:https?:)?//[^\s\"'()<>]+")  # inside an attribute value, all of it is the URL
    IN_CODE = re.compile(r"""(?:https?:)//[^\s"'()<>`]+|['"(]\s*//[^\s"'()<>]+""")  # in CSS/JS: absolute or "//host"
    NAMESPACE = re.compile(r"^https?(?::|%3A)(?://|%2F%2F)www\.w3\.org(?:/|%2F)", re.IGNORECASE)  # xmlns, not fetched

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._raw_text: str | None = None  # "script" or "style" while inside one

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if not value or name.startswith("xmlns") or (tag == "a" and name == "href"):
                continue  # a link the reader may follow is not loaded; namespaces are names
            if name == "style":
                self._check_code(value, f"<{tag} style>")
            elif self.RESOURCE.match(value.strip()):
                self.found.append(f"<{tag} {name}={value.strip()}>")
        if tag in {"script", "style"}:
            self._raw_text = tag

    def handle_endtag(self, tag):
        if tag == self._raw_text:
            self._raw_text = None

    def handle_data(self, data):
        if self._raw_text:  # text elsewhere (markdown, code cells, outputs) is shown, never loaded
            self._check_code(data, f"<{self._raw_text}>")

    def _check_code(self, code: str, where: str) -> None:
        code = re.sub(r"/\*.*?\*/", "", code, flags=re.DOTALL)  # CSS and JS block comments
        code = re.sub(r"^\s*//.*$", "", code, flags=re.MULTILINE)  # JS comments on a line of their own
        for match in self.IN_CODE.finditer(code):
            url = match.group(0).lstrip("'\"( ")
            if not self.NAMESPACE.match(url):
                self.found.append(f"{where} {url}")


def external_references(html: str) -> list[str]:
    """Every URL on the internet that `html` would make a browser fetch (empty for a deck that works offline).

    Counted: src/href/data/poster/srcset... attributes of every element but <a href> (a link is followed only if the
    reader clicks it), and URLs in <script>, <style> and style="" outside comments. Not counted: text on the slides
    (links and URLs in markdown or code are shown, not fetched) and XML namespaces (http://www.w3.org/..., names only).
    """
    parser = _References()
    parser.feed(html)
    parser.close()
    return parser.found


def _npm_pack(spec: str, cache: Path) -> Path:
    """The package tarball for `spec` (e.g. "mathjax@2.7.7"), fetched with npm into `cache` unless already there."""
    name, version = spec.rsplit("@", 1)
    tarball = cache / f"{name.replace('/', '-')}-{version}.tgz"
    if not tarball.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("slides --offline fetches reveal.js and MathJax with npm; install it "
                             "(Debian: apt-get install nodejs npm) or use `make slides` when online")
        cache.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([npm, "pack", spec, "--pack-destination", str(cache), "--json"],
                                check=True, capture_output=True, text=True)
        tarball = cache / json.loads(result.stdout)[0]["filename"]
    return tarball


def package_files(spec: str, keep: tuple[str, ...], cache: Path) -> Iterator[tuple[str, bytes]]:
    """(path inside the package, contents) of the files of npm package `spec` whose path starts with one of `keep`
    (the tarball fetched by `_npm_pack` into `cache`)."""
    with tarfile.open(_npm_pack(spec, cache)) as tar:
        for member in tar.getmembers():
            path = member.name.split("/", 1)[1]  # npm tarballs hold everything under package/
            if member.isfile() and path.startswith(keep) and ".." not in Path(path).parts:
                yield path, tar.extractfile(member).read()


def vendor(out_dir: Path, cache: Path) -> int:
    """Unpack VENDOR's files into out_dir/vendor/<package>/ and return the bytes written.

    reveal.js's themes @import web fonts from Google; those imports are removed (the theme falls back to the system's
    sans-serif), and any other remote url() left in a stylesheet is an error.
    """
    target = out_dir / "vendor"
    remove_vendored(out_dir)
    written = 0
    for name, (version, keep) in VENDOR.items():
        for path, data in package_files(f"{name}@{version}", keep, cache):
            if path.endswith(".css"):
                css = re.sub(r"@import\s+url\(\s*['\"]?https?://[^)]*\)\s*;?", "", data.decode("utf-8"))
                if re.search(r"url\(\s*['\"]?(?:https?:)?//", css):
                    raise SystemExit(f"{name}/{path} loads a remote url() that the offline deck cannot reach")
                data = css.encode("utf-8")
            destination = target / name / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
            written += len(data)
    return written


def remove_vendored(out_dir: Path) -> None:
    """Delete what `vendor` wrote into out_dir/vendor/ (its package folders), and the folder if that empties it."""
    for name in VENDOR:
        shutil.rmtree(out_dir / "vendor" / name, ignore_errors=True)
    if (out_dir / "vendor").is_dir() and not any((out_dir / "vendor").iterdir()):
        (out_dir / "vendor").rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "slides", help="folder for the decks")
    parser.add_argument("--offline", action="store_true", help="vendor reveal.js and MathJax from npm into OUT/vendor")
    parser.add_argument("--npm-cache", type=Path, default=ROOT / "build" / "npm", help="where npm tarballs are kept")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.offline:
        print(f"{args.out / 'vendor'}: {vendor(args.out, args.npm_cache) / 1e6:.1f} MB from npm")
    else:  # an online deck beside a stale vendor/ would look offline-ready
        remove_vendored(args.out)
    for notebook in args.notebooks:
        path = export(notebook, args.out, offline=args.offline)
        html = path.read_text(encoding="utf-8")
        remote = external_references(html)
        if args.offline and remote:
            raise SystemExit(f"{path} still loads from the internet: {remote}")
        print(f"{path}: {html.count('<section')} sections, {len(html) / 1e6:.1f} MB"
              + ("" if args.offline else f", {len(remote)} CDN resources"))
    print(f"{len(args.notebooks)} decks in {time.perf_counter() - start:.1f} s; to present, open one in a browser "
          "(arrow keys move, F is full screen, Esc is the overview)")


if __name__ == "__main__":
    sys.exit(main())
