"""Upper bounds on the worst-case attribution deviation (DESIGN.md sections 3 and 4).

For inputs x [B, *S], an attribution A and the perturbation set
P(x) = {x + delta : ||delta||_p <= eps, x + delta in the domain box}, :func:`bound` returns
U(x) >= max_{z in P(x)} ||A(z) - A(x)||_2 and the matching lower bound on cos(A(x), A(z)).

Methods (``method=``):

- ``taylor`` (3.1): U = eps * ||J(x)||_{p->2}, J = dA/dx, the first-order term at x only:
  l2 -> sigma_max(J) (:func:`attrbound.spectral.top_singular`); l-inf -> the inf -> 2 norm
  from above by its dual (:func:`attrbound.spectral.inf_to_two`), the sign-iteration value
  reported as ``lower``. Not an upper bound when A is curved (DESIGN 3.1, "known weakness").
- ``region`` (3.2, the default): A(x + delta) - A(x) = int_0^1 J(x + t delta) delta dt, so
  U = eps * sup_{z in P(x)} ||J(z)||_{p->2}; the sup is estimated by the maximum of the
  operator norm at x, at random points of P(x), at points the caller passes (e.g. attack
  iterates) and along projected gradient ascent on ||J(z)||_{p->2} inside P(x).
- ``interval`` (4): certified, by bound propagation (:mod:`attrbound.interval`).

taylor and region are PRACTICAL bounds: their eigen-solves return Ritz values plus residual
margins (see :mod:`attrbound.spectral`), and region's sup is an estimate, so neither is
certified; the campaign measures how often, if ever, an attack beats them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attrbound._validate import (
    check_domain,
    check_eps,
    check_in_domain,
    require_smooth_or_surrogate,
)
from attrbound.attributions import (
    Attribution,
    IntegratedGradients,
    check_batch,
    resolve_target,
)
from attrbound.attributions import attribution as make_attribution
from attrbound.errors import AttrboundError, check_choice
from attrbound.geometry import (
    default_step_size,
    parse_norm,
    per_example,
    project,
    sample_ball,
    steepest_direction,
    unit,
)
from attrbound.models import smooth_surrogate
from attrbound.operators import JacobianOperator, bilinear_gradient, is_symmetric
from attrbound.results import BoundResult, cosine_from_euclidean
from attrbound.spectral import inf_to_two, random_start, top_singular

METHODS = ("taylor", "region", "interval")

#: region's own random stream is seeded with seed + this (the solves at x use seed itself)
_REGION_STREAM = 0x5EED

#: model evaluations per pass by default: inputs per pass are this divided by the
#: evaluations one map needs (integrated gradients: its steps). Unlike an attack's fixed
#: number of steps, the solvers' iteration counts differ between inputs, and a pass lasts as
#: long as its slowest input: on the CPU (2 cores, 1 thread; benchmarks/bench_bounds.py's
#: models) small passes measured fastest, 16 inputs for saliency (d = 784 and 3072) and one
#: input for integrated gradients with 32 steps (0.84 s per input at d = 3072, against 1.05
#: with 8 inputs per pass and 1.22 with 16). Elsewhere (a GPU) wide passes pay.
POINTS_PER_PASS_CPU = 16
POINTS_PER_PASS = 512

#: options of taylor and region, with their defaults (see :func:`bound`)
SOLVER_OPTIONS: dict[str, Any] = {
    "tol": None,
    "max_iter": 100,
    "dual_steps": 10,
    "inner_iter": 12,
    "sign_steps": 50,
    "seed": 0,
    "batch_size": None,
}
REGION_OPTIONS: dict[str, Any] = {
    "random": 8,
    "points": None,
    "ascent_steps": 10,
    "restarts": 1,
    "step_size": None,
    "screen_iter": 1,
    "coarse_ig_steps": 8,
}


# ----------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------


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

    Options of taylor and region (``**options``):
        tol: relative residual tolerance of the eigen-solves (default 1e-6 in float64,
            1e-4 in float32; :func:`attrbound.spectral.default_tol`).
        max_iter: most Lanczos steps per tight eigen-solve (default 100).
        dual_steps, inner_iter, sign_steps: of the l-inf dual and the sign iteration
            (defaults 10, 12, 50; :func:`attrbound.spectral.inf_to_two`).
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
        ascent_steps: projected gradient-ascent steps on ||J(z)||_{p->2} (default 10;
            0 switches the ascent off); restarts: ascent runs per input (default 1: from the
            best point screened so far; more runs start at random points).
        coarse_ig_steps: integrated gradients with more steps than this (default 8; None:
            never) are screened and ascended on the coarser quadrature of the same integral
            with this many steps (:meth:`IntegratedGradients.with_steps`; about a quarter of
            the cost per product at 32 steps); every point region keeps (the best screened
            point of each group, the ascent's best point) is rescored with the full map, and
            the tight solves are the full map's. Measured on 8 MNIST inputs, demo CNN, 32
            steps: region bounds 0.993-1.006 times the full search's at l2 eps 0.5 (means
            equal to 3 digits) in 10.3-12.3 s instead of 18.7-21.9 s; 0.99-1.05 times at
            l-inf eps 0.05 (whose time the dual solves dominate).
        step_size: ascent step (default 2.5 eps / ascent_steps); screen_iter: products per
            screened point (default 1: ||J(z) w|| with w x's singular / sign vector; more
            refine w by power (l2) or sign (l-inf) iteration steps at z).

    region, per input: the tight operator norm at x (exactly taylor's), then every other
    point z is scored by a cheap lower estimate of ||J(z)||_{p->2} (||J(z) w|| with w x's
    singular / sign vector: one product per point), the ascent climbs phi(z) = u^T J(z) w
    with (u, w) tracking the top singular pair (l2) or (J s / ||J s||, s) (l-inf) by alternating
    half-steps of the power / sign iteration (:func:`attrbound.operators.bilinear_gradient`),
    and the best-scoring point gets a tight solve; operator_norm is the largest value found,
    so region >= taylor always.

    Returns:
        :class:`BoundResult` with euclidean = eps * operator_norm, cosine, attr_norm = ||A(x)||,
        operator_norm (the upper estimate of ||J||_{p->2}, residual margin included),
        iterations / converged of the eigen-solve that produced it, ``lower`` (l-inf: the
        sign-iteration value, a feasible lower value of the same quantity), and for region
        ``argmax`` [B, *S] and ``source`` ("x", "random", "points" or "ascent"). ``extra``
        holds per-input tensors: ``operator_norm_v0`` (l-inf: sqrt(n) sigma_max, the dual
        at v = 0), and for region taylor's solve at x: ``operator_norm_x``, ``iterations_x``,
        ``converged_x``, ``seconds_x`` (l-inf also ``lower_x``, ``operator_norm_v0_x``); see
        :func:`taylor_from_region`.

    Example::

        res = attrbound.bound(model, images, eps=0.1, norm=2, attribution="saliency")
        res.euclidean      # [B] upper bounds on max ||A(x + delta) - A(x)||_2
    """
    started = time.perf_counter()
    method = check_choice("bound method", str(method).lower(), METHODS)
    norm = parse_norm(norm)
    eps = check_eps(eps)
    domain = check_domain(domain)
    check_batch(x, model)
    x = x.detach()
    attr = make_attribution(attribution, model, **(attribution_options or {}))
    if method == "interval":
        try:
            from attrbound.interval import interval_bound
        except ModuleNotFoundError as exc:
            if exc.name != "attrbound.interval":
                raise
            raise AttrboundError(
                "method 'interval' is not available in this installation (no "
                "attrbound.interval); use method='region' or 'taylor'."
            ) from None
        if surrogate_beta is not None:
            options["surrogate_beta"] = surrogate_beta
        return interval_bound(
            model, x, eps=eps, norm=norm, attribution=attr, target=target, domain=domain,
            **options,
        )

    opts = _check_options(method, options)
    if require_smooth_or_surrogate(model, surrogate_beta, [method]):
        beta: float | None = float(surrogate_beta)  # type: ignore[arg-type]
        attr_used = attr.with_model(smooth_surrogate(model, beta))
    else:
        beta, attr_used = None, attr
    if method == "region":
        check_in_domain(x, domain)
    tgt = resolve_target(model, x, target)
    points = _check_points(opts.get("points"), x, eps, norm, domain)
    # two streams: the start vectors of the solves at x (taylor's, also region's first solve,
    # so the two agree in every pass) and everything else region draws (random points,
    # restarts, the start of its solve at the best point)
    gens = (torch.Generator().manual_seed(int(opts["seed"])),
            torch.Generator().manual_seed(int(opts["seed"]) + _REGION_STREAM))
    limit = opts["batch_size"] or default_batch_size(attr_used, x.device)
    run = _region if method == "region" else _taylor

    parts: list[dict[str, Any]] = []
    for lo in range(0, x.shape[0], limit):
        sl = slice(lo, lo + limit)
        pts = None if points is None else points[sl].transpose(0, 1)
        chunk = attr_used.for_rows(torch.arange(x.shape[0], device=x.device)[sl], x.shape)
        parts.append(run(chunk, x[sl], tgt[sl], eps, norm, domain, opts, gens, pts, limit))
    cat = _concat(parts)
    op_norm = cat.pop("operator_norm")
    attr_norm = cat.pop("attr_norm")
    euclidean = eps * op_norm
    return BoundResult(
        method=method,
        attribution=attr.name,
        norm=norm,
        eps=eps,
        euclidean=euclidean,
        cosine=cosine_from_euclidean(euclidean, attr_norm),
        attr_norm=attr_norm,
        operator_norm=op_norm,
        iterations=cat.pop("iterations"),
        converged=cat.pop("converged"),
        lower=cat.pop("lower", None),
        argmax=cat.pop("argmax", None),
        source=cat.pop("source", None),
        surrogate_beta=beta,
        seconds=time.perf_counter() - started,
        extra={**cat, "options": _plain_options(opts, attr), "target": tgt},
    )


