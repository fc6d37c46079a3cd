"""method="smoothed": certified bounds for the smoothed attribution (docs/design.md section 10).

For a base attribution a with normalised map u = a / ||a||_2 and noise eta (Gaussian
N(0, sigma^2 I) or uniform in the l2 ball of radius sigma), the smoothed map is
h(x) = E[u(x + eta)]. For every x' of the perturbation set (||x' - x||_2 <= rho, rho = eps for
l2, sqrt(d) eps or less for l-inf; :func:`attrbound.smoothing.l2_radius`):

    ||h(x') - h(x)||_2 <= E = 2 TV(P_x, P_x')        deterministic (no sampling enters E)
    cos(h(x), h(x')) >= sqrt(1 - (E / L)^2),  L = ||h_n(x)|| - t(n, alpha)
                                                      probability >= 1 - alpha

with h_n the mean of n = ``samples`` fresh draws of u(x + eta) and t the dimension-free
McDiarmid radius of :func:`attrbound.smoothing.estimate_radius` (||h_n - h(x)|| < t with
probability >= 1 - alpha over attrbound's own samples). Only forward and backward passes of
the model are needed (u is evaluated, never differentiated), so any nn.Module works: ReLU,
residual, exported graphs, any input size; no surrogate is used (``surrogate_beta`` is
ignored: the real model's map is bounded).

Options (``**options`` of :func:`attrbound.bound`):
    smoothing: "gaussian" (default) or "uniform"; sigma: the Gaussian's standard deviation
        or the ball's radius, input units (default 0.25). Given an attribution
        :class:`~attrbound.attributions.Smoothed`, both default to its own (and must agree
        with it) and its base attribution is the a smoothed; any other attribution given
        must be a base of :data:`~attrbound.attributions.SMOOTHED_BASES`.
    samples: n (default 1000); alpha: in (0, 1) (default 1e-3).
    seed (default 0): the noise is drawn in float64 by ``torch.Generator(device)``
        seeded with ``seed`` on the inputs' device, the same draws for every input (the
        generator is re-seeded for every group of inputs), so an input's result depends only
        on it, the seed, the device and the batch size.
    batch_size: points x + eta per forward/backward pass (default 256 on the CPU, 1024
        elsewhere), bounding memory: samples per pass k = min(n, batch_size // e) (e the base
        attribution's evaluations per map), inputs per pass batch_size // (k e) (at least 1).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from attrbound import smoothing as sm
from attrbound.attributions import SMOOTHED_BASES, Attribution, Smoothed, resolve_target, unit_map
from attrbound.errors import AttrboundError, check_choice
from attrbound.results import BoundResult, cosine_from_euclidean

#: the options of method="smoothed" and their defaults (None: taken from the attribution,
#: else gaussian / 0.25; batch_size None: 256 points per pass on the CPU, 1024 elsewhere)
DEFAULTS: dict[str, Any] = {"smoothing": None, "sigma": None, "samples": 1000, "alpha": 1e-3,
                            "seed": 0, "batch_size": None}
#: what each figure of the result guarantees (BoundResult.guarantee; {alpha} filled in)
GUARANTEE = ("euclidean: deterministic, for the exact smoothed map (float64 rounding "
             "included); cosine, attr_norm_lower, euclidean_from_estimate: probability >= "
             "1 - {alpha:g} over attrbound's own samples")


def _settings(attr: Attribution, options: dict[str, Any]) -> tuple[Attribution, dict[str, Any]]:
    """(the base attribution, the checked options with their defaults filled in)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise AttrboundError(f"unknown option(s) {unknown} for method='smoothed'; valid "
                             f"options: {', '.join(sorted(DEFAULTS))}.")
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    if isinstance(attr, Smoothed):
        for key in ("smoothing", "sigma"):
            own = getattr(attr, key)
            if opts[key] is not None and opts[key] != own:
                raise AttrboundError(f"{key}={opts[key]!r} disagrees with the smoothed "
                                     f"attribution's {key}={own!r}; give it once.")
            opts[key] = own
        base = attr.base
    else:
        base = attr
        if base.name not in SMOOTHED_BASES:
            raise AttrboundError(f"method='smoothed' smooths one of {', '.join(SMOOTHED_BASES)}"
                                 f" (or a 'smoothed' attribution), not {base.name!r}.")
    opts["smoothing"] = check_choice("smoothing", str(opts["smoothing"] or "gaussian").lower(),
                                     sm.SMOOTHINGS)
    opts["sigma"] = sm.check_sigma(0.25 if opts["sigma"] is None else opts["sigma"])
    opts["samples"] = sm.check_samples(opts["samples"])
    opts["alpha"] = sm.check_alpha(opts["alpha"])
    size = opts["batch_size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise AttrboundError(f"batch_size must be an integer >= 1, got {size!r}.")
    opts["seed"] = int(opts["seed"])
    return base, opts


def estimate(base: Attribution, x: Tensor, target: Tensor, *, smoothing: str, sigma: float,
             samples: int, seed: int, batch_size: int | None) -> Tensor:
    """h_n(x) = (1/n) sum_k u(x + eta_k), float64 [B, *S], with fresh seeded draws
    (module docstring: seed and batch_size)."""
    points = batch_size or (256 if x.device.type == "cpu" else 1024)
    e = base.evaluations
    k = min(samples, max(1, points // e))
    group = max(1, points // (k * e))
    shape = tuple(x.shape[1:])
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for lo in range(0, x.shape[0], group):
        xs, ts = x[lo:lo + group], target[lo:lo + group]
        base_g = base.for_rows(torch.arange(lo, lo + xs.shape[0], device=x.device),
                               tuple(x.shape))
        gen = torch.Generator(device=x.device).manual_seed(seed)
        for start in range(0, samples, k):
            m = min(k, samples - start)
            eta, _ = sm.draw_noise(smoothing, sigma, m, shape, gen, x.device, x.dtype)
            z = (xs.unsqueeze(0) + eta.unsqueeze(1)).reshape((m * xs.shape[0],) + shape)
            u = unit_map(base_g, z, ts.repeat(m), dtype=torch.float64)
            total[lo:lo + group] += u.reshape((m,) + xs.shape).sum(dim=0)
    return total / samples


def run(
    model: nn.Module, x: Tensor, attr: Attribution, *, eps: float, norm: str,
    target: int | Tensor | None, domain: tuple[float, float] | None,
    surrogate_beta: float | None, options: dict[str, Any],
) -> BoundResult:
    """The smoothed bound of x [B, *S] (module docstring); every tensor field [B]."""
    del surrogate_beta  # the real model's map is bounded; no derivative of u is taken
    started = time.perf_counter()
    base, opts = _settings(attr, options)
    with torch.no_grad():
        tgt = resolve_target(model, x, target)
        h = estimate(base, x, tgt, smoothing=opts["smoothing"], sigma=opts["sigma"],
                     samples=opts["samples"], seed=opts["seed"], batch_size=opts["batch_size"])
    b, d = x.shape[0], math.prod(x.shape[1:])
    rho = sm.l2_radius(x, eps, norm, domain)
    dev = torch.tensor([sm.deviation_bound(opts["smoothing"], r, opts["sigma"], d)
                        for r in rho.tolist()], dtype=torch.float64, device=x.device)
    t = sm.estimate_radius(opts["samples"], opts["alpha"], d)
    h_norm = h.reshape(b, -1).norm(dim=1)
    lower = (h_norm - t).clamp_min(0.0)
    cos = cosine_from_euclidean(dev, lower)
    cos = torch.where(cos > -1, (cos - 8 * 2.0**-52).clamp_min(-1.0), cos)  # rounding of sqrt
    full = lambda v: torch.full((b,), float(v), dtype=torch.float64, device=x.device)  # noqa: E731
    plain = {k: v for k, v in opts.items()}
    plain["attribution_options"] = attr.options()
    return BoundResult(
        method="smoothed", attribution="smoothed", norm=norm, eps=eps, euclidean=dev,
        cosine=cos, attr_norm=h_norm, operator_norm=full(math.nan),
        iterations=torch.full((b,), opts["samples"], dtype=torch.long, device=x.device),
        converged=torch.ones(b, dtype=torch.bool, device=x.device), surrogate_beta=None,
        seconds=time.perf_counter() - started,
        guarantee=GUARANTEE.format(alpha=opts["alpha"]), delta=opts["alpha"],
        extra={
            "estimate": h, "attr_norm_lower": lower, "estimate_error": full(t),
            "euclidean_from_estimate": (dev + t).clamp_max(2.0 + t), "l2_radius": rho,
            "lipschitz": full(sm.lipschitz(opts["smoothing"], opts["sigma"], d)),
            "alpha": full(opts["alpha"]), "sigma": full(opts["sigma"]),
            "samples": opts["samples"], "smoothing": opts["smoothing"],
            "base": base.name, "options": plain, "target": tgt,
        },
    )
