"""Plots and the x_t slider, called without a kernel."""

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from ddpm_lite.forward import q_sample  # noqa: E402
from ddpm_lite.schedules import NoiseSchedule  # noqa: E402
from ddpm_lite.viz import (  # noqa: E402
    draw_xt,
    forward_gallery,
    image_grid,
    plot_schedules,
    sampler_slider,
    solver_slider,
    show_images,
    xt_frame,
    xt_slider,
)

SCHEDULES = {"linear": NoiseSchedule.named("linear", 1000), "cosine": NoiseSchedule.named("cosine", 1000)}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 28, 28, generator=g) * 2 - 1
    points = torch.randn(64, 2, generator=g)
    return images, torch.randn(images.shape, generator=g), points, torch.randn(points.shape, generator=g)


def render(fig) -> np.ndarray:
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba()).copy()
    plt.close(fig)
    return pixels


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_slider_frame_changes_at_every_t(name, data):
    """Moving the slider from t-1 to t changes what the drawing function returns, for every t in 0..T-1."""
    images, image_eps, points, point_eps = data
    schedule = SCHEDULES[name]
    previous = {"images": images.double().numpy(), "points": points.double().numpy()}  # x_0, before step t = 0
    for t in range(schedule.T):
        current = {
            "images": xt_frame(t, schedule, images, image_eps),
            "points": xt_frame(t, schedule, points, point_eps),
        }
        for key in current:
            assert np.abs(current[key] - previous[key]).max() > 0, f"{key} frame unchanged at t={t}"
        previous = current


def test_slider_frame_is_pure_and_is_q_sample(data):
    images, image_eps, _, _ = data
    schedule = SCHEDULES["linear"]
    first = xt_frame(321, schedule, images, image_eps)
    assert np.array_equal(first, xt_frame(321, schedule, images, image_eps))
    assert_close(torch.from_numpy(first), q_sample(schedule, images.double(), 321, image_eps.double()))


def test_draw_xt_picture_changes_with_t_and_labels_its_axes(data):
    schedule = SCHEDULES["cosine"]
    fig = draw_xt(10, schedule, *data)
    titles = fig._suptitle.get_text()
    assert "t = 10" in titles and "paper t = 11" in titles
    ax_img, ax_pts, ax_hist = fig.axes
    assert ax_pts.get_xlabel() and ax_pts.get_ylabel() and ax_hist.get_xlabel() and ax_hist.get_ylabel()
    early = render(fig)
    late = render(draw_xt(600, schedule, *data))
    assert early.shape == late.shape
    assert (early != late).any(axis=-1).mean() > 0.01  # more than 1% of the pixels differ


def test_xt_slider_builds_a_slider_over_every_timestep(data):
    images, _, points, _ = data
    box = xt_slider(images, points, SCHEDULES, generator=torch.Generator().manual_seed(0))
    controls, output = box.children
    slider, dropdown = controls.children
    assert isinstance(slider, widgets.IntSlider) and isinstance(output, widgets.Output)
    assert (slider.min, slider.max, slider.step) == (0, 999, 1)
    assert list(dropdown.options) == ["linear", "cosine"]


def test_xt_slider_rejects_bad_schedules(data):
    images, _, points, _ = data
    with pytest.raises(ValueError, match="schedules"):
        xt_slider(images, points, {})
    with pytest.raises(ValueError, match="same T"):
        xt_slider(images, points, {"a": NoiseSchedule.named("linear", 10), "b": NoiseSchedule.named("linear", 20)})


def test_image_grid_tiles_and_keeps_values():
    images = torch.linspace(-1, 1, 6 * 28 * 28).reshape(6, 1, 28, 28)
    grid = image_grid(images, nrow=3, padding=2)
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)
    assert_close(torch.from_numpy(grid[2:30, 2:30]), images[0, 0])
    with pytest.raises(ValueError, match="images"):
        image_grid(torch.zeros(2, 3, 28, 28))


def test_schedule_plots_have_labels_and_legends():
    fig = plot_schedules(SCHEDULES)
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert len(ax.get_legend().get_texts()) == 2
    assert r"$\bar\alpha_t$" in fig.axes[1].get_legend().get_texts()[0].get_text()
    plt.close(fig)


