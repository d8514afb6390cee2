"""Build tools of the course: notebook execution, slide decks, the repository URL. Run each as `python tools/NAME.py`;
tests import them as `tools.NAME` (pytest puts the repository root on the import path, see pyproject.toml)."""
