"""The score view (Song et al. 2021): a noise predictor is a scaled score, DDPM is a discretised variance-preserving
(VP) SDE, and deterministic DDIM is Euler's method for its probability-flow ODE. Public names:

- `score_from_eps`, `eps_from_score`: grad log q(x_t) = -E[eps | x_t] / sqrt(1 - alpha_bar_t), and back.
- `tweedie_x0`: Tweedie's formula E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) score) / sqrt(alpha_bar_t).
- `VPSDE`: the continuous-time view of a discrete schedule, `VPSDE.from_schedule(schedule)`, with `beta(s)`,
  `alpha_bar(s)`, `drift(x, s)` and `diffusion(s)`.
- `probability_flow_drift`, `reverse_sde_drift`: the right-hand sides of the probability-flow ODE and the reverse SDE.
- `noise_levels`, `timestep_at_noise_level`: DDIM's noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for every code
  timestep (code name `noise_level`, not to be confused with DDIM's sigma_eta or DDPM's reverse_std), and the
  code t nearest to a continuous noise level.
- `probability_flow_velocity`, `probability_flow_sample`: the probability-flow ODE in DDIM's variables,
  d x_bar / d sigma = eps(x_bar / sqrt(1 + sigma^2), t(sigma)), and its solution with scipy's adaptive Runge-Kutta
  solvers (`scipy.integrate.solve_ivp`), counting model evaluations.

Time, stated once (math/score_sde.tex eq:sde-time): code t in {0, ..., T-1} is the paper's t+1 (`ddpm_lite.schedules`);
continuous time s in [0, 1] puts code t at s_t = (t + 1) / T, so s = 0 is the clean data and s = 1 is code t = T-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from ddpm_lite.checks import check_finite_number
from ddpm_lite.devices import pick_device
from ddpm_lite.samplers import Callback
from ddpm_lite.schedules import NoiseSchedule, check_timesteps, extract

Method = Literal["RK45", "RK23", "DOP853"]  # scipy's explicit adaptive Runge-Kutta methods


def score_from_eps(schedule: NoiseSchedule, eps: Tensor, t: int | Tensor) -> Tensor:
    """The score of q(x_t) from a noise prediction: -eps / sqrt(1 - alpha_bar_t). eps: (B, ...); t: (B,) or int.

    Exact for eps = E[eps | x_t] (the MMSE predictor). Returns a tensor shaped like eps, in its dtype.
    """
    t = _check_batch(schedule, "eps", eps, t)
    return -eps / extract(schedule.sqrt_one_minus_alpha_bar, t, eps)  # math/score_sde.tex eq:score-from-eps


def eps_from_score(schedule: NoiseSchedule, score: Tensor, t: int | Tensor) -> Tensor:
    """The inverse of `score_from_eps`: -sqrt(1 - alpha_bar_t) * score. score: (B, ...); t: (B,) or int."""
    t = _check_batch(schedule, "score", score, t)
    return -extract(schedule.sqrt_one_minus_alpha_bar, t, score) * score  # math/score_sde.tex eq:score-from-eps


def tweedie_x0(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, score: Tensor) -> Tensor:
    """Tweedie's formula: E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) score) / sqrt(alpha_bar_t). x_t, score: (B, ...).

    With score = score_from_eps(eps) this is `forward.predict_x0_from_eps(x_t, eps)`, term for term.
    """
    t = _check_batch(schedule, "x_t", x_t, t)
    if not isinstance(score, Tensor) or score.shape != x_t.shape:
        raise ValueError(f"score must be a tensor shaped like x_t {tuple(x_t.shape)}, got {_shape(score)}")
    sqrt_alpha_bar = extract(schedule.sqrt_alpha_bar, t, x_t)
    one_minus_alpha_bar = extract(1 - schedule.alpha_bar, t, x_t)
    return (x_t + one_minus_alpha_bar * score) / sqrt_alpha_bar  # Efron 2011; math/score_sde.tex eq:tweedie


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class VPSDE:
    """dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw on s in [0, 1], the continuous view of a discrete schedule.

    beta(s) is piecewise constant: T * beta[t] on the cell ((t) / T, (t + 1) / T] of code t, so its integral over
    each cell is the discrete beta[t] exactly and beta(s_t) = T * beta[t] at s_t = (t + 1) / T (math/score_sde.tex
    eq:sde-beta). Build it with `VPSDE.from_schedule(schedule)`.
    """

    beta_grid: Tensor  # (T,) float64: T * beta[t], the value of beta(s) on code t's cell

    @classmethod
    def from_schedule(cls, schedule: NoiseSchedule) -> VPSDE:  # beta(s) = T * beta[t] on code t's cell
        return cls(beta_grid=schedule.T * schedule.beta.clone())  # math/score_sde.tex eq:sde-beta

    @property
    def T(self) -> int:  # number of cells, the discrete schedule's T
        return self.beta_grid.numel()

    def _cell(self, s: float | Tensor) -> tuple[Tensor, Tensor]:
        """s (any shape) -> (s as float64, the code t whose cell ((t) / T, (t + 1) / T] holds s; 0 for s = 0)."""
        s = torch.as_tensor(s, dtype=torch.float64)
        if not bool(((s >= 0) & (s <= 1)).all()):
            raise ValueError(f"s must lie in [0, 1] (0: clean data, 1: code t = T-1), got {s}")
        grid = torch.arange(1, self.T + 1, dtype=torch.float64) / self.T  # s_t = (t + 1) / T, as callers compute it
        return s, torch.searchsorted(grid, s.reshape(-1)).reshape(s.shape)  # first t with s <= s_t

    def beta(self, s: float | Tensor) -> Tensor:
        """beta(s), float64, shaped like s."""
        s, cell = self._cell(s)
        return self.beta_grid[cell]

    def integral_beta(self, s: float | Tensor) -> Tensor:
        """int_0^s beta(u) du = beta[0] + ... + beta[t-1] + T beta[t] (s - t / T) on code t's cell. Float64."""
        s, cell = self._cell(s)
        before = torch.cat([self.beta_grid.new_zeros(1), torch.cumsum(self.beta_grid, 0)]) / self.T
        return before[cell] + self.beta_grid[cell] * (s - cell.to(torch.float64) / self.T)

    def alpha_bar(self, s: float | Tensor) -> Tensor:
        """exp(-int_0^s beta), the signal left at time s (Song et al. 2021, appendix B). Float64, shaped like s."""
        return torch.exp(-self.integral_beta(s))  # math/score_sde.tex eq:sde-alpha-bar

    def drift(self, x: Tensor, s: float) -> Tensor:  # f(x, s) = -1/2 beta(s) x; x: (B, ...)
        return -0.5 * self.beta(s).item() * x  # Song et al. 2021, eq. 11; math/score_sde.tex eq:vp-sde

    def diffusion(self, s: float) -> float:  # g(s) = sqrt(beta(s))
        return math.sqrt(self.beta(s).item())  # Song et al. 2021, eq. 11; math/score_sde.tex eq:vp-sde


