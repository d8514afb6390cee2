"""Translation catalogs for the notebooks: the English notebooks are the source, each translation is a gettext PO
catalog, and the translated notebooks are built from the two (`make translations`).

    python -m tools.translations extract   update locale/<lang>/LC_MESSAGES/NN_name.po from notebooks/NN_name.ipynb
    python -m tools.translations build     write notebooks/<dir>/NN_name.ipynb from the English notebook and its catalog
    python -m tools.translations check     list what is untranslated, out of date or obsolete, and built notebooks that
                                           differ from what the catalogs give; exit status 1 if anything is listed

Why gettext PO, read and written with `polib`: a PO file is what translators' tools (Poedit, Weblate, Lokalize)
open, and it carries what this check needs: one entry per markdown cell (msgctxt is the cell's id, which nbformat
keeps when a cell is edited or moved), the English text as msgid, the translation as msgstr, a "fuzzy" flag with the
previous English text when the source changed after it was translated (so a translator sees the diff), and obsolete
entries for cells that were deleted. `polib` is a small pure-Python library that reads and writes exactly that
format. Whole cells, not paragraphs, are the unit (`mdpo` would split them): a cell is one slide, its formulas and
prose are translated together, and a failing check can name the notebook and cell.

A built notebook has the English notebook's code cells, outputs and metadata unchanged and each markdown cell's
translation; relative links gain one `../` (the translated notebooks sit one folder deeper) except links to sibling
notebooks, which point to the translated sibling, and the Colab badge opens the translated notebook.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import mistune
import nbformat
import polib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
LANGUAGES = {"zh_CN": "zh"}  # gettext language -> folder of the built notebooks under notebooks/
LANGUAGE_NAMES = {"zh_CN": "Chinese (Simplified)"}
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s]+)\)")  # a markdown link or image with a relative target
SIBLING = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb(#.*)?$")


def english_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def catalog_path(notebook: Path, language: str) -> Path:
    return ROOT / "locale" / language / "LC_MESSAGES" / f"{notebook.stem}.po"


def built_path(notebook: Path, language: str) -> Path:
    return NOTEBOOKS / LANGUAGES[language] / notebook.name


# ------------------------------------------------------------------------------------------------- the glossary

GLOSSARY = ROOT / "docs" / "reading.md"
_MATH_OR_CODE = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`", re.S)


@dataclass(frozen=True)
class Term:
    english: tuple[str, ...]  # the English names of the term (the glossary's first column, without its parentheses)
    chinese: tuple[str, ...]  # its accepted Chinese forms (second column: the first form and those in parentheses)


def _squeeze(text: str) -> str:
    return re.sub(r"[\s$]", "", text)


def glossary(path: Path = GLOSSARY) -> list[Term]:
    """The terms of the English/Chinese glossary (the tables under "## Glossary" in docs/reading.md) that have a
    Chinese name. "forward process (diffusion process, noising process) | 前向过程（正向过程、扩散过程、加噪过程）"
    gives english ("forward process",) and chinese ("前向过程", "正向过程", "扩散过程", "加噪过程")."""
    text = path.read_text(encoding="utf-8")
    rows = text[text.index("## Glossary"):].splitlines()
    terms = []
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("English", "---") or not row.startswith("|") or cells[1] in ("—", "", "---"):
            continue
        english = tuple(" ".join(name.split()) for name in re.sub(r"\(.*?\)", "", cells[0]).split(",") if name.strip())
        groups = [_forms(group) for group in cells[1].split("；")]
        if len(groups) == len(english) > 1:  # "drift, diffusion coefficient | 漂移系数；扩散系数": one term each
            terms += [Term((name,), forms) for name, forms in zip(english, groups)]
        else:
            terms.append(Term(english, tuple(dict.fromkeys(form for forms in groups for form in forms))))
    return terms


def _forms(group: str) -> tuple[str, ...]:
    """"前向过程（正向过程、扩散过程）" -> ("前向过程", "正向过程", "扩散过程"), squeezed ("$v$ 预测" -> "v预测", as the
    text it is compared with); "噪声（台：雜訊）" keeps "雜訊"."""
    first, _, rest = group.partition("（")
    forms = [first] + [re.sub(r"^[^：]*：", "", alt) for alt in re.split(r"[、，]", rest.rstrip("）"))]
    return tuple(dict.fromkeys(squeezed for squeezed in map(_squeeze, forms) if squeezed))


def term_problems(english: str, chinese: str, terms: list[Term]) -> list[str]:
    """The glossary terms that `english` (a markdown cell, math and code spans left out) uses and its translation
    `chinese` renders with none of the term's Chinese forms (nor keeps the English name, as for acronyms)."""
    prose = _MATH_OR_CODE.sub(" ", english)
    target = _squeeze(chinese)
    missing = []
    for term in terms:
        used = [name for name in term.english
                if re.search(rf"(?<![\w-]){re.escape(name)}(s|es)?(?![\w-])", prose, flags=re.I)]
        if used and not any(form in target for form in term.chinese) and not any(
                _squeeze(name).lower() in target.lower() for name in used):
            missing.append(f"the glossary renders {used[0]!r} as {' or '.join(term.chinese)}")
    return missing




