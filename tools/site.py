"""Build the course website (`make site`): every notebook with its committed outputs (not re-executed), the reading
map, the math notes and links to the slides and to Colab, in English (build/site/en/) and Chinese (build/site/zh/),
each page with a link to the same page in the other language, and Sphinx's search.

    python -m tools.site [--out build/site]

Sphinx with myst-nb renders the notebooks (`nb_execution_mode = "off"`: the outputs are the committed ones, which
tests/tooling/test_fresh_outputs.py keeps current) and the markdown pages; MathJax typesets the math. Why Sphinx and
myst-nb rather than Jupyter Book 2 (mystmd): the course's tooling is Python, both are pip packages with lower bounds
in pyproject.toml like the rest, and Sphinx's search index works offline in the built folder; its Chinese search
splits words with jieba. Jupyter Book 1 is this same stack with a configuration layer on top.

Each language is staged in build/site-src/<language>/ with the repository's layout (notebooks/NN_name.ipynb, or
notebooks/zh/NN_name.ipynb; docs/reading.md; an index page generated here), so that the links the notebooks and the
reading map already hold resolve as they do on GitHub; a relative link to a file the site does not contain (a .tex
note, a results record, a script) is pointed at that file on GitHub. The math notes' PDFs (`make pdf`) are copied
in when they are built, and linked from the index; otherwise the index links the .tex sources.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat

from tools import slides

ROOT = Path(__file__).resolve().parents[1]
BLOB = "https://github.com/ddpm-lite/ddpm-lite/blob/main"
COLAB = "https://colab.research.google.com/github/ddpm-lite/ddpm-lite/blob/main"
LINK = re.compile(r"(\]\()(?!https?:|mailto:|#)([^)\s#]+)(#[^)\s]*)?(\))")
LANGUAGES = {"en": "English", "zh": "中文"}
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)")
MATHJAX = "3.2.2"
MATHJAX_FILES = ("es5/tex-chtml.js", "es5/output/chtml/fonts/woff-v2/", "LICENSE")
NOTES = ["forward", "posterior", "elbo", "ddim", "score_sde", "guidance", "fast_sampling", "objectives",
         "flow_matching", "notation"]

TEXT = {
    "en": {
        "title": "ddpm-lite: diffusion models from first principles",
        "intro": ("A hands-on course on denoising diffusion models, from the forward process and the ELBO to training, "
                  "DDPM and DDIM sampling, score SDEs, guidance, fast samplers, training objectives and flow matching, "
                  "on a laptop CPU. Every notebook imports `ddpm_lite`, a small tested PyTorch library, and every "
                  "figure and number on these pages is the committed output of the notebook, executed top to bottom "
                  "in CI. The source, the tests and the record of measured results are on "
                  f"[GitHub]({BLOB.rsplit('/blob', 1)[0]})."),
        "notebooks": "Notebooks", "notebook": "notebook", "what": "what it teaches", "slides": "slides",
        "math": "Derivations (LaTeX)", "math_intro": "Each equation the code uses is labelled in these notes:",
        "reading": "Reading map and glossary", "switch": "中文", "contents": "Contents", "colab": "Open in Colab",
    },
    "zh": {
        "title": "ddpm-lite：从第一性原理出发理解扩散模型",
        "intro": ("这是一门动手实践的去噪扩散模型课程：从前向过程和 ELBO 讲到训练、DDPM 与 DDIM 采样、得分 SDE、引导、"
                  "快速采样器、训练目标和流匹配，全部在笔记本电脑的 CPU 上完成。每个笔记本都导入经过测试的小型 PyTorch 库 "
                  "`ddpm_lite`；本站每一幅图、每一个数字都是已提交的笔记本输出，由 CI 从头到尾执行得到。源代码、测试和实测"
                  f"结果的记录在 [GitHub]({BLOB.rsplit('/blob', 1)[0]}) 上。"),
        "notebooks": "笔记本", "notebook": "笔记本", "what": "内容", "slides": "幻灯片",
        "math": "推导笔记（LaTeX）", "math_intro": "代码用到的每个方程都在这些笔记里有标签：",
        "reading": "阅读地图与术语表", "switch": "English", "contents": "目录", "colab": "在 Colab 中打开",
    },
}


def _descriptions(readme: Path, folder: str) -> dict[str, str]:
    """notebook stem -> its one-line description, from the notebook table of README.md or README.zh-CN.md."""
    found = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = re.match(rf"^\| \[`(\d\d_[a-z0-9_]+)`\]\({re.escape(folder)}\1\.ipynb\) \|(.*)\|\s*$", line)
        if match:
            found[match.group(1)] = match.group(2).split("|")[-1].strip()
    return found


def _notebooks(language: str) -> list[Path]:
    folder = ROOT / "notebooks" if language == "en" else ROOT / "notebooks" / "zh"
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def _relink(text: str, here: Path, staged: set[Path]) -> str:
    """Relative links in `text`, written from repository path `here` (a file's folder, relative to ROOT): kept when
    they reach a staged page, else pointed at the file on GitHub."""

    def fix(match: re.Match) -> str:
        resolved = Path(os.path.normpath(here / match.group(2)))  # repository path, ".." folded
        if resolved in staged:
            return match.group(0)
        return f"{match.group(1)}{BLOB}/{resolved.as_posix()}{match.group(3) or ''}{match.group(4)}"

    return LINK.sub(fix, text)


def _index(language: str, notebooks: list[Path], pdfs: dict[str, str]) -> str:
    text = TEXT[language]
    readme, folder = (ROOT / "README.md", "notebooks/") if language == "en" else (ROOT / "README.zh-CN.md", "notebooks/zh/")
    descriptions = _descriptions(readme, folder)
    slides_prefix = "../slides/" if language == "en" else "../slides/zh/"
    rows = []
    for path in notebooks:
        page = f"{folder}{path.stem}"
        colab = f"{COLAB}/{folder}{path.name}"
        rows.append(f"| [{path.stem}]({page}.ipynb) | {descriptions.get(path.stem, '')} | "
                    f'<a href="{slides_prefix}{path.stem}.slides.html">{text["slides"]}</a> · '
                    f'<a href="{colab}">Colab</a> |')
    notes = " · ".join(f'<a href="{pdfs[name]}">{name}</a>' if name in pdfs else f"[{name}.tex]({BLOB}/math/{name}.tex)"
                       for name in NOTES)
    toctree = "\n".join(f"{folder}{path.stem}" for path in notebooks)
    return f"""# {text['title']}

{text['intro']}

## {text['notebooks']}

| {text['notebook']} | {text['what']} | |
| --- | --- | --- |
{chr(10).join(rows)}

## {text['math']}

{text['math_intro']} {notes}

## {text['reading']}

[docs/reading.md](docs/reading.md)

```{{toctree}}
:hidden:
:caption: {text['contents']}

{toctree}
docs/reading
```
"""


def stage(language: str, out: Path) -> Path:
    """Copy what the `language` site shows into `out` (emptied first), links fixed; return `out`."""
    shutil.rmtree(out, ignore_errors=True)
    notebooks = _notebooks(language)
    folder = Path("notebooks") if language == "en" else Path("notebooks/zh")
    staged = {folder / path.name for path in notebooks} | {Path("docs/reading.md")}
    (out / folder).mkdir(parents=True)
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown":  # the badge's image is on the internet: a text link opens Colab offline too
                cell.source = BADGE.sub(lambda m: f"[{TEXT[language]['colab']}]({m.group(1)})", cell.source)
                cell.source = _relink(cell.source, folder, staged)
        nbformat.write(nb, out / folder / path.name)
    (out / "docs").mkdir()
    reading = (ROOT / "docs" / "reading.md").read_text(encoding="utf-8")
    (out / "docs" / "reading.md").write_text(_relink(reading, Path("docs"), staged), encoding="utf-8")
    pdfs = {}
    for name in NOTES:
        pdf = ROOT / "math" / "build" / f"{name}.pdf"
        if pdf.exists():
            (out / "_static" / "math").mkdir(parents=True, exist_ok=True)
            shutil.copy(pdf, out / "_static" / "math" / pdf.name)
            pdfs[name] = f"_static/math/{pdf.name}"
    (out / "index.md").write_text(_index(language, notebooks, pdfs), encoding="utf-8")
    shutil.copy(ROOT / "tools" / "site_conf.py", out / "conf.py")
    _vendor_mathjax(out / "_static" / "mathjax")
    return out


def _vendor_mathjax(target: Path) -> None:
    """MathJax 3's TeX-to-HTML bundle and its fonts, from the npm registry (cached in build/npm/ as the slides'
    packages are), so that the site typesets offline and asks no CDN."""
    for path, data in slides.package_files(f"mathjax@{MATHJAX}", MATHJAX_FILES, ROOT / "build" / "npm"):
        destination = target / path.removeprefix("es5/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)


def _counterpart(page: Path, language: str) -> Path:
    """The same page in the other language's site, relative to that site's root."""
    text = page.as_posix()
    if language == "en" and text.startswith("notebooks/"):
        return Path(text.replace("notebooks/", "notebooks/zh/", 1))
    if language == "zh" and text.startswith("notebooks/zh/"):
        return Path(text.replace("notebooks/zh/", "notebooks/", 1))
    return page


def add_language_switch(site: Path, language: str) -> None:
    """Insert, at the top of every page's body, a link to the same page in the other language."""
    other = "zh" if language == "en" else "en"
    for html in site.rglob("*.html"):
        page = html.relative_to(site)
        depth = len(page.parts) - 1
        target = "../" * (depth + 1) + f"{other}/" + _counterpart(page, language).as_posix()
        switch = (f'<div class="language-switch" style="text-align:right;padding:4px 12px">'
                  f'<a href="{target}" hreflang="{other}" lang="{other}">{TEXT[language]["switch"]}</a></div>')
        text = html.read_text(encoding="utf-8")
        html.write_text(re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + switch, text, count=1), encoding="utf-8")


