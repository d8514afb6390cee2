"""Plots and widgets for the notebooks. No math lives here: every quantity comes from the other modules.

Images are drawn on a fixed grey scale, -1 (black) to +1 (white), the range the data is scaled to, so that
pictures at different t are comparable. Figures are returned (never shown here) so tests can call them without a
kernel; the widget displays them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from ddpm_lite.forward import q_sample, snr
from ddpm_lite.schedules import NoiseSchedule

IMAGE_RANGE = (-1.0, 1.0)  # data range; values outside are drawn as black or white
SLIDER_WIDE = {"width": "36em"}  # a lone slider: wide enough to pick single timesteps
SLIDER_HALF = {"width": "26em"}  # two sliders side by side
POINT_LIMIT = 4.0  # 2-D panels show [-4, 4]^2: four standard deviations of N(0, I) and all of the toy data


def _tile(images: Tensor, nrow: int, padding: int) -> Tensor:
    """(B, C, H, W) -> (C, H', W'): rows of `nrow` images with `padding` white pixels around each, laid out as
    torchvision's make_grid does (without importing torchvision, which costs a notebook about a second)."""
    batch, channels, height, width = images.shape
    columns = min(nrow, batch)
    rows = math.ceil(batch / columns)
    grid = torch.full((channels, rows * (height + padding) + padding, columns * (width + padding) + padding),
                      IMAGE_RANGE[1])
    for k, image in enumerate(images.detach().float().cpu()):
        top, left = (k // columns) * (height + padding) + padding, (k % columns) * (width + padding) + padding
        grid[:, top:top + height, left:left + width] = image
    return grid


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Tile a batch of one-channel images into one (H, W) float array, keeping their values (no rescaling).

    images: (B, 1, H, W). The padding between tiles is drawn white (+1).
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (B, 1, H, W), got {tuple(images.shape)}")
    return _tile(images, nrow, padding)[0].numpy()


def show_images(images: Tensor, *, nrow: int = 8, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Draw a batch of images, (B, 1, H, W) grey or (B, 3, H, W) colour in [-1, 1], as a grid on `ax` (a new
    figure if None). Colour values outside the range are clipped."""
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * min(nrow, len(images)) + 0.4, 0.6 * math.ceil(len(images) / nrow) + 0.6))
    if images.ndim == 4 and images.shape[1] == 3:
        grid = _tile(images.clamp(*IMAGE_RANGE), nrow, padding=2)
        ax.imshow(((grid + 1) / 2).permute(1, 2, 0).numpy())  # (H, W, 3) in [0, 1]
    else:
        ax.imshow(image_grid(images, nrow=nrow), cmap="gray", vmin=IMAGE_RANGE[0], vmax=IMAGE_RANGE[1])
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_schedules(schedules: Mapping[str, NoiseSchedule]) -> Figure:
    """Plot beta_t, alpha-bar_t and the SNR in dB against t for each named schedule (one line each)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for name, schedule in schedules.items():
        t = np.arange(schedule.T)
        axes[0].plot(t, schedule.beta.numpy(), label=rf"{name}: $\beta_t$")
        axes[1].plot(t, schedule.alpha_bar.numpy(), label=rf"{name}: $\bar\alpha_t$")
        axes[2].plot(t, 10 * np.log10(snr(schedule).numpy()), label=f"{name}: SNR$_t$")
    axes[0].set(title=r"noise added per step $\beta_t$", ylabel=r"$\beta_t$", yscale="log")
    axes[1].set(title=r"signal kept $\bar\alpha_t$", ylabel=r"$\bar\alpha_t$")
    axes[2].set(title=r"SNR $= \bar\alpha_t / (1 - \bar\alpha_t)$", ylabel="SNR (dB)")
    axes[2].axhline(0.0, color="grey", lw=0.8, ls=":")
    for ax in axes:
        ax.set_xlabel("timestep t (code, 0-based)")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def forward_gallery(
    schedules: Mapping[str, NoiseSchedule], x_0: Tensor, ts: Sequence[int], eps: Tensor
) -> Figure:
    """One row per schedule, one column per t: q_sample of the same digit(s) and the same noise.

    x_0, eps: (B, 1, H, W) with a small B (each cell tiles the batch in one row).
    """
    width = 0.75 * len(x_0) + 0.15  # inches per cell: the batch is tiled in one row
    fig, axes = plt.subplots(
        len(schedules), len(ts), figsize=(width * len(ts) + 0.4, 1.25 * len(schedules) + 0.5),
        squeeze=False, layout="constrained",
    )
    for row, (name, schedule) in zip(axes, schedules.items()):
        for ax, t in zip(row, ts):
            show_images(q_sample(schedule, x_0, t, eps), nrow=len(x_0), ax=ax)
            ax.set_title(rf"t={t}, $\bar\alpha_t$={schedule.alpha_bar[t].item():.2f}", fontsize=8)
        row[0].text(-0.08, 0.5, name, rotation=90, ha="right", va="center", transform=row[0].transAxes)
    return fig


def xt_frame(t: int, schedule: NoiseSchedule, x_0: Tensor, eps: Tensor) -> np.ndarray:
    """The slider's data: x_t = q_sample(schedule, x_0, t, eps) as a float64 array, unclipped.

    Pure: the same (t, schedule, x_0, eps) always gives the same array. x_0, eps: (B, ...).
    """
    return q_sample(schedule, x_0.double(), t, eps.double()).numpy()


def draw_xt(
    t: int,
    schedule: NoiseSchedule,
    images: Tensor,
    image_eps: Tensor,
    points: Tensor,
    point_eps: Tensor,
) -> Figure:
    """The slider's picture at timestep t: digits x_t, a 2-D point cloud x_t, and the histogram of x_t's values.

    images, image_eps: (B, 1, H, W); points, point_eps: (N, 2). The noise is passed in, so moving t moves the same
    samples along their paths instead of drawing new noise.
    """
    image_xt = xt_frame(t, schedule, images, image_eps)
    point_xt = xt_frame(t, schedule, points, point_eps)
    alpha_bar = schedule.alpha_bar[t].item()
    snr_db = 10 * math.log10(snr(schedule)[t].item())

    fig, (ax_img, ax_pts, ax_hist) = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    show_images(torch.from_numpy(image_xt), nrow=int(math.ceil(math.sqrt(len(images)))), ax=ax_img)
    ax_img.set_title(r"digits $x_t$ (grey scale fixed to [-1, 1])")

    ax_pts.scatter(*point_xt.T, s=3, color="C0", label=r"$x_t$")
    ax_pts.scatter(*points.T.numpy(), s=1, color="k", alpha=0.2, label=r"$x_0$")
    ax_pts.set(xlim=(-POINT_LIMIT, POINT_LIMIT), ylim=(-POINT_LIMIT, POINT_LIMIT), aspect="equal",
               xlabel="first coordinate", ylabel="second coordinate", title=r"2-D data $x_t$")
    ax_pts.legend(loc="upper right", markerscale=4)

    grid = np.linspace(-POINT_LIMIT, POINT_LIMIT, 200)
    ax_hist.hist(image_xt.ravel(), bins=80, range=(-POINT_LIMIT, POINT_LIMIT), density=True, color="C0",
                 alpha=0.7, label=r"pixel values of $x_t$")
    ax_hist.plot(grid, np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi), color="k", label=r"$\mathcal{N}(0, 1)$")
    ax_hist.set(xlabel="value", ylabel="density", title=r"distribution of $x_t$'s pixels", ylim=(0, 1.2))
    ax_hist.legend(loc="upper right")

    fig.suptitle(
        rf"t = {t} (code, 0-based; paper t = {t + 1})    $\bar\alpha_t$ = {alpha_bar:.4f}    SNR = {snr_db:+.1f} dB"
    )
    return fig


def xt_snapshots(
    ts: Sequence[int],
    schedule: NoiseSchedule,
    images: Tensor,
    image_eps: Tensor,
    points: Tensor,
    point_eps: Tensor,
) -> Figure:
    """A static strip of what the slider shows: digits (top row) and the 2-D cloud (bottom row) at each t in `ts`.

    Same arguments as `draw_xt`; for places where widgets do not run (GitHub, slides, PDF).
    """
    fig, axes = plt.subplots(2, len(ts), figsize=(2.1 * len(ts), 4.6), squeeze=False, layout="constrained")
    nrow = int(math.ceil(math.sqrt(len(images))))
    for (ax_img, ax_pts), t in zip(axes.T, ts):
        show_images(torch.from_numpy(xt_frame(t, schedule, images, image_eps)), nrow=nrow, ax=ax_img)
        ax_img.set_title(rf"t={t}, $\bar\alpha_t$={schedule.alpha_bar[t].item():.3f}", fontsize=9)
        ax_pts.scatter(*xt_frame(t, schedule, points, point_eps).T, s=1, color="C0")
        ax_pts.set(xlim=(-POINT_LIMIT, POINT_LIMIT), ylim=(-POINT_LIMIT, POINT_LIMIT), aspect="equal",
                   xlabel="first coordinate")
    axes[1, 0].set_ylabel("second coordinate")
    return fig


def xt_slider(
    images: Tensor,
    points: Tensor,
    schedules: Mapping[str, NoiseSchedule],
    *,
    generator: torch.Generator | None = None,
):
    """An ipywidgets slider over t, with a schedule selector, that redraws `draw_xt` for fixed data and noise.

    images: (B, 1, H, W) in [-1, 1]; points: (N, 2); schedules: name -> schedule, all with the same T.
    Returns a widget (display it, or leave it last in a cell). Uses core widgets and inline matplotlib only, so it
    works in JupyterLab, classic Notebook and Colab.
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not schedules:
        raise ValueError("schedules must name at least one schedule")
    Ts = {schedule.T for schedule in schedules.values()}
    if len(Ts) != 1:
        raise ValueError(f"schedules must all have the same T, got {sorted(Ts)}")
    T = Ts.pop()
    image_eps = torch.randn(images.shape, generator=generator)
    point_eps = torch.randn(points.shape, generator=generator)

    t_slider = widgets.IntSlider(value=T // 4, min=0, max=T - 1, step=1, description="t",
                                 continuous_update=False, layout=SLIDER_WIDE)
    choice = widgets.Dropdown(options=list(schedules), description="schedule")

    def redraw(t: int, schedule: str) -> None:
        fig = draw_xt(t, schedules[schedule], images, image_eps, points, point_eps)
        display(fig)
        plt.close(fig)

    output = widgets.interactive_output(redraw, {"t": t_slider, "schedule": choice})
    return widgets.VBox([widgets.HBox([t_slider, choice]), output])


def draw_trajectory_frame(index: int, ts: Sequence[int], xs: Tensor, x0s: Tensor, nrow: int = 4) -> Figure:
    """One frame of a sampling trajectory: x_t and the predicted x_0 side by side at ts[index].

    xs, x0s: (K, B, 1, H, W) frames recorded by a sampler's callback; ts: the K code timesteps they belong to.
    """
    if xs.shape != x0s.shape or len(ts) != len(xs):
        raise ValueError(f"xs, x0s and ts must describe the same frames, got {tuple(xs.shape)}, "
                         f"{tuple(x0s.shape)} and {len(ts)} timesteps")
    fig, (ax_xt, ax_x0) = plt.subplots(1, 2, figsize=(8, 4.3), layout="constrained")
    show_images(xs[index], nrow=nrow, ax=ax_xt, title=rf"$x_t$ at t = {ts[index]}")
    show_images(x0s[index].clamp(*IMAGE_RANGE), nrow=nrow, ax=ax_x0,
                title=rf"predicted $\hat x_0(x_t, t)$ at t = {ts[index]}")
    return fig


def trajectory_slider(ts: Sequence[int], xs: Tensor, x0s: Tensor, nrow: int = 4):
    """A slider over the recorded frames of a sampling run (`draw_trajectory_frame`); core widgets only."""
    import ipywidgets as widgets
    from IPython.display import display

    slider = widgets.IntSlider(value=0, min=0, max=len(ts) - 1, step=1, description="frame",
                               continuous_update=False, layout=SLIDER_WIDE)

    def redraw(index: int) -> None:
        fig = draw_trajectory_frame(index, ts, xs, x0s, nrow)
        display(fig)
        plt.close(fig)

    return widgets.VBox([slider, widgets.interactive_output(redraw, {"index": slider})])


def show_samples(x: Tensor, ax: Axes, title: str, *, nrow: int = 8, s: float = 2,
                 limit: float | None = None) -> Axes:
    """Draw samples on `ax`: images (B, C, H, W) as a grid (clamped to the data range), points (N, 2) as a scatter
    with labelled axes (square, within +-`limit` when given)."""
    if x.ndim == 4:
        return show_images(x.clamp(*IMAGE_RANGE), nrow=nrow, ax=ax, title=title)
    ax.scatter(*x.T, s=s)
    ax.set(title=title, xlabel="first coordinate", ylabel="second coordinate", aspect="equal")
    if limit is not None:
        ax.set(xlim=(-limit, limit), ylim=(-limit, limit))
    return ax


def _two_sliders(sample: Callable, first: tuple[str, Sequence, object], second: tuple[str, Sequence, object],
                 caption: Callable[[object, object], str], nrow: int):
    """Two selection sliders, each (description, options, initial value), that redraw sample(first, second) under
    caption(first, second); core widgets only."""
    import ipywidgets as widgets
    from IPython.display import display

    sliders = [widgets.SelectionSlider(options=list(options), value=value, description=description,
                                       continuous_update=False, layout=SLIDER_HALF)
               for description, options, value in (first, second)]

    def redraw(a, b) -> None:
        x = sample(a, b).detach().cpu()
        fig, ax = plt.subplots(figsize=(4.2, 4.4), layout="constrained")
        show_samples(x, ax, caption(a, b), nrow=nrow, s=1, limit=POINT_LIMIT)
        display(fig)
        plt.close(fig)

    output = widgets.interactive_output(redraw, {"a": sliders[0], "b": sliders[1]})
    return widgets.VBox([widgets.HBox(sliders), output])


def sampler_slider(sample: Callable[[int, float], Tensor], steps: Sequence[int], etas: Sequence[float], *,
                   nrow: int = 4, title: str = "DDIM"):
    """Sliders for the number of sampling steps S and for eta that redraw `sample(S, eta)`; core widgets only.

    sample(S, eta) -> images (B, 1, H, W) in [-1, 1] (clamped for display) or points (N, 2). Keep it quick (few
    images, the same starting noise for every setting) so that the picture follows the sliders.
    """
    if not steps or not etas:
        raise ValueError("steps and etas must each offer at least one value")
    return _two_sliders(sample, ("steps S", steps, steps[len(steps) // 2]), ("eta", etas, etas[0]),
                        lambda S, eta: f"{title}, S = {S}, eta = {eta}", nrow)


def solver_slider(sample: Callable[[str, int], Tensor], solvers: Sequence[str], nfes: Sequence[int], *,
                  nrow: int = 4, title: str = "", value: tuple[str, int] | None = None):
    """Sliders for the solver and the number of network evaluations (NFE) that redraw `sample(solver, nfe)`; core
    widgets only. sample(solver, nfe) -> images (B, 1, H, W) in [-1, 1] or points (N, 2); `value` is the initial
    (solver, nfe), by default the first solver at the middle budget."""
    if not solvers or not nfes:
        raise ValueError("solvers and nfes must each offer at least one value")
    solver, nfe = value or (solvers[0], nfes[len(nfes) // 2])
    if solver not in solvers or nfe not in nfes:
        raise ValueError(f"value must be one of the solvers and nfes offered, got {value!r}")
    prefix = f"{title}, " if title else ""
    return _two_sliders(sample, ("solver", solvers, solver), ("NFE", nfes, nfe),
                        lambda name, budget: f"{prefix}{name}, {budget} NFE", nrow)


def grid_slider(grids: Mapping[float, Tensor], *, description: str, title: Callable[[float], str], nrow: int = 8,
                value: float | None = None):
    """A slider over precomputed image grids (one per setting, e.g. a guidance weight) that redraws the chosen one.

    grids: setting -> images (B, 1, H, W) in [-1, 1]; title(setting) names the picture. Everything is drawn
    beforehand, so the picture follows the slider at once; core widgets only.
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not grids:
        raise ValueError("grids must hold at least one setting")
    options = list(grids)
    slider = widgets.SelectionSlider(options=options, value=options[0] if value is None else value,
                                     description=description, continuous_update=True, layout=SLIDER_HALF)

    def redraw(setting: float) -> None:
        fig, ax = plt.subplots(figsize=(3.8, 5.8), layout="constrained")
        show_images(grids[setting].clamp(*IMAGE_RANGE), nrow=nrow, ax=ax, title=title(setting))
        display(fig)
        plt.close(fig)

    return widgets.VBox([slider, widgets.interactive_output(redraw, {"setting": slider})])
