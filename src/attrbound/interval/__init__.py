"""Certified bounds by interval propagation through the forward AND gradient passes
(docs/design.md section 4).

For a model f (a chain F_n o sigma_n o ... o sigma_1 o F_0 of affine blocks F_i and elementwise
activations sigma_i, or a graph of such ops traced by torch.fx), target t and the set

    S(x) = { z : ||z - x||_p <= eps,  lo <= z <= hi }          (p in {2, inf}),

:func:`interval_bound` computes per-feature intervals [l_i, u_i] that contain A_i(z) for every
z in S(x), where A is saliency g(z) = grad f_t(z), input x gradient z * g(z), or integrated
gradients (z - b) * sum_k w_k g(b + t_k (z - b)), and from them a Euclidean upper bound and a
cosine lower bound on the deviation of A(z) from A(x). The steps, one module each:

1. :mod:`.perturbation`: the input set (a box, and for l2 the ball) and the first-layer ball;
2. :mod:`.forward` (chain) / :mod:`.dag_forward` (graph): bounds on every pre-activation (IBP,
   and CROWN back-substitution by default);
3. :mod:`.gradient` (chain) / :mod:`.dag_gradient` (graph): the interval chain rule
   g = W_0^T D_1 W_1^T ... D_n W_n^T e_t, D_i the activation derivative ranges, summed where
   the graph fans out; intersected with the same pass in exact arithmetic widened by the
   model's backward rounding E, refined by branch and bound on ReLU derivative states
   (:mod:`.branching`), and where that is not exhaustive intersected with the linear bounds of
   :mod:`.gradient_crown` / :mod:`.dag_gradient_crown`;
4. :mod:`.attribution`: the attribution's intervals from the gradient's (the integrated-
   gradients path points are one batch through one propagation);
5. :mod:`.deviation`: the Euclidean and cosine bounds from the intervals.

The network is a chain of ops (:mod:`.graph`) for an ``nn.Sequential`` of the chain layers,
else the traced graph of :mod:`.dag`; the ops come from the registry of :mod:`.ops`. Soundness
in floating point: everything is computed in float64 and rounded outward so that each interval
contains both the exact value and the value the model computes in its own format
(:mod:`.rounding` states the rounding model).

Batched over inputs; device and dtype follow the inputs (results in the input's dtype, rounded
outward).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from attrbound._validate import (
    check_batch,
    check_domain,
    check_eps,
    check_in_domain,
    check_positive_int,
)
from attrbound.attributions import Attribution, resolve_target
from attrbound.errors import AttrboundError, check_choice, first_line
from attrbound.geometry import parse_norm
from attrbound.interval.attribution import ATTRIBUTIONS, attribution_box, resolve_attribution
from attrbound.interval.branching import BRANCHES
from attrbound.interval.dag import SUPPORTED_NODES, network
from attrbound.interval.deviation import deviation_bounds
from attrbound.interval.forward import MAX_ELEMENTS, TIGHTENINGS
from attrbound.interval.gradient import RELAXATIONS
from attrbound.interval.ops import SUPPORTED_LAYERS
from attrbound.interval.perturbation import ball_set, point_set
from attrbound.interval.rounding import EVALUATIONS, K_FUNC, U64, Units, cast_out, units_for
from attrbound.results import BoundResult, cosine_from_euclidean
from attrbound.surrogate import copy_model

__all__ = [
    "ATTRIBUTIONS", "EVALUATIONS", "K_FUNC", "MAX_ELEMENTS", "SUPPORTED_LAYERS", "SUPPORTED_NODES",
    "RELAXATIONS", "TIGHTENINGS",
    "attribution_intervals", "cosine_from_euclidean", "interval_bound",
]


@dataclass
class _Prepared:
    """The float64 intervals of A over S(x) (lo, hi) and of A(x) (plo, phi), [B, *S], with the
    checked arguments they were computed from."""

    lo: Tensor
    hi: Tensor
    plo: Tensor
    phi: Tensor
    attr: Attribution  # on the float64 copy of the model
    target: Tensor
    norm: str
    eps: float
    units: Units
    x64: Tensor


def attribution_intervals(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float,
    norm: str | float,
    attribution: str | Attribution = "saliency",
    target: int | Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    tightening: str = "crown",
    evaluation: str = "float",
    max_elements: int = MAX_ELEMENTS,
    gradient_relaxation: str = "crown",
    branches: int = BRANCHES,
    **attribution_options: Any,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 intervals (lo, hi) [B, *S] of A(z) over the perturbation set and (plo, phi) of
    A(x) itself (the zero-radius set), before rounding to the input's dtype.

    Arguments as for :func:`interval_bound`. Mostly for tests and experiments.
    """
    out = _prepare(model, x, eps, norm, attribution, target, domain, tightening, evaluation,
                   max_elements, attribution_options, gradient_relaxation, branches)
    return out.lo, out.hi, out.plo, out.phi


