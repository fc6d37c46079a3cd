"""Training objectives of the robust model zoo: one function per mode, read like the paper.

Every objective takes a model f (logits), a mini-batch x: [B, *S] in the domain [0, 1] and
labels y: int64 [B], and returns a :class:`Loss`: the scalar to minimise over the weights
(with its autograd graph), its named parts (detached, for the progress bar and tests) and the
perturbed points it was evaluated at, if any. ``CE`` is the cross-entropy
l_y(z) = -log softmax(f(z))_y; ``mean_b`` averages over the batch.

===========  =================================================================================
mode         objective (defaults below; sources in each function's docstring)
===========  =================================================================================
natural      mean_b CE(f(x_b), y_b)
pgd_at       mean_b CE(f(x'_b), y_b), x' = PGD ascent on CE in the eps-ball (Madry et al. 2018)
trades       mean_b [ CE(f(x_b), y_b) + beta KL(p(x_b) || p(x'_b)) ], x' = PGD ascent on the KL
             from x + 0.001 N(0, I) (Zhang et al. 2019)
ig_norm      mean_b [ CE(f(x_b), y_b) + lam ||IG^l_y(x_b, x'_b)||_1 ], IG of the loss from
             baseline x to x', x' = PGD ascent on that norm (Chen et al. 2019)
grad_norm    mean_b [ CE(f(x_b), y_b) + lam ||grad_x CE(f(x_b), y_b)||_2^2 ] (double backprop,
             Drucker & LeCun 1992; Ross & Doshi-Velez 2018)
curvature    mean_b [ CE(f(x_b), y_b) + lam ||grad l_y(x_b + h z_b) - grad l_y(x_b)||_2^2 ],
             z = sign(grad l_y(x)) / ||sign(grad l_y(x))||_2 (CURE, Moosavi-Dezfooli et al. 2019)
===========  =================================================================================

The inner maximisations share :func:`perturb` (projected gradient ascent: sign steps for
l-inf, normalised steps for l2, projection onto the ball and the domain box). Their step
counts are far below the papers' (Madry et al. used 40 steps on MNIST) so that every mode
trains the default 28x28 CNN on the bundled 10,000 MNIST images on a CPU within minutes
(benchmarks/RESULTS.md); the radius defaults to eps = 0.1 (l-inf)
for all datasets, a third of the MNIST radius 0.3 of Madry et al. and TRADES, so that a few
epochs keep most of the clean accuracy (chosen here).
Random starts come from a CPU ``torch.Generator`` so that training is reproducible.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrbound._validate import check_eps
from attrbound.attributions import integration_nodes
from attrbound.errors import AttrboundError, check_choice
from attrbound.geometry import (
    default_step_size,
    parse_norm,
    project,
    sample_ball,
    steepest_direction,
)

MODES = ("natural", "pgd_at", "trades", "ig_norm", "grad_norm", "curvature")
DOMAIN = (0.0, 1.0)


class Loss(NamedTuple):
    """What an objective returns.

    ``value``: the scalar to minimise (graph to the weights); ``terms``: its named parts,
    detached scalars; ``points``: the perturbed inputs [B, *S] used (None for clean-only modes).
    """

    value: Tensor
    terms: dict[str, Tensor]
    points: Tensor | None = None


# --------------------------------------------------------------------------- shared pieces


def per_example_ce(model: nn.Module, z: Tensor, y: Tensor) -> Tensor:
    """l_y(z) = CE(f(z_b), y_b) per example: z [B, *S], y [B] -> [B]."""
    return F.cross_entropy(model(z), y, reduction="none")


def loss_gradient(
    model: nn.Module, x: Tensor, y: Tensor, *, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """(grad_x l_y(x) [B, *S], l_y(x) [B]): each example's input gradient of its own CE.

    One backward pass of sum_b l_{y_b}(x_b) (examples do not interact: the zoo's networks have
    no batch statistics). ``create_graph=True`` keeps the graph so the gradient
    can itself be differentiated (double backprop), to the weights or to x.
    """
    z = x if x.requires_grad else x.detach().requires_grad_(True)
    ce = per_example_ce(model, z, y)
    (g,) = torch.autograd.grad(ce.sum(), z, create_graph=create_graph)
    return g, ce


def perturb(
    objective: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    eps: float,
    norm: str = "inf",
    steps: int = 10,
    step_size: float | None = None,
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent on a per-example objective; returns x' [B, *S] (detached).

    Maximises sum_b objective(z)_b over z in {||z - x||_p <= eps, 0 <= z <= 1}:
    z <- Proj(z + alpha * s(grad)), s = sign for l-inf, grad/||grad||_2 for l2,
    alpha = ``step_size`` (default 2.5 eps / steps). Starts from ``start`` if given, else from
    a uniform random point of the ball (:func:`attrbound.geometry.sample_ball`, ``generator``).
    The weights receive no gradient. ``objective``: z [B, *S] -> [B].
    """
    eps = check_eps(eps)
    norm = parse_norm(norm)
    if int(steps) < 1:
        raise AttrboundError(f"the inner maximisation needs steps >= 1, got {steps}.")
    alpha = default_step_size(eps, int(steps)) if step_size is None else float(step_size)
    x = x.detach()
    if start is None:
        z = sample_ball(x, eps, norm, 1, generator=generator, domain=DOMAIN)[0]
    else:
        z = x + project(start.detach() - x, x, eps, norm, DOMAIN)
    for _ in range(int(steps)):
        z = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(z).sum(), z)
        z = x + project(z.detach() + alpha * steepest_direction(g, norm) - x, x, eps, norm, DOMAIN)
    return z.detach()


