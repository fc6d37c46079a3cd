"""Attribution attacks: concrete perturbations, lower bounds on the worst case
(docs/design.md section 5).

For an input x with predicted class y = argmax f(x) and attribution map a = A(x), an attack
searches the perturbation set

    P(x) = { z : ||z - x||_p <= eps,  lo <= z <= hi,  argmax f(z) = y }

for a point z whose map A(z) is far from a. Its result L(x) = D(A(x), A(z*)) is a lower
bound on the worst case W(x) that the bounds of :mod:`attrbound.bounds` bound from above.

Methods (``method=``, the registry :data:`METHODS`; one class each in
:mod:`attrbound.attacks.objectives`):

- ``pgd``         projected gradient ascent on D itself (:class:`PGD`, Madry et al. 2018);
- ``ifia_topk``   Ghorbani et al. 2019's top-k attack (:class:`IFIATopK`);
- ``ifia_center`` Ghorbani et al. 2019's centre-of-mass attack (:class:`IFIACenter`);
- ``random``      uniform samples of the ball, the weakest baseline (:class:`RandomSampling`).

The gradient methods share one ascent (random start, restarts stacked into the batch, sign /
normalised steps, projection onto ball ∩ domain, the label-keeping selection) under a step
schedule (``schedule=``, :data:`SCHEDULES`): ``apgd`` (default; Croce & Hein 2020, step
halving on stagnation with momentum, :mod:`attrbound.attacks.apgd`) or ``fixed`` (Madry et
al. 2018's constant step, :func:`attrbound.attacks.engine.ascend_fixed`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attrbound import metrics
from attrbound._validate import (
    check_batch,
    check_domain,
    check_eps,
    check_in_domain,
    check_positive_int,
    require_smooth_or_surrogate,
)
from attrbound.attacks.apgd import (
    DEFAULT_APGD_RESTARTS,
    DEFAULT_APGD_STEPS,
    INITIAL_STEP,
    ascend_apgd,
)
from attrbound.attacks.engine import (
    POINTS_PER_PASS,
    Budget,
    _Problem,
    ascend_fixed,
    default_batch_size,
    guard,
    map_and_labels,
    sample,
)
from attrbound.attacks.objectives import (
    DEFAULT_K_FRACTION,
    DEFAULT_SAMPLES,
    DEFAULT_STEPS,
    OBJECTIVES,
    PGD,
    IFIACenter,
    IFIATopK,
    Objective,
    RandomSampling,
    State,
    default_k,
    spatial,
)
from attrbound.attacks.starts import STARTS
from attrbound.attributions import Attribution, resolve_target
from attrbound.attributions import attribution as make_attribution
from attrbound.errors import AttrboundError, check_choice
from attrbound.geometry import default_step_size, parse_norm, per_example
from attrbound.models import smooth_surrogate
from attrbound.results import AttackResult

__all__ = [
    "DEFAULT_APGD_RESTARTS", "DEFAULT_APGD_STEPS", "DEFAULT_K_FRACTION", "DEFAULT_SAMPLES",
    "DEFAULT_START", "DEFAULT_STEPS", "METHODS", "OBJECTIVES", "PGD", "POINTS_PER_PASS",
    "SCHEDULES",
    "AttackResult", "IFIACenter", "IFIATopK", "Objective", "RandomSampling", "STARTS",
    "ScheduledAttackResult", "attack", "default_batch_size", "default_k", "default_step_size",
]

#: the attack methods by name (iterating gives the names).
METHODS: dict[str, type[Objective]] = {
    cls.name: cls for cls in (PGD, IFIATopK, IFIACenter, RandomSampling)
}

_Search = Callable[[_Problem, Objective, State, Budget, torch.Generator],
                   tuple[Tensor, Tensor, Tensor, Tensor]]
#: the step schedules of the gradient methods by name: (ascent, default steps, default
#: restarts, default step size as a function of (eps, steps)).
SCHEDULES: dict[str, tuple[_Search, int, int, Callable[[float, int], float]]] = {
    "apgd": (ascend_apgd, DEFAULT_APGD_STEPS, DEFAULT_APGD_RESTARTS,
             lambda eps, steps: INITIAL_STEP * eps),
    "fixed": (ascend_fixed, DEFAULT_STEPS, 1, default_step_size),
}
#: the first run's start by schedule when ``start`` is not given: APGD's first run starts at
#: the first-order worst case, the fixed schedule reproduces the earlier versions' random one.
DEFAULT_START: dict[str, str] = {"apgd": "spectral", "fixed": "random"}


@dataclass
class ScheduledAttackResult(AttackResult):
    """:class:`~attrbound.results.AttackResult` plus ``schedule``, the step schedule of the
    gradient methods (``"apgd"`` or ``"fixed"``), and ``start``, their first run's start
    (``"spectral"`` or ``"random"``); both None for ``random`` and in every row."""

    schedule: str | None = None
    start: str | None = None

    def to_rows(self) -> list[dict[str, Any]]:
        rows = super().to_rows()
        for row in rows:
            row["schedule"] = self.schedule
            row["start"] = self.start
        return rows


@dataclass
class _Settings:
    """attack()'s arguments, checked and with their defaults filled in."""

    obj: Objective
    norm: str
    eps: float
    domain: tuple[float, float] | None
    budget: Budget  # rows None until the attribution is known (then: default_batch_size)
    k: int


