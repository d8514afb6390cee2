"""Build every widget of the course and drive its callbacks, in whatever environment runs this file.

    python tests/tooling/drive_widgets.py   # prints one JSON object: the ipywidgets version and what each widget did

Run by tests/tooling/test_widget_versions.py under ipywidgets 8.x (the course's environment) and 7.7.x (what Colab
ships). The widgets are the course's: `ddpm_lite.viz`'s sliders (notebooks 01, 06, 07, 09 and 10) and the tqdm progress
bars every sampler and training run shows in a notebook. Each redraw goes through IPython's `display`, which is
recorded here, so a callback that never fires shows in the counts; the sampler slider also records the settings
it was called with.
"""

from __future__ import annotations

import json

import IPython.display
import ipywidgets
import torch

shown: list[object] = []
IPython.display.display = lambda *objects, **kwargs: shown.extend(objects)  # the viz functions import it at call time

from ddpm_lite.schedules import NoiseSchedule  # noqa: E402  (after the patch, as a notebook would import it)
from ddpm_lite.viz import grid_slider, sampler_slider, solver_slider, trajectory_slider, xt_slider  # noqa: E402


def redraws(action) -> int:
    """How many figures `action` made the widget display."""
    before = len(shown)
    action()
    return len(shown) - before


g = torch.Generator().manual_seed(0)
report = {"ipywidgets": ipywidgets.__version__}

schedules = {"linear": NoiseSchedule.named("linear", 50), "cosine": NoiseSchedule.named("cosine", 50)}
box = xt_slider(torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(20, 2, generator=g), schedules, generator=g)
(t_slider, choice), _ = box.children[0].children, box.children[1]
report["xt_slider"] = [redraws(lambda: setattr(t_slider, "value", 40)), redraws(lambda: setattr(choice, "value", "cosine"))]

box = trajectory_slider([49, 25, 0], torch.randn(3, 4, 1, 8, 8, generator=g), torch.randn(3, 4, 1, 8, 8, generator=g))
report["trajectory_slider"] = [redraws(lambda: setattr(box.children[0], "value", 2))]

calls = []


def sample(S: int, eta: float) -> torch.Tensor:
    calls.append([S, eta])
    return torch.full((4, 1, 8, 8), eta * 2 - 1)


box = sampler_slider(sample, steps=[10, 20, 50], etas=[0.0, 1.0])
steps_slider, eta_slider = box.children[0].children
report["sampler_slider"] = [redraws(lambda: setattr(steps_slider, "value", 50)),
                            redraws(lambda: setattr(eta_slider, "value", 1.0))]
report["sampler_calls"] = calls

solver_calls = []


def sample_solver(solver: str, nfe: int) -> torch.Tensor:
    solver_calls.append([solver, nfe])
    return torch.zeros(4, 1, 8, 8)


box = solver_slider(sample_solver, ["euler", "heun"], [3, 10])
solver_choice, nfe_slider = box.children[0].children
report["solver_slider"] = [redraws(lambda: setattr(solver_choice, "value", "heun")),
                           redraws(lambda: setattr(nfe_slider, "value", 3))]
report["solver_calls"] = solver_calls

box = grid_slider({0.0: torch.zeros(6, 1, 8, 8), 3.0: torch.ones(6, 1, 8, 8)}, description="w", nrow=3,
                  title=lambda w: f"w = {w:g}")
report["grid_slider"] = [redraws(lambda: setattr(box.children[0], "value", 3.0))]

from tqdm.notebook import tqdm  # noqa: E402  (what tqdm.auto picks in a notebook)

bar = tqdm(range(5), desc="DDIM-5")
for _ in bar:
    pass
report["progress_bar"] = [type(bar.container).__name__, bar.n, bar.container.children[1].value]
print(json.dumps(report))