def _prepare(
    model: nn.Module,
    x: Tensor,
    eps: Any,
    norm: Any,
    attribution: str | Attribution,
    target: int | Tensor | None,
    domain: tuple[float, float] | None,
    tightening: str,
    evaluation: str,
    max_elements: int,
    attribution_options: dict[str, Any],
    relaxation: str = "crown",
    branches: int = BRANCHES,
) -> _Prepared:
    """Check the arguments, build the network and compute both sets' attribution intervals."""
    check_batch(x, model)
    norm = parse_norm(norm)
    eps = check_eps(eps)
    domain = check_domain(domain)
    check_choice("tightening", tightening, TIGHTENINGS)
    check_choice("evaluation", evaluation, EVALUATIONS)
    check_choice("gradient_relaxation", relaxation, RELAXATIONS)
    branches = check_positive_int("branches", branches)
    if int(max_elements) < 1:
        raise AttrboundError(f"max_elements must be >= 1, got {max_elements}.")
    attr = resolve_attribution(attribution, model, attribution_options)
    check_in_domain(x, domain)
    _check_eval(model)
    _refuse_hooks(model)
    xd = x.detach().to(torch.float64)
    m64 = _float64_copy(model)
    net = network(m64, xd, x.device)  # checked to reproduce the model's logits in float64
    _refuse_hidden_gradients(m64, xd)
    tgt = resolve_target(model, x, target)
    units = units_for(model, x, evaluation)
    inset = ball_set(xd, eps, norm, domain)
    a64 = attr.with_model(m64)
    lo, hi = attribution_box(net, a64, xd, inset, tgt, tightening, units, int(max_elements),
                             relaxation, branches)
    # {x}: only rounding leaves neurons unstable, few enough to enumerate their patterns
    plo, phi = attribution_box(net, a64, xd, point_set(xd), tgt, "none", units,
                               int(max_elements), "crown", BRANCHES)
    lo, hi = torch.nan_to_num(lo, nan=-math.inf), torch.nan_to_num(hi, nan=math.inf)
    plo, phi = torch.nan_to_num(plo, nan=-math.inf), torch.nan_to_num(phi, nan=math.inf)
    _check_map_at_x(a64, xd, tgt, plo, phi)
    return _Prepared(lo=lo, hi=hi, plo=plo, phi=phi, attr=a64, target=tgt, norm=norm, eps=eps,
                     units=units, x64=xd)


def _check_map_at_x(attr: Attribution, x64: Tensor, target: Tensor, plo: Tensor,
                    phi: Tensor) -> None:
    """Refuse a network whose gradient pass is not the model's: A(x), computed by autograd
    on the float64 copy, must lie in the certified intervals of A(x) itself (up to 1e-9 of
    the map's scale, far below the model's own rounding, which the intervals contain). The
    network's logits were checked when it was built; this catches what changes only the
    gradient: a detach, or a no_grad region, that tracing cannot see."""
    try:
        with torch.enable_grad():
            ref = attr.attribute(x64, target).detach()
    except RuntimeError as exc:  # the model's own autograd fails (an in-place op it needs)
        raise AttrboundError(
            f"the model's own attribution at x could not be computed ({first_line(exc)}); an "
            "in-place op on a tensor its gradient needs?") from None
    scale = ref.flatten(1).abs().amax(dim=1).clamp_min(1e-300)
    slack = 1e-9 * scale.reshape((-1,) + (1,) * (ref.dim() - 1))
    miss = torch.maximum(plo - slack - ref, ref - phi - slack).clamp_min(0)
    if bool((miss > 0).any()):
        worst = float((miss.flatten(1).amax(dim=1) / scale).max())
        raise AttrboundError(
            "the interval method's network does not reproduce the model's attribution at x "
            f"(off by {worst:.3g} of the map's scale): something in the forward changes the "
            "gradient where tracing cannot see it (a no_grad region, a hook, a custom "
            "autograd.Function); remove it to bound this model.")