def _check(
    model: nn.Module, x: Tensor, *, eps: float, norm: str | float, method: str, objective: str,
    steps: int | None, step_size: float | None, restarts: int | None, k: int | None,
    n: int | None,
    domain: tuple[float, float] | None, batch_size: int | None, schedule: str,
    start: str | None = None,
) -> _Settings:
    """Validate attack()'s arguments, one sentence per mistake; fill in the defaults."""
    cls = METHODS[check_choice("attack method", str(method).lower(), tuple(METHODS))]
    norm = parse_norm(norm)
    eps = check_eps(eps)
    domain = check_domain(domain)
    check_batch(x, model)
    schedule = check_choice("schedule", str(schedule).lower(), tuple(SCHEDULES))
    _, default_steps, default_restarts, default_alpha = SCHEDULES[schedule]
    start = DEFAULT_START[schedule] if start is None else check_choice(
        "start", str(start).lower(), STARTS)
    steps = check_positive_int("steps", default_steps if steps is None else steps)
    restarts = check_positive_int("restarts", default_restarts if restarts is None else restarts)
    alpha = default_alpha(eps, steps) if step_size is None else float(step_size)
    if not (math.isfinite(alpha) and alpha > 0):
        raise AttrboundError(f"step_size must be a finite number > 0, got {step_size}.")
    samples = DEFAULT_SAMPLES if n is None else int(n)
    if samples < 1:
        raise AttrboundError(f"n (random samples) must be >= 1, got {n}.")
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    shape = tuple(x.shape[1:])
    pixels = math.prod(spatial(shape))
    k = default_k(shape) if k is None else int(k)
    if not 1 <= k <= pixels:
        raise AttrboundError(f"k must lie in [1, {pixels}] (the pixels of one input), got {k}.")
    check_in_domain(x, domain)
    obj = cls.from_options(objective=objective, k=k)
    budget = Budget(steps, alpha, restarts, samples, batch_size, schedule, start)
    return _Settings(obj, norm, eps, domain, budget, k)


