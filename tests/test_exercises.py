"""The exercise checkers (`ddpm_lite.exercises`): each accepts the reference solution in solutions/, and rejects
deliberately wrong versions with a printed message that names the mismatch (which coefficient, which known
mistake), without raising. The checkers compare with the library, so these tests also tie each exercise's equation
to the library (STYLE.md rule 10): the labels are named in the tests below.
"""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ddpm_lite import exercises
from ddpm_lite.exercises.flow import _RecordingVelocity
from ddpm_lite.flow import flow_matching_loss, flow_sample, linear_path
from ddpm_lite.forward import q_sample
from ddpm_lite.models import MLP, MLPConfig
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import ddpm_loss

ROOT = Path(__file__).resolve().parents[1]
SOLVED = [  # (checker, solution file, function)
    ("check_q_sample", "01_forward_process", "your_q_sample"),
    ("check_q_posterior", "02_posterior", "your_q_posterior"),
    ("check_normal_kl", "03_elbo", "your_normal_kl"),
    ("check_ddpm_loss", "04_training_2d", "your_ddpm_loss"),
    ("check_timestep_embedding", "05_training_mnist", "your_timestep_embedding"),
    ("check_ddpm_step", "06_ddpm_sampling", "your_ddpm_step"),
    ("check_ddim_step", "07_ddim", "your_ddim_step"),
    ("check_score_from_eps", "08_score_sde", "your_score_from_eps"),
    ("check_tweedie_x0", "08_score_sde", "your_tweedie_x0"),
    ("check_guided_eps", "09_guidance", "your_guided_eps"),
    ("check_heun_step", "10_fast_sampling", "your_heun_step"),
    ("check_dpmpp_2m_step", "10_fast_sampling", "your_dpmpp_2m_step"),
    ("check_v_target", "11_objectives", "your_v_target"),
    ("check_eps_from_v", "11_objectives", "your_eps_from_v"),
    ("check_flow_matching_loss", "12_flow_matching", "your_flow_matching_loss"),
    ("check_flow_euler_step", "12_flow_matching", "your_euler_step"),
]


def solution(notebook: str, name: str):
    spec = importlib.util.spec_from_file_location(f"solution_{notebook}", ROOT / "solutions" / f"{notebook}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def ex(table, t, x):  # a (T,) table at each example's t, shaped (B, 1, ..., 1) like the solutions do it
    return table[t].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def test_every_checker_is_listed_and_has_a_solution():
    assert sorted(exercises.__all__) == sorted(check for check, _, _ in SOLVED)


@pytest.mark.parametrize(("check", "notebook", "name"), SOLVED, ids=[row[0] for row in SOLVED])
def test_the_solution_passes(check, notebook, name, capsys):
    """Every exercise's equation against the library, through its checker: eq:reparam (q_sample), eq:posterior-mean
    and eq:posterior-variance (q_posterior), eq:gaussian-kl (normal_kl), eq:l-simple (the loss), eq:ddpm-step with
    eq:reverse-variance-choices (ddpm_step), eq:ddim-step with eq:ddim-sigma (ddim_step), eq:score-from-eps,
    eq:tweedie (the score view, where eq:predict-x0 names the usual confusion), eq:cfg (guidance), eq:heun-step and
    eq:dpmpp-2m (the solvers of notebook 10), eq:v-definition and eq:eps-from-v (v-prediction, notebook 11),
    eq:cfm-loss with eq:linear-path and eq:conditional-velocity (the flow-matching loss) and eq:flow-euler (one Euler
    step of the flow's ODE, notebook 12)."""
    assert getattr(exercises, check)(solution(notebook, name)) is True
    out = capsys.readouterr().out
    assert out.startswith(f"{check}: {name} matches ") and out.count("\n") == 1


@pytest.mark.parametrize("seed", [1, 2])
def test_the_solutions_pass_on_other_seeds(seed, capsys):
    for check, notebook, name in SOLVED:
        assert getattr(exercises, check)(solution(notebook, name), seed=seed) is True, capsys.readouterr().out


@pytest.mark.parametrize("notebook", sorted({row[1] for row in SOLVED}))
def test_solutions_are_written_from_scratch(notebook):
    """A solution imports nothing from ddpm_lite outside its `if __name__ == "__main__"` block, which runs the check."""
    tree = ast.parse((ROOT / "solutions" / f"{notebook}.py").read_text())
    guarded = {id(node) for top in tree.body if isinstance(top, ast.If) for node in ast.walk(top)}
    imported = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                and id(node) not in guarded]
    modules = [node.module if isinstance(node, ast.ImportFrom) else alias.name for node in imported
               for alias in node.names]
    assert all(not str(module).startswith("ddpm_lite") for module in modules), modules
    assert "__main__" in (ROOT / "solutions" / f"{notebook}.py").read_text()