def probability_flow_drift(sde: VPSDE, x: Tensor, s: float, score: Tensor) -> Tensor:
    """dx/ds of the probability-flow ODE, f - 1/2 g^2 score = -1/2 beta(s) (x + score). x, score: (B, ...)."""
    return -0.5 * sde.beta(s).item() * (x + score)  # Song et al. 2021, eq. 13; math/score_sde.tex eq:pf-ode-vp


def reverse_sde_drift(sde: VPSDE, x: Tensor, s: float, score: Tensor) -> Tensor:
    """Drift of the reverse-time SDE (Anderson 1982), f - g^2 score = -1/2 beta(s) x - beta(s) score."""
    return sde.drift(x, s) - sde.beta(s).item() * score  # Song et al. 2021, eq. 6; math/score_sde.tex eq:reverse-sde-vp


def noise_levels(schedule: NoiseSchedule) -> Tensor:
    """DDIM's noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for every code t: (T,) float64, increasing."""
    return ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()  # DDIM sec. 4.3; math/ddim.tex eq:ddim-ode-variables


def timestep_at_noise_level(schedule: NoiseSchedule, noise_level: float) -> int:
    """t(sigma): the code t whose noise level sigma_t is nearest to `noise_level` on a log scale; 0 for levels up to
    sigma_0, T-1 above sigma_{T-1}. On the grid, t(sigma_t) = t. math/score_sde.tex eq:t-of-sigma"""
    check_finite_number("noise_level", noise_level, minimum=0)
    if noise_level == 0:
        return 0
    log_levels = noise_levels(schedule).log()
    edges = (log_levels[:-1] + log_levels[1:]) / 2  # between sigma_t and sigma_{t+1}, geometrically
    return int(torch.searchsorted(edges, torch.tensor([math.log(noise_level)], dtype=torch.float64)).item())


