"""Linear (CROWN-style) bounds on the gradient of a chain, g = B_0^T (d_0 * B_1^T (d_1 * ...
B_n^T e_t)), B_i the linear part of block i and d_i in [dlo_i, dhi_i] the derivative ranges.

The derivatives are relaxed to independent variables d_i in their boxes (a superset of what the
model can reach, so every bound over it holds). Rows Lambda = +/- e_k on g are carried from the
input towards the logits (docs/design.md section 4):

- through block i: Lambda . (B_i^T u) = (B_i Lambda) . u (the ops' forward linear maps);
- through a product u = d * y, d in [dl, du], y in [yl, yu] (the intervals of the interval
  gradient pass): for Lambda_j >= 0, Lambda_j d y >= Lambda_j f(y) with f(y) = min(dl y, du y)
  concave, so f(y) >= a y + b for ANY slope a with b = min over the ends of f(y) - a y; for
  Lambda_j < 0, g(y) = max(dl y, du y) is convex and g(y) <= a y + b with b = the max over the
  ends. a is the chord slope; a stable neuron (dl = du) is exact (a = d, b = 0);
- at the logits, Lambda . e_t = Lambda_t.

The lower ends of the +rows and -rows are the bounds of g_k for the exact backward pass with any
d in the boxes. The float64 rounding of each step is charged to ``err`` (as in the forward
CROWN); the model's own rounding of its backward pass is covered by E, a bound on
|evaluated g - exact g| propagated alongside the interval pass, added outward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attrbound.interval.forward import _absdot, input_unit_rows, put_rows, rows_per_input
from attrbound.interval.graph import Net
from attrbound.interval.rounding import EXACT, U64, Units, down, mag, up

__all__ = ["GradTrace", "crown_gradient", "relax_product"]


@dataclass
class GradTrace:
    """Recorded by the interval gradient pass (attrbound.interval.gradient.gradient).

    ``tm[i][o]``: |op^T| |w| for op o of block i (w the vector its transpose is applied to,
    from its interval), rounded up; ``prods[i]``: (dlo, dhi, ylo, yhi) of the product
    u_i = d_i * y_{i+1} at activation i; ``err``: E [N, *S], the bound on |evaluated - exact|
    of g."""

    tm: list[list[Tensor]] = field(default_factory=list)
    prods: list[tuple[Tensor, Tensor, Tensor, Tensor]] = field(default_factory=list)
    err: Tensor | None = None

    def subset(self, rows: Tensor) -> GradTrace:
        """The trace of the inputs ``rows`` [M] (int64); an exact op's tm is a scalar."""
        assert self.err is not None
        return GradTrace(tm=[[t[rows] if t.dim() else t for t in tms] for tms in self.tm],
                         prods=[tuple(t[rows] for t in p) for p in self.prods],  # type: ignore[misc]
                         err=self.err[rows])