@pytest.mark.parametrize(("check", "notebook", "name"), SOLVED, ids=[row[0] for row in SOLVED])
def test_an_untouched_stub_is_not_implemented_yet_and_does_not_raise(check, notebook, name, capsys):
    def stub(*args):
        raise NotImplementedError

    assert getattr(exercises, check)(stub) is False
    out = capsys.readouterr().out
    assert f"{check}: stub is not implemented yet; the solution is in solutions/{notebook}.py" in out
    assert (ROOT / "solutions" / f"{notebook}.py").exists()


# ------------------------------------------------------------------------- wrong versions and what they are told


def q_sample_without_root(schedule, x_0, t, eps):
    alpha_bar = ex(schedule.alpha_bar, t, x_0)
    return alpha_bar * x_0 + (1 - alpha_bar).sqrt() * eps


def q_sample_with_beta(schedule, x_0, t, eps):
    alpha_bar = ex(schedule.alpha_bar, t, x_0)
    return alpha_bar.sqrt() * x_0 + ex(schedule.beta, t, x_0).sqrt() * eps


def q_sample_off_by_one(schedule, x_0, t, eps):
    alpha_bar = ex(schedule.alpha_bar, t - 1, x_0)
    return alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps


def q_sample_swapped(schedule, x_0, t, eps):
    alpha_bar = ex(schedule.alpha_bar, t, x_0)
    return (1 - alpha_bar).sqrt() * x_0 + alpha_bar.sqrt() * eps


def q_sample_without_noise(schedule, x_0, t, eps):
    return ex(schedule.alpha_bar, t, x_0).sqrt() * x_0


def q_sample_product(schedule, x_0, t, eps):
    alpha_bar = ex(schedule.alpha_bar, t, x_0)
    return alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps * x_0


def posterior_alpha_bar_for_prev(schedule, x_0, x_t, t):
    """alpha_bar[t - 1] for alpha_bar_prev[t]: right except at the edge t = 0 (Python's [-1] is the last entry)."""
    alpha, beta, alpha_bar = ex(schedule.alpha, t, x_t), ex(schedule.beta, t, x_t), ex(schedule.alpha_bar, t, x_t)
    prev = ex(schedule.alpha_bar, t - 1, x_t)
    mean = prev.sqrt() * beta / (1 - alpha_bar) * x_0 + alpha.sqrt() * (1 - prev) / (1 - alpha_bar) * x_t
    return mean, (1 - prev) / (1 - alpha_bar) * beta


def posterior_with_beta_variance(schedule, x_0, x_t, t):
    mean, _ = solution("02_posterior", "your_q_posterior")(schedule, x_0, x_t, t)
    return mean, ex(schedule.beta, t, x_t)


def kl_reversed(mean1, var1, mean2, var2):
    return 0.5 * (torch.log(var1 / var2) + (var2 + (mean1 - mean2) ** 2) / var1 - 1)


def kl_without_half_on_the_means(mean1, var1, mean2, var2):
    return 0.5 * (torch.log(var2 / var1) + var1 / var2 - 1) + (mean1 - mean2) ** 2 / var2


def loss_summed(model, schedule, x_0, t, eps):
    alpha_bar = ex(schedule.alpha_bar, t, x_0)
    return ((eps - model(alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps, t)) ** 2).sum()


def loss_on_clean_data(model, schedule, x_0, t, eps):
    return ((eps - model(x_0, t)) ** 2).mean()


def loss_with_paper_t(model, schedule, x_0, t, eps):
    alpha_bar = ex(schedule.alpha_bar, t, x_0)
    return ((eps - model(alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps, t + 1)) ** 2).mean()