def probability_flow_velocity(model: nn.Module, schedule: NoiseSchedule, x_bar: Tensor, noise_level: float) -> Tensor:
    """d x_bar / d sigma of the probability-flow ODE in DDIM's variables: eps_theta(x_bar / sqrt(1 + sigma^2), t),
    with sigma = `noise_level`.

    x_bar = x / sqrt(alpha_bar): (B, ...); noise_level >= 0; t = t(sigma). The model sees x_t in x_bar's dtype on its own
    device. Returns eps, (B, ...) on the model's device. math/score_sde.tex eq:pf-ode-ddim, eq:t-of-sigma
    """
    if not isinstance(x_bar, Tensor) or x_bar.ndim < 1:
        raise ValueError(f"x_bar must be a tensor with a batch dimension (B, ...), got {_shape(x_bar)}")
    t = timestep_at_noise_level(schedule, noise_level)
    device = pick_device(None, model)
    x_t = x_bar.to(device) / math.sqrt(1 + noise_level**2)  # math/ddim.tex eq:ddim-ode-back
    return model(x_t, torch.full((x_bar.shape[0],), t, dtype=torch.int64, device=device))


@torch.inference_mode()
def probability_flow_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    method: Method = "RK45",
    rtol: float = 1e-4,
    atol: float = 1e-4,
    callback: Callback | None = None,
) -> tuple[Tensor, int]:
    """Integrate the probability-flow ODE from x_T at code t = T-1 down to the data with `scipy.integrate.solve_ivp`.

    The ODE is solved in DDIM's variables, d x_bar / d sigma = `probability_flow_velocity` (math/score_sde.tex
    eq:pf-ode-ddim), from sigma_{T-1} down to sigma = 0, where alpha_bar = 1 and x_bar = x_0. The model is called at
    the integer timestep t(sigma) nearest to the current noise level (eq:t-of-sigma); since t(sigma_t) = t, DDIM with
    eta = 0 is exactly Euler's method for this ODE (eq:ddim-euler-ode). One batch is one ODE system, so the adaptive
    step size is shared by all rows. RK45 is Dormand-Prince 5(4), torchdiffeq's "dopri5".

    x_T: (B, ...) noise. The solver's state is float64 on the CPU; the model sees x_t in x_T's dtype.
    `callback(nfe, t, x_t, x_0_pred)` runs after every model evaluation, including those of steps the solver rejects.
    Returns (x_0 shaped like x_T, in its dtype and on its device; nfe, the number of model evaluations).
    """
    if method not in ("RK45", "RK23", "DOP853"):
        raise ValueError(f"method must be 'RK45', 'RK23' or 'DOP853' (explicit Runge-Kutta), got {method!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not isinstance(x_T, Tensor) or x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError(f"x_T must be a tensor (B, ...) with B >= 1, got {_shape(x_T)}")
    shape, dtype = x_T.shape, x_T.dtype
    noise_level_max = noise_levels(schedule)[-1].item()
    nfe = 0

    def velocity(noise_level: float, y: np.ndarray) -> np.ndarray:  # solve_ivp's fun(t, y), the noise level as time
        nonlocal nfe
        x_bar = torch.from_numpy(y).reshape(shape)
        eps_theta = probability_flow_velocity(model, schedule, x_bar.to(dtype), noise_level)
        nfe += 1
        if callback is not None:  # the x_0 guess at level sigma, x_bar - sigma eps_theta (eq:predict-x0 on the grid)
            x_t = x_bar / math.sqrt(1 + noise_level**2)
            x_0_pred = x_bar - noise_level * eps_theta.to("cpu", torch.float64)
            callback(nfe, timestep_at_noise_level(schedule, noise_level), x_t.to(dtype), x_0_pred.to(dtype))
        return eps_theta.to("cpu", torch.float64).reshape(-1).numpy()

    # 1. x_bar at sigma_{T-1}: x_T / sqrt(alpha_bar_{T-1}) = x_T sqrt(1 + sigma_{T-1}^2); math/ddim.tex eq:ddim-ode-back
    x_bar_T = x_T.detach().to("cpu", torch.float64) * math.sqrt(1 + noise_level_max**2)
    # 2. integrate d x_bar / d sigma = eps down to sigma = 0 (math/score_sde.tex eq:pf-ode-ddim)
    from scipy.integrate import solve_ivp  # here, not at the top: scipy.integrate takes 0.5 s to import

    solution = solve_ivp(velocity, (noise_level_max, 0.0), x_bar_T.reshape(-1).numpy(), method=method, rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"solve_ivp ({method}) failed: {solution.message}")
    # 3. at sigma = 0, x_bar = x_0
    x_0 = torch.from_numpy(solution.y[:, -1].copy()).reshape(shape)
    return x_0.to(x_T.device, dtype), nfe


def _check_batch(schedule: NoiseSchedule, name: str, value: Tensor, t: int | Tensor) -> Tensor:
    if not isinstance(value, Tensor) or value.ndim < 1:
        raise ValueError(f"{name} must be a tensor with a batch dimension (B, ...), got {_shape(value)}")
    return check_timesteps(schedule, t, value.shape[0])


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
