"""What every attack's search shares: the ascent's bookkeeping, the fixed-step schedule, and
sampling of the ball.

Each searches the perturbation set of each input x with label y = argmax f(x),

    P(x) = { z : ||z - x||_p <= eps,  lo <= z <= hi,  argmax f(z) = y },

for the iterate of highest ``score`` on the attacked map A (the model's own map, or its
softplus surrogate's A_beta; see :func:`attrbound.attack`). Labels always come from the real
model f. Restarts and samples are stacked into the batch dimension and run together. The
default step schedule, APGD, is :mod:`attrbound.attacks.apgd`; it uses :class:`Ascent` too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attrbound.attacks.objectives import Objective, State
from attrbound.attacks.starts import spectral_start
from attrbound.attributions import Attribution, Saliency
from attrbound.geometry import (
    batch_norm,
    per_example,
    project,
    sample_ball,
    steepest_direction,
)

#: model evaluations (attribution path points) per pass by default: larger passes run slower
#: per point on the CPU (benchmarks/RESULTS.md).
POINTS_PER_PASS = 512


def default_batch_size(attr: Attribution) -> int:
    """Attack runs per pass: POINTS_PER_PASS divided by the model evaluations one map needs
    (integrated gradients: its steps; smoothgrad: its samples; otherwise 1)."""
    return max(1, POINTS_PER_PASS // attr.evaluations)


@dataclass
class Budget:
    """How hard to search: ``steps`` gradient steps from ``restarts`` starts under
    ``schedule`` (ascent; ``alpha`` is the fixed step, or APGD's initial step; the first run
    starts as ``start`` says, the others uniformly at random), or ``samples`` points
    (sampling); at most ``rows`` runs per pass (None: no limit)."""

    steps: int
    alpha: float
    restarts: int
    samples: int
    rows: int | None = None
    schedule: str = "apgd"
    start: str = "random"  # of the first run: "random" or "spectral" (attacks.starts)


@dataclass
class _Problem:
    """One chunk of inputs and everything computed once for it."""

    model: nn.Module  # the real model f: labels
    attr: Attribution  # the attacked map A (on f, or on its surrogate): gradients and scores
    x: Tensor  # [B, *S]
    label: Tensor  # argmax f(x), [B]
    target: Tensor  # class explained, [B]
    clean: Tensor  # A(x), [B, *S]
    eps: float
    norm: str
    domain: tuple[float, float] | None

    def stacked(self, times: int) -> Attribution:
        """A for ``times`` copies of the chunk stacked as [times*B, *S] (differs from ``attr``
        only for per-example options, e.g. a baseline [B, *S])."""
        rows = torch.arange(self.x.shape[0], device=self.x.device).repeat(times)
        return self.attr.for_rows(rows, tuple(self.x.shape))


def repeat(t: Tensor, r: int) -> Tensor:
    """r copies of t [B, ...] stacked along dimension 0: [r*B, ...]."""
    return t.repeat((r,) + (1,) * (t.dim() - 1))


def in_domain(z: Tensor, domain: tuple[float, float] | None) -> Tensor:
    """z clipped to the domain again (x + delta may round past its edge)."""
    return z.clamp(domain[0], domain[1]) if domain is not None else z


def map_and_logits(attr: Attribution, u: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(A(u) [N, *S], logits of A's model at u [N, K]); for saliency both from one pass."""
    if type(attr) is Saliency:

        def logit_and_all(v: Tensor) -> tuple[Tensor, Tensor]:
            out = attr.model(v)
            return out.gather(1, target[:, None]).sum(), out

        return torch.func.grad(logit_and_all, has_aux=True)(u)
    return attr.attribute(u, target), attr.model(u)