def _maps(
    model: nn.Module, attribution: str | Attribution, options: dict[str, Any] | None,
    obj: Objective, surrogate_beta: float | None, example: Tensor,
) -> tuple[Attribution, Attribution, float | None]:
    """(the model's own map, the attacked map, the surrogate's beta or None).

    The attacked map is the model's own unless the model is piecewise linear and
    ``surrogate_beta`` is given (required for gradient methods): then it is the map of
    :func:`attrbound.models.smooth_surrogate` (model, beta). The model's operations are
    looked up on one forward pass of ``example`` (the inputs [B, *S]). A map whose derivative
    needs no derivative of the model (``smoothed``: its gradient is an expectation over the
    noise) is attacked as it is, ReLU models included."""
    real = make_attribution(attribution, model, **(options or {}))
    if not real.needs_model_derivative:
        return real, real, None
    ask = [obj.name] if obj.uses_gradient or surrogate_beta is not None else []
    if require_smooth_or_surrogate(model, surrogate_beta, ask, example=example):
        return real, real.with_model(smooth_surrogate(model, surrogate_beta)), surrogate_beta
    return real, real, None


def _attack_chunk(
    model: nn.Module, real: Attribution, attacked: Attribution, x: Tensor, target: Tensor,
    st: _Settings, gen: torch.Generator,
) -> dict[str, Tensor]:
    """Attack one chunk x [B, *S]; the maps at x and x_adv on the attacked and real maps."""
    clean, label = map_and_labels(attacked, model, x, target)
    pb = _Problem(model, attacked, x, label, target, clean, st.eps, st.norm, st.domain)
    search = SCHEDULES[st.budget.schedule][0] if st.obj.uses_gradient else sample
    z, best, base, points = search(pb, st.obj, st.obj.prepare(clean), st.budget, gen)
    found = best > base
    x_adv = torch.where(per_example(found, x), guard(z, x, pb), x)
    # re-evaluated at x_adv; a label flipped by the re-evaluation (a near-tie in floating
    # point) falls back to x, whose figures are those of x itself
    a_adv, pred = map_and_labels(attacked, model, x_adv, target)
    found = found & (pred == label)
    x_adv = torch.where(per_example(found, x), x_adv, x)
    a_adv = torch.where(per_example(found, x), a_adv, clean)
    out = {"x_adv": x_adv, "a_adv": a_adv, "clean": clean, "found": found,
           "kept": torch.where(found, pred == label, torch.ones_like(found)), "points": points}
    if attacked is not real:  # the real model's own map at x and x_adv
        out["raw_clean"] = real.attribute(x, target)
        out["raw_adv"] = torch.where(per_example(found, x), real.attribute(x_adv, target),
                                     out["raw_clean"])
    return out


