"""What produced a notebook's committed outputs, as hashes: the library's source, the repository files the notebook
reads, and the notebook's own code cells.

`tools/execute_notebooks.py` stores `fingerprint(nb)` in the notebook's metadata (`ddpm_lite.fingerprint`) when it
executes it; `tests/tooling/test_fresh_outputs.py` recomputes it and fails, naming the notebook and what changed, when
the two differ: outputs cannot silently go stale after a change to the library, a checkpoint or a code cell.

- library: every `.py` and `.pt` file under src/ddpm_lite (the code and the digit classifier's weights).
- files: each `checkpoints/...pt` or `results/...csv` or `.md` path named in the notebook's code, hashed by content
  (a notebook that reads the record's tables goes stale when the record changes).
- code: the code cells' source, with the repository's URL replaced by a placeholder (a fork that points the
  notebooks at itself with tools/sync_repository_url.py changes no output).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src" / "ddpm_lite"
READS = re.compile(r"\b(?:checkpoints|results)/[\w./-]+\.(?:pt|csv|md)\b")
REPOSITORY_URL = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")


def _sha256(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "little"))  # length-prefixed, so chunk boundaries count
        digest.update(chunk)
    return digest.hexdigest()


def library_hash() -> str:
    files = sorted(p for p in LIBRARY.rglob("*") if p.suffix in (".py", ".pt") and "__pycache__" not in p.parts)
    return _sha256(*(part for p in files for part in (p.relative_to(ROOT).as_posix().encode(), p.read_bytes())))


def fingerprint(nb) -> dict:
    """{"library": hash, "files": {path: hash}, "code": hash} for a notebook (an nbformat NotebookNode)."""
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    reads = sorted({path for source in code for path in READS.findall(source)})
    return {
        "library": library_hash(),
        "files": {path: _sha256((ROOT / path).read_bytes()) if (ROOT / path).is_file() else "missing" for path in reads},
        "code": _sha256(*(REPOSITORY_URL.sub("REPOSITORY", source).encode() for source in code)),
    }


def stale_parts(nb) -> list[str]:
    """What changed since the notebook was executed: [] when its stored fingerprint is today's."""
    stored = nb.metadata.get("ddpm_lite", {}).get("fingerprint")
    if stored is None:
        return ["no fingerprint stored (executed before tools/execute_notebooks.py recorded one)"]
    now = fingerprint(nb)
    changed = []
    if stored.get("library") != now["library"]:
        changed.append("the library's source (src/ddpm_lite)")
    for path in sorted(set(stored.get("files", {})) | set(now["files"])):
        if stored.get("files", {}).get(path) != now["files"].get(path):
            changed.append(path)
    if stored.get("code") != now["code"]:
        changed.append("its code cells")
    return changed
