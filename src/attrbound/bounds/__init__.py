"""Upper bounds on the worst-case attribution deviation (docs/design.md sections 3 and 4).

For inputs x [B, *S], an attribution A and the perturbation set
P(x) = {x + delta : ||delta||_p <= eps, x + delta in the domain box}, :func:`bound` returns
U(x) >= max_{z in P(x)} ||A(z) - A(x)||_2 and the matching lower bound on cos(A(x), A(z)).

Methods (``method=``), looked up by name in :data:`METHODS` (each a :class:`BoundMethod`;
taylor's and region's are the ``run`` of their module):

- ``taylor`` (3.1, :mod:`attrbound.bounds.taylor`): U = eps * ||J(x)||_{p->2}, J = dA/dx,
  the first-order term at x only (l-inf: over the ball clipped to the domain); not an upper
  bound when A is curved.
- ``region`` (3.2, the default; :mod:`attrbound.bounds.region`): U = eps * sup_{z in P(x)}
  ||J(z)||_{p->2}, the sup estimated by a search of P(x); its first solve is taylor's, kept as
  ``BoundResult.at_x`` (:func:`taylor_from_region`).
- ``interval`` (4): certified, by bound propagation (:mod:`attrbound.interval`).
- ``smoothed`` (10): certified for the smoothed map h = E[u(x + eta)] of the normalised base
  attribution, any model (:mod:`attrbound.bounds.smoothed`).

Kinds of guarantee (docs/design.md section 3.3; ``BoundResult.guarantee`` / ``delta``):
taylor's operator norm is certified with probability >= 1 - delta over attrbound's random
start vectors (:mod:`attrbound.linalg.certificate`), for the linearisation at x only; region's
sup is an estimate (each of its solves certified the same way); the campaign measures how
often, if ever, an attack beats them. Their options and
defaults are in :mod:`attrbound.bounds.options`, the machinery they share (passes, the tight
solve) in :mod:`attrbound.bounds.solve`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from torch import Tensor, nn

from attrbound import interval
from attrbound._validate import check_batch, check_domain, check_eps
from attrbound.attributions import Attribution
from attrbound.attributions import attribution as make_attribution
from attrbound.bounds import region, smoothed, taylor
from attrbound.bounds.options import OPTIONS, REGION_OPTIONS, SOLVER_OPTIONS
from attrbound.bounds.solve import POINTS_PER_PASS, POINTS_PER_PASS_CPU, default_batch_size
from attrbound.errors import AttrboundError, check_choice
from attrbound.geometry import parse_norm
from attrbound.results import BoundResult, cosine_from_euclidean


class BoundMethod(Protocol):
    """One method of :func:`bound`, called on checked arguments: x [B, *S] detached and
    finite, norm "2" or "inf", eps > 0, domain (lo, hi) or None, attr an Attribution, and
    the method's own keywords in ``options``. Returns per-input bounds [B]."""

    def __call__(self, model: nn.Module, x: Tensor, attr: Attribution, *, eps: float,
                 norm: str, target: int | Tensor | None, domain: tuple[float, float] | None,
                 surrogate_beta: float | None, options: dict[str, Any]) -> BoundResult: ...


def _interval(
    model: nn.Module, x: Tensor, attr: Attribution, *, eps: float, norm: str,
    target: int | Tensor | None, domain: tuple[float, float] | None,
    surrogate_beta: float | None, options: dict[str, Any],
) -> BoundResult:
    """method="interval": :func:`attrbound.interval.interval_bound` on the real model (ReLU
    is bounded exactly; a ``surrogate_beta`` given is passed on and recorded there)."""
    if surrogate_beta is not None:
        options = {**options, "surrogate_beta": surrogate_beta}
    return interval.interval_bound(model, x, eps=eps, norm=norm, attribution=attr,
                                   target=target, domain=domain, **options)


#: the bound methods by name, in the order they are listed to users
METHODS: Mapping[str, BoundMethod] = MappingProxyType(
    {"taylor": taylor.run, "region": region.run, "interval": _interval,
     "smoothed": smoothed.run}
)