def taylor_from_region(region: BoundResult) -> BoundResult:
    """The taylor bound (DESIGN 3.1) that a region bound computed on the way, at no cost.

    method="region" starts with exactly taylor's tight solve at x (same solver, options and
    seed) and keeps it in ``extra`` (``operator_norm_x``, ``iterations_x``, ...); this
    rebuilds the taylor :class:`BoundResult` from it: euclidean = eps * ||J(x)||_{p->2},
    cosine from it, the x solve's diagnostics, ``seconds`` = the time of that solve. Equal to
    ``bound(..., method="taylor")`` with the same options (the solves at x draw their start
    vectors from their own stream, so this holds in every pass).

    Shapes: every tensor field [B], as in ``region``.
    """
    if region.method != "region" or "operator_norm_x" not in region.extra:
        raise AttrboundError("taylor_from_region needs the result of bound(..., method='region').")
    ex = region.extra
    op_norm = ex["operator_norm_x"]
    euclidean = region.eps * op_norm
    extra: dict[str, Any] = {"options": {**ex["options"], "from_region": True},
                             "target": ex["target"]}
    if "operator_norm_v0_x" in ex:
        extra["operator_norm_v0"] = ex["operator_norm_v0_x"]
    return BoundResult(
        method="taylor",
        attribution=region.attribution,
        norm=region.norm,
        eps=region.eps,
        euclidean=euclidean,
        cosine=cosine_from_euclidean(euclidean, region.attr_norm),
        attr_norm=region.attr_norm,
        operator_norm=op_norm,
        iterations=ex["iterations_x"],
        converged=ex["converged_x"],
        lower=ex.get("lower_x"),
        surrogate_beta=region.surrogate_beta,
        seconds=float(ex["seconds_x"].sum()),
        extra=extra,
    )


