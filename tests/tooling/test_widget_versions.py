"""The course's widgets work under ipywidgets 7.7.x, the version Colab ships, as well as 8.x.

pyproject.toml asks for ipywidgets>=7.7 so that Colab's `%pip install` keeps Colab's own widgets. This builds a
second environment beside the course's: a virtual environment that sees the course's packages (a .pth file adds its
site-packages) with ipywidgets 7.7.x installed on top from PyPI, and runs tests/tooling/drive_widgets.py, which
builds every widget of the course and drives its callbacks, in both environments.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("drive_widgets.py")
EXPECTED = {  # redraws per slider move, the sampler's calls, and a finished progress bar
    "xt_slider": [1, 1], "trajectory_slider": [1], "sampler_slider": [1, 1], "grid_slider": [1],
    "sampler_calls": [[20, 0.0], [50, 0.0], [50, 1.0]], "solver_slider": [1, 1],
    "solver_calls": [["euler", 10], ["heun", 10], ["heun", 3]], "progress_bar": ["TqdmHBox", 5, 5],
}


def drive(python: str | Path) -> dict:
    result = subprocess.run([str(python), str(DRIVER)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index('{"ipywidgets"'):])  # after tqdm's text-mode control codes


@pytest.fixture(scope="module")
def widgets_7_python(tmp_path_factory) -> Path:
    """A python with ipywidgets 7.7.x shadowing the course environment's 8.x."""
    folder = tmp_path_factory.mktemp("ipywidgets-7.7")
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "zz_course.pth").write_text(f"import site; site.addsitedir({site.getsitepackages()[0]!r})\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "ipywidgets==7.7.*"], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def test_widgets_work_under_ipywidgets_8():
    report = drive(sys.executable)
    assert report.pop("ipywidgets").startswith("8.")
    assert report == EXPECTED


def test_widgets_work_under_ipywidgets_7_7(widgets_7_python):
    report = drive(widgets_7_python)
    assert report.pop("ipywidgets").startswith("7.7.")
    assert report == EXPECTED


def test_pyproject_keeps_colabs_widgets():
    """The lower bound admits Colab's 7.7.x, so the Colab install line does not upgrade Colab's widgets."""
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"ipywidgets>=7.7"' in text
