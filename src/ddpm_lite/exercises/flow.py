"""Checkers for the exercises of notebook 12: the conditional flow-matching loss and one Euler step of the flow's ODE.

    check_flow_matching_loss(fn)   fn(velocity_model, x_0, tau, eps) -> loss        12, Lipman et al. 2023, eq. 9
    check_flow_euler_step(fn)      fn(velocity, x, tau, tau_next) -> x_next         12, Euler's method on the ODE

Notation (math/flow_matching.tex, and `ddpm_lite.flow`): the flow time tau runs over [0, 1], tau = 0 the data and
tau = 1 pure noise; x_tau = (1 - tau) x_0 + tau eps (eq:linear-path) moves with the conditional velocity eps - x_0
(eq:conditional-velocity). Samplers integrate from tau = 1 down to 0, so a step h = tau_next - tau is negative.
Lipman et al. and Liu et al. run time the other way (their t = 1 - tau, their velocity = minus this one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from ddpm_lite.exercises._engine import (
    _call, _Call, _CheckFailed, _expect_like, _expect_loss, _expect_one_number, _fail_with, _first_input,
    _linear_lines, _name_of, _report, _Term,
)
from ddpm_lite.exercises._inputs import _IMAGE, _randn, _solution
from ddpm_lite.flow import conditional_velocity, flow_sample, linear_path, mixture_velocity_fn
from ddpm_lite.mixture import default_mixture

__all__ = ["check_flow_euler_step", "check_flow_matching_loss"]

_SOLUTION = _solution("12_flow_matching")


def _taus(values: Tensor) -> str:
    return "[" + ", ".join(f"{value:.4g}" for value in values.tolist()) + "]"


class _RecordingVelocity(nn.Module):
    """A fixed v_theta(x_tau, tau) = (1 + tau) A x_tau + sin(3 tau), A a random (D, D) matrix, that records its inputs,
    so that the loss check can tell a wrong x_tau or tau from a wrong loss. It depends on both, so that a model
    called at the wrong point gives a different loss."""

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        self.matrix = matrix  # (D, D), D = the size of one example
        self.inputs: list[tuple[Tensor, Tensor]] = []

    def forward(self, x_tau: Tensor, tau: Tensor) -> Tensor:
        self.inputs.append((x_tau.detach().clone(), torch.as_tensor(tau).detach().clone()))
        tau = torch.as_tensor(tau, dtype=x_tau.dtype).reshape(-1, *[1] * (x_tau.ndim - 1))  # (B,) or (B, 1, ..., 1)
        mapped = (x_tau.flatten(1) @ self.matrix.to(x_tau.dtype).T).reshape(x_tau.shape)
        return (1 + tau) * mapped + torch.sin(3 * tau)


_PATH = (  # Esser et al. 2024, eq. 3 with a = 1 - tau, b = tau; math/flow_matching.tex eq:linear-path
    _Term("x_0", "1 - tau", lambda q: 1 - q.tau, mistakes=[
        ("tau: the direction of time flipped; tau = 0 is the data, so x_0 enters with 1 - tau", lambda q: q.tau),
        ("sqrt(1 - tau), a variance-preserving path's coefficient; the linear path scales x_0 by 1 - tau itself",
         lambda q: (1 - q.tau).sqrt())]),
    _Term("eps", "tau", lambda q: q.tau, mistakes=[
        ("1 - tau: the direction of time flipped; tau = 1 is pure noise, so eps enters with tau", lambda q: 1 - q.tau),
        ("sqrt(tau), a variance-preserving path's coefficient; the linear path scales eps by tau itself",
         lambda q: q.tau.sqrt())]),
)


def check_flow_matching_loss(fn: Callable, *, seed: int = 0) -> bool:
    """fn(velocity_model, x_0, tau, eps) -> the conditional flow-matching loss of a batch (Lipman et al. 2023, eq. 9;
    Liu et al. 2023, eq. 1) with tau and eps drawn for you:

    the mean over the batch and every coordinate of (velocity_model(x_tau, tau) - (eps - x_0))^2, with x_tau =
    (1 - tau) x_0 + tau eps (math/flow_matching.tex eq:cfm-loss, eq:linear-path, eq:conditional-velocity).
    x_0, eps: (B, C, H, W) float64; tau: (B,) float64 in [0, 1], 0 and 1 included. `velocity_model(x, tau)` is a
    fixed stand-in that takes tau itself (no factor T) and records what it is given, so a wrong x_tau or tau is told
    apart from a wrong loss. Against what `ddpm_lite.flow.flow_matching_loss(velocity_model, x_0, tau=tau, eps=eps,
    time_scale=1.0)` computes from x_tau.
    """
    generator = torch.Generator().manual_seed(seed)
    size = torch.Size(_IMAGE).numel()
    matrix = _randn(generator, size, size) / size**0.5  # keeps v_theta about as large as x_tau
    cases = []
    for _ in range(2):
        tau = torch.cat([torch.tensor([0.0, 1.0], dtype=torch.float64), torch.rand(4, generator=generator,
                                                                                    dtype=torch.float64)])
        cases.append((tau, _randn(generator, len(tau), *_IMAGE), _randn(generator, len(tau), *_IMAGE)))

    def run() -> str:
        for tau, x_0, eps in cases:
            model, case = _RecordingVelocity(matrix), f"tau = {_taus(tau)}, a batch of shape {tuple(x_0.shape)}"
            loss = _call(fn, dict(velocity_model=model, x_0=x_0, tau=tau, eps=eps), case=case, solution=_SOLUTION)
            x_tau = linear_path(x_0, eps, tau)  # math/flow_matching.tex eq:linear-path
            _expect_one_number(fn, loss, case, "the loss is one number, the mean over the batch and every coordinate "
                                               "(F.mse_loss(v, eps - x_0))")
            given_x, given_tau = _first_input(fn, model, "velocity_model", case)
            _check_tau(fn, given_tau.reshape(-1).to(torch.float64) if given_tau.numel() == len(tau) else given_tau,
                       tau, case)
            if given_x.shape != x_tau.shape:
                raise _CheckFailed(f"{_name_of(fn)} called velocity_model with an x_tau of shape "
                                   f"{tuple(given_x.shape)} on {case}; x_tau has the shape of x_0, "
                                   f"{tuple(x_tau.shape)}")
            labels = [f"tau = {value:.4g}" for value in tau.tolist()]
            _fail_with(_linear_lines(given_x, [_Call(dict(x_0=x_0, eps=eps), x_tau, SimpleNamespace(tau=tau), labels,
                                                     case)], _PATH, "the linear path", ()),
                       f"{_name_of(fn)} called velocity_model with an x_tau that is not the linear path's "
                       f"(math/flow_matching.tex eq:linear-path): ")
            # x_tau is the linear path's (to _RTOL): the loss on the x_tau given, so only the loss can differ
            v = _RecordingVelocity(matrix)(given_x, tau)
            target = conditional_velocity(x_0, eps)  # math/flow_matching.tex eq:conditional-velocity
            library = (v - target).pow(2).mean()  # as flow_matching_loss; math/flow_matching.tex eq:cfm-loss
            error = v - target
            _expect_loss(fn, loss, library, [
                ("the target x_0 - eps, the sign flipped: x_tau runs from x_0 at tau = 0 to eps at tau = 1, so "
                 "d x_tau / d tau = eps - x_0", (v - (x_0 - eps)).pow(2).mean()),
                ("the sum over the batch and every coordinate; the loss is the mean", error.pow(2).sum()),
                ("the mean over the batch of each example's sum; the loss is the mean over the coordinates too",
                 error.pow(2).flatten(1).sum(1).mean()),
                ("the error against eps, noise prediction's target; a flow network predicts the velocity eps - x_0",
                 (v - eps).pow(2).mean()),
                ("the error against x_0; a flow network predicts the velocity eps - x_0", (v - x_0).pow(2).mean()),
                ("the root of the mean squared error; the loss is not square-rooted", library.sqrt()),
                ("the mean absolute error; the loss squares the error", error.abs().mean()),
            ], case=case, loss_name="the conditional flow-matching loss (Lipman et al. 2023, eq. 9; "
                                    "math/flow_matching.tex eq:cfm-loss)",
                given="velocity_model was given the right x_tau and tau")
        return (f"{_name_of(fn)} matches ddpm_lite.flow.flow_matching_loss (time_scale=1.0) on {len(cases)} batches "
                f"(tau = 0 and 1 included)")

    return _report("check_flow_matching_loss", run)


def _check_tau(fn: Callable, given: Tensor, tau: Tensor, case: str) -> None:
    """Fail unless velocity_model was called at tau, naming 1 - tau and 1000 tau."""
    if given.shape == tau.shape and torch.allclose(given, tau, rtol=1e-6, atol=1e-12):
        return
    named = [text for text, value in [
        ("1 - tau, the direction of time flipped: tau = 0 is the data and tau = 1 pure noise", 1 - tau),
        ("1000 tau, flow_matching_loss's default time_scale for the course's networks; this model takes tau itself",
         1000 * tau),
    ] if given.shape == tau.shape and torch.allclose(given, value, rtol=1e-6, atol=1e-12)]
    shown = _taus(given) if given.ndim == 1 else f"a tensor of shape {tuple(given.shape)}"
    raise _CheckFailed(f"{_name_of(fn)} called velocity_model at tau = {shown} where tau = {_taus(tau)} belongs, on "
                       f"{case}" + (f": yours is {named[0]}" if named else ""))


# ---------------------------------------------------------------------------------- one Euler step


def _image_velocity(x: Tensor, tau: float) -> Tensor:
    """A stand-in velocity field on image-shaped batches, nonlinear in x and depending on tau."""
    return (1 + tau) * torch.tanh(x) - tau * x + (1 - tau) ** 2


_STEPS = ((1.0, 0.9), (0.5, 0.25), (1.0, 0.0), (0.1, 0.0))  # (tau, tau_next): the first, a middle, one whole, the last
_FIELDS = (  # (name, velocity(x, tau), the batch's shape)
    ("the 2-D mixture's exact velocity", mixture_velocity_fn(default_mixture()), (8, 2)),
    ("an image-shaped stand-in", _image_velocity, (3, *_IMAGE)),
)


def _flat(tensor: Tensor) -> Tensor:
    """One call's batch as a single row: tau and tau_next are one number per call, so each call is one case."""
    return tensor.reshape(1, -1)