def markup_problems(english: str, chinese: str) -> list[str]:
    """Formulas and code spans that the translation does not keep character for character (compared as
    multisets: a translation may reorder them), and emphasis that markdown does not close: `**预备知识：**按`
    shows its asterisks, because a closing `**` after punctuation must be followed by a space or punctuation.
    Rendered with mistune, the markdown renderer of nbconvert (and so of the slides)."""
    found = []
    for kind, pattern in (("formula", r"\$\$.*?\$\$|\$[^$]*\$"), ("code span", r"`[^`]*`")):
        mine, theirs = sorted(re.findall(pattern, chinese, re.S)), sorted(re.findall(pattern, english, re.S))
        if mine != theirs:
            lost = [span for span in theirs if span not in mine] or [span for span in mine if span not in theirs]
            found.append(f"a {kind} differs from the English: {lost[0]!r}")
    prose = _MATH_OR_CODE.sub("X", chinese)
    rendered = re.sub(r"<[^>]+>", "", mistune.html(prose))
    for line in rendered.splitlines():
        if "**" in line:
            found.append(f"bold that does not render (put a space after the closing **): {line.strip()[:60]!r}")
            break
    return found


# ------------------------------------------------------------------------------------------------- the catalogs


def _markdown_cells(nb: nbformat.NotebookNode) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(index, cell) for index, cell in enumerate(nb.cells) if cell.cell_type == "markdown"]


def extract(notebook: Path, language: str) -> polib.POFile:
    """The catalog for `notebook`, updated from its markdown cells: new cells get an empty entry, changed cells keep
    their translation but are marked fuzzy with the previous English text, deleted cells become obsolete."""
    path = catalog_path(notebook, language)
    old = polib.pofile(str(path), wrapwidth=0) if path.exists() else polib.POFile(wrapwidth=0)
    by_id = {entry.msgctxt: entry for entry in old if not entry.obsolete}
    new = polib.POFile(wrapwidth=0)
    new.metadata = old.metadata or {
        "Project-Id-Version": "ddpm-lite",
        "Language": language,
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=UTF-8",
        "Content-Transfer-Encoding": "8bit",
    }
    new.header = f"{LANGUAGE_NAMES[language]} translation of notebooks/{notebook.name}; built by tools/translations.py"
    seen = set()
    for index, cell in _markdown_cells(nbformat.read(notebook, as_version=4)):
        seen.add(cell.id)
        entry = by_id.get(cell.id)
        if entry is None:
            entry = polib.POEntry(msgctxt=cell.id, msgid=cell.source, msgstr="")
        elif entry.msgid != cell.source:
            if entry.msgstr and "fuzzy" not in entry.flags:
                entry.previous_msgid = entry.msgid
                entry.flags.append("fuzzy")
            entry.msgid = cell.source
        entry.occurrences = [(f"notebooks/{notebook.name}", str(index))]
        new.append(entry)
    for entry in old:
        if entry.msgctxt not in seen and entry.msgstr:
            entry.obsolete = True
            new.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    new.save(str(path))
    return new


@dataclass(frozen=True)
class Problem:
    notebook: str
    cell: int | None  # index of the cell in the English notebook
    what: str

    def __str__(self) -> str:
        where = f"{self.notebook}, cell {self.cell}" if self.cell is not None else self.notebook
        return f"{where}: {self.what}"


