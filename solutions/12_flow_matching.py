"""Notebook 12: the conditional flow-matching loss and one Euler step of the flow's ODE, from scratch.

Flow time tau runs over [0, 1], tau = 0 the data and tau = 1 pure noise. x_tau = (1 - tau) x_0 + tau eps moves with
the velocity eps - x_0, which the network regresses on (Lipman et al. 2023, eq. 9; math/flow_matching.tex
eq:cfm-loss). A sampler integrates dx/dtau = v(x, tau) from tau = 1 down to 0, so Euler's step tau_next - tau is
negative (eq:flow-euler).

Run this file to check them: `python solutions/12_flow_matching.py`.
"""


def your_flow_matching_loss(velocity_model, x_0, tau, eps):
    """The mean over the batch and every coordinate of (v_theta(x_tau, tau) - (eps - x_0))^2."""
    tau_per_example = tau.to(x_0.dtype).reshape(-1, *[1] * (x_0.ndim - 1))  # (B,) -> (B, 1, ..., 1)
    x_tau = (1 - tau_per_example) * x_0 + tau_per_example * eps
    return ((velocity_model(x_tau, tau) - (eps - x_0)) ** 2).mean()


def your_euler_step(velocity, x, tau, tau_next):
    """x + h v(x, tau) with h = tau_next - tau < 0: the slope where the step starts, towards the data."""
    return x + (tau_next - tau) * velocity(x, tau)


if __name__ == "__main__":
    from ddpm_lite.exercises import check_flow_euler_step, check_flow_matching_loss

    check_flow_matching_loss(your_flow_matching_loss)
    check_flow_euler_step(your_euler_step)
