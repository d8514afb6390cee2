"""Checkers for the exercises of notebooks 01-05: the forward process, its posterior, the Gaussian KL, the training
loss L_simple and the timestep embedding.

    check_q_sample(fn)            fn(schedule, x_0, t, eps) -> x_t                        01, DDPM eq. 4
    check_q_posterior(fn)         fn(schedule, x_0, x_t, t) -> (mean, variance)           02, DDPM eqs. 6-7
    check_normal_kl(fn)           fn(mean1, var1, mean2, var2) -> KL per coordinate       03, eq:gaussian-kl
    check_ddpm_loss(fn)           fn(model, schedule, x_0, t, eps) -> L_simple            04, DDPM Algorithm 1
    check_timestep_embedding(fn)  fn(t, dim) -> (B, dim)                                  05, DDPM appendix B
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm_lite.elbo import normal_kl
from ddpm_lite.exercises._engine import (
    _call, _Call, _check_linear, _CheckFailed, _concat, _expect_like, _expect_loss, _expect_one_number, _fail_with,
    _first_input, _linear_lines, _mismatch, _Mistake, _name_of, _report, _shape_of, _Term, _wrong_line,
)
from ddpm_lite.exercises._inputs import (
    _IMAGE, _MUTATIONS, _describe, _labels, _randn, _RecordingModel, _schedule_cases, _solution, _tables,
)
from ddpm_lite.forward import q_posterior, q_sample
from ddpm_lite.models import timestep_embedding

__all__ = ["check_ddpm_loss", "check_normal_kl", "check_q_posterior", "check_q_sample", "check_timestep_embedding"]

_Q_SAMPLE = (  # DDPM eq. (4); math/forward.tex eq:reparam
    _Term("x_0", "sqrt(alpha_bar[t])", lambda q: q.sqrt(q.alpha_bar)),
    _Term("eps", "sqrt(1 - alpha_bar[t])", lambda q: q.sqrt(1 - q.alpha_bar)),
)


def check_q_sample(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_0, t, eps) -> x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps (DDPM eq. 4).

    x_0, eps: (B, C, H, W) float64; t: (B,) int64, one timestep per example. Against `ddpm_lite.forward.q_sample`.
    """
    generator, calls = torch.Generator().manual_seed(seed), []
    for name, schedule, t in _schedule_cases(generator):
        x_0, eps = _randn(generator, len(t), *_IMAGE), _randn(generator, len(t), *_IMAGE)
        calls.append(_Call(dict(schedule=schedule, x_0=x_0, t=t, eps=eps), q_sample(schedule, x_0, t, eps),
                           _tables(schedule, t), _labels(name, t), _describe(name, t, x_0)))
    return _check_linear("check_q_sample", fn, calls, _Q_SAMPLE, library="ddpm_lite.forward.q_sample",
                         paper="DDPM eq. 4", label="math/forward.tex eq:reparam",
                         solution=_solution("01_forward_process"), mutations=_MUTATIONS)


_POSTERIOR_MEAN = (  # DDPM eq. (7); math/posterior.tex eq:posterior-mean
    _Term("x_0", "sqrt(alpha_bar_prev[t]) * beta[t] / (1 - alpha_bar[t])",
          lambda q: q.sqrt(q.alpha_bar_prev) * q.beta / (1 - q.alpha_bar)),
    _Term("x_t", "sqrt(alpha[t]) * (1 - alpha_bar_prev[t]) / (1 - alpha_bar[t])",
          lambda q: q.sqrt(q.alpha) * (1 - q.alpha_bar_prev) / (1 - q.alpha_bar)),
)
_POSTERIOR_VARIANCE = _Term(  # DDPM eq. (7); math/posterior.tex eq:posterior-variance
    "variance", "(1 - alpha_bar_prev[t]) / (1 - alpha_bar[t]) * beta[t]",
    lambda q: (1 - q.alpha_bar_prev) / (1 - q.alpha_bar) * q.beta, mistakes=[
        ("beta[t]: sigma_t^2 = beta_t is DDPM's other reverse variance (sec. 3.2), not the posterior's",
         lambda q: q.beta)])