def embedding_cos_first(t, dim):
    half = dim // 2
    angles = t[:, None] * torch.exp(-math.log(10_000) * torch.arange(half) / (half - 1))
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def embedding_base_1000(t, dim):
    half = dim // 2
    angles = t[:, None] * torch.exp(-math.log(1_000) * torch.arange(half) / (half - 1))
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def ddpm_step_noise_at_the_end(schedule, x_t, t, eps, noise, variance):
    alpha, beta, alpha_bar = ex(schedule.alpha, t, x_t), ex(schedule.beta, t, x_t), ex(schedule.alpha_bar, t, x_t)
    sigma2 = ex(schedule.posterior_variance if variance == "posterior" else schedule.beta, t, x_t)
    return (x_t - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt() + sigma2.sqrt() * noise  # also at t = 0


def ddpm_step_without_sqrt_alpha(schedule, x_t, t, eps, noise, variance):
    right = solution("06_ddpm_sampling", "your_ddpm_step")(schedule, x_t, t, eps, noise, variance)
    alpha, beta, alpha_bar = ex(schedule.alpha, t, x_t), ex(schedule.beta, t, x_t), ex(schedule.alpha_bar, t, x_t)
    return right + beta / ((1 - alpha_bar).sqrt() * alpha.sqrt()) * eps - beta / (1 - alpha_bar).sqrt() * eps


def ddim_one_step_back(schedule, x_t, t, t_prev, eps, eta, noise):
    """schedule.alpha_bar_prev[t] where alpha_bar[t_prev] belongs: right only for consecutive steps."""
    a_t, a_prev = schedule.alpha_bar[t].item(), schedule.alpha_bar_prev[t].item()
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    x_0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_prev) * x_0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps + sigma * noise


def ddim_sigma_without_eta(schedule, x_t, t, t_prev, eps, eta, noise):
    return solution("07_ddim", "your_ddim_step")(schedule, x_t, t, t_prev, eps, 1.0, noise)


def score_with_plus_sign(schedule, eps, t):
    return eps / (1 - ex(schedule.alpha_bar, t, eps)).sqrt()


def tweedie_with_sqrt(schedule, x_t, t, score):
    alpha_bar = ex(schedule.alpha_bar, t, x_t)
    return (x_t + (1 - alpha_bar).sqrt() * score) / alpha_bar.sqrt()


def guided_as_scale(eps_cond, eps_uncond, w):
    return eps_uncond + w * (eps_cond - eps_uncond)


def guided_swapped(eps_cond, eps_uncond, w):
    return (1 + w) * eps_uncond - w * eps_cond


def heun_without_average(x_bar, sigma, sigma_next, eps, eps_next):
    """Euler's step: the slope at the Euler point is computed and then not used."""
    return x_bar + (sigma_next - sigma) * eps


def heun_step_the_wrong_way(x_bar, sigma, sigma_next, eps, eps_next):
    return x_bar + (sigma - sigma_next) * (eps + eps_next) / 2


def dpmpp_first_order(x_bar, sigma, sigma_next, denoised, denoised_prev, sigma_prev):
    """DPM-Solver++ 1 (= DDIM): the previous data prediction left out."""
    return (sigma_next / sigma) * x_bar + (1 - sigma_next / sigma) * denoised


def dpmpp_r_upside_down(x_bar, sigma, sigma_next, denoised, denoised_prev, sigma_prev):
    r = math.log(sigma / sigma_next) / math.log(sigma_prev / sigma)  # h / h_prev
    return (sigma_next / sigma) * x_bar + (1 - sigma_next / sigma) * ((1 + 1 / (2 * r)) * denoised
                                                                      - denoised_prev / (2 * r))


def dpmpp_steps_in_sigma(x_bar, sigma, sigma_next, denoised, denoised_prev, sigma_prev):
    r = (sigma_prev - sigma) / (sigma - sigma_next)
    return (sigma_next / sigma) * x_bar + (1 - sigma_next / sigma) * ((1 + 1 / (2 * r)) * denoised
                                                                      - denoised_prev / (2 * r))


def v_target_plus_x0(schedule, x_0, t, eps):
    alpha_bar = ex(schedule.alpha_bar, t, x_0)
    return alpha_bar.sqrt() * eps + (1 - alpha_bar).sqrt() * x_0


def v_target_without_roots(schedule, x_0, t, eps):
    alpha_bar = ex(schedule.alpha_bar, t, x_0)
    return alpha_bar * eps - (1 - alpha_bar) * x_0


