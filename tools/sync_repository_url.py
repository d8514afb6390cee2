"""Point every Colab badge, Colab install line and download link at the repository named in pyproject.toml.

The repository's URL lives in one place, `[project.urls] Repository` in pyproject.toml. The notebooks and README
repeat it where Colab needs it spelled out:

- the badge in each notebook's first cell (and README's), which opens that notebook on Colab:
  [![Open In Colab](...colab-badge.svg)](https://colab.research.google.com/github/OWNER/NAME/blob/main/notebooks/F);
- the setup cell's `%pip install -q "ddpm-lite @ git+https://github.com/OWNER/NAME"`;
- links to files of the repository, e.g. `https://github.com/OWNER/NAME/raw/main/checkpoints/mnist.pt`.

After changing pyproject.toml (a fork, a renamed organisation), run this to rewrite them all; `--check` only lists
the files that are out of step (tests/test_colab.py checks the same). Outputs are not touched.

    python tools/sync_repository_url.py [--check] [notebooks/*.ipynb README.md]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BRANCH = "main"  # the branch Colab opens
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE = re.compile(r"\[!\[Open In Colab\]\(" + re.escape(BADGE_IMAGE) + r"\)\]\("
                   r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/(?P<path>[^)\s]+)\)")
INSTALL = re.compile(r"%pip install -q \"ddpm-lite @ git\+[^\"]*\"")
# A link to a file of this repository; only paths that exist here are rewritten, so links to other repositories stay.
FILE_LINK = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+/(?P<kind>raw|blob)/[\w.-]+/(?P<path>[\w./-]+)")


def repository(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """`[project.urls] Repository`, e.g. "https://github.com/ddpm-lite/ddpm-lite" (no trailing slash)."""
    url = tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"].rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"[project.urls] Repository must be https://github.com/OWNER/NAME, got {url!r}")
    return url


def colab_url(repo: str, path: str) -> str:
    """The Colab page of notebook `path` (relative to the repository root, e.g. notebooks/01_forward_process.ipynb)."""
    return f"https://colab.research.google.com/github/{repo.removeprefix('https://github.com/')}/blob/{BRANCH}/{path}"


def badge(repo: str, path: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(repo, path)})"


def install_line(repo: str) -> str:
    """The setup cell's Colab install. No torch or torchvision: ddpm-lite asks for torch>=2.2 and torchvision>=0.17
    (lower bounds only), which Colab's own satisfy, so pip keeps them instead of downloading 2 GB again."""
    return f'%pip install -q "ddpm-lite @ git+{repo}"'


def synced(text: str, repo: str, notebook: str | None = None, root: Path = ROOT) -> str:
    """`text` with its badges, install lines and links to this repository's files pointing at `repo`; a notebook's
    badge opens that notebook (`notebook`: its path from the root), README's keeps the notebook it names."""
    text = BADGE.sub(lambda m: badge(repo, notebook or m.group("path")), text)
    text = INSTALL.sub(lambda m: install_line(repo), text)
    return FILE_LINK.sub(lambda m: f"{repo}/{m.group('kind')}/{BRANCH}/{m.group('path')}"
                         if (root / m.group("path")).exists() else m.group(0), text)


def sync(path: Path, repo: str, write: bool, root: Path = ROOT) -> bool:
    """Bring one notebook or markdown file in step with `repo`; return whether it was (or would be) changed."""
    if path.suffix != ".ipynb":
        text = path.read_text()
        new = synced(text, repo, root=root)
        if write and new != text:
            path.write_text(new)
        return new != text
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        new = synced(cell.source, repo, path.resolve().relative_to(root.resolve()).as_posix(), root)
        changed |= new != cell.source
        cell.source = new
    if write and changed:
        nbformat.write(nb, path)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="default: notebooks/*.ipynb and README.md")
    parser.add_argument("--check", action="store_true", help="list files out of step; change nothing")
    args = parser.parse_args()
    repo = repository()
    files = args.files or [*sorted((ROOT / "notebooks").glob("*.ipynb")), ROOT / "README.md"]
    stale = [path for path in files if sync(path, repo, write=not args.check)]
    for path in stale:
        print(f"{path}: {'out of step with' if args.check else 'now points at'} {repo}")
    if args.check and stale:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
