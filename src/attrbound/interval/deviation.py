"""The Euclidean and cosine deviation bounds from per-feature intervals.

From the intervals I = [l, u] of A over S(x) and the (tiny) intervals P = [pl, pu] of A(x):

    euclidean <= sqrt( sum_i max((u_i - pl_i)^2, (pu_i - l_i)^2) )      (>= ||A(z) - A(x)||_2),
    cos(A(x), A(z)) >= max( dot_min / (|P|_max |I|_max)  if dot_min >= 0
                            else dot_min / (|P|_min |I|_min)  (-1 if that is 0),
                            sqrt(1 - (U / |P|_min)^2)  if U < |P|_min else -1 ),

with dot_min = sum_i min(P_i * I_i) the interval minimum of A(x) . A(z) and |.|_min/max the
smallest / largest Euclidean norm over a box (the second term is
:func:`attrbound.results.cosine_from_euclidean` with outward rounding). The inputs are float64
bounds already, so only the float64 rounding of these sums is added (unit 2^-53, counted twice).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attrbound.interval.rounding import U64, down, mag, up

__all__ = ["deviation_bounds", "norm_range"]


def _sum_up(v: Tensor) -> Tensor:
    """Upper bound on the exact sum of nonnegative rows v [B, d] (float64 rounding only)."""
    g = (v.shape[1] + 2) * U64 * 2
    return up(v.sum(dim=1) * (1 + g))


def _sum_down(v: Tensor) -> Tensor:
    """Lower bound on the exact sum of rows v [B, d] (float64 rounding only)."""
    g = (v.shape[1] + 2) * U64 * 2
    return down(v.sum(dim=1) - g * v.abs().sum(dim=1))


def norm_range(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) of ||v||_2 over the box [lo, hi] (rows of [B, d])."""
    big = up(mag(lo, hi) ** 2)
    small = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo)))
    small = down(small**2)
    return down(torch.sqrt(_sum_down(small).clamp_min(0))), up(torch.sqrt(_sum_up(big)))


def deviation_bounds(lo: Tensor, hi: Tensor, plo: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
    """(euclidean upper bound, cosine lower bound) [B] for A(z) in [lo, hi], A(x) in [plo, phi]
    (all float64 [B, *S])."""
    lo, hi, plo, phi = (t.flatten(1) for t in (lo, hi, plo, phi))
    dev = up(torch.maximum((hi - plo).abs(), (phi - lo).abs()))
    euclid = up(torch.sqrt(_sum_up(up(dev * dev))))
    prods = torch.stack([plo * lo, plo * hi, phi * lo, phi * hi])
    dot_min = _sum_down(down(prods.amin(dim=0)))
    pmin, pmax = norm_range(plo, phi)
    imin, imax = norm_range(lo, hi)
    neg1 = torch.full_like(dot_min, -1.0)
    pos_case = down(dot_min / up(pmax * imax).clamp_min(torch.finfo(torch.float64).tiny))
    den = down(pmin * imin)
    neg_case = torch.where(den > 0, down(dot_min / den.clamp_min(1e-300)), neg1)
    cos_dot = torch.where(dot_min >= 0, pos_case, neg_case)
    # cosine_from_euclidean(euclid, |A(x)|_min), rounded so that it stays a lower bound
    ratio = up(euclid / pmin.clamp_min(torch.finfo(torch.float64).tiny))
    inside = (ratio < 1) & (pmin > 0)
    y = down(1 - up(ratio * ratio)).clamp_min(0)
    cos_euc = torch.where(inside, down(torch.sqrt(y)), neg1)
    cos = torch.maximum(cos_dot, cos_euc).clamp(-1.0, 1.0)
    return euclid, torch.nan_to_num(cos, nan=-1.0)