def eps_from_v_swapped(schedule, x_t, t, v):
    alpha_bar = ex(schedule.alpha_bar, t, x_t)
    return alpha_bar.sqrt() * x_t + (1 - alpha_bar).sqrt() * v


def eps_from_v_as_from_x0(schedule, x_t, t, v):
    """The x_0 conversion (x_t - sqrt(alpha_bar) x_0) / sqrt(1 - alpha_bar) applied to v."""
    alpha_bar = ex(schedule.alpha_bar, t, x_t)
    return (x_t - alpha_bar.sqrt() * v) / (1 - alpha_bar).sqrt()


def tau_per_example(tau, x):  # (B,) -> (B, 1, ..., 1), like the solution
    return tau.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def flow_loss_target_flipped(velocity_model, x_0, tau, eps):
    tau_b = tau_per_example(tau, x_0)
    return ((velocity_model((1 - tau_b) * x_0 + tau_b * eps, tau) - (x_0 - eps)) ** 2).mean()


def flow_loss_time_flipped(velocity_model, x_0, tau, eps):
    """Lipman et al.'s and Liu et al.'s direction of time (noise at 0) in the course's loss."""
    tau_b = tau_per_example(tau, x_0)
    return ((velocity_model(tau_b * x_0 + (1 - tau_b) * eps, tau) - (eps - x_0)) ** 2).mean()


def flow_loss_summed(velocity_model, x_0, tau, eps):
    tau_b = tau_per_example(tau, x_0)
    return ((velocity_model((1 - tau_b) * x_0 + tau_b * eps, tau) - (eps - x_0)) ** 2).sum()


def flow_loss_at_one_minus_tau(velocity_model, x_0, tau, eps):
    tau_b = tau_per_example(tau, x_0)
    return ((velocity_model((1 - tau_b) * x_0 + tau_b * eps, 1 - tau) - (eps - x_0)) ** 2).mean()


def flow_loss_vp_path(velocity_model, x_0, tau, eps):
    tau_b = tau_per_example(tau, x_0)
    return ((velocity_model((1 - tau_b).sqrt() * x_0 + tau_b.sqrt() * eps, tau) - (eps - x_0)) ** 2).mean()


def euler_step_sign_flipped(velocity, x, tau, tau_next):
    return x + (tau - tau_next) * velocity(x, tau)


def euler_velocity_at_tau_next(velocity, x, tau, tau_next):
    return x + (tau_next - tau) * velocity(x, tau_next)


def euler_without_step_size(velocity, x, tau, tau_next):
    return x - velocity(x, tau)