def catalog_problems(notebook: Path, language: str) -> list[Problem]:
    """What stops the catalog of `notebook` from giving a complete, current translation, cell by cell."""
    path = catalog_path(notebook, language)
    if not path.exists():
        return [Problem(notebook.name, None, f"no catalog {path.relative_to(ROOT)}")]
    catalog = polib.pofile(str(path), wrapwidth=0)
    by_id = {entry.msgctxt: entry for entry in catalog if not entry.obsolete}
    terms = glossary()
    cells = _markdown_cells(nbformat.read(notebook, as_version=4))
    found = []
    for index, cell in cells:
        entry = by_id.get(cell.id)
        if entry is None or entry.msgid != cell.source:
            found.append(Problem(notebook.name, index, "its English text changed since the catalog was extracted "
                                 "(run `python -m tools.translations extract`, then translate)"))
        elif "fuzzy" in entry.flags:
            found.append(Problem(notebook.name, index, "its English text changed after it was translated (fuzzy)"))
        elif not entry.msgstr.strip():
            found.append(Problem(notebook.name, index, "not translated"))
        else:
            found += [Problem(notebook.name, index, what) for what in
                      term_problems(cell.source, entry.msgstr, terms) + markup_problems(cell.source, entry.msgstr)]
    ids = {cell.id for _, cell in cells}
    found += [Problem(notebook.name, None, f"obsolete entry {entry.msgctxt!r}: its cell was deleted")
              for entry in catalog if entry.obsolete or entry.msgctxt not in ids]
    return found


def problems(notebook: Path, language: str) -> list[Problem]:
    """`catalog_problems`, and a built notebook that is missing or differs from what `build` would write now."""
    found = catalog_problems(notebook, language)
    built = built_path(notebook, language)
    if not found:
        if not built.exists():
            found.append(Problem(notebook.name, None, f"{built.relative_to(ROOT)} is not built"))
        elif nbformat.writes(translated(notebook, language)) != built.read_text(encoding="utf-8"):
            found.append(Problem(notebook.name, None, f"{built.relative_to(ROOT)} differs from its source and catalog "
                                 "(run `python -m tools.translations build`)"))
    return found


def _relink(text: str) -> str:
    """Relative links from notebooks/ made to work from notebooks/<dir>/: a sibling notebook stays a sibling (its
    translation), anything else gains one `../`."""
    return LINK.sub(lambda m: m.group(0) if SIBLING.match(m.group(1)) else f"](../{m.group(1)})", text)


def translated(notebook: Path, language: str) -> nbformat.NotebookNode:
    """The translated notebook: the English one with every markdown cell replaced by its translation. Raises
    ValueError naming the first cell whose translation is missing or out of date."""
    found = catalog_problems(notebook, language)
    if found:
        raise ValueError(f"cannot build the {language} notebook: {found[0]}")
    catalog = {entry.msgctxt: entry for entry in polib.pofile(str(catalog_path(notebook, language)), wrapwidth=0)
               if not entry.obsolete}
    nb = nbformat.read(notebook, as_version=4)
    out = copy.deepcopy(nb)
    folder = LANGUAGES[language]
    for cell in out.cells:
        if cell.cell_type == "markdown":
            text = _relink(catalog[cell.id].msgstr)
            cell.source = text.replace(f"/blob/main/notebooks/{notebook.name}",
                                       f"/blob/main/notebooks/{folder}/{notebook.name}")
    out.metadata["language"] = language.replace("_", "-")
    return out


def build(notebook: Path, language: str) -> Path:
    path = built_path(notebook, language)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(translated(notebook, language)), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["extract", "build", "check"])
    parser.add_argument("notebooks", nargs="*", type=Path, help="English notebooks (default: all)")
    parser.add_argument("--language", default="zh_CN", choices=sorted(LANGUAGES))
    args = parser.parse_args(argv)
    notebooks = [path.resolve() for path in args.notebooks] or english_notebooks()
    status = 0
    for notebook in notebooks:
        if args.command == "extract":
            catalog = extract(notebook, args.language)
            print(f"{catalog_path(notebook, args.language).relative_to(ROOT)}: {len(catalog)} entries, "
                  f"{len(catalog.untranslated_entries())} untranslated, {len(catalog.fuzzy_entries())} fuzzy")
        elif args.command == "build":
            try:
                print(build(notebook, args.language).relative_to(ROOT))
            except ValueError as error:  # an incomplete or out-of-date catalog: build the others, then fail
                print(error, file=sys.stderr)
                status = 1
        else:
            for problem in problems(notebook, args.language):
                print(problem)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
