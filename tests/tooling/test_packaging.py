"""pyproject.toml and environment.yml must list the same packages with the same lower bounds."""

import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CONDA_TO_PYPI = {"pytorch": "torch"}  # conda-forge's name -> PyPI's name
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*([<>=!~].*)?$")


def parse(requirement: str) -> tuple[str, str]:
    requirement = requirement.split(";")[0]  # environment markers (python_version) do not apply to conda
    match = REQUIREMENT.match(requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    name = match.group(1).lower().replace("_", "-")
    return CONDA_TO_PYPI.get(name, name), (match.group(2) or "").replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    # tomli is a back-port of the standard library's tomllib for Python 3.10 only; conda's Python is newer.
    return dict(parse(r) for r in requirements if not r.startswith("tomli"))


def conda_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = [d for d in env["dependencies"] if isinstance(d, str)]
    return dict(parse(d) for d in listed if parse(d)[0] not in {"python", "pip"})


def test_environment_yml_lists_the_same_packages_as_pyproject():
    assert conda_requirements() == pyproject_requirements()


def test_dependencies_have_lower_bounds_only():
    for name, spec in pyproject_requirements().items():
        assert spec.startswith(">=") and "," not in spec, f"{name} must have a lower bound only, got {spec!r}"


def test_environment_yml_installs_the_course_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert pip_lists == [["--editable ."]]
