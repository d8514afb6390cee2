"""The map equation -> code -> test (STYLE.md rule 10): every `eq:` label cited in src/ or a notebook is defined in
math/, and every label cited in src/ is also named by at least one test."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"\beq:[a-z0-9-]+")
DEFINED = re.compile(r"\\label\{(eq:[a-z0-9-]+)\}")


def cited_in(paths) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for path in paths:
        for label in CITED.findall(path.read_text(encoding="utf-8")):
            labels.setdefault(label, set()).add(str(path.relative_to(ROOT)))
    return labels


def defined_in_math() -> set[str]:
    return {label for tex in (ROOT / "math").glob("*.tex") for label in DEFINED.findall(tex.read_text(encoding="utf-8"))}


def test_labels_cited_by_the_library_and_notebooks_exist_in_math():
    cited = cited_in([*ROOT.glob("src/ddpm_lite/*.py"), *ROOT.glob("notebooks/*.ipynb")])
    assert cited, "the library cites no equation labels"
    missing = {label: sorted(where) for label, where in cited.items() if label not in defined_in_math()}
    assert not missing, f"labels cited but not defined in math/*.tex: {missing}"


def test_every_label_cited_by_the_library_is_named_by_a_test():
    in_library = cited_in(ROOT.glob("src/ddpm_lite/*.py"))
    in_tests = cited_in(p for p in ROOT.glob("tests/*.py") if p.name != Path(__file__).name)
    untested = {label: sorted(where) for label, where in in_library.items() if label not in in_tests}
    assert not untested, f"labels the library implements that no test names: {untested}"