def loss_integrated_gradients(
    model: nn.Module,
    x: Tensor,
    x_end: Tensor,
    y: Tensor,
    *,
    steps: int = 8,
    create_graph: bool = False,
) -> Tensor:
    """IG of the loss l_y along the straight path from the baseline x to x_end: [B, *S].

    IG(x, x') = (x' - x) * sum_k w_k grad l_y(x + t_k (x' - x)), Riemann-midpoint nodes
    t_k = (k + 1/2)/m, w_k = 1/m, m = ``steps`` (:func:`attrbound.attributions.
    integration_nodes`); by completeness sum_i IG_i ~= l_y(x') - l_y(x). All B*m path points go
    through the model in one pass. ``create_graph=True`` keeps it differentiable in x_end and
    the weights.
    """
    t, w = integration_nodes(int(steps), "riemann_middle")
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    w = torch.as_tensor(w, dtype=x.dtype, device=x.device)
    shape = (-1,) + (1,) * x.dim()
    diff = x_end - x
    path = (x.unsqueeze(0) + t.view(shape) * diff.unsqueeze(0)).reshape((-1,) + x.shape[1:])
    if not create_graph:
        path = path.detach()
    g, _ = loss_gradient(model, path.requires_grad_(True), y.repeat(len(t)),
                         create_graph=create_graph)
    return diff * (w.view(shape) * g.reshape((len(t),) + x.shape)).sum(dim=0)


