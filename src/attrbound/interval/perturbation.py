"""The perturbation set S(x) = { z : ||z - x||_p <= eps,  lo <= z <= hi } (p in {2, inf}) as
the interval bound uses it: a box, plus for l2 the ball itself.

- :class:`InputSet`: box [lo, hi] [N, *S] and optionally the l2 ball (center [N, *S],
  radius [N]); every bound over the box alone is valid, the ball only tightens.
- :func:`ball_set`: S(x) itself; :func:`point_set`: {x} (the zero-radius set, for A(x));
- :func:`path_sets`: the integrated-gradients path node sets b + t_k (S - b);
- :func:`first_layer_ball`: the exact l2 bound of the first pre-activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attrbound.interval.graph import Net
from attrbound.interval.ops import Conv2d, Linear
from attrbound.interval.rounding import Units, down, mag, outward, up

__all__ = ["InputSet", "ball_set", "first_layer_ball", "path_sets", "point_set"]


@dataclass
class InputSet:
    """Box [lo, hi] [N, *S], and for l2 the ball of ``radius`` [N] around ``center``."""

    lo: Tensor
    hi: Tensor
    center: Tensor | None = None
    radius: Tensor | None = None

    def part(self, s: slice) -> InputSet:
        """The sets of the inputs in slice ``s``."""
        return InputSet(self.lo[s], self.hi[s],
                        None if self.center is None else self.center[s],
                        None if self.radius is None else self.radius[s])


def ball_set(x64: Tensor, eps: float, norm: str, domain: tuple[float, float] | None) -> InputSet:
    """S(x) for float64 inputs x64 [B, *S]: the box [x - eps, x + eps] rounded outward and
    clipped to the domain, and for norm "2" the ball of radius eps around x."""
    blo, bhi = down(x64 - eps), up(x64 + eps)
    if domain is not None:
        blo, bhi = blo.clamp_min(domain[0]), bhi.clamp_max(domain[1])
    radius = None
    if norm == "2":
        radius = torch.full((x64.shape[0],), eps, dtype=torch.float64, device=x64.device)
    return InputSet(blo, bhi, x64 if norm == "2" else None, radius)


def point_set(x64: Tensor) -> InputSet:
    """{x}: the box [x, x] (so that A(x) gets intervals of rounding width only)."""
    return InputSet(x64, x64.clone())


def path_sets(inset: InputSet, b: Tensor, t: Tensor, units: Units) -> InputSet:
    """The sets of the integrated-gradients path nodes z_k = b + t_k (z - b), z in the set:
    [B * m, *S] (input-major, m = len(t) nodes per input), for baselines b [B, *S] and nodes
    t [m] (float64).

    Each is a box, b + t_k ([lo, hi] - b), widened by the three roundings of z_k as evaluated
    (t_k itself rounded); for l2 also the ball of radius t_k eps around the exact centre
    b + t_k (x - b), widened by the l2 size of the per-coordinate slack (rounding of nodes and
    centres), so that it contains every node as exact and as evaluated."""
    m, bsz, shape = t.numel(), inset.lo.shape[0], inset.lo.shape[1:]
    tv = t.view((1, m) + (1,) * len(shape))
    bb = b.unsqueeze(1)
    dlo = down(inset.lo - b)
    dhi = up(inset.hi - b)
    plo = bb + tv * dlo.unsqueeze(1)
    phi = bb + tv * dhi.unsqueeze(1)
    slack = 8 * units.u * (bb.abs() + tv * mag(dlo, dhi).unsqueeze(1)) + units.abs_tiny(3)
    plo, phi = outward(plo, phi, slack)
    center = radius = None
    if inset.radius is not None and inset.center is not None:
        center = bb + tv * (inset.center - b).unsqueeze(1)
        extra = (slack + 4 * units.u * center.abs()).flatten(2).norm(dim=2)
        radius = up((t.view(1, m) * inset.radius.view(-1, 1) + extra) * (1 + 8 * units.u))
        center = center.reshape((bsz * m,) + shape)
        radius = radius.reshape(-1)
    return InputSet(plo.reshape((bsz * m,) + shape), phi.reshape((bsz * m,) + shape),
                    center, radius)


def first_layer_ball(net: Net, inset: InputSet, units: Units) -> tuple[Tensor, Tensor] | None:
    """The exact l2 bound of q_0 = W z + b when blocks[0] is one Linear or Conv2d (plus reshapes):
    q_0 in W x + b -/+ rho ||W_i||_2, the row norms from the squared weights (for a convolution,
    the kernel restricted to the input patch: conv(1, W^2)). None for other first blocks and
    for sets without a ball. ``units``: of its own float64 arithmetic (the caller passes
    EXACT and widens the result by the model's evaluation error of q_0)."""
    ops = net.blocks[0]
    real = [op for op in ops if not op.exact]
    if len(real) != 1 or not isinstance(real[0], (Linear, Conv2d)) or inset.center is None:
        return None
    assert inset.radius is not None
    v = inset.center
    lo = hi = v
    for op in ops:
        if op.exact:
            if isinstance(v, Tensor):
                v = op.linear(v)
            lo, hi = op.linear(lo), op.linear(hi)
            continue
        assert isinstance(op, (Linear, Conv2d))
        g = units.gamma(op.fan)
        cc = op.forward(v)
        mg = op.abs_linear(v.abs())
        if op.err_bias is not None:
            mg = mg + op.err_bias
        sq = op.sq_linear(torch.ones_like(v[:1]))
        norms = up(torch.sqrt(up(sq * (1 + 2 * g))))
        reach = up(inset.radius.view((-1,) + (1,) * (cc.dim() - 1)) * norms * (1 + 4 * units.u))
        err = 2 * g * (mg + reach) + units.abs_tiny(op.fan)
        lo, hi = down(cc - reach - err), up(cc + reach + err)
    return lo, hi
