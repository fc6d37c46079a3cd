"""Geometry of the perturbation set: norms, projection, sampling, steepest steps.

The perturbation set of an input x is {x + delta : ||delta||_p <= eps, lo <= x + delta <= hi}
with p in {2, inf} and the domain box [lo, hi] (default [0, 1]). Batched over the first
dimension: delta [B, *S] and eps a float or a tensor [B]. The attacks, region's ascent and
the adversarial-training objectives all move through this set with the same pieces:
:func:`steepest_direction`, :func:`default_step_size` and :func:`project`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attrbound.errors import AttrboundError

NORMS = ("2", "inf")
_ALIASES = {"2": "2", "l2": "2", "2.0": "2", "inf": "inf", "linf": "inf", "l-inf": "inf",
            "l_inf": "inf", "infinity": "inf"}


def parse_norm(norm: Any) -> str:
    """Normalise a norm: 2, "2", "l2" -> "2"; "inf", "linf", float("inf") -> "inf"."""
    if isinstance(norm, (int, float)) and not isinstance(norm, bool):
        if norm == 2:
            return "2"
        if math.isinf(norm) and norm > 0:
            return "inf"
    key = str(norm).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise AttrboundError(f"unknown norm {norm!r}; use 2 (l2) or inf (l-inf).")


def batch_norm(delta: Tensor, norm: str) -> Tensor:
    """||delta_b||_p per example: [B, *S] -> [B]."""
    flat = delta.reshape(delta.shape[0], -1)
    return flat.norm(dim=1) if norm == "2" else flat.abs().amax(dim=1)


def per_example(t: float | Tensor, like: Tensor) -> Tensor:
    """A scalar, or a per-example tensor [B], shaped to broadcast against like [B, *S]."""
    if isinstance(t, Tensor) and t.dtype == torch.bool:
        e = t.to(like.device)
    else:  # straight to like's dtype: a float eps rounded through float32 would grow
        e = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return e.reshape((-1,) + (1,) * (like.dim() - 1)) if e.dim() else e


def project(
    delta: Tensor,
    x: Tensor,
    eps: float | Tensor,
    norm: str,
    domain: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """Map delta into the perturbation set: the norm ball, then the domain box.

    l-inf: clamp to [-eps, eps] then to [lo - x, hi - x] (the exact projection onto the
    intersection, both being boxes). l2: radial scaling to radius eps, then clamping to the
    domain; clamping only shrinks each coordinate toward 0 when x is inside the domain, so the
    result stays in the ball. Shapes: delta, x [B, *S]; eps float or [B].
    """
    e = per_example(eps, delta)
    if norm == "inf":
        delta = torch.maximum(torch.minimum(delta, e), -e)
    else:
        n = batch_norm(delta, "2").reshape((-1,) + (1,) * (delta.dim() - 1))
        delta = delta * torch.clamp(e / n.clamp_min(1e-30), max=1.0)
    if domain is not None:
        delta = torch.clamp(x + delta, domain[0], domain[1]) - x
    return delta


def sample_ball(
    x: Tensor,
    eps: float | Tensor,
    norm: str,
    n: int,
    generator: torch.Generator | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """n points uniform in each example's ball (then clipped to the domain): [n, B, *S].

    l-inf: uniform in the cube; l2: uniform in the ball (Gaussian direction, radius eps U^(1/d)).
    Noise is drawn on the CPU from ``generator`` (reproducible) and moved to x's device.
    """
    shape = (n,) + tuple(x.shape)
    d = x[0].numel()
    if norm == "inf":
        u = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
        delta = u.to(device=x.device, dtype=x.dtype) * per_example(eps, x)
    else:
        g = torch.randn(shape, generator=generator, dtype=torch.float64)
        lengths = g.reshape(n, x.shape[0], -1).norm(dim=2)
        g = g / lengths.reshape((n, x.shape[0]) + (1,) * (x.dim() - 1))
        r = torch.rand((n, x.shape[0]), generator=generator, dtype=torch.float64) ** (1.0 / d)
        delta = (g * r.reshape(r.shape + (1,) * (x.dim() - 1))).to(device=x.device, dtype=x.dtype)
        delta = delta * per_example(eps, x)
    points = x.unsqueeze(0) + delta
    if domain is not None:
        points = points.clamp(domain[0], domain[1])
    return points


def unit(v: Tensor) -> Tensor:
    """Each example scaled to unit l2 norm: v [B, *S] -> v_b / ||v_b||_2 (0 stays 0)."""
    n = v.reshape(v.shape[0], -1).norm(dim=1)
    return v / per_example(n.clamp_min(torch.finfo(v.dtype).tiny), v)


def steepest_direction(g: Tensor, norm: str) -> Tensor:
    """The steepest-ascent step of unit size for a gradient g [B, *S]: the maximiser of
    <g, s> over ||s||_p <= 1, i.e. sign(g) for l-inf and g / ||g||_2 for l2.

    Non-finite gradient entries (an overflowing map) count as 0, so iterates stay finite.
    """
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    return torch.sign(g) if norm == "inf" else unit(g)


def default_step_size(eps: float, steps: int) -> float:
    """alpha = 2.5 eps / steps: enough to cross the ball and then move along its boundary
    (Madry et al. 2018; the default of their ``robustness`` library)."""
    return 2.5 * eps / steps