def relax_product(dl: Tensor, du: Tensor, yl: Tensor, yu: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(a_lo, b_lo, a_up, b_up): a_lo y + b_lo <= min_d d y and max_d d y <= a_up y + b_up for
    y in [yl, yu], d in [dl, du] (both slopes the chord of their piece; intercepts rounded
    outward by 4 u64 times the magnitudes involved)."""
    fl, fu = torch.minimum(dl * yl, du * yl), torch.minimum(dl * yu, du * yu)
    gl, gu = torch.maximum(dl * yl, du * yl), torch.maximum(dl * yu, du * yu)
    w = yu - yl
    ok = w > 0
    ws = torch.where(ok, w, torch.ones_like(w))
    a_lo = torch.where(ok, (fu - fl) / ws, torch.where(yl >= 0, dl, du))
    a_up = torch.where(ok, (gu - gl) / ws, torch.where(yl >= 0, du, dl))
    big = dl.abs() + du.abs()

    def margin(y: Tensor, a: Tensor) -> Tensor:
        return 4 * U64 * (big * y.abs() + (a * y).abs()) + 1e-300

    b_lo = torch.minimum(fl - a_lo * yl - margin(yl, a_lo), fu - a_lo * yu - margin(yu, a_lo))
    b_up = torch.maximum(gl - a_up * yl + margin(yl, a_up), gu - a_up * yu + margin(yu, a_up))
    return a_lo, down(b_lo), a_up, up(b_up)


def crown_gradient(
    net: Net, trace: GradTrace, target: Tensor, max_elements: int, in_lo: Tensor,
    only: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds [N, *S] of the exact g (any d in the boxes), widened by E.
    ``in_lo`` only gives the shape, dtype and device of the inputs' intervals; ``only``: bool
    [N, prod(S)], the features to bound per input (None: all), the others get NaN (no bound).
    The rounding charged to each step is that of this bound's own float64 arithmetic (units
    EXACT); the model's rounding of its backward pass is all in E."""
    units = EXACT
    n = in_lo.shape[0]
    shape = net.in_shape
    k = math.prod(shape)
    widest = max([k] + [math.prod(op.out_shape) for b in net.blocks for op in b])
    if only is None:
        only = torch.ones((n, k), dtype=torch.bool, device=in_lo.device)
    lower = in_lo.new_full((n, k), math.nan)
    upper = in_lo.new_full((n, k), math.nan)
    for s, pos, valid in rows_per_input(only, max_elements // (4 * widest)):
        m, r = pos.shape
        lo = _rows(net, trace, input_unit_rows(pos, k).reshape((m, r) + shape), target[s],
                   units, s)
        put_rows(lower, upper, s, pos, valid, lo[:, :r], -lo[:, r:])
    assert trace.err is not None
    e = trace.err.reshape(n, k)
    lo = down(lower - e - 4 * units.u * lower.abs())
    hi = up(upper + e + 4 * units.u * upper.abs())
    return lo.reshape((n,) + shape), hi.reshape((n,) + shape)


def _rows(net: Net, trace: GradTrace, lam: Tensor, target: Tensor, units: Units,
          s: slice) -> Tensor:
    """Lower bound [m, 2R] of Lambda . g for the m inputs of slice ``s`` and the rows
    Lambda = [+P; -P], P [m, R, *S] (each input's own). Until the first product the -rows are
    the negated +rows (every step is linear) and their rounding terms the same, so only P
    goes through the first block."""
    m = s.stop - s.start
    r = lam.shape[1]
    const = lam.new_zeros(m, r)
    err = lam.new_zeros(m, r)
    last = len(net.blocks) - 1
    signed = False

    def both_signs() -> None:
        nonlocal lam, const, err, signed, r
        if not signed:
            lam, const, err = torch.cat([lam, -lam], 1), torch.cat([const, -const], 1), \
                torch.cat([err, err], 1)
            signed, r = True, 2 * r

    for i, block in enumerate(net.blocks):
        for o, op in enumerate(block):
            if not op.exact:
                err = err + op.crown_gamma(units) * _absdot(lam, trace.tm[i][o][s], False)
            out = op.linear(lam.reshape((m * r,) + op.in_shape))
            lam = out.reshape((m, r) + op.out_shape)
        if i == last:
            break
        both_signs()
        dl, du, yl, yu = (t[s] for t in trace.prods[i])
        a_lo, b_lo, a_up, b_up = relax_product(dl, du, yl, yu)
        pos = lam >= 0
        a = torch.where(pos, a_lo.unsqueeze(1), a_up.unsqueeze(1))
        b = torch.where(pos, b_lo.unsqueeze(1), b_up.unsqueeze(1))
        dotb = (lam * b).flatten(2).sum(2)
        d = math.prod(lam.shape[2:])
        err = err + units.gamma(d) * (lam * b).abs().flatten(2).sum(2)
        lam = lam * a
        err = err + 2 * U64 * _absdot(lam, mag(yl, yu), False)
        const = const + dotb
        err = err + 2 * units.u * const.abs()
    both_signs()
    final = lam.gather(2, target.view(m, 1, 1).expand(m, r, 1)).squeeze(2)
    total = const + final
    return down(total - err - 4 * units.u * (total.abs() + err) - units.abs_tiny(2))