def map_and_labels(
    attr: Attribution, model: nn.Module, z: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """(A(z) [N, *S], argmax f(z) [N]) without a graph; one pass when A is on f itself."""
    with torch.no_grad():
        if attr.model is model:
            a, logits = map_and_logits(attr, z, target)
            return a, logits.argmax(dim=1)
        return attr.attribute(z, target), model(z).argmax(dim=1)


class _Best:
    """The label-keeping selection: per run, the valid iterate of highest score (starting
    from x itself with score ``base``), and the highest-scoring iterate ignoring labels."""

    def __init__(self, x: Tensor, base: Tensor, start: Tensor) -> None:
        self.z, self.score = x, base
        self.top_z, self.top = start, torch.full_like(base, -math.inf)

    def keep(self, z: Tensor, s: Tensor, valid: Tensor) -> None:
        """Take z [N, *S] where it is valid (label kept) and beats the best so far."""
        better = valid & (s > self.score)
        self.score = torch.where(better, s, self.score)
        self.z = torch.where(per_example(better, z), z, self.z)

    def keep_top(self, z: Tensor, s: Tensor) -> None:
        """Take z [N, *S] where it beats the top score so far, whatever its label."""
        higher = s > self.top
        self.top = torch.where(higher, s, self.top)
        self.top_z = torch.where(per_example(higher, z), z, self.top_z)


class Ascent:
    """What every gradient schedule shares, for R restarts stacked as [R*B, *S]:

    the starts (``start``: uniform in ball ∩ domain, the first run's at the spectral start
    of :mod:`attrbound.attacks.starts` when ``start="spectral"``), the stacked inputs,
    labels, targets and state, the score of x itself (``base``, what a
    point must beat), ``evaluate`` (gradient of the gain, score and label test at z in one
    pass when the map is on f itself), ``step_to`` (the projection onto ball ∩ domain) and
    ``result`` (the best of the R runs per input)."""

    def __init__(
        self, pb: _Problem, obj: Objective, state: State, restarts: int, gen: torch.Generator,
        start: str = "random",
    ) -> None:
        self.pb, self.obj, self.r = pb, obj, restarts
        self.x = repeat(pb.x, restarts)
        self.target, self.label = repeat(pb.target, restarts), repeat(pb.label, restarts)
        self.state = {key: repeat(v, restarts) for key, v in state.items()}
        self.base = obj.score(pb.clean, state)
        self.attr = pb.stacked(restarts)
        self.fused = self.attr.model is pb.model  # labels from the same forward pass as the map
        self.start = sample_ball(pb.x, pb.eps, pb.norm, restarts, gen, pb.domain).reshape(
            self.x.shape)
        if start == "spectral":  # drawn after the random starts: those stay as they were
            b = pb.x.shape[0]
            first = spectral_start(pb.attr, pb.x, pb.target, pb.eps, pb.norm, pb.domain, gen)
            self.start = torch.cat([first, self.start[b:]])
        self.best = _Best(self.x, repeat(self.base, restarts), self.start)

        def total_gain(u: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            if self.fused:
                a, logits = map_and_logits(self.attr, u, self.target)
            else:
                a, logits = self.attr.attribute(u, self.target), u.new_empty(0)
            return obj.gain(a, self.state).sum(), (a, logits)

        self._grad_and_map = torch.func.grad(total_gain, has_aux=True)

    def evaluate(self, z: Tensor, gradient: bool = True) -> tuple[Tensor | None, Tensor, Tensor]:
        """(grad_z gain [N, *S] or None, score [N], label kept [N]) at z; the iterate is
        offered to the label-keeping selection."""
        if gradient:
            g, (a, logits) = self._grad_and_map(z)
            if self.fused:
                pred = logits.argmax(dim=1)
            else:
                with torch.no_grad():
                    pred = self.pb.model(z).argmax(dim=1)
        else:  # the last iterate is scored, not stepped from
            g = None
            a, pred = map_and_labels(self.attr, self.pb.model, z, self.target)
        s = self.obj.score(a, self.state)
        valid = pred == self.label
        self.best.keep(z, s, valid)
        self.best.keep_top(z, s)
        return g, s, valid

    def moved(self, z: Tensor, step: Tensor) -> Tensor:
        """P(z + step), the projection onto ball(x, eps) ∩ domain, computed on the offset
        (z - x) + step."""
        pb = self.pb
        return in_domain(
            self.x + project(z - self.x + step, self.x, pb.eps, pb.norm, pb.domain), pb.domain)

    def result(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(best valid point [B, *S], its score [B], score of x [B], points [B, R, *S])."""
        b, shape = self.pb.x.shape[0], self.pb.x.shape[1:]
        scores = self.best.score.reshape(self.r, b)
        pick = scores.argmax(dim=0)
        cols = torch.arange(b, device=pick.device)
        x_best = self.best.z.reshape((self.r, b) + shape)[pick, cols]
        points = self.best.top_z.reshape((self.r, b) + shape).transpose(0, 1)
        return x_best, scores[pick, cols], self.base, points


def ascend_fixed(
    pb: _Problem, obj: Objective, state: State, budget: Budget, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Projected steepest ascent of obj.gain with a fixed step (``schedule="fixed"``, PGD of
    Madry et al. 2018), R restarts stacked as [R*B, *S]:

        z_0 ~ uniform(ball ∩ domain)       (random start; or the spectral start, run 1)
        for t = 0 .. T:
            a_t = A(z_t), valid_t = [argmax f(z_t) = argmax f(x)]
            if valid_t and score(a_t) > best:  best, z* = score(a_t), z_t
            if t < T:  z_{t+1} = P(z_t + alpha dir(grad_z gain(A(z_t))))

    with dir = sign (l-inf) or g / ||g||_2 (l2), P the projection onto the ball and the
    domain; best starts at score(A(x)), so z* stays x unless a valid iterate beats it. The
    best of the R runs is kept per input.

    Returns (best valid point [B, *S], its score [B], score of x [B], points [B, R, *S]):
    points are each run's highest-scoring iterate whatever its label.
    """
    run = Ascent(pb, obj, state, budget.restarts, gen, budget.start)
    z = run.start
    for i in range(budget.steps + 1):
        g, _, _ = run.evaluate(z, gradient=i < budget.steps)
        if g is not None:
            z = run.moved(z, budget.alpha * steepest_direction(g, pb.norm))
    return run.result()


def sample(
    pb: _Problem, obj: Objective, state: State, budget: Budget, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``budget.samples`` points uniform in the ball ∩ domain, drawn in passes of at most
    ``budget.rows`` points; keeps the valid one of highest score per input. Same returns as
    :func:`ascend_fixed` (points [B, 1, *S]: the highest-scoring sample whatever its label)."""
    b, samples = pb.x.shape[0], budget.samples
    per = samples if budget.rows is None else max(1, min(samples, budget.rows // b))
    base = obj.score(pb.clean, state)
    best = _Best(pb.x.clone(), base.clone(), pb.x.clone())
    cols = torch.arange(b, device=pb.x.device)
    done = 0
    while done < samples:
        c = min(per, samples - done)
        z = sample_ball(pb.x, pb.eps, pb.norm, c, gen, pb.domain)  # [c, B, *S]
        a, pred = map_and_labels(pb.stacked(c), pb.model, z.reshape((c * b,) + pb.x.shape[1:]),
                                 repeat(pb.target, c))
        s = obj.score(a, {key: repeat(v, c) for key, v in state.items()}).reshape(c, b)
        sv = torch.where(pred.reshape(c, b) == pb.label, s, torch.full_like(s, -math.inf))
        j = sv.argmax(dim=0)  # the best valid sample of the pass
        best.keep(z[j, cols], sv[j, cols], torch.ones_like(pb.label, dtype=torch.bool))
        j = s.argmax(dim=0)  # the best sample of the pass, whatever its label
        best.keep_top(z[j, cols], s[j, cols])
        done += c
    return best.z, best.score, base, best.top_z.unsqueeze(1)


def guard(z: Tensor, x: Tensor, pb: _Problem) -> Tensor:
    """Pull z back into the ball where it lies outside by more than float rounding (a few ulp;
    never expected, as every iterate is projected, but the guarantee must not rest on it)."""
    delta = z - x
    size = batch_norm(delta.double(), pb.norm)
    outside = size > pb.eps * (1 + 8 * torch.finfo(z.dtype).eps)
    shrink = torch.where(outside, pb.eps / size, torch.ones_like(size))
    return in_domain(x + delta * per_example(shrink.to(z.dtype), z), pb.domain)