def check_q_posterior(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_0, x_t, t) -> (mean, variance) of q(x_{t-1} | x_t, x_0), DDPM eqs. 6-7 (tilde-mu, tilde-beta).

    x_0, x_t: (B, C, H, W) float64; t: (B,) int64. The variance may be (B, 1, 1, 1), like `q_posterior`'s, or
    shaped like x_t. Against `ddpm_lite.forward.q_posterior`.
    """
    generator, calls, variances = torch.Generator().manual_seed(seed), [], []
    for name, schedule, t in _schedule_cases(generator):
        x_0, x_t = _randn(generator, len(t), *_IMAGE), _randn(generator, len(t), *_IMAGE)
        mean, variance = q_posterior(schedule, x_0, x_t, t)
        calls.append(_Call(dict(schedule=schedule, x_0=x_0, x_t=x_t, t=t), mean, _tables(schedule, t),
                           _labels(name, t), _describe(name, t, x_0)))
        variances.append(variance.flatten())

    def run() -> str:
        means, found_variance = [], []
        for call in calls:
            out = _call(fn, call.args, case=call.case, solution=_solution("02_posterior"))
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise _CheckFailed(f"{_name_of(fn)} returned a {type(out).__name__} on {call.case}; return the pair "
                                   f"(mean, variance), like q_posterior")
            means.append(_expect_like(fn, out[0], call.library, call.case, " for the mean"))
            found_variance.append(_one_per_example(fn, out[1], call.args["x_t"], call.case))
        lines = [f"mean: {line}" for line in _linear_lines(torch.cat(means), calls, _POSTERIOR_MEAN, "DDPM eq. 7",
                                                           _MUTATIONS)]
        labels, q = [label for call in calls for label in call.labels], _concat([call.q for call in calls])
        found_variance = torch.cat(found_variance)
        found = _mismatch(found_variance, torch.cat(variances), labels)
        if found.wrong.any():
            lines += [f"variance: {found.summary(labels)}",
                      _wrong_line("the variance", found_variance, int(found.wrong.nonzero()[0]), _POSTERIOR_VARIANCE,
                                  q, labels, "DDPM eq. 7", found.wrong, _MUTATIONS)]
        _fail_with(lines, f"{_name_of(fn)} does not match ddpm_lite.forward.q_posterior (DDPM eqs. 6-7; "
                          f"math/posterior.tex eq:posterior-mean, eq:posterior-variance): ")
        return f"{_name_of(fn)} matches ddpm_lite.forward.q_posterior (mean and variance) on {len(labels)} cases"

    return _report("check_q_posterior", run)


def _one_per_example(fn: Callable, variance: object, x_t: Tensor, case: str) -> Tensor:
    """The variance of each example, (B,), if it broadcasts against x_t and is the same for every coordinate."""
    shape = tuple(variance.shape) if isinstance(variance, Tensor) else type(variance).__name__
    if not isinstance(variance, Tensor) or variance.dtype != x_t.dtype:
        raise _CheckFailed(f"{_name_of(fn)} returned a variance that is {shape} "
                           f"{getattr(variance, 'dtype', '')} on {case}; expected a {x_t.dtype} tensor")
    try:
        rows = variance.expand_as(x_t).reshape(len(x_t), -1)
    except RuntimeError:
        raise _CheckFailed(f"{_name_of(fn)} returned a variance of shape {shape} on {case}; it must broadcast "
                           f"against x_t {tuple(x_t.shape)}: (B, 1, 1, 1) like q_posterior, or x_t's shape") from None
    if not torch.equal(rows, rows[:, :1].expand_as(rows)):
        raise _CheckFailed(f"{_name_of(fn)} returned a variance that differs between the coordinates of one example "
                           f"on {case}; q(x_{{t-1}} | x_t, x_0) has covariance tilde-beta_t I, one number per example")
    return rows[:, 0]


def _kl_term(values: Callable[[dict], Tensor], name: str, formula: str, value: float,
             mistakes: Sequence[_Mistake] = ()) -> _Term:
    """A term of the Gaussian KL, whose coefficient is the constant `value`; leaving out the 1/2 is a known mistake."""
    return _Term(name, formula, lambda q: value * q.one, values, (
        *mistakes, (f"{2 * value:g}: the factor 1/2 left out", lambda q: 2 * value * q.one)))


_KL = (  # math/elbo.tex eq:gaussian-kl, per coordinate
    _kl_term(lambda args: torch.log(args["var2"] / args["var1"]), "log(var2 / var1)", "1/2", 0.5,
             [("-1/2: log(var1 / var2) where log(var2 / var1) belongs", lambda q: -0.5 * q.one)]),
    _kl_term(lambda args: args["var1"] / args["var2"], "var1 / var2", "1/2", 0.5),
    _kl_term(lambda args: (args["mean1"] - args["mean2"]) ** 2 / args["var2"], "(mean1 - mean2)^2 / var2", "1/2", 0.5),
    _kl_term(lambda args: torch.ones_like(args["mean1"]), "1", "-1/2", -0.5),
)


def _kl_mistakes(args: dict) -> list[tuple[str, Tensor]]:
    return [("KL(N(mean2, var2) || N(mean1, var1)): the two Gaussians in the other order",
             normal_kl(args["mean2"], args["var2"], args["mean1"], args["var1"])),
            ("the KL with standard deviations in place of the variances (var1, var2 are variances)",
             normal_kl(args["mean1"], args["var1"] ** 2, args["mean2"], args["var2"] ** 2))]


def check_normal_kl(fn: Callable, *, seed: int = 0) -> bool:
    """fn(mean1, var1, mean2, var2) -> KL(N(mean1, var1) || N(mean2, var2)) per coordinate, in nats.

    All four: (B, D) float64, variances > 0; the result is (B, D), 1/2 (log(var2 / var1) + (var1 + (mean1 - mean2)^2)
    / var2 - 1) (math/elbo.tex eq:gaussian-kl). Against `ddpm_lite.elbo.normal_kl`.
    """
    generator, calls = torch.Generator().manual_seed(seed), []
    for name, batch in (("two random Gaussians", 6), ("KL to N(0, 1), as in L_T", 4)):
        mean1, var1 = _randn(generator, batch, 10), _randn(generator, batch, 10).exp()  # log-normal, so positive
        mean2, var2 = _randn(generator, batch, 10), _randn(generator, batch, 10).exp()
        if batch == 4:
            mean2, var2 = torch.zeros_like(mean2), torch.ones_like(var2)
        args = dict(mean1=mean1, var1=var1, mean2=mean2, var2=var2)
        one = SimpleNamespace(one=torch.ones(batch, dtype=torch.float64))  # the coefficients are constants
        calls.append(_Call(args, normal_kl(*args.values()), one, [f"row {b} of {name}" for b in range(batch)],
                           f"{name}, (B, D) = ({batch}, 10)"))
    return _check_linear("check_normal_kl", fn, calls, _KL, library="ddpm_lite.elbo.normal_kl",
                         paper="the Gaussian KL", label="math/elbo.tex eq:gaussian-kl", solution=_solution("03_elbo"),
                         outputs=_kl_mistakes)


def check_ddpm_loss(fn: Callable, *, seed: int = 0) -> bool:
    """fn(model, schedule, x_0, t, eps) -> L_simple of a batch, DDPM Algorithm 1 (eq. 14) with t and eps drawn for you:

    the mean over the batch and every coordinate of (eps - model(x_t, t))^2, with x_t = sqrt(alpha_bar[t]) x_0 +
    sqrt(1 - alpha_bar[t]) eps. x_0, eps: (B, C, H, W) float64; t: (B,) int64. `model` is a fixed stand-in that
    records what it is given, so a wrong x_t or t is told apart from a wrong loss. Against what
    `ddpm_lite.train.ddpm_loss` computes from its t and eps: F.mse_loss(model(q_sample(schedule, x_0, t, eps), t), eps).
    """
    generator = torch.Generator().manual_seed(seed)
    cases = [(name, schedule, t, _randn(generator, len(t), *_IMAGE), _randn(generator, len(t), *_IMAGE))
             for name, schedule, t in _schedule_cases(generator)]

    def run() -> str:
        for name, schedule, t, x_0, eps in cases:
            model, case = _RecordingModel(), _describe(name, t, x_0)
            loss = _call(fn, dict(model=model, schedule=schedule, x_0=x_0, t=t, eps=eps), case=case,
                         solution=_solution("04_training_2d"))
            x_t = q_sample(schedule, x_0, t, eps)  # Algorithm 1 line 5's input; math/forward.tex eq:reparam
            _expect_one_number(fn, loss, case, "L_simple is one number, the mean over the batch and every coordinate "
                                               "(F.mse_loss(eps_theta, eps))")
            given_x, given_t = _first_input(fn, model, "the model", case)
            if given_t.shape != t.shape or not torch.equal(given_t.to(torch.float64), t.to(torch.float64)):
                paper = given_t.shape == t.shape and torch.equal(given_t.to(torch.float64), t + 1.0)
                raise _CheckFailed(f"{_name_of(fn)} called the model with t = {given_t.tolist()} where t = "
                                   f"{t.tolist()} belongs" + (" (t + 1, the paper's 1-based t; the network takes the "
                                                              "code's t)" if paper else ""))
            if given_x.shape != x_t.shape:
                raise _CheckFailed(f"{_name_of(fn)} called the model with an x_t of shape {tuple(given_x.shape)} on "
                                   f"{case}; x_t has the shape of x_0, {tuple(x_t.shape)}")
            _fail_with(_linear_lines(given_x, [_Call(dict(x_0=x_0, eps=eps), x_t, _tables(schedule, t),
                                                     _labels(name, t), case)], _Q_SAMPLE, "DDPM eq. 4", _MUTATIONS),
                       f"{_name_of(fn)} called the model with an x_t that is not q_sample's (DDPM eq. 4; "
                       f"math/forward.tex eq:reparam): ")
            # x_t is q_sample's (to _RTOL); L_simple on the x_t given, so that only the loss itself can differ
            eps_theta = _RecordingModel()(given_x, t)
            library = F.mse_loss(eps_theta, eps)  # DDPM Algorithm 1 line 5, eq. (14); math/elbo.tex eq:l-simple
            error = eps - eps_theta
            _expect_loss(fn, loss, library, [
                ("the sum over the batch and every coordinate; L_simple is the mean", (error**2).sum()),
                ("the mean over the batch of each example's sum; L_simple is the mean over the coordinates too",
                 (error**2).flatten(1).sum(1).mean()),
                ("the error against x_0; the network predicts eps, so eps is the target", F.mse_loss(eps_theta, x_0)),
                ("the error against x_t; the network predicts eps, so eps is the target", F.mse_loss(eps_theta, x_t)),
                ("the root of the mean squared error; L_simple is not square-rooted", library.sqrt()),
                ("the mean absolute error; L_simple squares the error", error.abs().mean()),
                ("the mean of (eps + eps_theta)^2: a sign", ((eps + eps_theta) ** 2).mean()),
            ], case=case, loss_name="L_simple (DDPM eq. 14; math/elbo.tex eq:l-simple)",
                given="the model was given the right x_t and t")
        return (f"{_name_of(fn)} matches L_simple as ddpm_lite.train.ddpm_loss computes it, on {len(cases)} batches "
                f"(both schedules, t = 0 and T-1 included)")

    return _report("check_ddpm_loss", run)


def _sinusoids(t: Tensor, dim: int, power: float = -1.0, denominator: int = -1, order: str = "sin-cos",
               shift: int = 0) -> Tensor:
    """The sinusoidal embedding in float64, with the knobs its usual variants turn. (B,) -> (B, dim)."""
    half = dim // 2
    frequencies = 10_000.0 ** (power * torch.arange(half, dtype=torch.float64) / (half + denominator))
    angles = (t.to(torch.float64) + shift)[:, None] * frequencies[None]
    sin, cos = torch.sin(angles), torch.cos(angles)
    if order == "interleaved":
        return torch.stack([sin, cos], dim=2).reshape(len(t), -1)
    return torch.cat([sin, cos] if order == "sin-cos" else [cos, sin], dim=1)


_EMBEDDING_MISTAKES = (  # (what differs, the knobs of `_sinusoids` that make it)
    ("cos first, then sin", dict(order="cos-sin")),
    ("sin and cos interleaved (sin, cos of the first frequency, then of the second, ...)", dict(order="interleaved")),
    ("frequencies 10000^(-i / h) for h = dim // 2; the library divides by h - 1, so that the lowest frequency is "
     "exactly 1 / 10000", dict(denominator=0)),
    ("frequencies 10000^(+i / (h - 1)): the exponent's sign", dict(power=1.0)),
    ("t + 1, the paper's 1-based t, where the network takes the code's t", dict(shift=1)),
)


def check_timestep_embedding(fn: Callable, *, seed: int = 0) -> bool:
    """fn(t, dim) -> (B, dim), the sinusoidal timestep embedding of DDPM's networks (DDPM appendix B; Vaswani et al.

    2017, sec. 3.5): [sin(t f_0), ..., sin(t f_{h-1}), cos(t f_0), ..., cos(t f_{h-1})] with h = dim // 2 and
    f_i = 10000^(-i / (h - 1)). t: (B,) int64. Against `ddpm_lite.models.timestep_embedding`, which computes in
    float32, hence to 1e-3: float32's sine of an angle near 1000 keeps only about four decimals. (No math/ label:
    the notes do not derive the embedding.)
    """
    generator = torch.Generator().manual_seed(seed)
    cases = [(torch.tensor([0, 1, 2, int(torch.randint(3, 500, (), generator=generator)),
                            int(torch.randint(500, 998, (), generator=generator)), 998, 999]), dim) for dim in (16, 64)]

    def run() -> str:
        for t, dim in cases:
            case, library = f"t = {t.tolist()}, dim = {dim}", timestep_embedding(t, dim)
            yours = _call(fn, dict(t=t, dim=dim), case=case, solution=_solution("05_training_mnist"))
            if not isinstance(yours, Tensor) or yours.shape != library.shape or not yours.is_floating_point():
                raise _CheckFailed(f"{_name_of(fn)} returned {_shape_of(yours)} on {case}; expected a float tensor of "
                                   f"shape {tuple(library.shape)}: the sines and cosines of dim // 2 frequencies")
            labels = [f"t = {int(step)} (dim = {dim})" for step in t]
            found = _mismatch(yours, library, labels, rtol=0.0, atol=1e-3)
            if found.wrong.any():
                named = [text for text, knobs in _EMBEDDING_MISTAKES
                         if torch.allclose(yours.double(), _sinusoids(t, dim, **knobs), rtol=0.0, atol=1e-3)]
                detail = f"yours is the embedding with {named[0]}" if named else _columns(yours, library, t, dim)
                _fail_with([found.summary(labels), detail], f"{_name_of(fn)} does not match "
                           f"ddpm_lite.models.timestep_embedding (DDPM appendix B; Vaswani et al. 2017, sec. 3.5): ")
        return f"{_name_of(fn)} matches ddpm_lite.models.timestep_embedding on 7 timesteps at dim = 16 and 64"

    return _report("check_timestep_embedding", run)


def _columns(yours: Tensor, library: Tensor, t: Tensor, dim: int) -> str:
    """Which columns of the embedding differ, and what the first of them should hold."""
    wrong = (yours.double() - library.double()).abs() > 1e-3  # (B, dim)
    columns, half = wrong.any(0).nonzero().flatten().tolist(), dim // 2
    column = columns[0]
    row, i = int(wrong[:, column].nonzero()[0]), column % half
    return (f"{len(columns)} of the {dim} columns differ; the first is column {column}, the "
            f"{'sin' if column < half else 'cos'} of t f_{i} with f_{i} = 10000^(-{i} / {half - 1}) = "
            f"{10_000 ** (-i / (half - 1)):.4g}: at t = {int(t[row])} yours is {yours[row, column].item():.4f} and "
            f"the library's {library[row, column].item():.4f}")