def _define_missing_stemmer(language_data: Path) -> None:
    """Sphinx 9.0's Chinese language data ends with `window.Stemmer = ChineseStemmer;` but defines no ChineseStemmer
    (it ships the English stemmer for the Latin words in Chinese pages), so the search page stops with a
    ReferenceError. Define it as the English stemmer it ships, where it is missing."""
    text = language_data.read_text(encoding="utf-8")
    if "window.Stemmer = ChineseStemmer" in text and not re.search(r"(var|let|const|function)\s+ChineseStemmer\b", text):
        language_data.write_text(text.replace("window.Stemmer = ChineseStemmer",
                                              "var ChineseStemmer = EnglishStemmer;\nwindow.Stemmer = ChineseStemmer"),
                                 encoding="utf-8")


def build(out: Path) -> None:
    from sphinx.cmd.build import build_main

    for language in LANGUAGES:
        source = stage(language, ROOT / "build" / "site-src" / language)
        target = out / language
        shutil.rmtree(target, ignore_errors=True)
        status = build_main(["-b", "html", "-q", "-D", f"language={'zh_CN' if language == 'zh' else 'en'}",
                             str(source), str(target)])
        if status:
            raise SystemExit(f"sphinx failed for {language} (status {status})")
        add_language_switch(target, language)
        _define_missing_stemmer(target / "_static" / "language_data.js")
        decks = out / "slides" / ("" if language == "en" else "zh")
        for notebook in _notebooks(language):
            slides.export(notebook, decks)  # reveal.js and MathJax from their CDNs, as `make slides`
        print(f"{target.relative_to(ROOT)}: {sum(1 for _ in target.rglob('*.html'))} pages")
    (out / "index.html").write_text('<!doctype html><meta charset="utf-8"><title>ddpm-lite</title>'
                                    '<meta http-equiv="refresh" content="0; url=en/index.html">'
                                    '<a href="en/index.html">English</a> · <a href="zh/index.html">中文</a>\n',
                                    encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    args = parser.parse_args(argv)
    build(args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
