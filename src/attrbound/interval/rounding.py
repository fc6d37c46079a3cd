"""Outward rounding: the interval primitives every other part of the interval bound uses.

What "sound" means for the interval bound. Everything is computed in float64 on a float64 copy
of the weights. After every operation the interval is widened outward so that it contains BOTH
the value in exact arithmetic and the value the model computes in its own floating-point format
(the evaluation format: the lower precision of the model's parameters and the inputs; TF32 when
a float32 CUDA computation may use it), by the standard rounding model, with u = u_eval + 2^-53:

- dot products of n terms (Linear, Conv2d, AvgPool2d, their transposes, sums of products):
  error <= gamma_n * (|W| |v| + |b|) with gamma_n = (n + 2) u / (1 - (n + 2) u), taken twice
  (once for the bound's own float64 arithmetic, once for the model's evaluation), in any
  summation order (BLAS blocking, FMA); this assumes dot-product convolution algorithms (not
  FFT or Winograd, which PyTorch does not use in float64, nor on CPU in float32);
- elementwise products, sums and end points: rounded outward with ``torch.nextafter``;
- library functions (exp, log1p, tanh, sigmoid, expm1): within K_FUNC = 32 units in the last
  place of the exact result of their float arguments, plus their condition (e.g. exp(beta q)
  has relative error |beta q| u from the rounding of beta q); activation derivatives likewise;
- an absolute term (n + 2) * 4 * tiny (smallest normal number) per operation covers underflow.

The CROWN linear bounds are for the exact network; they are widened by an a-priori bound on the
model's own evaluation error of each pre-activation (propagated forward alongside IBP; for the
gradient, E of the backward pass), and their float64 computation adds gamma * sum |Lambda| |v|
per back-substitution step, with gamma at float64's unit (:data:`EXACT`): the model's rounding
is all in the a-priori bound. The cost of these margins is a floor on the width of the
intervals: about 1e-5 relative for float32 models, 1e-13 for float64. With
``evaluation="exact"`` the margins cover only exact arithmetic (and the float64 rounding of the
bound itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attrbound.errors import AttrboundError

__all__ = ["EVALUATIONS", "EXACT", "K_FUNC", "U64", "Units", "cast_out", "center_radius",
           "down", "mag", "mul", "outward", "units_for", "up"]

EVALUATIONS = ("float", "exact")
#: units in the last place allowed for a library function (exp, log1p, tanh, ...) of a float
#: argument; PyTorch's CPU (SLEEF u10) and CUDA implementations are within 1-4.
K_FUNC = 32
#: unit roundoff of float64, the format the bound itself is computed in
U64 = 2.0**-53


@dataclass(frozen=True)
class Units:
    """u: unit roundoff budget (evaluation format + float64); tiny: per-term underflow slack."""

    u: float
    tiny: float

    def gamma(self, n: int) -> float:
        """gamma_n = (n + 2) u / (1 - (n + 2) u): relative error of an n-term dot product."""
        nu = (n + 2) * self.u
        if nu >= 0.5:
            raise AttrboundError(
                f"a layer sums {n} terms, too many for a sound rounding margin at unit "
                f"roundoff {self.u:.3g}; use a float64 model."
            )
        return nu / (1 - nu)

    def abs_tiny(self, n: int) -> float:
        """Absolute slack for underflow in an n-term operation: 4 (n + 2) tiny."""
        return 4.0 * (n + 2) * self.tiny


#: exact arithmetic: only the bound's own float64 rounding (counted twice)
EXACT = Units(u=2 * U64, tiny=torch.finfo(torch.float64).tiny)


def units_for(model: nn.Module, x: Tensor, evaluation: str) -> Units:
    """Unit roundoff of the format the model is evaluated in (+ float64 for the bound).

    The format is the coarsest of the inputs', parameters' and buffers' dtypes (BatchNorm
    statistics count); float32 matmuls allowed to run in bfloat16 (matmul precision below
    "highest") get bfloat16's unit, float32 on CUDA with TF32 enabled TF32's.
    ``evaluation="exact"``: float64 only (the bound's own arithmetic, counted twice).
    """
    if evaluation == "exact":
        return EXACT
    tensors = list(model.parameters()) + list(model.buffers())
    dtypes = [x.dtype] + [t.dtype for t in tensors if t.is_floating_point()]
    worst = max(dtypes, key=lambda d: torch.finfo(d).eps)
    u_eval = torch.finfo(worst).eps / 2
    if worst == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        u_eval = max(u_eval, 2.0**-8)  # float32 matmuls may then run in bfloat16 (8 bits)
    if worst == torch.float32 and x.device.type == "cuda":
        if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32:
            u_eval = max(u_eval, 2.0**-11)  # TF32 keeps 10 mantissa bits
    return Units(u=u_eval + U64, tiny=torch.finfo(worst).tiny)


def down(t: Tensor) -> Tensor:
    """The next float64 below each entry (one rounding step outward for a lower end)."""
    return torch.nextafter(t, torch.full_like(t, -math.inf))


def up(t: Tensor) -> Tensor:
    """The next float64 above each entry (one rounding step outward for an upper end)."""
    return torch.nextafter(t, torch.full_like(t, math.inf))


def outward(lo: Tensor, hi: Tensor, err: Tensor | float) -> tuple[Tensor, Tensor]:
    """[lo - err, hi + err], each end then moved one float outward (covers its own rounding)."""
    return down(lo - err), up(hi + err)


def center_radius(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """c, r with [c - r, c + r] containing [lo, hi] (r rounded up)."""
    c = 0.5 * (lo + hi)
    return c, up(torch.maximum(hi - c, c - lo))


def mag(lo: Tensor, hi: Tensor) -> Tensor:
    """max |v| over the interval [lo, hi] (elementwise)."""
    return torch.maximum(lo.abs(), hi.abs())


def mul(alo: Tensor, ahi: Tensor, blo: Tensor, bhi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
    """Interval product [a] * [b] (elementwise): min / max of the four end-point products,
    widened by the evaluation and float64 rounding of one product."""
    p = torch.stack([alo * blo, alo * bhi, ahi * blo, ahi * bhi])
    lo, hi = p.amin(dim=0), p.amax(dim=0)
    return outward(lo, hi, 2 * units.u * mag(lo, hi) + units.abs_tiny(1))


def cast_out(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Cast float64 bounds to ``dtype``, rounding lo down and hi up."""
    lo_c, hi_c = lo.to(dtype), hi.to(dtype)
    lo_c = torch.where(lo_c.double() > lo, down(lo_c), lo_c)
    hi_c = torch.where(hi_c.double() < hi, up(hi_c), hi_c)
    return lo_c, hi_c