_EULER = (  # math/flow_matching.tex eq:flow-euler
    _Term("x", "1", lambda q: torch.ones_like(q.tau), values=lambda args: _flat(args["x"])),
    _Term("velocity(x, tau)", "tau_next - tau", lambda q: q.tau_next - q.tau,
          values=lambda args: _flat(args["velocity"](args["x"], args["tau"])), mistakes=[
              ("tau - tau_next, the step with its sign flipped: tau decreases from 1 to 0, so the step "
               "h = tau_next - tau is negative", lambda q: q.tau - q.tau_next),
              ("-1: x - velocity, without the step size tau_next - tau", lambda q: -torch.ones_like(q.tau))]),
)


def _euler_mistakes(args: dict) -> list[tuple[str, Tensor]]:
    velocity, x, tau, tau_next = args["velocity"], args["x"], args["tau"], args["tau_next"]
    at_the_end = x + (tau_next - tau) * velocity(x, tau_next)
    return [("x + (tau_next - tau) velocity(x, tau_next): the velocity evaluated at the end of the step; Euler's "
             "method takes the slope where the step starts, at tau", _flat(at_the_end))]


def check_flow_euler_step(fn: Callable, *, seed: int = 0) -> bool:
    """fn(velocity, x, tau, tau_next) -> x_next = x + (tau_next - tau) velocity(x, tau), one step of Euler's method on
    the flow's ODE dx/dtau = velocity(x, tau) from tau down to tau_next < tau (math/flow_matching.tex eq:flow-euler;
    Liu et al. 2023's sampler, in the course's direction of time).

    velocity(x, tau) takes a batch and a Python float; tau > tau_next in [0, 1] are Python floats. x: (8, 2) float64
    under the course's 2-D mixture's exact field (`ddpm_lite.flow.mixture_velocity_fn`), and (3, 2, 3, 4) under an
    image-shaped stand-in. Against `ddpm_lite.flow.flow_sample(velocity, x.shape, taus=[tau, tau_next],
    solver="euler", x_1=x)`.
    """
    generator, groups = torch.Generator().manual_seed(seed), []
    for field, velocity, shape in _FIELDS:
        calls = []
        for tau, tau_next in _STEPS:
            x = _randn(generator, *shape)
            label = f"tau = {tau:g} -> tau_next = {tau_next:g} ({field}, a batch of shape {shape})"
            x_next = flow_sample(velocity, shape, taus=torch.tensor([tau, tau_next], dtype=torch.float64),
                                 solver="euler", x_1=x, progress=False)
            q = SimpleNamespace(tau=torch.tensor([tau], dtype=torch.float64),
                                tau_next=torch.tensor([tau_next], dtype=torch.float64))
            calls.append(_Call(dict(velocity=velocity, x=x, tau=tau, tau_next=tau_next), x_next, q, [label], label))
        groups.append(calls)

    def run() -> str:
        yours = [[_expect_like(fn, _call(fn, call.args, case=call.case, solution=_SOLUTION), call.library, call.case)
                  for call in calls] for calls in groups]
        # Diagnose the image-shaped batches first and report one field only: at tau = 1 the mixture's exact velocity
        # is x itself (its mean is 0), so there x and velocity(x, tau) cannot be told apart by the regression.
        for outputs, calls in reversed(list(zip(yours, groups))):
            _fail_with(_linear_lines(torch.cat([_flat(out) for out in outputs]),
                                     [dataclasses.replace(call, library=_flat(call.library)) for call in calls],
                                     _EULER, "Euler's method", (), _euler_mistakes),
                       f"{_name_of(fn)} does not match ddpm_lite.flow.flow_sample(..., solver=\"euler\") (Euler's "
                       f"method; math/flow_matching.tex eq:flow-euler): ")
        diff = max((out - call.library).abs().max().item()
                   for outputs, calls in zip(yours, groups) for out, call in zip(outputs, calls))
        return (f"{_name_of(fn)} matches one step of ddpm_lite.flow.flow_sample(..., solver=\"euler\") on "
                f"{sum(len(calls) for calls in groups)} cases (max abs diff {diff:.1e})")

    return _report("check_flow_euler_step", run)