def kl_divergence(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """KL(p || q) per example, p = softmax(clean_logits), q = softmax(adv_logits): [B, K] -> [B]."""
    log_p = F.log_softmax(clean_logits, dim=1)
    log_q = F.log_softmax(adv_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _l1(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).abs().sum(dim=1)


def _sq_l2(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).pow(2).sum(dim=1)


# --------------------------------------------------------------------------- the modes


def natural(model: nn.Module, x: Tensor, y: Tensor) -> Loss:
    """Empirical risk minimisation: mean_b CE(f(x_b), y_b)."""
    ce = per_example_ce(model, x, y).mean()
    return Loss(ce, {"ce": ce.detach()})


def pgd_at(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float = 0.1,
    norm: str = "inf",
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> Loss:
    """PGD adversarial training (Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018).

    min_theta mean_b max_{||x'_b - x_b||_p <= eps} CE(f(x'_b), y_b): the inner max by PGD
    from a uniform random start with ``steps`` steps of size alpha (default 2.5 eps / steps),
    then one descent step on the CE at x' only. Defaults: eps 0.1, l-inf, 10 steps (the paper's
    MNIST setting is eps 0.3, 40 steps of 0.01; reduced here for CPU training).
    """
    x_adv = perturb(lambda z: per_example_ce(model, z, y), x, eps=eps, norm=norm, steps=steps,
                    step_size=step_size, generator=generator)
    ce = per_example_ce(model, x_adv, y).mean()
    return Loss(ce, {"ce_adv": ce.detach()}, x_adv)


def trades(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    beta: float = 1.0,
    eps: float = 0.1,
    norm: str = "inf",
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> Loss:
    """TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, ICML 2019).

    min_theta mean_b [ CE(f(x_b), y_b) + beta * max_{x'_b} KL(p(x_b) || p(x'_b)) ],
    p = softmax o f. Inner max: start x' = x + 0.001 N(0, I) (projected), PGD ascent on the KL
    with p(x) held fixed; then the KL at x' is differentiated through both p(x) and p(x').
    Defaults: beta 1 (1/lambda of the paper's MNIST setting), eps 0.1, l-inf, 10 steps of
    2.5 eps / steps (the paper's MNIST setting: eps 0.3, 40 steps of 0.01).
    """
    if not beta >= 0:
        raise AttrboundError(f"trades needs beta >= 0, got {beta}.")
    with torch.no_grad():
        p_clean = model(x)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    x_adv = perturb(lambda z: kl_divergence(p_clean, model(z)), x, eps=eps, norm=norm,
                    steps=steps, step_size=step_size, start=x + 0.001 * noise)
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    kl = kl_divergence(logits, model(x_adv)).mean()
    return Loss(ce + beta * kl, {"ce": ce.detach(), "kl": kl.detach()}, x_adv)


def ig_norm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lam: float = 1.0,
    eps: float = 0.1,
    norm: str = "inf",
    steps: int = 3,
    step_size: float | None = None,
    ig_steps: int = 4,
    generator: torch.Generator | None = None,
) -> Loss:
    """IG-NORM, robust attribution regularisation (Chen, Wu, Rastogi, Liang, Jha, NeurIPS 2019).

    min_theta mean_b [ CE(f(x_b), y_b) + lam * max_{||x'_b - x_b||_p <= eps}
    ||IG^{l_y}(x_b, x'_b)||_1 ], where IG^{l_y}(x, x') is the integrated gradient of the LOSS
    l_y from the baseline x to x' (:func:`loss_integrated_gradients`, m = ``ig_steps``
    Riemann-midpoint nodes). The inner max is PGD on that l1 norm itself (random start, since
    the norm is 0 at x' = x); the penalty is then recomputed with the graph to the weights
    (a double backprop through m*B path points). Defaults, chosen here (not the paper's tuned
    values): lam 1, eps 0.1, l-inf, 3 PGD steps, m = 4 nodes (the path x -> x' is short,
    inside the eps-ball, so few nodes integrate it well); a training step then costs about
    3 (steps + 1) m = 48 natural steps' worth of passes.
    """
    if not lam >= 0:
        raise AttrboundError(f"ig_norm needs lam >= 0, got {lam}.")

    def attribution_l1(z: Tensor) -> Tensor:
        return _l1(loss_integrated_gradients(model, x, z, y, steps=ig_steps, create_graph=True))

    x_adv = perturb(attribution_l1, x, eps=eps, norm=norm, steps=steps, step_size=step_size,
                    generator=generator)
    ce = per_example_ce(model, x, y).mean()
    penalty = _l1(loss_integrated_gradients(model, x, x_adv, y, steps=ig_steps,
                                            create_graph=True)).mean()
    return Loss(ce + lam * penalty, {"ce": ce.detach(), "ig_l1": penalty.detach()}, x_adv)


def grad_norm(model: nn.Module, x: Tensor, y: Tensor, *, lam: float = 1.0) -> Loss:
    """Input-gradient regularisation by double backpropagation (Drucker & LeCun 1992;
    Ross & Doshi-Velez, AAAI 2018).

    min_theta mean_b [ CE(f(x_b), y_b) + lam ||grad_x CE(f(x_b), y_b)||_2^2 ]: the input gradient
    is computed with ``create_graph=True`` and its squared norm differentiated to the weights.
    Default lam = 1 (chosen here; its effect on the maps and the accuracy of the 28x28 CNN is
    in benchmarks/RESULTS.md).
    """
    if not lam >= 0:
        raise AttrboundError(f"grad_norm needs lam >= 0, got {lam}.")
    g, ce = loss_gradient(model, x, y, create_graph=True)
    penalty = _sq_l2(g).mean()
    ce = ce.mean()
    return Loss(ce + lam * penalty, {"ce": ce.detach(), "grad_sq": penalty.detach()})


def curvature(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lam: float = 4.0,
    h: float = 1.0,
    direction: str = "sign",
    generator: torch.Generator | None = None,
) -> Loss:
    """Curvature regularisation, CURE (Moosavi-Dezfooli, Fawzi, Uesato, Frossard, CVPR 2019).

    min_theta mean_b [ CE(f(x_b), y_b) + lam ||grad l_y(x_b + h z_b) - grad l_y(x_b)||_2^2 ],
    a finite difference ~ h^2 ||H z||^2 of the loss Hessian H along the unit (l2) direction
    z = sign(grad l_y(x)) / ||sign(grad l_y(x))||_2 (``direction="sign"``, CURE's choice,
    held fixed: no gradient through z) or a Gaussian direction z = xi / ||xi||_2
    (``direction="random"``, from ``generator``). Both gradients keep their graph (double
    backprop). Defaults lam 4 and h 1.0 (an l2 step, the scale of the l2 radii the bounds are
    evaluated at; chosen here, CURE tuned h per dataset).
    """
    check_choice("curvature direction", direction, ("sign", "random"))
    if not lam >= 0 or not h > 0:
        raise AttrboundError(f"curvature needs lam >= 0 and h > 0, got lam={lam}, h={h}.")
    g, ce = loss_gradient(model, x, y, create_graph=True)
    if direction == "sign":
        z = g.detach().sign()
    else:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    z = z / z.reshape(len(z), -1).norm(dim=1).clamp_min(1e-12).reshape((-1,) + (1,) * (z.dim() - 1))
    g_h, _ = loss_gradient(model, x + h * z, y, create_graph=True)
    penalty = _sq_l2(g_h - g).mean()
    ce = ce.mean()
    return Loss(ce + lam * penalty, {"ce": ce.detach(), "curv": penalty.detach()}, x + h * z)


OBJECTIVES: dict[str, Callable[..., Loss]] = {
    "natural": natural,
    "pgd_at": pgd_at,
    "trades": trades,
    "ig_norm": ig_norm,
    "grad_norm": grad_norm,
    "curvature": curvature,
}


def defaults(mode: str) -> dict[str, Any]:
    """The options of ``mode`` and their defaults (``generator`` excluded)."""
    fn = OBJECTIVES[check_choice("training mode", mode, MODES)]
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "generator"
    }


def resolve(mode: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``mode``'s full option dict: its defaults updated with ``options`` (None values are
    ignored); an option ``mode`` does not take raises AttrboundError. Checks eps and norm."""
    opts = defaults(mode)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(opts))
    if unknown:
        raise AttrboundError(
            f"training mode {mode!r} takes no option {', '.join(unknown)}; its options are: "
            f"{', '.join(opts) or 'none'}."
        )
    opts.update(given)
    if "eps" in opts:
        opts["eps"] = check_eps(opts["eps"])
    if "norm" in opts:
        opts["norm"] = parse_norm(opts["norm"])
    for key in ("steps", "ig_steps"):
        if key in opts and int(opts[key]) < 1:
            raise AttrboundError(f"{key} must be >= 1, got {opts[key]}.")
    return opts


def objective(
    mode: str, options: dict[str, Any] | None = None
) -> Callable[[nn.Module, Tensor, Tensor, torch.Generator | None], Loss]:
    """``(model, x, y, generator) -> Loss`` for ``mode`` with its resolved ``options``."""
    opts = resolve(mode, options)
    fn = OBJECTIVES[mode]
    takes_gen = "generator" in inspect.signature(fn).parameters

    def loss(model: nn.Module, x: Tensor, y: Tensor,
             generator: torch.Generator | None = None) -> Loss:
        return fn(model, x, y, **opts, **({"generator": generator} if takes_gen else {}))

    return loss