WRONG = [  # (checker, wrong version, fragments the message must contain)
    ("check_q_sample", q_sample_without_root, ["coefficient of x_0", "sqrt(alpha_bar[t]) without the square root"]),
    ("check_q_sample", q_sample_with_beta, ["coefficient of eps", "with alpha[t] in place of alpha_bar[t]"]),
    ("check_q_sample", q_sample_off_by_one, ["coefficient of x_0", "coefficient of eps", "t off by one"]),
    ("check_q_sample", q_sample_swapped, ["the coefficient of eps, sqrt(1 - alpha_bar[t]): are the two swapped?"]),
    ("check_q_sample", q_sample_without_noise, ["coefficient of eps is 0 ", "the term is missing"]),
    ("check_q_sample", q_sample_product, ["not of the form a * x_0 + b * eps"]),
    ("check_q_posterior", posterior_alpha_bar_for_prev,
     ["2 of 12 cases differ", "the first is t = 0", "coefficient of x_0", "coefficient of x_t", "the variance is",
      "alpha_bar[t - 1] in place of alpha_bar_prev[t]"]),
    ("check_q_posterior", posterior_with_beta_variance, ["the variance is", "yours equals beta[t]"]),
    ("check_normal_kl", kl_reversed, ["the two Gaussians in the other order"]),
    ("check_normal_kl", kl_without_half_on_the_means,
     ["coefficient of (mean1 - mean2)^2 / var2 is 1 where the Gaussian KL has 1/2", "the factor 1/2 left out"]),
    ("check_ddpm_loss", loss_summed, ["yours is the sum over the batch and every coordinate"]),
    ("check_ddpm_loss", loss_on_clean_data, ["not q_sample's", "coefficient of eps is 0 ", "the term is missing"]),
    ("check_ddpm_loss", loss_with_paper_t, ["called the model with t = ", "the paper's 1-based t"]),
    ("check_timestep_embedding", embedding_cos_first, ["cos first, then sin"]),
    ("check_timestep_embedding", embedding_base_1000, ["columns differ", "the first is column 1, the sin of t f_1"]),
    ("check_ddpm_step", ddpm_step_noise_at_the_end,
     ["the first is t = 0", "coefficient of noise", "sigma_t at t = 0 too"]),
    ("check_ddpm_step", ddpm_step_without_sqrt_alpha, ["coefficient of eps", "the whole bracket is divided"]),
    ("check_ddim_step", ddim_one_step_back,
     ["coefficient of x_t", "alpha_bar_prev[t] (one step back) in place of alpha_bar[t_prev]"]),
    ("check_ddim_step", ddim_sigma_without_eta, ["coefficient of noise", "with eta left out of sigma"]),
    ("check_score_from_eps", score_with_plus_sign, ["coefficient of eps", "the opposite sign"]),
    ("check_tweedie_x0", tweedie_with_sqrt, ["coefficient of score", "the weight of eps in eq:predict-x0"]),
    ("check_guided_eps", guided_as_scale, ["coefficient of eps_cond is 0 where Ho & Salimans 2022 eq. 6 has 1 + w",
                                           "with s = w"]),
    ("check_guided_eps", guided_swapped, ["coefficient of eps_uncond", "are the two swapped?"]),
    ("check_heun_step", heun_without_average,
     ["coefficient of eps is", "Euler's step, without the average", "coefficient of eps_next is 0 ", "missing"]),
    ("check_heun_step", heun_step_the_wrong_way, ["coefficient of eps ", "the step sigma_next - sigma is negative"]),
    ("check_dpmpp_2m_step", dpmpp_first_order,
     ["coefficient of denoised is", "the first-order step (DDIM)", "coefficient of denoised_prev is 0 "]),
    ("check_dpmpp_2m_step", dpmpp_r_upside_down, ["coefficient of denoised ", "r upside down"]),
    ("check_dpmpp_2m_step", dpmpp_steps_in_sigma, ["coefficient of denoised ", "measured in sigma"]),
    ("check_v_target", v_target_plus_x0, ["coefficient of x_0", "x_0 enters with a minus"]),
    ("check_v_target", v_target_without_roots, ["coefficient of eps", "coefficient of x_0", "without the square root"]),
    ("check_eps_from_v", eps_from_v_swapped, ["coefficient of x_t", "are the two swapped?"]),
    ("check_eps_from_v", eps_from_v_as_from_x0, ["coefficient of x_t is", "coefficient of v is"]),
    ("check_flow_matching_loss", flow_loss_target_flipped,
     ["the loss itself is wrong", "yours is the target x_0 - eps, the sign flipped"]),
    ("check_flow_matching_loss", flow_loss_time_flipped,
     ["not the linear path's", "the first is tau = 0", "coefficient of x_0 is 0 where the linear path has 1 - tau",
      "coefficient of eps", "the direction of time flipped"]),
    ("check_flow_matching_loss", flow_loss_summed, ["yours is the sum over the batch and every coordinate"]),
    ("check_flow_matching_loss", flow_loss_at_one_minus_tau,
     ["called velocity_model at tau = [1, 0, ", "yours is 1 - tau, the direction of time flipped"]),
    ("check_flow_matching_loss", flow_loss_vp_path, ["coefficient of x_0", "yours equals sqrt(1 - tau)"]),
    ("check_flow_euler_step", euler_step_sign_flipped,
     ["coefficient of velocity(x, tau) is 0.1 where Euler's method has tau_next - tau = -0.1", "sign flipped"]),
    ("check_flow_euler_step", euler_velocity_at_tau_next,
     ["your output equals x + (tau_next - tau) velocity(x, tau_next): the velocity evaluated at the end"]),
    ("check_flow_euler_step", euler_without_step_size,
     ["3 of 4 cases differ", "yours equals -1: x - velocity, without the step size"]),
]