def test_forward_gallery_has_one_cell_per_schedule_and_t(data):
    images, image_eps, _, _ = data
    fig = forward_gallery(SCHEDULES, images[:1], [0, 100, 999], image_eps[:1])
    assert len(fig.axes) == 6
    row_labels = [text.get_text() for ax in (fig.axes[0], fig.axes[3]) for text in ax.texts]
    assert row_labels == ["linear", "cosine"]
    plt.close(fig)


def test_trajectory_frames_differ_and_slider_spans_them():
    from ddpm_lite.viz import draw_trajectory_frame, trajectory_slider

    g = torch.Generator().manual_seed(1)
    xs, x0s = torch.randn(3, 4, 1, 8, 8, generator=g), torch.rand(3, 4, 1, 8, 8, generator=g) * 2 - 1
    first, last = render(draw_trajectory_frame(0, [999, 500, 0], xs, x0s)), render(draw_trajectory_frame(2, [999, 500, 0], xs, x0s))
    assert (first != last).any()
    slider = trajectory_slider([999, 500, 0], xs, x0s).children[0]
    assert (slider.min, slider.max) == (0, 2)
    with pytest.raises(ValueError, match="same frames"):
        draw_trajectory_frame(0, [1, 2], xs, x0s)


def test_sampler_slider_calls_the_sampler_with_each_setting():
    """Moving either slider calls sample(S, eta) with the new values (the callback is wired to both controls)."""
    calls = []

    def sample(S, eta):
        calls.append((S, eta))
        return torch.full((4, 1, 8, 8), eta * 2 - 1) if S > 0 else None

    box = sampler_slider(sample, steps=[10, 20, 50], etas=[0.0, 0.5, 1.0])
    controls, output = box.children
    steps_slider, eta_slider = controls.children
    assert isinstance(output, widgets.Output) and calls == [(20, 0.0)]
    steps_slider.value = 50
    eta_slider.value = 1.0
    assert calls == [(20, 0.0), (50, 0.0), (50, 1.0)]
    with pytest.raises(ValueError, match="at least one"):
        sampler_slider(sample, steps=[], etas=[0.0])


def test_solver_slider_calls_the_sampler_with_each_solver_and_budget():
    calls = []

    def sample(solver, nfe):
        calls.append((solver, nfe))
        return torch.zeros(4, 1, 8, 8)

    box = solver_slider(sample, ["euler", "heun", "dpmpp-2m"], [3, 10, 20], value=("heun", 10))
    controls, output = box.children
    solver, budget = controls.children
    assert isinstance(output, widgets.Output) and calls == [("heun", 10)]
    assert (solver.description, budget.description) == ("solver", "NFE")
    solver.value = "dpmpp-2m"
    budget.value = 3
    assert calls == [("heun", 10), ("dpmpp-2m", 10), ("dpmpp-2m", 3)]
    solver_slider(sample, ["euler"], [3, 10, 20])
    assert calls[-1] == ("euler", 10)  # by default the first solver at the middle budget
    with pytest.raises(ValueError, match="at least one"):
        solver_slider(sample, [], [3])
    with pytest.raises(ValueError, match="value must be one of"):
        solver_slider(sample, ["euler"], [3], value=("heun", 3))


def test_show_images_draws_colour_batches_in_their_colours():
    """(B, 3, H, W) in [-1, 1] is drawn as RGB mapped to [0, 1] (CIFAR-10 samples), grey batches as before."""
    red = torch.full((2, 3, 4, 4), -1.0)
    red[:, 0] = 1.0
    ax = show_images(red, nrow=2)
    picture = ax.get_images()[0].get_array()
    assert picture.shape == (8, 14, 3)  # 2 tiles of 4 pixels, padding 2 around each
    assert picture[3, 3].tolist() == [1.0, 0.0, 0.0]  # inside the first tile: pure red
    plt.close(ax.figure)


@pytest.mark.parametrize(("batch", "channels", "nrow", "padding"), [(7, 1, 3, 2), (16, 3, 4, 2), (2, 1, 8, 0)])
def test_image_tiling_matches_torchvision_make_grid(batch, channels, nrow, padding):
    """viz tiles images itself (importing torchvision costs a notebook a second): the layout is make_grid's."""
    from torchvision.utils import make_grid

    from ddpm_lite.viz import _tile

    images = torch.rand(batch, channels, 6, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)[:channels]  # it copies grey to 3 channels
    assert torch.equal(_tile(images, nrow, padding), expected)
