"""The Chinese edition (tools/translations.py): every English notebook has a complete, current zh-CN catalog and a
built notebook in notebooks/zh/ with the English code and outputs; an edit to the English that the catalog has not
caught up with fails, naming the cell; translations render the glossary's terms as docs/reading.md does."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import polib
import pytest

from tools import translations

ROOT = Path(__file__).resolve().parents[2]
ENGLISH = translations.english_notebooks()


@pytest.mark.parametrize("notebook", ENGLISH, ids=lambda path: path.stem)
def test_every_markdown_cell_is_translated_and_current(notebook):
    """No untranslated, fuzzy or obsolete entry, no glossary term rendered otherwise, and notebooks/zh/ holds what
    `python -m tools.translations build` writes from the English notebook and the catalog."""
    found = translations.problems(notebook, "zh_CN")
    assert found == [], "\n".join(map(str, found))


@pytest.mark.parametrize("notebook", ENGLISH, ids=lambda path: path.stem)
def test_the_chinese_notebook_has_the_english_code_and_outputs(notebook):
    english = nbformat.read(notebook, as_version=4)
    chinese = nbformat.read(ROOT / "notebooks" / "zh" / notebook.name, as_version=4)
    assert [cell.cell_type for cell in chinese.cells] == [cell.cell_type for cell in english.cells]
    for mine, theirs in zip(chinese.cells, english.cells):
        if theirs.cell_type == "code":
            assert (mine.source, mine.outputs, mine.metadata) == (theirs.source, theirs.outputs, theirs.metadata)
        else:
            assert mine.source != theirs.source, f"cell {theirs.id} is the English text"
            assert mine.metadata == theirs.metadata  # slide types and tags: the same deck
    assert chinese.metadata["ddpm_lite"] == english.metadata["ddpm_lite"]  # the same run's outputs
    assert f"/blob/main/notebooks/zh/{notebook.name}" in chinese.cells[0].source  # its Colab badge opens itself


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A copy of notebook 02, its catalog and its built translation in a folder of the repository's layout."""
    name = "02_posterior"
    for relative in (f"notebooks/{name}.ipynb", f"notebooks/zh/{name}.ipynb", f"locale/zh_CN/LC_MESSAGES/{name}.po"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    monkeypatch.setattr(translations, "ROOT", tmp_path)
    monkeypatch.setattr(translations, "NOTEBOOKS", tmp_path / "notebooks")
    monkeypatch.setattr(translations, "GLOSSARY", tmp_path / "docs" / "reading.md")
    return tmp_path / "notebooks" / f"{name}.ipynb"


def test_an_edited_english_cell_fails_naming_the_cell(sandbox):
    assert translations.problems(sandbox, "zh_CN") == []
    nb = nbformat.read(sandbox, as_version=4)
    index = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown" and i > 0)
    nb.cells[index].source += "\n\nOne more sentence."
    nbformat.write(nb, sandbox)
    found = translations.problems(sandbox, "zh_CN")
    assert [(p.notebook, p.cell) for p in found] == [(sandbox.name, index)]
    assert "changed since the catalog was extracted" in found[0].what

    translations.extract(sandbox, "zh_CN")  # the translator's next step: the entry becomes fuzzy, with the old text
    entry = next(e for e in polib.pofile(str(translations.catalog_path(sandbox, "zh_CN"))) if e.msgctxt == nb.cells[index].id)
    assert "fuzzy" in entry.flags and entry.previous_msgid and entry.msgstr
    found = translations.problems(sandbox, "zh_CN")
    assert [(p.cell, p.what) for p in found] == [(index, "its English text changed after it was translated (fuzzy)")]
    with pytest.raises(ValueError, match=f"cell {index}"):
        translations.build(sandbox, "zh_CN")


def test_a_missing_translation_a_deleted_cell_and_a_stale_build_are_found(sandbox):
    catalog_file = translations.catalog_path(sandbox, "zh_CN")
    catalog = polib.pofile(str(catalog_file), wrapwidth=0)
    translation, catalog[1].msgstr = catalog[1].msgstr, ""
    catalog.save(str(catalog_file))
    index = int(catalog[1].occurrences[0][1])
    assert [(p.cell, p.what) for p in translations.problems(sandbox, "zh_CN")] == [(index, "not translated")]

    catalog[1].msgstr = translation
    catalog.append(polib.POEntry(msgctxt="gone", msgid="A cell that was deleted.", msgstr="已删除的单元格。"))
    catalog.save(str(catalog_file))
    found = [p.what for p in translations.problems(sandbox, "zh_CN")]
    assert found == ["obsolete entry 'gone': its cell was deleted"]

    del catalog[-1]
    catalog[1].msgstr = translation + "\n\n（译注）"
    catalog.save(str(catalog_file))
    found = [p.what for p in translations.problems(sandbox, "zh_CN")]
    assert len(found) == 1 and "differs from its source and catalog" in found[0]  # the built notebook is stale
    translations.build(sandbox, "zh_CN")
    assert translations.problems(sandbox, "zh_CN") == []
    built = nbformat.read(translations.built_path(sandbox, "zh_CN"), as_version=4)
    built.cells[1].source = "print('changed')" if built.cells[1].cell_type == "code" else built.cells[1].source + "!"
    nbformat.write(built, translations.built_path(sandbox, "zh_CN"))
    assert "differs" in translations.problems(sandbox, "zh_CN")[0].what


def test_the_glossary_is_read_and_enforced():
    terms = translations.glossary()
    assert len(terms) > 100
    forward = next(term for term in terms if term.english == ("forward process",))
    assert forward.chinese == ("前向过程", "正向过程", "扩散过程", "加噪过程")
    drift = next(term for term in terms if term.english == ("drift",))  # "drift, diffusion coefficient" row, paired
    assert "扩散系数" not in drift.chinese and "漂移系数" in drift.chinese
    assert translations.term_problems("The drift of the SDE.", "SDE 的扩散系数。", terms) != []
    names = [name.lower() for term in terms for name in term.english]
    assert len(names) == len(set(names)), "an English term with two rows: one translation per term"

    english = "The forward process adds noise; `forward process` in code and $x_t$ in math are not prose."
    assert translations.term_problems(english, "前向过程逐步加入噪声。", terms) == []
    assert translations.term_problems(english, "正向过程逐步加入噪声。", terms) == []  # an accepted alternative
    missing = translations.term_problems(english, "向前的过程逐步加入噪声。", terms)
    assert missing == ["the glossary renders 'forward process' as 前向过程 or 正向过程 or 扩散过程 or 加噪过程"]
    assert translations.term_problems("DDPM samples.", "DDPM 采样。", terms) == []  # an acronym kept in Latin
    assert translations.term_problems("Use `forward process` here.", "此处用它。", terms) == []  # code is not prose


def test_relative_links_are_rewritten_for_the_subfolder():
    text = "[note](../math/ddim.tex), [next](07_ddim.ipynb), [web](https://example.org/a.png), [here](#top)"
    assert translations._relink(text) == ("[note](../../math/ddim.tex), [next](07_ddim.ipynb), "
                                          "[web](https://example.org/a.png), [here](#top)")
