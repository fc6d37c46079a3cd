"""APGD, the default step schedule of the gradient attacks (``schedule="apgd"``).

After Algorithm 1 of 'Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks' (Croce & Hein, ICML 2020) [https://arxiv.org/abs/2003.01690],
applied to an attribution objective instead of a classification loss. As in APGD, the
schedule follows the objective alone and the result is selected apart from it: here by the
attacks' label-keeping rule (an iterate counts only if the real model's predicted class is
unchanged), as APGD selects misclassified points. Letting labels drive the schedule instead
(a label-changing iterate counting as a failure) would pull every run that crosses a region
of another class back to its last valid point and stall it there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attrbound.attacks.engine import Ascent, Budget, _Problem
from attrbound.attacks.objectives import Objective, State
from attrbound.geometry import per_example, steepest_direction

#: alpha of Croce & Hein 2020: weight of the new step against the previous one (momentum).
MOMENTUM = 0.75
#: rho of Croce & Hein 2020: below this share of increasing steps between two checkpoints the
#: step is halved (Condition 1).
RHO = 0.75
#: eta^(0) = INITIAL_STEP * eps (Croce & Hein 2020: 2 eps, for l-inf and for l2).
INITIAL_STEP = 2.0
#: default iterations N_iter per run, and runs per input: 3 x 15 = 45 gradients plus the
#: spectral start's (at most 10 products), about PGD-50's cost, spent on three starts: on
#: the demo CNN this reaches PGD-100 with 4 restarts for saliency and integrated gradients
#: at both norms, where 2 x 25 fell short on integrated gradients
#: (benchmarks/results/attacks.md).
DEFAULT_APGD_STEPS = 15
DEFAULT_APGD_RESTARTS = 3


def checkpoints(steps: int) -> list[int]:
    """The checkpoints w_j = ceil(p_j N_iter) of Croce & Hein 2020, increasing, in (0, steps):

        p_0 = 0, p_1 = 0.22,  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)

    (for N_iter = 100: 22, 41, 57, 70, 80, 87, 93, 99). Repeated values (small N_iter) are
    kept once."""
    p_prev, p, out = 0.0, 0.22, []
    while p < 1:
        w = math.ceil(p * steps - 1e-9)
        if 0 < w < steps and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


def halve(
    rises: Tensor, steps_since: int, halved_last: Tensor, f_max: Tensor, f_max_last: Tensor
) -> Tensor:
    """Whether a run halves its step at a checkpoint w_j (bool [N]), Croce & Hein 2020:

    Condition 1: the score rose on fewer than rho = 0.75 of the ``steps_since`` = w_j - w_{j-1}
    steps since the last checkpoint (``rises`` of them); or
    Condition 2: the step was not halved at w_{j-1} (``halved_last``) and the best score did
    not grow since then (``f_max`` <= ``f_max_last``)."""
    return (rises < RHO * steps_since) | (~halved_last & (f_max <= f_max_last))


def ascend_apgd(
    pb: _Problem, obj: Objective, state: State, budget: Budget, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """APGD ascent of obj.gain, R restarts stacked as [R*B, *S] (Croce & Hein 2020, Alg. 1).

    With f(z) = score(A(z)) (the objective's score, whatever the label), P the projection
    onto ball(x, eps) ∩ domain, dir = sign (l-inf) or g / ||g||_2 (l2, as APGD-L2),
    eta = ``budget.alpha`` (default 2 eps), alpha = 0.75, rho = 0.75 and the checkpoints W of
    :func:`checkpoints`:

        z_0 ~ uniform(ball ∩ domain)       (random start; run 1: the spectral start)
        z_1 = P(z_0 + eta dir(grad gain(z_0)))
        for k = 1 .. N-1:
            u       = P(z_k + eta dir(grad gain(z_k)))
            z_{k+1} = P(z_k + alpha (u - z_k) + (1 - alpha) (z_k - z_{k-1}))
        z_max, f_max: the iterate of highest f so far (z_0 before any other);
        at each checkpoint w_j in W, halve eta and continue from z_max (with its gradient) if
          Condition 1: #{w_{j-1} <= i < w_j : f(z_{i+1}) > f(z_i)} < rho (w_j - w_{j-1}), or
          Condition 2: eta was not halved at w_{j-1} and f_max did not grow since w_{j-1}
        (w_0 = 0).

    Details the paper leaves open: the start is uniform in ball ∩ domain, except that
    the first run starts, by default, at the first-order worst case of the map
    (:func:`attrbound.attacks.starts.spectral_start`; ``start="random"``: uniform too);
    after a restart from z_max the next rise is counted against f_max; the
    checkpoint after the last step is not used (no step follows it).

    Every iterate z_0 .. z_N is scored (N + 1 evaluations, N gradients, as the fixed
    schedule) and offered to the label-keeping selection: the reported point is the best
    iterate whose real-model class is that of x, or x itself when none beats x. Each run keeps
    its own eta [R*B]; restarts are stacked in the batch dimension.

    Returns as :func:`attrbound.attacks.engine.ascend_fixed`.
    """
    run = Ascent(pb, obj, state, budget.restarts, gen, budget.start)
    n, norm = budget.steps, pb.norm
    marks = set(checkpoints(n))
    z = z_prev = run.start
    g, f, _ = run.evaluate(z)
    eta = torch.full_like(f, float(budget.alpha))
    z_max, g_max, f_max = z, g, f
    f_max_mark = f_max  # f_max at the last checkpoint
    halved = torch.zeros_like(f, dtype=torch.bool)  # eta halved at the last checkpoint
    rises, last_mark = torch.zeros_like(f), 0
    for k in range(n):
        assert g is not None
        u = run.moved(z, per_example(eta, z) * steepest_direction(g, norm))
        if k > 0:  # the momentum step, from z_k
            u = run.moved(z, MOMENTUM * (u - z) + (1 - MOMENTUM) * (z - z_prev))
        z_prev, z = z, u
        g, f_new, _ = run.evaluate(z, gradient=k + 1 < n)
        rises += (f_new > f).to(f.dtype)
        f = f_new
        better = f > f_max
        f_max = torch.where(better, f, f_max)
        z_max = torch.where(per_example(better, z), z, z_max)
        if g is not None:
            g_max = torch.where(per_example(better, g), g, g_max)
        if k + 1 in marks:
            assert g is not None
            halved = halve(rises, k + 1 - last_mark, halved, f_max, f_max_mark)
            eta = torch.where(halved, eta / 2, eta)
            z = torch.where(per_example(halved, z), z_max, z)
            g = torch.where(per_example(halved, g), g_max, g)
            f = torch.where(halved, f_max, f)
            f_max_mark, rises, last_mark = f_max, torch.zeros_like(f), k + 1
    return run.result()
