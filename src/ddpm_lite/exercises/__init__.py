"""Checkers for the notebooks' "implement it yourself" exercises, one per exercise.

`check_xxx(fn)` calls your function and the library's on random float64 inputs (both schedules, t = 0 and T-1
included) and prints one line on success, or what is wrong: the largest difference, the first failing case and,
for the formulas that combine known terms, which coefficient is off and the known mistake it equals. It returns True
or False and never raises, so a notebook with untouched stubs still runs.

Where each checker lives (each module's docstring lists its checkers' signatures):

    forward_and_training  notebooks 01-05: check_q_sample, check_q_posterior, check_normal_kl, check_ddpm_loss,
                          check_timestep_embedding (the forward process, its posterior, the Gaussian KL, L_simple,
                          the timestep embedding)
    sampling              notebooks 06-09: check_ddpm_step, check_ddim_step, check_score_from_eps,
                          check_tweedie_x0, check_guided_eps (DDPM and DDIM steps, the score, guidance)
    objectives            notebook 11: check_v_target, check_eps_from_v (v-prediction's target, and the noise a
                          v-prediction stands for)
    solvers               notebook 10: check_heun_step, check_dpmpp_2m_step (steps of EDM's Heun sampler and of
                          DPM-Solver++ 2M in the sigma view)
    flow                  notebook 12: check_flow_matching_loss, check_flow_euler_step (the conditional
                          flow-matching loss and one Euler step of the flow's ODE, in flow time tau)
    _engine               the grading engine: calling your function safely, comparing, and naming the mistake
    _inputs               the inputs the checkers share: schedules, timesteps, tables, the usual slips, stand-ins
"""

from ddpm_lite.exercises.forward_and_training import (
    check_ddpm_loss, check_normal_kl, check_q_posterior, check_q_sample, check_timestep_embedding,
)
from ddpm_lite.exercises.sampling import (
    check_ddim_step, check_ddpm_step, check_guided_eps, check_score_from_eps, check_tweedie_x0,
)
from ddpm_lite.exercises.objectives import check_eps_from_v, check_v_target
from ddpm_lite.exercises.solvers import check_dpmpp_2m_step, check_heun_step
from ddpm_lite.exercises.flow import check_flow_euler_step, check_flow_matching_loss

__all__ = ["check_ddim_step", "check_ddpm_loss", "check_ddpm_step", "check_dpmpp_2m_step", "check_eps_from_v",
           "check_flow_euler_step", "check_flow_matching_loss", "check_guided_eps", "check_heun_step",
           "check_normal_kl", "check_q_posterior", "check_q_sample", "check_score_from_eps",
           "check_timestep_embedding", "check_tweedie_x0", "check_v_target"]