def default_batch_size(attr: Attribution, device: torch.device | str = "cpu") -> int:
    """Inputs per pass: the model evaluations per pass for the device (POINTS_PER_PASS_CPU on
    the CPU, else POINTS_PER_PASS) divided by those one map needs
    (:attr:`Attribution.evaluations`), at least 1. Start vectors and random points are
    drawn pass by pass, so a different batch size (or device) gives slightly different
    numbers for the same seed."""
    points = POINTS_PER_PASS_CPU if torch.device(device).type == "cpu" else POINTS_PER_PASS
    return max(1, points // attr.evaluations)


# ----------------------------------------------------------------------------------------
# Option checks
# ----------------------------------------------------------------------------------------


def _check_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    allowed = dict(SOLVER_OPTIONS)
    if method == "region":
        allowed.update(REGION_OPTIONS)
    for name in options:
        if name not in allowed:
            if name in REGION_OPTIONS:
                raise AttrboundError(f"option {name!r} applies to method='region' only.")
            raise AttrboundError(
                f"unknown option {name!r} for method={method!r}; valid options: "
                f"{', '.join(sorted(allowed))}."
            )
    opts = {**allowed, **options}
    minimum = {"max_iter": 1, "dual_steps": 0, "inner_iter": 1, "sign_steps": 0,
               "random": 0, "ascent_steps": 0, "restarts": 1, "screen_iter": 1,
               "coarse_ig_steps": 1}
    may_be_none = {"coarse_ig_steps"}  # None: never
    for name, low in minimum.items():
        if name in opts and not (opts[name] is None and name in may_be_none):
            value = opts[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise AttrboundError(f"option {name} must be an integer >= {low}, got {value!r}.")
    for name in ("tol", "step_size"):
        value = opts.get(name)
        if value is not None and not (
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0
        ):
            raise AttrboundError(f"option {name} must be a finite number > 0, got {value!r}.")
    size = opts["batch_size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise AttrboundError(f"option batch_size must be an integer >= 1, got {size!r}.")
    return opts


def _check_points(
    points: Any, x: Tensor, eps: float, norm: str, domain: tuple[float, float] | None
) -> Tensor | None:
    """Caller points as [B, P, *S] inside the perturbation set (projected), or None."""
    if points is None:
        return None
    if not isinstance(points, Tensor):
        raise AttrboundError(f"points must be a tensor [B, P, *S], got {type(points).__name__}.")
    shape = tuple(x.shape)
    if tuple(points.shape) == shape:
        points = points.unsqueeze(1)
    if points.dim() != x.dim() + 1 or points.shape[0] != shape[0] or tuple(
        points.shape[2:]
    ) != shape[1:] or points.shape[1] < 1:
        raise AttrboundError(
            f"points must be shaped [B, P, {', '.join(map(str, shape[1:]))}] with B = "
            f"{shape[0]}, got {tuple(points.shape)}."
        )
    points = points.detach().to(device=x.device, dtype=x.dtype)
    if not torch.isfinite(points).all():
        raise AttrboundError("points contain NaN or infinite values.")
    p = points.shape[1]
    xr = x.unsqueeze(1).expand_as(points).reshape((-1,) + shape[1:])
    flat = points.reshape((-1,) + shape[1:])
    inside = xr + project(flat - xr, xr, eps, norm, domain)
    return inside.reshape((shape[0], p) + shape[1:])


def _plain_options(opts: dict[str, Any], attr: Attribution) -> dict[str, Any]:
    plain = {k: v for k, v in opts.items() if k != "points"}
    plain["points"] = None if opts.get("points") is None else int(opts["points"].shape[1])
    plain["attribution_options"] = attr.options()
    return plain


# ----------------------------------------------------------------------------------------
# The engine (one chunk of inputs at a time; every step batched over the chunk)
# ----------------------------------------------------------------------------------------

_SOURCES = ("x", "random", "points", "ascent")


@dataclass
class _Solve:
    """Tight operator-norm solve at a batch of points z [N, *S]."""

    value: Tensor  # A(z) [N, *S]
    upper: Tensor  # upper estimate of ||J(z)||_{p->2} [N]
    lower: Tensor | None  # l-inf: sign-iteration value [N]
    iterations: Tensor
    converged: Tensor
    vector: Tensor  # screening start at nearby points: right singular / sign vector [N, n]
    v0: Tensor | None  # l-inf: sqrt(n) sigma_max [N]


def _solve(
    attr: Attribution, z: Tensor, target: Tensor, norm: str, opts: dict[str, Any],
    gen: torch.Generator,
) -> _Solve:
    """Tight solve at z [N, *S], always from a random start vector.

    No warm start, neither from the vector of a nearby point (region's best point used to
    start from x's vector plus a 10% random part) nor from the coarse integrated-gradients
    map. Where the start lies close to the second singular vector, its part along the top is
    10x smaller than a random start's, and a float32 solve can stop, "converged", short of
    sigma_max. Measured with Lanczos to 1e-4 on 32 dense float32 operators (n = 256, top two
    eigenvalues 1% apart, start = the second eigenvector plus a random part): 15 of 32 stopped
    below lambda_max with a 10% random part, 3 with an equal one, 0 from a random start.
    A reviewer's model did the same with the coarse map's vector (0.98 sigma_max in 8 of 10
    seeds). The warm starts saved little: region on 16 MNIST saliency inputs took 1.49-1.58 s
    (l2) and 11.7-12.5 s (l-inf) from random starts against 1.50 and 11.2-12.9 s warm; on 4
    with integrated gradients (32 steps, l2) 8.0 s against 7.9 s (median of 3 interleaved
    runs; 8-14 Lanczos steps at the best point instead of 5-10); coarse starts saved 5-12 of
    12-29 Lanczos steps on integrated gradients at d = 3072."""
    op = JacobianOperator(attr, z, target)
    start = random_start((z.shape[0], op.n), z, gen)
    if norm == "2":
        r = top_singular(op, start, tol=opts["tol"], max_iter=opts["max_iter"])
        return _Solve(op.value, r.upper, None, r.iterations, r.converged, r.vector, None)
    d = inf_to_two(
        op, start, tol=opts["tol"], max_iter=opts["max_iter"], dual_steps=opts["dual_steps"],
        inner_iter=opts["inner_iter"], sign_steps=opts["sign_steps"],
    )
    return _Solve(op.value, d.upper, d.lower, d.iterations, d.converged, d.sign, d.upper_v0)


def _result(s: _Solve) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operator_norm": s.upper,
        "attr_norm": s.value.flatten(1).norm(dim=1),
        "iterations": s.iterations,
        "converged": s.converged,
    }
    if s.lower is not None:
        out["lower"] = s.lower
        out["operator_norm_v0"] = s.v0
    return out


def _taylor(
    attr: Attribution, x: Tensor, target: Tensor, eps: float, norm: str,
    domain: tuple[float, float] | None, opts: dict[str, Any],
    gens: tuple[torch.Generator, torch.Generator], points: Tensor | None, limit: int,
) -> dict[str, Any]:
    """eps * ||J(x)||_{p->2} (DESIGN 3.1) for one chunk x [B, *S]."""
    return _result(_solve(attr, x, target, norm, opts, gens[0]))


def _rows(fn: Callable[[slice], tuple[Tensor, ...]], n: int, limit: int) -> tuple[Tensor, ...]:
    """Apply fn to row slices of at most ``limit`` rows and concatenate its outputs."""
    outs = [fn(slice(lo, lo + limit)) for lo in range(0, n, limit)]
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


def _screen(
    attr: Attribution, z: Tensor, target: Tensor, warm: Tensor, norm: str, opts: dict[str, Any]
) -> Tensor:
    """Cheap lower estimate of ||J(z)||_{p->2}, z [N, *S], from x's vector warm [N, n]:
    ||J(z) w|| after ``screen_iter`` - 1 power-iteration steps w <- J^T J w / ||J^T J w||
    from w = warm (l2, unit w: a value <= sigma_max), or sign-iteration steps
    s <- sign(J^T J s) from s = warm (l-inf: a feasible value ||J s||). The default
    (screen_iter = 1) costs one product J w per point."""
    op = JacobianOperator(attr, z, target)
    w = warm
    for _ in range(opts["screen_iter"] - 1):
        m = op.gram(w)
        w = unit(m) if norm == "2" else torch.where(m == 0, w, torch.sign(m))
    return op.matvec(w).flatten(1).norm(dim=1)


def _coarse_map(attr: Attribution, opts: dict[str, Any]) -> Attribution:
    """The map region screens and ascends on (never the source of a reported value):
    integrated gradients with more than ``coarse_ig_steps`` steps coarsened to that many
    (:meth:`IntegratedGradients.with_steps`), otherwise attr itself."""
    coarse = opts.get("coarse_ig_steps")
    if isinstance(attr, IntegratedGradients) and coarse is not None and attr.steps > coarse:
        return attr.with_steps(coarse)
    return attr


def _ascend(
    attr: Attribution, x: Tensor, target: Tensor, z: Tensor, w: Tensor, eps: float, norm: str,
    domain: tuple[float, float] | None, opts: dict[str, Any],
) -> tuple[Tensor, Tensor]:
    """Projected gradient ascent on ||J(z)||_{p->2} from z [N, *S]; (best score [N], point).

    phi(z) = u^T J(z) w with w the right singular vector (l2, unit) or a sign vector s
    (l-inf) and u = J w / ||J w||. Step t computes grad phi and, alternately, J(z) w (then
    u <- J w / ||J w||) or J(z)^T u (then w <- J^T u / ||J^T u|| or sign(J^T u)), i.e. half a
    power / sign iteration per step, tracking the pair as z moves. Every iterate is scored by
    the lower value it yields (||J w||_2, ||J^T u||_2 for l2, ||J^T u||_1 for l-inf), then
    z <- x + Proj(z - x + alpha dir(grad)), dir = sign (l-inf) or grad / ||grad||_2 (l2).

    Integrated gradients climb the coarser quadrature of :func:`_coarse_map`; the best point
    is then rescored with the full map and the vector tracked there, so the score returned
    is always a lower value of the full map's ||J(z)||_{p->2}.
    """
    full, attr = attr, _coarse_map(attr, opts)
    steps = opts["ascent_steps"]
    alpha = opts["step_size"] or default_step_size(eps, steps)
    symmetric = is_symmetric(attr)
    w = w.reshape(z.shape)
    jw = JacobianOperator(attr, z, target).matvec(w)
    best = jw.flatten(1).norm(dim=1)
    best_z, best_w = z, w
    u = unit(jw)
    for t in range(steps):
        transpose = t % 2 == 0
        if transpose or not symmetric:
            g, aux = bilinear_gradient(attr, z, target, u, w, transpose=transpose)
        else:  # J = J^T: J w = J^T w by the reverse-mode path, measured ~25% cheaper
            g, aux = bilinear_gradient(attr, z, target, w, u, transpose=True)
        if transpose:  # aux = J(z)^T u
            flat = aux.flatten(1)
            score = flat.norm(dim=1) if norm == "2" else flat.abs().sum(dim=1)
            w = unit(aux) if norm == "2" else torch.where(aux == 0, w, torch.sign(aux))
        else:  # aux = J(z) w
            score = aux.flatten(1).norm(dim=1)
            u = unit(aux)
        better = score > best
        best = torch.where(better, score, best)
        best_z = torch.where(per_example(better, z), z, best_z)
        best_w = torch.where(per_example(better, z), w, best_w)
        z = x + project(z - x + alpha * steepest_direction(g, norm), x, eps, norm, domain)
        if domain is not None:
            z = z.clamp(domain[0], domain[1])
    score = JacobianOperator(attr, z, target).matvec(w).flatten(1).norm(dim=1)
    better = score > best
    best, best_z = torch.where(better, score, best), torch.where(per_example(better, z), z, best_z)
    if attr is not full:
        best_w = torch.where(per_example(better, z), w, best_w)
        best = JacobianOperator(full, best_z, target).matvec(best_w).flatten(1).norm(dim=1)
    return best, best_z


def _region(
    attr: Attribution, x: Tensor, target: Tensor, eps: float, norm: str,
    domain: tuple[float, float] | None, opts: dict[str, Any],
    gens: tuple[torch.Generator, torch.Generator], points: Tensor | None, limit: int,
) -> dict[str, Any]:
    """eps * sup_{z in P(x)} ||J(z)||_{p->2} estimated (DESIGN 3.2) for one chunk x [B, *S];
    points: [P, B, *S] or None."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    gen = gens[1]
    started = time.perf_counter()
    sx = _solve(attr, x, target, norm, opts, gens[0])
    seconds_x = torch.full((b,), (time.perf_counter() - started) / b, dtype=torch.float64)
    best = torch.full((b,), -math.inf, dtype=sx.upper.dtype, device=x.device)
    best_z = x
    code = torch.zeros(b, dtype=torch.long, device=x.device)
    rows = torch.arange(b, device=x.device)

    def consider(score: Tensor, z: Tensor, kind: int) -> None:
        nonlocal best, best_z, code
        better = score > best
        best = torch.where(better, score, best)
        best_z = torch.where(per_example(better, z), z, best_z)
        code = torch.where(better, torch.full_like(code, kind), code)

    groups: list[tuple[Tensor, int]] = []
    if opts["random"] > 0:
        groups.append((sample_ball(x, eps, norm, opts["random"], gen, domain), 1))
    if points is not None:
        groups.append((points, 2))
    search = _coarse_map(attr, opts)

    def screen(m: Attribution, flat: Tensor, reps: int) -> Tensor:
        tt, warm, of = target.repeat(reps), sx.vector.repeat(reps, 1), rows.repeat(reps)
        (scores,) = _rows(
            lambda sl: (_screen(m.for_rows(of[sl], x.shape), flat[sl], tt[sl], warm[sl], norm,
                                opts),),
            reps * b, limit,
        )
        return scores

    for cand, kind in groups:
        k = cand.shape[0]
        top, idx = screen(search, cand.reshape((k * b,) + shape), k).reshape(k, b).max(dim=0)
        picked = cand[idx, rows]
        if search is not attr:  # a score of the coarse map is no value of the full one
            top = screen(attr, picked, 1)
        consider(top, picked, kind)

    if opts["ascent_steps"] > 0:
        r = opts["restarts"]
        first = torch.where(per_example(torch.isfinite(best), x), best_z, x)
        starts = [first] + [sample_ball(x, eps, norm, 1, gen, domain)[0] for _ in range(r - 1)]
        z0, xx = torch.cat(starts), x.repeat((r,) + (1,) * len(shape))
        tt, ww, of = target.repeat(r), sx.vector.repeat(r, 1), rows.repeat(r)
        scores, zs = _rows(
            lambda sl: _ascend(attr.for_rows(of[sl], x.shape), xx[sl], tt[sl], z0[sl], ww[sl],
                               eps, norm, domain, opts),
            r * b, limit,
        )
        top, idx = scores.reshape(r, b).max(dim=0)
        consider(top, zs.reshape((r, b) + shape)[idx, rows], 3)

    out = _result(sx)
    # taylor's result, computed on the way (see taylor_from_region)
    out.update({f"{k}_x": v for k, v in list(out.items()) if k != "attr_norm"})
    out["seconds_x"] = seconds_x
    out["argmax"] = x.clone()
    out["source"] = [_SOURCES[0]] * b
    if not bool(torch.isfinite(best).any()):
        return out
    sb = _solve(attr, best_z, target, norm, opts, gen)
    value = torch.maximum(sb.upper, best)  # the lower estimate can only add safety
    use = value > sx.upper
    cand = _result(sb)
    for key in ("operator_norm", "iterations", "converged", "operator_norm_v0"):
        if key in out:
            new = value if key == "operator_norm" else cand[key]
            out[key] = torch.where(use, new, out[key])
    if "lower" in out:  # every score is a feasible lower value of the same sup
        out["lower"] = torch.maximum(torch.maximum(sx.lower, sb.lower), best)
    out["argmax"] = torch.where(per_example(use, x), best_z, x)
    out["source"] = [_SOURCES[int(c)] if u else _SOURCES[0] for c, u in zip(code, use, strict=True)]
    return out


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in parts[0]:
        vals = [p[key] for p in parts]
        out[key] = sum(vals, []) if isinstance(vals[0], list) else torch.cat(vals)
    return out