@pytest.mark.parametrize(("check", "wrong", "fragments"), WRONG, ids=[row[1].__name__ for row in WRONG])
def test_a_wrong_version_fails_with_a_message_naming_the_mismatch(check, wrong, fragments, capsys):
    """Each message opens with the checker, the function and the library it was compared with, then the size of the
    difference and the first failing case; the fragments name the wrong term and the mistake."""
    assert getattr(exercises, check)(wrong) is False
    out = capsys.readouterr().out
    assert out.startswith(f"{check}: {wrong.__name__} ")
    assert [fragment for fragment in fragments if fragment not in out] == [], out


def test_every_checker_rejects_at_least_one_wrong_version():
    assert {row[0] for row in WRONG} == {row[0] for row in SOLVED}


def test_shape_dtype_exceptions_in_place_and_nan_get_their_own_messages(capsys):
    right = solution("01_forward_process", "your_q_sample")

    def summed(schedule, x_0, t, eps):
        return right(schedule, x_0, t, eps).sum(1)

    def in_float32(schedule, x_0, t, eps):
        return right(schedule, x_0, t, eps).float()

    def unbroadcast(schedule, x_0, t, eps):
        alpha_bar = schedule.alpha_bar[t]  # (B,): does not broadcast against (B, 2, 3, 4)
        return alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps

    def in_place(schedule, x_0, t, eps):
        x_0 *= ex(schedule.sqrt_alpha_bar, t, x_0)
        return x_0 + ex(schedule.sqrt_one_minus_alpha_bar, t, x_0) * eps

    def not_a_number(schedule, x_0, t, eps):
        return right(schedule, x_0, t, eps) / (t > 0).to(x_0.dtype).reshape(-1, 1, 1, 1) - x_0  # inf at t = 0

    expected = {
        summed: "returned shape (6, 3, 4) on the linear schedule, t = [0, 1, ",
        in_float32: "returned torch.float32 on the linear schedule",
        unbroadcast: "raised RuntimeError: The size of tensor a (6) must match",
        in_place: "changed its argument x_0 in place",
        not_a_number: "your output has NaN or inf values, first at t = 0 (linear schedule)",
    }
    for wrong, fragment in expected.items():
        assert exercises.check_q_sample(wrong) is False
        out = capsys.readouterr().out
        assert fragment in out, out
    exercises.check_q_sample(unbroadcast)
    out = capsys.readouterr().out
    assert "of unbroadcast: return alpha_bar.sqrt() * x_0" in out  # the learner's line
    assert "hint: a table indexed with t has shape (B,)" in out

    def three_arguments(x_0, t, eps):
        return x_0

    assert exercises.check_q_sample(three_arguments) is False
    assert "hint: the checker calls three_arguments(schedule, x_0, t, eps)" in capsys.readouterr().out

    def loss_per_example(model, schedule, x_0, t, eps):
        return solution("04_training_2d", "your_ddpm_loss")(model, schedule, x_0, t, eps).expand(len(t))

    assert exercises.check_ddpm_loss(loss_per_example) is False
    assert "returned shape (6,)" in capsys.readouterr().out
    assert exercises.check_q_posterior(lambda schedule, x_0, x_t, t: x_0) is False
    assert "return the pair (mean, variance)" in capsys.readouterr().out
    assert exercises.check_timestep_embedding(lambda t, dim: embedding_cos_first(t, dim)[:, : dim // 2]) is False
    assert "returned shape (7, 8)" in capsys.readouterr().out


def test_the_loss_checker_compares_with_ddpm_loss():
    """eq:l-simple: the loss check's reference, F.mse_loss(model(q_sample(x_0, t, eps), t), eps), is what
    `ddpm_loss` computes once its own t and eps are drawn (same generator, same order: t, then eps)."""
    schedule, model = NoiseSchedule.named("linear", 1000), MLP(MLPConfig())
    x_0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    draws = torch.Generator().manual_seed(1)
    t = torch.randint(0, schedule.T, (64,), generator=draws)
    eps = torch.randn(x_0.shape, generator=draws)
    with torch.no_grad():
        expected = ddpm_loss(model, schedule, x_0, generator=torch.Generator().manual_seed(1))
        assert_close(F.mse_loss(model(q_sample(schedule, x_0, t, eps), t), eps), expected, rtol=0.0, atol=0.0)
        assert_close(solution("04_training_2d", "your_ddpm_loss")(model, schedule, x_0, t, eps), expected,
                     rtol=1e-6, atol=1e-7)


def test_the_flow_loss_checker_compares_with_flow_matching_loss(capsys):
    """eq:cfm-loss: the flow-loss check's reference, the mean of (v(linear_path(x_0, eps, tau), tau) - (eps - x_0))^2 on
    its stand-in model, is what `flow_matching_loss` computes at time_scale=1.0; a model fed the library's time
    (1000 tau) is told so."""
    generator = torch.Generator().manual_seed(0)
    x_0, eps = (torch.randn(5, 2, 3, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    tau = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0], dtype=torch.float64)
    model = _RecordingVelocity(torch.randn(24, 24, generator=generator, dtype=torch.float64))
    expected = flow_matching_loss(model, x_0, tau=tau, eps=eps, time_scale=1.0)
    assert_close((model(linear_path(x_0, eps, tau), tau) - (eps - x_0)).pow(2).mean(), expected, rtol=0.0, atol=0.0)
    assert_close(solution("12_flow_matching", "your_flow_matching_loss")(model, x_0, tau, eps), expected,
                 rtol=1e-12, atol=0.0)

    def library_default(velocity_model, x_0, tau, eps):
        return flow_matching_loss(velocity_model, x_0, tau=tau, eps=eps)  # time_scale=1000

    assert exercises.check_flow_matching_loss(library_default) is False
    assert "yours is 1000 tau, flow_matching_loss's default time_scale" in capsys.readouterr().out
    assert exercises.check_flow_matching_loss(
        lambda velocity_model, x_0, tau, eps: flow_matching_loss(velocity_model, x_0, tau=tau, eps=eps,
                                                                 time_scale=1.0)) is True


def test_the_euler_checker_is_one_step_of_flow_sample(capsys):
    """eq:flow-euler: a whole flow_sample run of one Euler step from tau to tau_next passes the step's checker, and
    Heun's step (eq:flow-heun) does not."""
    def one_step(velocity, x, tau, tau_next, solver="euler"):
        return flow_sample(velocity, tuple(x.shape), taus=torch.tensor([tau, tau_next], dtype=torch.float64),
                           solver=solver, x_1=x, progress=False)

    assert exercises.check_flow_euler_step(one_step) is True
    assert exercises.check_flow_euler_step(lambda velocity, x, tau, tau_next: one_step(velocity, x, tau, tau_next,
                                                                                        "heun")) is False
    assert "does not match ddpm_lite.flow.flow_sample" in capsys.readouterr().out


def test_float32_tables_pass_the_tolerance(capsys):
    """RTOL (1e-3 of an example's scale) accepts schedule tables read in float32, as notebook 04's `my_loss` reads
    them (`.float()`): 1 - alpha_bar then loses up to 6e-4 of itself near t = 0. Formula slips are off by 1% or more
    at some t, and the wrong versions above all fail."""
    def float32(table, t, x):
        return table.float()[t].reshape(-1, *[1] * (x.ndim - 1))  # float32 * float64 data -> float64

    def q_sample_32(schedule, x_0, t, eps):
        alpha_bar = float32(schedule.alpha_bar, t, x_0)
        return alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps

    def loss_32(model, schedule, x_0, t, eps):
        return ((eps - model(q_sample_32(schedule, x_0, t, eps), t)) ** 2).mean()

    def posterior_32(schedule, x_0, x_t, t):
        alpha, beta = float32(schedule.alpha, t, x_t), float32(schedule.beta, t, x_t)
        alpha_bar, prev = float32(schedule.alpha_bar, t, x_t), float32(schedule.alpha_bar_prev, t, x_t)
        mean = prev.sqrt() * beta / (1 - alpha_bar) * x_0 + alpha.sqrt() * (1 - prev) / (1 - alpha_bar) * x_t
        return mean, ((1 - prev) / (1 - alpha_bar) * beta).to(x_t.dtype)

    def score_32(schedule, eps, t):
        return -eps / (1 - float32(schedule.alpha_bar, t, eps)).sqrt()

    for check, fn in [("check_q_sample", q_sample_32), ("check_ddpm_loss", loss_32),
                      ("check_q_posterior", posterior_32), ("check_score_from_eps", score_32)]:
        assert getattr(exercises, check)(fn) is True, capsys.readouterr().out