def _refuse_hooks(model: nn.Module) -> None:
    """Refuse a model with forward or backward hooks (on a layer or global): the bound
    follows the layers as defined, and a hook may change their outputs or gradients. The
    hooks torch.export puts on the graph module it returns (input checks, the pytree of the
    output) are torch's own and change no value."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")

    def users(hooks: Any) -> list[Any]:
        return [h for h in (hooks or {}).values()
                if not str(getattr(h, "__module__", "")).startswith("torch.export.")]

    glob = nn.modules.module
    if any(users(getattr(glob, f"_global{k}", None)) for k in kinds):
        raise AttrboundError("global module hooks are registered (torch.nn.modules.module."
                             "register_module_forward_hook ...); remove them to bound a model "
                             "with the interval method.")
    for name, m in model.named_modules():
        if any(users(getattr(m, k, None)) for k in kinds):
            raise AttrboundError(
                f"layer {name or type(m).__name__} has a forward or backward hook; the "
                "interval method bounds the layers as defined, not what a hook changes: "
                "remove it (handle.remove()).")


class _GradModeWatch(TorchFunctionMode):
    """Notes whether any torch function of a forward pass runs with gradients disabled."""

    off = False

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        if not torch.is_grad_enabled():
            self.off = True
        return func(*args, **(kwargs or {}))


def _refuse_hidden_gradients(model: nn.Module, x64: Tensor) -> None:
    """Refuse a model whose gradient is not the derivative of the forward that tracing sees:
    operations run with gradients disabled (a ``torch.no_grad()`` region, which fx does not
    record), or a custom ``torch.autograd.Function`` in its autograd graph at x (its gradient
    is its own ``backward``, which need not be the forward's derivative anywhere but at x).
    One forward pass of the first input."""
    z = x64[:1].clone().requires_grad_(True)
    watch = _GradModeWatch()
    with torch.enable_grad(), watch:
        out = model(z)
    _refuse_custom_functions(out)
    if watch.off:  # (a custom Function's forward runs so too: refused above)
        raise AttrboundError(
            "the model's forward runs operations with gradients disabled (a torch.no_grad() "
            "region); the interval method bounds the derivative of everything the forward "
            "computes: remove that region.")


def _refuse_custom_functions(out: Tensor) -> None:
    """Refuse a custom autograd.Function anywhere in the autograd graph of ``out``."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if isinstance(fn, torch.autograd.function.BackwardCFunction):
            raise AttrboundError(
                f"the model computes part of its output with a custom autograd.Function "
                f"({type(fn).__name__}); the interval method bounds the derivative of the "
                "forward it traces, which that Function's backward need not be.")
        stack.extend(f for f, _ in fn.next_functions)


def _check_eval(model: nn.Module) -> None:
    """Refuse a model in training mode: BatchNorm or Dropout layers in training mode, or a
    custom forward (which may read ``self.training``) on a module in training mode."""
    for name, m in model.named_modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or (
                isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0):
            raise AttrboundError(f"layer {name or type(m).__name__} ({type(m).__name__}) is in "
                                 "training mode; call model.eval().")
    if model.training and not isinstance(model, nn.Sequential) and any(model.children()):
        raise AttrboundError(f"{type(model).__name__} is in training mode (its forward may "
                             "depend on it); call model.eval().")


def _float64_copy(model: nn.Module) -> nn.Module:
    """An eval-mode float64 deep copy of the model with no parameter requiring gradients."""
    m = copy_model(model).to(torch.float64)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def interval_bound(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float,
    norm: str | float,
    attribution: str | Attribution = "saliency",
    target: int | Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    **options: Any,
) -> BoundResult:
    """Certified bounds on the attribution deviation by interval propagation
    (docs/design.md section 4).

    For every z in S(x) = {||z - x||_p <= eps, domain[0] <= z <= domain[1]}, the returned
    ``intervals`` (lo, hi) [B, *S] contain A(z); from them (attrbound.interval.deviation)

        euclidean  >= ||A(z) - A(x)||_2          and      cosine <= cos(A(x), A(z)).

    Args:
        model: an ``nn.Sequential`` (nested allowed) of Linear, Conv2d, Flatten, AvgPool2d,
            BatchNorm1d/2d (eval), ReLU, Softplus, ELU, Tanh, Sigmoid, or any model torch.fx
            traces into the nodes of SUPPORTED_NODES (residual adds, cat, reshapes, max /
            adaptive / mean pooling, functional activations); any other node raises
            AttrboundError naming it and the supported list; a model in training mode is
            refused. ReLU is handled exactly (no surrogate).
        x: inputs [B, *S] inside ``domain``.
        eps, norm: radius (> 0) and norm (2 or "inf").
        attribution: "saliency", "input_x_gradient", "integrated_gradients" or such an
            :class:`~attrbound.attributions.Attribution` (its steps, nodes and baseline are used);
            smoothgrad is not supported.
        target: class explained (int or [B]); None = the predicted class.
        domain: the input box (lo, hi) or None.
        **options: ``tightening`` = "crown" (default; CROWN back-substitution bounds on every
            pre-activation, intersected with IBP) or "none" (IBP, plus the exact first-layer
            radius for l2); ``evaluation`` = "float" (default: sound for the attribution as the
            model computes it in its own format AND in exact arithmetic) or "exact" (exact
            arithmetic only); ``max_elements`` (default 2^21): float64 entries of one CROWN
            back-substitution chunk (memory ~ 6x that); ``gradient_relaxation`` = "crown"
            (default: the interval gradient intersected with linear bounds of
            g = B_0^T (d_0 * ... B_n^T e_t) over the derivative boxes, rows +/- e_k from the
            input features: up to 2 * prod(S) rows per input carried to the logits; skipped
            on inputs whose branching is exhaustive, and on the features whose interval,
            weighted by what it counts in the attribution (integrated gradients: w_k |z - b|),
            is at most RELAX_CUTOFF = 1e-3 of the widest:
            attrbound.interval.gradient.worth_relaxing) or "interval" (interval products
            only); every gradient pass is also intersected with the same pass in exact
            arithmetic widened by E, a bound on the model's rounding of its backward pass;
            ``branches`` (default 64; chains and graphs with ReLU): branch and bound on the
            derivative states of each input's unstable ReLU neurons, all 2^U patterns when
            2^U <= branches (exact for the linearised pattern set when every activation is a
            ReLU and every max-pool window is decided), else the floor(log2(branches))
            widest split; the union of the branches' gradients is intersected with the bound
            (1: no branching). A(x) itself always gets the default budget: only rounding
            leaves its neurons undecided, and enumerating them is cheaper and tighter than
            the linear relaxation; ``surrogate_beta`` is accepted and ignored (ReLU is
            bounded exactly; recorded in ``extra``); ``attribution_options`` (dict) or any
            other keyword (e.g. ``steps=16``) are options of the attribution method named by
            ``attribution``.

    Returns:
        BoundResult with method "interval": ``euclidean`` [B] (rounded up), ``cosine`` [B]
        (certified lower bound, rounded down, -1 when vacuous), ``attr_norm`` ||A(x)||_2 [B]
        (float64 model), ``operator_norm`` NaN, ``iterations`` 0, ``converged`` True,
        ``intervals`` (lo, hi) in the input's dtype (rounded outward); ``extra`` holds
        ``tightening``, ``evaluation`` and ``unit_roundoff``.

    Cost: one IBP pass and one interval gradient pass per input (per path node for integrated
    gradients); with CROWN, per pre-activation layer, 2 rows per neuron left to bound (before
    a ReLU the possibly active ones, on l-inf sets only the unstable ones:
    attrbound.interval.forward.to_bound) carried back through the layers below it, and the
    gradient's linear bounds (2 rows per feature worth relaxing); both dominate for
    convolutional layers.

    Example::

        res = interval_bound(model, images, eps=0.01, norm="inf")
        res.euclidean, res.cosine       # [B] certified
        lo, hi = res.intervals           # [B, C, H, W]: A(z) in [lo, hi] for all z in the ball
    """
    started = time.perf_counter()
    tightening = options.pop("tightening", "crown")
    evaluation = options.pop("evaluation", "float")
    max_elements = options.pop("max_elements", MAX_ELEMENTS)
    relaxation = options.pop("gradient_relaxation", "crown")
    branches = options.pop("branches", BRANCHES)
    # ReLU is bounded exactly, on the real model: a smooth surrogate is never needed
    ignored_beta = options.pop("surrogate_beta", None)
    opts = dict(options.pop("attribution_options", None) or {})
    opts.update(options)
    out = _prepare(model, x, eps, norm, attribution, target, domain, tightening, evaluation,
                   max_elements, opts, relaxation, branches)
    euclid, cos = deviation_bounds(out.lo, out.hi, out.plo, out.phi)
    with torch.no_grad():
        a = out.attr.attribute(out.x64, out.target)
    attr_norm = a.flatten(1).norm(dim=1)
    dt = x.dtype
    b = x.shape[0]
    _, euclid_c = cast_out(euclid, euclid, dt)
    cos_c, _ = cast_out(cos, cos, dt)
    return BoundResult(
        method="interval",
        attribution=out.attr.name,
        norm=out.norm,
        eps=out.eps,
        euclidean=euclid_c,
        cosine=cos_c,
        attr_norm=attr_norm.to(dt),
        operator_norm=torch.full((b,), math.nan, dtype=dt, device=x.device),
        iterations=torch.zeros(b, dtype=torch.long, device=x.device),
        converged=torch.ones(b, dtype=torch.bool, device=x.device),
        intervals=cast_out(out.lo, out.hi, dt),
        seconds=time.perf_counter() - started,
        guarantee="deterministic: every point of the set, floating point included",
        extra={"tightening": tightening, "evaluation": evaluation,
               "gradient_relaxation": relaxation, "branches": branches,
               "unit_roundoff": out.units.u - U64 if evaluation == "float" else 0.0,
               "attribution_options": out.attr.options(),
               "surrogate_beta_ignored": ignored_beta},
    )