def bound(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float,
    norm: str | float,
    attribution: str | Attribution = "saliency",
    method: str = "region",
    target: int | Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    attribution_options: dict[str, Any] | None = None,
    surrogate_beta: float | None = None,
    **options: Any,
) -> BoundResult:
    """Upper bound U(x) on max ||A(x + delta) - A(x)||_2 over the perturbation set, per input.

    The set is {delta : ||delta||_p <= eps, x + delta in ``domain``}; the bound on the
    Euclidean deviation gives a lower bound on cos(A(x), A(x + delta)) through
    :func:`cosine_from_euclidean`.

    Args:
        model: classifier, logits [N, K] for inputs [N, *S], in eval mode.
        x: inputs [B, *S] (finite; inside ``domain`` for region).
        eps: radius > 0. norm: 2, "2", "l2" or "inf", "linf", float("inf").
        attribution: a method name (see :func:`attrbound.attribution`) with its options in
            ``attribution_options``, or an :class:`~attrbound.attributions.Attribution`.
        method: ``region`` (default), ``taylor`` or ``interval`` (module docstring).
        target: class explained, int or int64 [B] (default: the predicted class).
        domain: the valid input box (lo, hi) (default (0, 1)), or None.
        surrogate_beta: for models with ReLU / max-pool layers (whose attribution has zero
            derivative almost everywhere), bound the smooth surrogate
            :func:`attrbound.models.smooth_surrogate` (model, beta) instead; the result's
            ``surrogate_beta`` records it. Without it such models raise AttrboundError
            (use method="interval" for a bound on the real ReLU model).

    Options of taylor and region (``**options``; :data:`OPTIONS` lists each method's):
        delta: failure probability of the certified operator norms (default 1e-3): each
            certified value is an upper bound with probability >= 1 - delta over the start
            vectors (docs/design.md section 3.3).
        tol: the certifying runs stop once the certified norm is within this relative gap
            of its Ritz value (default 5e-3 in float32, 5e-5 in float64;
            :func:`attrbound.linalg.certified_gap`).
        max_iter: most Lanczos steps per certifying run (default 100).
        dual_steps, inner_iter, sign_steps: l-inf only: Burer-Monteiro steps on the
            surrogate that chooses the weights (default 25; 0: w = 1, the sqrt(n) sigma_max
            bound), Lanczos steps of the sketch that builds the surrogate (default 12), most
            sign-iteration steps (default 50); :func:`attrbound.linalg.inf_to_two`. The
            defaults spend about as many products as a 50-step attack on saliency
            (benchmarks/RESULTS.md); more steps tighten the weights by a percent or two.
        refine_steps, refine_above: l-inf only: where the weighted bound's Ritz value after 4
            steps of its certifying run exceeds ``refine_above`` (default 1.10, the bracket
            upper / lower the defaults aim at: refinement is spent only where the bracket
            would be wider; 0: every input, inf: none) times the sign-iteration value, that
            run is dropped and the weights are refined by ``refine_steps`` (default 8; 0:
            never) rank-4 Burer-Monteiro steps on J^T J itself (4 products each, in one
            batch), then certified by a fresh run: the
            surrogate misses the slowly decaying spectrum of integrated gradients' J^T J
            (median upper / lower 1.39 without, 1.07 with, on the MNIST CNN at eps 0.05; at
            1.05 instead of 1.10 saliency takes 1.4x the time for a 0.5% tighter bound).
        weights_ig_steps: l-inf, integrated gradients with more steps than this (default
            8; None: never): the weights (sketch, Burer-Monteiro, the refinement on every input
            without the gate) and the sign iteration's start are chosen on the same integral
            with this many steps; the sign iteration finishes and the certifying run runs on
            the full map, so the bound is the full map's (any weights are valid) and
            ``extra["operator_norm_v0"]`` is NaN (not computed). At 32 steps on the MNIST
            CNN: half the time (11.3 -> 5.9 s for 4 inputs) for a 0.7% looser bound
            (benchmarks/RESULTS.md).
        seed: seed of the CPU generators (default 0): the start vectors of the solves at x
            draw from one seeded with ``seed`` (taylor's and region's agree), region's random
            points, restarts and further start vectors from one seeded with seed + 0x5EED.
        batch_size: inputs per pass (default :func:`default_batch_size`: 16 model
            evaluations per pass on the CPU, i.e. 16 inputs for saliency and 1 for integrated
            gradients with 32 steps; 512 on other devices), bounding memory.

    Options of region only:
        random: random points of the set screened (default 8).
        points: extra points [B, P, *S] (or [B, *S]), e.g. attack iterates; projected into
            the set.
        attack_steps: region runs its own pgd attack of this many steps (2 runs: the
            spectral start and a random one; the default schedule; on the same map) and
            searches its points with the caller's (default 0: off, only the caller's). The
            search is as strong as its points: at l-inf the attacks' points raised region by
            a median 1.04-1.49x on the demo's model, and with 5 steps no input was beaten by
            50-step attacks (region alone: one)
            (benchmarks/results/region_search.md). Costs the attack plus 3 searched points:
            1.4-1.7x region's time at 5 steps at l-inf on the demo's model, 2x at l2, where it
            gains nothing (the ascent climbs there). More points can also lower the estimate
            on an input: the ascent starts from the best-scoring point, wherever it is.
        ascent_steps: projected gradient-ascent steps on ||J(z)||_{p->2} (default 10;
            0 switches the ascent off); restarts: ascent runs per input (default 1: from the
            best point screened so far; more runs start at random points).
        coarse_ig_steps: integrated gradients with more steps than this (default 8; None:
            never) are screened and ascended on the coarser quadrature of the same integral
            with this many steps (:meth:`IntegratedGradients.with_steps`, a fraction of the
            cost per product); every point region keeps (the best screened point of each
            group, the ascent's best point) is rescored with the full map, and the tight
            solves are the full map's, so the coarse map only steers the search.
        step_size: ascent step (default 2.5 eps / ascent_steps); screen_iter: products per
            screened point (default 1: ||J(z) w|| with w x's singular / sign vector; more
            refine w by power (l2) or sign (l-inf) iteration steps at z).
        points_iter: the caller's points p are searched along their segments
            z = x + t (p - x), t in 1/4, 1/2, 3/4, 1 (the mean-value theorem puts a large
            operator norm somewhere on the segment of a point where the map moved, often
            inside it): each z is scored by one product from x's vector and one from the
            segment's own direction (p - x, scaled into the set); each point itself and its
            best interior z then get ``points_iter`` - 1 (default 3) power / sign steps from
            the better of the two vectors (2 points_iter - 1 = 7 products each), and the
            best of those competes with the other sources for the tight solve: 22 products
            per caller point by default.

    Options of interval: see :func:`attrbound.interval.interval_bound`.

    Options of smoothed (``smoothing``, ``sigma``, ``samples``, ``alpha``, ``seed``,
    ``batch_size``): see :mod:`attrbound.bounds.smoothed`.

    Returns:
        :class:`BoundResult` with euclidean = eps * operator_norm, cosine, attr_norm = ||A(x)||,
        operator_norm (the certified ||J||_{p->2}; l-inf with a domain: the maximum of
        ||J delta|| over the ball clipped to the domain box, divided by eps),
        operator_norm_ritz (its Ritz estimate), guarantee and delta, iterations / converged
        of the certifying run, ``lower`` (l-inf: the sign-iteration value, a feasible lower
        value of the same quantity), and for region
        ``argmax`` [B, *S], ``source`` ("x", "random", "points" or "ascent") and ``at_x``
        (the taylor BoundResult of its solve at x; see :func:`taylor_from_region`).
        ``extra`` holds ``options``, ``target`` [B] and, for l-inf, ``operator_norm_v0``
        [B] (the certified w = 1 bound sqrt(n) sigma_max, of J [c, diag r] with a domain).
        Tensors carry no autograd graph, also
        when the model's parameters require gradients.

    Example::

        res = attrbound.bound(model, images, eps=0.1, norm=2, attribution="saliency")
        res.euclidean      # [B] upper bounds on max ||A(x + delta) - A(x)||_2
    """
    method = check_choice("bound method", str(method).lower(), METHODS)
    norm = parse_norm(norm)
    eps = check_eps(eps)
    domain = check_domain(domain)
    check_batch(x, model)
    attr = make_attribution(attribution, model, **(attribution_options or {}))
    return METHODS[method](model, x.detach(), attr, eps=eps, norm=norm, target=target,
                           domain=domain, surrogate_beta=surrogate_beta, options=options)


def taylor_from_region(region: BoundResult) -> BoundResult:
    """The taylor bound (docs/design.md section 3.1) that a region bound computed on the way.

    method="region" starts with exactly taylor's tight solve at x (same solver, options and
    seed) and returns it as ``region.at_x``: euclidean = eps * ||J(x)||_{p->2}, cosine from
    it, the x solve's diagnostics, ``seconds`` = the time of that solve, ``options`` marked
    ``from_region``. Equal to ``bound(..., method="taylor")`` with the same options (the
    solves at x draw their start vectors from their own stream, so this holds in every
    pass).

    Shapes: every tensor field [B], as in ``region``.
    """
    if region.method != "region" or region.at_x is None:
        raise AttrboundError("taylor_from_region needs the result of bound(..., method='region').")
    return region.at_x


__all__ = [
    "METHODS",
    "OPTIONS",
    "POINTS_PER_PASS",
    "POINTS_PER_PASS_CPU",
    "REGION_OPTIONS",
    "SOLVER_OPTIONS",
    "BoundMethod",
    "BoundResult",
    "bound",
    "cosine_from_euclidean",
    "default_batch_size",
    "taylor_from_region",
]