def _run_chunks(
    model: nn.Module, x: Tensor, target: Tensor, real: Attribution, attacked: Attribution,
    st: _Settings, gen: torch.Generator,
) -> dict[str, Tensor]:
    """:func:`_attack_chunk` over chunks of at most ``budget.rows`` runs, concatenated."""
    rows = st.budget.rows
    assert rows is not None
    chunk = max(1, rows // st.budget.restarts if st.obj.uses_gradient else rows)
    outs: dict[str, list[Tensor]] = {}
    for lo in range(0, x.shape[0], chunk):
        sl = slice(lo, lo + chunk)
        idx = torch.arange(x.shape[0], device=x.device)[sl]
        real_c = real.for_rows(idx, tuple(x.shape))
        attacked_c = real_c if attacked is real else attacked.for_rows(idx, tuple(x.shape))
        for key, val in _attack_chunk(model, real_c, attacked_c, x[sl], target[sl], st,
                                      gen).items():
            outs.setdefault(key, []).append(val.detach())
    return {key: torch.cat(v) for key, v in outs.items()}


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
    restarts: int | None = None,
    k: int | None = None,
    n: int | None = None,
    seed: int = 0,
    surrogate_beta: float | None = None,
    target: int | Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    attribution_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    schedule: str = "apgd",
    start: str | None = None,
) -> ScheduledAttackResult:
    """Attack the attribution of ``model`` at each input: a lower bound on the worst case.

    Every gradient method: ``restarts`` runs stacked into the batch, the first from the
    first-order worst case of the map (``start="spectral"``, the default of ``apgd``) or
    uniform in the ball ∩ domain like the others (``"random"``, the default of ``fixed``);
    l-inf sign steps, l2 normalised steps, then projection onto the ball and the domain,
    with the step size set by ``schedule``; an iterate counts only if the REAL model's
    predicted class is unchanged; each input reports its most successful valid
    iterate, or x itself when none beats x (deviation 0, cosine 1, top-k 1, ...).

    The map attacked and measured: the model's own map A, or, for a piecewise-linear model
    (ReLU, max-pool) given ``surrogate_beta``, the map A_beta of its softplus surrogate
    (:func:`attrbound.models.smooth_surrogate`): the same map the practical bounds of
    :func:`attrbound.bound` bound, so that an attack is only ever compared with a bound on
    the same function. The gradients, the selection of the best iterate and the reported
    ``euclidean``, ``cosine``, ``topk_intersection``, ``kendall``, ``spearman`` are all on
    that map; labels (the class-preserving constraint, ``label_kept``) always come from the
    real model; ``raw_euclidean`` / ``raw_cosine`` are the real model's own map deviation at
    x_adv (equal to euclidean / cosine without a surrogate); ``map`` names the map.

    Args:
        model: classifier, logits [N, K] for inputs [N, *S], in eval mode.
        x: inputs [B, *S] inside ``domain``.
        eps, norm: radius > 0 and norm (2 or "inf") of the ball around each input.
        attribution: method name (see :func:`attrbound.attribution`) or an Attribution;
            ``attribution_options`` are passed to it.
        method: a name of :data:`METHODS`: ``pgd`` (default), ``ifia_topk``, ``ifia_center``
            or ``random``.
        objective: ``euclidean`` (default) or ``cosine``, for pgd and random.
        steps: gradient steps per run (default: ``apgd`` 15, ``fixed`` 20, PGD-20 of Madry
            et al. 2018); the random start and every iterate, the last included, are scored:
            steps + 1 evaluations, steps gradients per run.
        step_size: ``fixed``: the step alpha (default 2.5 eps / steps, Madry et al. 2018);
            ``apgd``: the initial step eta_0 (default 2 eps, Croce & Hein 2020).
        schedule: ``"apgd"`` (default): Croce & Hein 2020's schedule (momentum 0.75, the step
            halved and the run restarted from its best point at checkpoints where the score
            stagnates; :func:`attrbound.attacks.apgd.ascend_apgd`); ``"fixed"``: the constant
            step alpha (the attack of earlier versions, reproduced exactly). Ignored by
            ``random``; recorded in the result and its rows (None for ``random``).
        restarts: independent runs per input, stacked into the batch dimension (default:
            ``apgd`` 3, so that the default attack costs 3 x 15 = 45 gradients per input
            plus the spectral start's at most 10 products, about PGD-50's; ``fixed`` 1).
        start: the first run's start: ``"spectral"`` (default with ``apgd``):
            x + eps v (l2, v the top right singular vector of J(x) from 6 Lanczos steps) or
            the clipped-box vertex c + r s (l-inf, s from 3 sign-iteration steps from sign v;
            :mod:`attrbound.attacks.starts`), where the linearised map moves most; the
            euclidean objective has zero gradient at x, and a random start lands in one of
            its many local maxima. ``"random"`` (default with ``fixed``): uniform in the
            ball ∩ domain. The other runs always start at random.
        k: top-k size for the rank metric and ifia_topk (default 100 for 28x28 inputs,
            Chen et al. 2019; else the same fraction 100/784 of the pixels).
        n: random samples for ``random`` (default 200, Quantus' MaxSensitivity).
        seed: seed of the CPU generator of every random draw (default 0); the same seed,
            inputs and ``batch_size`` give the same result.
        surrogate_beta: for piecewise-linear models, the beta of the softplus surrogate whose
            map is attacked (required for pgd / ifia on such models; ignored on smooth ones).
        target: class explained (default: the predicted class); int or int64 [B].
        domain: the box (lo, hi) of valid inputs (default (0, 1)), or None.
        batch_size: at most this many attack runs (inputs x restarts; inputs x samples for
            random) per pass, bounding memory (default :func:`default_batch_size`: about
            512 model evaluations per pass, e.g. 512 runs for saliency, 16 for integrated
            gradients with 32 steps).

    Returns:
        :class:`ScheduledAttackResult` (an :class:`AttackResult`) with x_adv [B, *S] and the
        deviations [B] at x_adv, plain tensors without autograd graphs. Guarantees:
        ||x_adv - x||_p <= eps (up to 1e-6), x_adv in the domain, argmax f(x_adv) =
        argmax f(x).

    Example::

        res = attrbound.attack(model, images, eps=0.1, norm="inf", method="pgd", restarts=4)
        res.euclidean      # [B] lower bounds on max ||A(x + delta) - A(x)||_2
    """
    started = time.perf_counter()
    st = _check(model, x, eps=eps, norm=norm, method=method, objective=objective, steps=steps,
                step_size=step_size, restarts=restarts, k=k, n=n, domain=domain,
                batch_size=batch_size, schedule=schedule, start=start)
    real, attacked, beta = _maps(model, attribution, attribution_options, st.obj,
                                 surrogate_beta, x)
    if st.budget.rows is None:
        st.budget.rows = default_batch_size(real)
    with torch.no_grad():  # no graph to the weights; torch.func.grad still differentiates in z
        tgt = resolve_target(model, x, target)
        out = _run_chunks(model, x, tgt, real, attacked, st, torch.Generator().manual_seed(
            int(seed)))
    return _result(out, st, real, beta, int(seed), x.shape[0], time.perf_counter() - started)


