"""Every notebook opens on Colab: its badge, its setup cell, and an install that keeps Colab's torch.

The repository's URL is read from pyproject.toml (`[project.urls] Repository`), the one place it is set;
tools/sync_repository_url.py rewrites the notebooks and README after it changes. Notebooks are globbed, so a new one
is checked as soon as it exists.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
SLUG = REPO.removeprefix("https://github.com/")  # OWNER/NAME
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE = re.compile(r"\[!\[Open In Colab\]\((?P<image>[^)]*)\)\]\((?P<link>[^)]*)\)")
INSTALLS = re.compile(r"^\s*[%!]\s*pip\b|\bpip install\b", re.MULTILINE)
REPO_FILE_LINK = re.compile(r"https://github\.com/(?P<slug>[\w.-]+/[\w.-]+)/(?:raw|blob)/[\w.-]+/(?P<path>[\w./-]+)")


def test_repository_url_is_set_once_in_pyproject():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", REPO), REPO
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_has_the_colab_badge_at_the_top(path):
    """The first cell is the title, then the badge, which opens this very notebook from REPO's main branch."""
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "the first cell is the title"
    badges = [m.groupdict() for m in BADGE.finditer(first.source)]
    expected = f"https://colab.research.google.com/github/{SLUG}/blob/main/notebooks/{path.name}"
    assert badges == [{"image": BADGE_IMAGE, "link": expected}], "run tools/sync_repository_url.py"
    assert first.source.index("Open In Colab") < 300, "the badge belongs right under the title"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_setup_cell_installs_ddpm_lite_on_colab_only(path):
    """The first code cell installs the course from REPO with %pip when (and only when) it runs on Colab; nothing
    else in the notebook installs anything; the cell is left out of the slides."""
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    setup = code[0]
    assert setup.metadata.get("slideshow", {}).get("slide_type") == "skip"
    lines = setup.source.splitlines()
    guard = lines.index('if "google.colab" in sys.modules:')
    assert "import sys" in lines[:guard]
    assert shlex.split(lines[guard + 1]) == ["%pip", "install", "-q", f"ddpm-lite @ git+{REPO}"]
    assert lines[guard + 1].startswith("    "), "the install runs inside the Colab check"
    assert len(INSTALLS.findall(setup.source)) == 1
    assert not [cell.source for cell in code[1:] if INSTALLS.search(cell.source)], "install only in the setup cell"


@pytest.mark.parametrize("path", [*NOTEBOOKS, ROOT / "README.md"], ids=lambda path: path.name)
def test_links_to_the_repository_files_use_its_url(path):
    """A download such as .../raw/main/checkpoints/mnist.pt (notebooks 05, 06 fetch it on Colab) names REPO."""
    stale = [m.group(0) for m in REPO_FILE_LINK.finditer(path.read_text())
             if (ROOT / m.group("path")).exists() and m.group("slug") != SLUG]
    assert stale == [], "run tools/sync_repository_url.py"


def test_readme_has_the_badge_and_explains_colab():
    readme = (ROOT / "README.md").read_text()
    top = readme[:readme.index("\n## ")]
    expected = f"https://colab.research.google.com/github/{SLUG}/blob/main/notebooks/01_forward_process.ipynb"
    assert {"image": BADGE_IMAGE, "link": expected} in [m.groupdict() for m in BADGE.finditer(top)]
    section = readme[readme.index("## Run on Colab"):]
    section = section[:section.index("\n## ", 1)]
    assert "%pip" in section and "torch" in section
    assert set(re.findall(r"git\+(https://github\.com/[\w.-]+/[\w.-]+)", readme)) <= {REPO}


def test_colab_install_keeps_the_installed_torch(tmp_path):
    """The setup cell's install, against an environment that has torch and torchvision (as Colab does), installs
    ddpm-lite alone: its dependencies are lower bounds (torch>=2.2, torchvision>=0.17) that the installed ones meet.
    pip resolves it for real, offline (--no-index: any package it wanted to fetch would be an error)."""
    project = tmp_path / "ddpm-lite"  # the repository's packaging files and code, as `git+REPO` would clone them
    for name in ["pyproject.toml", "README.md", "LICENSE"]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src" / "ddpm_lite", project / "src" / "ddpm_lite",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                             "--quiet", "--report", str(report), f"ddpm-lite @ {project.as_uri()}"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    installs = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert installs == ["ddpm-lite"]


def test_sync_tool_rewrites_badge_install_and_downloads_then_restores_them(tmp_path):
    """tools/sync_repository_url.py on copies of notebooks 01 and 05: pointed at a fork it rewrites exactly the
    badge, the %pip line and the links to committed files; pointed back, the files are byte for byte the committed ones."""
    from tools import sync_repository_url as tool

    assert tool.repository() == REPO
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "mnist.pt").touch()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "ddim_grid.csv").touch()  # notebook 05 also reads the committed grid
    (tmp_path / "notebooks").mkdir()
    fork = "https://github.com/someone/ddpm-fork"
    for name in ["01_forward_process.ipynb", "05_training_mnist.ipynb"]:
        original, copy = ROOT / "notebooks" / name, tmp_path / "notebooks" / name
        shutil.copy(original, copy)
        assert tool.sync(copy, REPO, write=False, root=tmp_path) is False
        assert tool.sync(copy, fork, write=True, root=tmp_path) is True
        text = copy.read_text()
        assert SLUG not in text and f"colab.research.google.com/github/someone/ddpm-fork/blob/main/notebooks/{name}" \
            in text and 'git+https://github.com/someone/ddpm-fork\\"' in text
        if name.startswith("05"):
            assert "https://github.com/someone/ddpm-fork/raw/main/checkpoints/mnist.pt" in text
        old_outputs = [cell.get("outputs") for cell in nbformat.read(original, as_version=4).cells]
        assert [cell.get("outputs") for cell in nbformat.read(copy, as_version=4).cells] == old_outputs
        assert tool.sync(copy, REPO, write=True, root=tmp_path) is True
        assert copy.read_bytes() == original.read_bytes()
