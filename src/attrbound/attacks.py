"""Attribution attacks: concrete perturbations, lower bounds on the worst case (DESIGN.md s. 5).

For an input x with predicted class y = argmax f(x) and attribution map a = A(x), an attack
searches the perturbation set

    P(x) = { z : ||z - x||_p <= eps,  lo <= z <= hi,  argmax f(z) = y }

for a point z whose map A(z) is far from a. Its result L(x) = D(A(x), A(z*)) is a lower
bound on the worst case W(x) that the bounds of :mod:`attrbound.bounds` bound from above.

Methods (``method=``):

- ``pgd``         projected gradient ascent on D itself (:class:`PGD`, Madry et al. 2018);
- ``ifia_topk``   Ghorbani et al. 2019's top-k attack (:class:`IFIATopK`);
- ``ifia_center`` Ghorbani et al. 2019's centre-of-mass attack (:class:`IFIACenter`);
- ``random``      uniform samples of the ball, the weakest baseline (:class:`RandomSampling`).

Shared mechanics (all methods):

- random start uniform in the ball (:func:`attrbound.geometry.sample_ball`), ``restarts``
  independent runs stacked into the batch dimension ([R*B, *S]) and run together;
- steps: l-inf sign steps z += alpha sign(g); l2 normalised steps z += alpha g / ||g||_2;
  then projection onto the ball and the domain (:func:`attrbound.geometry.project`);
- an iterate counts only if the REAL model's predicted class is unchanged; each run keeps its
  most successful valid iterate, and the best run per input is reported; where no valid
  iterate beats x itself the result is x (deviation 0, cosine 1, top-k 1, ...);
- ReLU / max-pool models: gradients come from the softplus surrogate
  (:func:`attrbound.models.smooth_surrogate`, ``surrogate_beta``), scores and labels always
  from the real model; every reported figure is recomputed on the real model at x_adv.

Reproducible: the noise is drawn from a CPU ``torch.Generator`` seeded with ``seed``; the same
seed, inputs and ``batch_size`` give the same result.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attrbound import metrics
from attrbound._validate import (
    check_domain,
    check_eps,
    check_in_domain,
    require_smooth_or_surrogate,
)
from attrbound.attributions import (
    Attribution,
    Saliency,
    check_batch,
    resolve_target,
)
from attrbound.attributions import attribution as make_attribution
from attrbound.errors import AttrboundError, check_choice
from attrbound.geometry import (
    batch_norm,
    default_step_size,
    parse_norm,
    per_example,
    project,
    sample_ball,
    steepest_direction,
)
from attrbound.models import smooth_surrogate
from attrbound.results import AttackResult

METHODS = ("pgd", "ifia_topk", "ifia_center", "random")
OBJECTIVES = ("euclidean", "cosine")

#: default number of gradient steps: PGD-20, the evaluation attack of Madry et al. 2018.
DEFAULT_STEPS = 20
#: default random samples: Quantus' MaxSensitivity ``nr_samples`` (Captum's sensitivity_max: 10).
DEFAULT_SAMPLES = 200
#: default k for top-k: 100 of the 784 pixels of 28x28 inputs (Chen et al. 2019, MNIST and
#: Fashion-MNIST); other sizes use the same fraction of their pixels.
DEFAULT_K_FRACTION = 100 / 784
#: model evaluations (attribution path points) per pass by default: measured on 2 CPU cores,
#: the time per point of the double backward grows beyond about 512 points per pass.
POINTS_PER_PASS = 512


def default_batch_size(attr: Attribution) -> int:
    """Attack runs per pass: POINTS_PER_PASS divided by the model evaluations one map needs
    (integrated gradients: its steps; smoothgrad: its samples; otherwise 1)."""
    return max(1, POINTS_PER_PASS // attr.evaluations)


def default_k(shape: tuple[int, ...]) -> int:
    """k = round(100/784 * pixels), at least 1; 100 for 28x28 inputs (Chen et al. 2019).

    ``shape`` is one example's shape S; pixels are the entries of S without the channel
    dimension when S has 2 or more dimensions ([C, H, W] -> H*W), else all entries.
    """
    pixels = math.prod(_spatial(shape))
    return max(1, min(pixels, round(DEFAULT_K_FRACTION * pixels)))


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[1:]) if len(shape) >= 2 else tuple(shape)


# ----------------------------------------------------------------------------------------
# Attack objectives. Each maps the attribution a(z) of a batch of iterates [N, *S] to
#   gain(a)  [N]: the smooth function whose gradient the attack ascends, and
#   score(a) [N]: how successful the iterate is (higher is better), on the REAL model's map,
# given per-example state computed once from the clean maps (no per-step recomputation).
# ----------------------------------------------------------------------------------------


class PGD:
    """PGD on the attribution: maximise D(A(x), A(z)) over the ball (Madry et al. 2018).

    Distance ``objective``: ``euclidean`` ascends 1/2 ||A(z) - A(x)||_2^2 (score: the
    distance), ``cosine`` descends cos(A(z), A(x)) (score: minus the similarity).
    Defaults: ``steps`` = 20 (PGD-20), step size 2.5 eps / steps (Madry et al. 2018), one
    restart, random start. l-inf: sign steps; l2: normalised-gradient steps.
    """

    name = "pgd"

    def __init__(self, objective: str = "euclidean") -> None:
        self.objective = check_choice("objective", objective, OBJECTIVES)

    def prepare(self, clean: Tensor) -> dict[str, Tensor]:
        """Per-example state from the clean real maps A(x) [B, *S]."""
        return {"clean": clean}

    def gain(self, a: Tensor, state: dict[str, Tensor]) -> Tensor:
        if self.objective == "euclidean":
            return 0.5 * (a - state["clean"]).flatten(1).pow(2).sum(dim=1)
        return -metrics.cosine(a, state["clean"])

    def score(self, a: Tensor, state: dict[str, Tensor]) -> Tensor:
        if self.objective == "euclidean":
            return metrics.euclidean(a, state["clean"])
        return -metrics.cosine(a, state["clean"])


class IFIATopK:
    """Ghorbani, Abid & Zou 2019 ("Interpretation of neural networks is fragile"), top-k attack.

    With m(z) = sum over channels of |A(z)| (one importance per pixel) and K the k pixels of
    largest m(x) (the ORIGINAL top-k), descend the share of attribution mass left on K,
        frac(z) = sum_{i in K} m_i(z) / sum_i m_i(z)
    (the maps normalised to unit mass, so that shrinking the whole map does not count).
    Score (higher is better): minus the top-k intersection |topk m(x) ∩ topk m(z)| / k, ties
    broken by the lower frac. Defaults: k = 100 on 28x28 inputs (Chen et al. 2019), 20 steps
    of 2.5 eps / steps, sign steps (l-inf) or normalised steps (l2).
    """

    name = "ifia_topk"
    objective = "topk_mass"

    def __init__(self, k: int) -> None:
        self.k = int(k)

    def prepare(self, clean: Tensor) -> dict[str, Tensor]:
        """The original top-k pixels as a 0/1 mask [B, pixels]."""
        m = metrics.feature_map(clean, reduce_channels=True)
        return {"mask": metrics.topk_mask(m, self.k).to(clean.dtype)}

    @staticmethod
    def _frac(a: Tensor, mask: Tensor) -> Tensor:
        m = metrics.feature_map(a, reduce_channels=True)
        total = m.sum(dim=1).clamp_min(torch.finfo(a.dtype).tiny)
        return (m * mask).sum(dim=1) / total

    def gain(self, a: Tensor, state: dict[str, Tensor]) -> Tensor:
        return -self._frac(a, state["mask"])

    def score(self, a: Tensor, state: dict[str, Tensor]) -> Tensor:
        m = metrics.feature_map(a, reduce_channels=True)
        inter = (metrics.topk_mask(m, self.k).to(a.dtype) * state["mask"]).sum(dim=1) / self.k
        return -inter - self._frac(a, state["mask"]) / (2 * self.k)


class IFIACenter:
    """Ghorbani, Abid & Zou 2019, centre-of-mass attack.

    With m(z) = sum over channels of |A(z)| on the pixel grid and positions p_i (row, column
    indices; the feature index for 1-d inputs), the centre of mass is
        c(z) = sum_i m_i(z) p_i / sum_i m_i(z);
    ascend 1/2 ||c(z) - c(x)||_2^2 (score: ||c(z) - c(x)||_2, in pixels). Defaults: 20 steps
    of 2.5 eps / steps, sign steps (l-inf) or normalised steps (l2).
    """

    name = "ifia_center"
    objective = "center_of_mass"

    @staticmethod
    def centre(a: Tensor) -> Tensor:
        """Centre of mass of |a| summed over channels: [N, *S] -> [N, n_spatial_dims]."""
        spatial = _spatial(tuple(a.shape[1:]))
        axes = [torch.arange(s, dtype=a.dtype, device=a.device) for s in spatial]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))
        m = metrics.feature_map(a, reduce_channels=True)
        total = m.sum(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        return (m @ grid) / total

    def prepare(self, clean: Tensor) -> dict[str, Tensor]:
        """The original centre of mass [B, n_spatial_dims]."""
        return {"centre": self.centre(clean)}

    def gain(self, a: Tensor, state: dict[str, Tensor]) -> Tensor:
        return 0.5 * (self.centre(a) - state["centre"]).pow(2).sum(dim=1)

    def score(self, a: Tensor, state: dict[str, Tensor]) -> Tensor:
        return (self.centre(a) - state["centre"]).norm(dim=1)


class RandomSampling(PGD):
    """n points uniform in the ball (clipped to the domain), keep the valid one of largest D.

    The baseline of Captum's ``sensitivity_max`` and Quantus' ``MaxSensitivity`` (default
    n = 200, Quantus' ``nr_samples``). Distance ``objective`` as for :class:`PGD`. Needs no
    gradient, so it runs on ReLU models without a surrogate.
    """

    name = "random"


# ----------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------


@dataclass
class _Problem:
    """One chunk of inputs and everything computed once for it."""

    model: nn.Module
    real: Attribution  # A on the real model: scores and reported figures
    steer: Attribution  # A on the model whose gradients steer (surrogate for ReLU nets)
    x: Tensor  # [B, *S]
    label: Tensor  # predicted class at x, [B]
    target: Tensor  # class explained, [B]
    clean: Tensor  # A(x) on the real model, [B, *S]
    eps: float
    norm: str
    domain: tuple[float, float] | None

    @property
    def steer_is_real(self) -> bool:
        return self.steer is self.real

    def stacked(self, times: int) -> tuple[Attribution, Attribution]:
        """(real, steer) for ``times`` copies of the chunk stacked as [times*B, *S]."""
        rows = torch.arange(self.x.shape[0], device=self.x.device).repeat(times)
        return _for_rows(self.real, self.steer, rows, tuple(self.x.shape))


def _for_rows(
    real: Attribution, steer: Attribution, rows: Tensor, shape: tuple[int, ...]
) -> tuple[Attribution, Attribution]:
    """(real, steer) for the inputs x[rows] of a batch shaped ``shape``; they differ from
    real, steer only for per-example options (e.g. a baseline [B, *S]); steer stays the
    same object as real when it was."""
    real_rows = real.for_rows(rows, shape)
    return real_rows, real_rows if steer is real else steer.for_rows(rows, shape)


def _repeat(t: Tensor, r: int) -> Tensor:
    return t.repeat((r,) + (1,) * (t.dim() - 1))


def _in_set(z: Tensor, pb: _Problem) -> Tensor:
    """z = x + delta clipped to the domain again (x + delta may round past its edge)."""
    return z.clamp(pb.domain[0], pb.domain[1]) if pb.domain is not None else z


def _evaluate_maps(
    real: Attribution, model: nn.Module, z: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """(real map A(z) [N, *S], predicted class [N]) without a graph."""
    with torch.no_grad():
        if real.model is model:
            a, logits = _map_and_logits(real, z, target)
            return a, logits.argmax(dim=1)
        return real.attribute(z, target), model(z).argmax(dim=1)


def _map_and_logits(attr: Attribution, u: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(A(u) [N, *S], logits f(u) [N, K]); for saliency both from one forward pass."""
    if type(attr) is Saliency:

        def logit_and_all(v: Tensor) -> tuple[Tensor, Tensor]:
            out = attr.model(v)
            return out.gather(1, target[:, None]).sum(), out

        return torch.func.grad(logit_and_all, has_aux=True)(u)
    return attr.attribute(u, target), attr.model(u)


def _evaluate(pb: _Problem, z: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    return _evaluate_maps(pb.real, pb.model, z, target)


def _ascend(
    pb: _Problem,
    obj: PGD | IFIATopK | IFIACenter,
    state: dict[str, Tensor],
    *,
    steps: int,
    alpha: float,
    restarts: int,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Projected steepest ascent of obj.gain, R restarts stacked as [R*B, *S]:

        z_0 ~ uniform(ball ∩ domain)                              (random start)
        for t = 0 .. T:
            a_t = A(z_t), valid_t = [argmax f(z_t) = argmax f(x)]  (real model)
            if valid_t and score(a_t) > best:  best, z* = score(a_t), z_t
            if t < T:  z_{t+1} = x + Proj(z_t - x + alpha dir(grad_z gain(A_s(z_t))))

    with A_s the steering attribution (the surrogate's for ReLU nets), dir = sign (l-inf) or
    g / ||g||_2 (l2), Proj onto the ball and the domain; best starts at score(A(x)), so z*
    stays x unless a valid iterate beats it. The best of the R runs is kept per input.

    Returns (best valid point [B, *S], its score [B], score of x [B], points [B, R, *S]).
    """
    b, r = pb.x.shape[0], restarts
    x = _repeat(pb.x, r)
    target, label = _repeat(pb.target, r), _repeat(pb.label, r)
    st = {key: _repeat(v, r) for key, v in state.items()}
    base = obj.score(pb.clean, state)  # the score of x itself: what a point must beat
    real, steer = pb.stacked(r)

    def total_gain(u: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if pb.steer_is_real:  # the label check comes out of the same forward pass
            a, logits = _map_and_logits(steer, u, target)
        else:
            a = steer.attribute(u, target)
            logits = a.new_empty(0)  # unused: scores and labels come from the real model
        return obj.gain(a, st).sum(), (a, logits)

    grad_and_map = torch.func.grad(total_gain, has_aux=True)

    z = sample_ball(pb.x, pb.eps, pb.norm, r, gen, pb.domain).reshape(x.shape)
    best_z, best = x, _repeat(base, r)
    top_z, top = z, torch.full_like(best, -math.inf)
    for i in range(steps + 1):
        if i < steps:
            g, (a, logits) = grad_and_map(z)
            if pb.steer_is_real:
                pred = logits.argmax(dim=1)
            else:  # gradients from the surrogate: score and label on the real model
                a, pred = _evaluate_maps(real, pb.model, z, target)
        else:  # the last iterate is scored, not stepped from
            a, pred = _evaluate_maps(real, pb.model, z, target)
        s = obj.score(a, st)
        better = (pred == label) & (s > best)
        best = torch.where(better, s, best)
        best_z = torch.where(per_example(better, z), z, best_z)
        higher = s > top
        top = torch.where(higher, s, top)
        top_z = torch.where(per_example(higher, z), z, top_z)
        if i < steps:
            step = alpha * steepest_direction(g, pb.norm)
            delta = project(z - x + step, x, pb.eps, pb.norm, pb.domain)
            z = _in_set(x + delta, pb)
    # best run per input
    best = best.reshape(r, b)
    pick = best.argmax(dim=0)
    cols = torch.arange(b, device=pick.device)
    x_best = best_z.reshape((r, b) + pb.x.shape[1:])[pick, cols]
    points = top_z.reshape((r, b) + pb.x.shape[1:]).transpose(0, 1)
    return x_best, best[pick, cols], base, points


def _sample(
    pb: _Problem,
    obj: RandomSampling,
    state: dict[str, Tensor],
    *,
    samples: int,
    rows: int | None,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random sampling in chunks of at most ``rows`` points; same returns as :func:`_ascend`."""
    b = pb.x.shape[0]
    per = samples if rows is None else max(1, min(samples, rows // b))
    base = obj.score(pb.clean, state)
    best, best_z = base.clone(), pb.x.clone()
    top, top_z = torch.full_like(base, -math.inf), pb.x.clone()
    done = 0
    while done < samples:
        c = min(per, samples - done)
        z = sample_ball(pb.x, pb.eps, pb.norm, c, gen, pb.domain)  # [c, B, *S]
        real = pb.stacked(c)[0]
        a, pred = _evaluate_maps(real, pb.model, z.reshape((c * b,) + pb.x.shape[1:]),
                                 _repeat(pb.target, c))
        s = obj.score(a, {key: _repeat(v, c) for key, v in state.items()}).reshape(c, b)
        valid = pred.reshape(c, b) == pb.label
        sv = torch.where(valid, s, torch.full_like(s, -math.inf))
        cols = torch.arange(b, device=s.device)
        j = sv.argmax(dim=0)
        better = sv[j, cols] > best
        best = torch.where(better, sv[j, cols], best)
        best_z[better] = z[j, cols][better]
        j = s.argmax(dim=0)
        higher = s[j, cols] > top
        top = torch.where(higher, s[j, cols], top)
        top_z[higher] = z[j, cols][higher]
        done += c
    return best_z, best, base, top_z.unsqueeze(1)


def attack(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float,
    norm: str | float,
    attribution: str | Attribution = "saliency",
    method: str = "pgd",
    objective: str = "euclidean",
    steps: int | None = None,
    step_size: float | None = None,
    restarts: int = 1,
    k: int | None = None,
    n: int | None = None,
    seed: int = 0,
    surrogate_beta: float | None = None,
    target: int | Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    attribution_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """Attack the attribution of ``model`` at each input: a lower bound on the worst case.

    Args:
        model: classifier, logits [N, K] for inputs [N, *S], in eval mode.
        x: inputs [B, *S] inside ``domain``.
        eps, norm: radius > 0 and norm (2 or "inf") of the ball around each input.
        attribution: method name (see :func:`attrbound.attribution`) or an Attribution;
            ``attribution_options`` are passed to it.
        method: ``pgd`` (default), ``ifia_topk``, ``ifia_center`` or ``random``.
        objective: ``euclidean`` (default) or ``cosine``, for pgd and random.
        steps: gradient steps per run (default 20, PGD-20 of Madry et al. 2018); the random
            start and every iterate, the last included, are scored: steps + 1 evaluations.
        step_size: alpha (default 2.5 eps / steps, Madry et al. 2018).
        restarts: independent runs per input, each from its own random start (default 1).
        k: top-k size for the rank metric and ifia_topk (default 100 for 28x28 inputs,
            Chen et al. 2019; else the same fraction 100/784 of the pixels).
        n: random samples for ``random`` (default 200, Quantus' MaxSensitivity).
        seed: seed of the CPU generator of every random draw (default 0).
        surrogate_beta: for models with ReLU / max-pool, the beta of the softplus surrogate
            that supplies the gradients (required for pgd / ifia on such models).
        target: class explained (default: the predicted class); int or int64 [B].
        domain: the box (lo, hi) of valid inputs (default (0, 1)), or None.
        batch_size: at most this many attack runs (inputs x restarts; inputs x samples for
            random) per pass, bounding memory (default :func:`default_batch_size`: about
            512 model evaluations per pass, e.g. 512 runs for saliency, 16 for integrated
            gradients with 32 steps; larger passes run slower per point on the CPU).

    Returns:
        :class:`AttackResult` with x_adv [B, *S] and the deviations [B] at x_adv, all
        measured on the real model. Guarantees: ||x_adv - x||_p <= eps (up to 1e-6),
        x_adv in the domain, argmax f(x_adv) = argmax f(x).

    Example::

        res = attrbound.attack(model, images, eps=0.1, norm="inf", method="pgd", restarts=4)
        res.euclidean      # [B] lower bounds on max ||A(x + delta) - A(x)||_2
    """
    started = time.perf_counter()
    method = check_choice("attack method", str(method).lower(), METHODS)
    norm = parse_norm(norm)
    eps = check_eps(eps)
    domain = check_domain(domain)
    check_batch(x, model)
    if method in ("pgd", "random"):
        check_choice("objective", objective, OBJECTIVES)
    steps = DEFAULT_STEPS if steps is None else int(steps)
    restarts = int(restarts)
    if steps < 1:
        raise AttrboundError(f"steps must be >= 1, got {steps}.")
    if restarts < 1:
        raise AttrboundError(f"restarts must be >= 1, got {restarts}.")
    alpha = default_step_size(eps, steps) if step_size is None else float(step_size)
    if not (math.isfinite(alpha) and alpha > 0):
        raise AttrboundError(f"step_size must be a finite number > 0, got {step_size}.")
    samples = DEFAULT_SAMPLES if n is None else int(n)
    if samples < 1:
        raise AttrboundError(f"n (random samples) must be >= 1, got {n}.")
    if batch_size is not None and int(batch_size) < 1:
        raise AttrboundError(f"batch_size must be >= 1, got {batch_size}.")
    shape = tuple(x.shape[1:])
    pixels = math.prod(_spatial(shape))
    k = default_k(shape) if k is None else int(k)
    if not 1 <= k <= pixels:
        raise AttrboundError(f"k must lie in [1, {pixels}] (the pixels of one input), got {k}.")
    check_in_domain(x, domain)

    real = make_attribution(attribution, model, **(attribution_options or {}))
    steer, beta_used = real, None
    if require_smooth_or_surrogate(model, surrogate_beta, [] if method == "random" else [method]):
        steer, beta_used = real.with_model(smooth_surrogate(model, surrogate_beta)), surrogate_beta
    obj: PGD | IFIATopK | IFIACenter
    if method == "pgd":
        obj = PGD(objective)
    elif method == "random":
        obj = RandomSampling(objective)
    elif method == "ifia_topk":
        obj = IFIATopK(k)
    else:
        obj = IFIACenter()

    tgt = resolve_target(model, x, target)
    gen = torch.Generator().manual_seed(int(seed))
    b = x.shape[0]
    runs_per_input = 1 if method == "random" else restarts
    rows = default_batch_size(real) if batch_size is None else int(batch_size)
    chunk = max(1, rows if method == "random" else rows // runs_per_input)

    outs: dict[str, list[Tensor]] = {key: [] for key in ("x_adv", "a_adv", "found", "clean",
                                                         "kept", "points")}
    for lo in range(0, b, chunk):
        sl = slice(lo, lo + chunk)
        xs, ts = x[sl], tgt[sl]
        idx = torch.arange(x.shape[0], device=x.device)[sl]
        real_c, steer_c = _for_rows(real, steer, idx, tuple(x.shape))
        clean, label = _evaluate_maps(real_c, model, xs, ts)
        pb = _Problem(model, real_c, steer_c, xs, label, ts, clean, eps, norm, domain)
        state = obj.prepare(clean)
        if method == "random":
            z, best, base, points = _sample(pb, obj, state, samples=samples, rows=rows,
                                            gen=gen)
        else:
            z, best, base, points = _ascend(pb, obj, state, steps=steps, alpha=alpha,
                                            restarts=restarts, gen=gen)
        found = best > base
        x_adv = torch.where(per_example(found, xs), _guard(z, xs, pb), xs)
        # recompute on the real model at x_adv; a label flipped by the re-evaluation (a
        # near-tie in floating point) falls back to x, whose figures are those of x itself
        a_adv, pred = _evaluate(pb, x_adv, ts)
        found = found & (pred == pb.label)
        x_adv = torch.where(per_example(found, xs), x_adv, xs)
        a_adv = torch.where(per_example(found, xs), a_adv, clean)
        kept = torch.where(found, pred == pb.label, torch.ones_like(found))
        for key, val in (("x_adv", x_adv), ("a_adv", a_adv), ("found", found),
                         ("clean", clean), ("kept", kept), ("points", points)):
            outs[key].append(val)
    cat = {key: torch.cat(v) for key, v in outs.items()}
    a_adv, clean = cat["a_adv"], cat["clean"]
    return AttackResult(
        method=method,
        objective=objective if method in ("pgd", "random") else obj.objective,
        attribution=real.name,
        norm=norm,
        eps=eps,
        x_adv=cat["x_adv"],
        euclidean=metrics.euclidean(a_adv, clean),
        cosine=metrics.cosine(a_adv, clean),
        topk_intersection=metrics.topk_intersection(a_adv, clean, k),
        kendall=metrics.kendall(a_adv, clean),
        spearman=metrics.spearman(a_adv, clean),
        label_kept=cat["kept"],
        found=cat["found"],
        attr_norm=clean.flatten(1).norm(dim=1),
        points=cat["points"],
        runs=b * runs_per_input,
        seconds=time.perf_counter() - started,
        k=k,
        steps=0 if method == "random" else steps,
        restarts=runs_per_input,
        step_size=None if method == "random" else alpha,
        samples=samples if method == "random" else None,
        seed=int(seed),
        surrogate_beta=beta_used,
        attribution_options=real.options(),
    )


def _guard(z: Tensor, x: Tensor, pb: _Problem) -> Tensor:
    """Pull z back into the ball where it lies outside by more than float rounding (a few ulp;
    never expected, as every iterate is projected, but the guarantee must not rest on it)."""
    delta = z - x
    size = batch_norm(delta.double(), pb.norm)
    outside = size > pb.eps * (1 + 8 * torch.finfo(z.dtype).eps)
    shrink = torch.where(outside, pb.eps / size, torch.ones_like(size))
    return _in_set(x + delta * per_example(shrink.to(z.dtype), z), pb)