def _result(
    out: dict[str, Tensor], st: _Settings, real: Attribution, beta: float | None, seed: int,
    b: int, seconds: float,
) -> ScheduledAttackResult:
    """The AttackResult of the concatenated chunk outputs of :func:`_run_chunks`."""
    ascent = st.obj.uses_gradient
    a_adv, clean = out["a_adv"], out["clean"]
    euclidean, cosine = metrics.euclidean(a_adv, clean), metrics.cosine(a_adv, clean)
    if "raw_adv" not in out:  # the attacked map is the model's own
        raw_euclidean, raw_cosine = euclidean, cosine
    else:
        raw_euclidean = metrics.euclidean(out["raw_adv"], out["raw_clean"])
        raw_cosine = metrics.cosine(out["raw_adv"], out["raw_clean"])
    return ScheduledAttackResult(
        method=st.obj.name,
        objective=st.obj.objective,
        attribution=real.name,
        norm=st.norm,
        eps=st.eps,
        x_adv=out["x_adv"],
        euclidean=euclidean,
        cosine=cosine,
        topk_intersection=metrics.topk_intersection(a_adv, clean, st.k),
        kendall=metrics.kendall(a_adv, clean),
        spearman=metrics.spearman(a_adv, clean),
        label_kept=out["kept"],
        found=out["found"],
        attr_norm=clean.flatten(1).norm(dim=1),
        points=out["points"],
        runs=b * (st.budget.restarts if ascent else 1),
        seconds=seconds,
        k=st.k,
        steps=st.budget.steps if ascent else 0,
        restarts=st.budget.restarts if ascent else 1,
        step_size=st.budget.alpha if ascent else None,
        samples=None if ascent else st.budget.samples,
        seed=seed,
        surrogate_beta=beta,
        attribution_options=real.options(),
        raw_euclidean=raw_euclidean,
        raw_cosine=raw_cosine,
        map="model" if beta is None else f"surrogate(beta={beta:g})",
        schedule=st.budget.schedule if ascent else None,
        start=st.budget.start if ascent else None,
    )
