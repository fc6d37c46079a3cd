"""Upper bounds on the worst-case attribution deviation (DESIGN.md sections 3 and 4).

(Skeleton by the lead: BoundResult and cosine_from_euclidean are the contract; the bound
methods are being written.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def cosine_from_euclidean(euclidean: Tensor, attr_norm: Tensor) -> Tensor:
    """Lower bound on cos(a, a') for every a' with ||a' - a||_2 <= U, given ||a||_2.

    cos >= sqrt(1 - (U / ||a||)^2) when U < ||a|| (the ball of radius U around a is seen from
    the origin under the half-angle asin(U / ||a||)); otherwise -1 (no guarantee).
    Shapes: euclidean U [B], attr_norm [B] -> [B].
    """
    ratio = euclidean / attr_norm.clamp_min(torch.finfo(attr_norm.dtype).tiny)
    inside = ratio < 1
    bound = torch.sqrt(torch.clamp(1 - ratio.clamp(max=1.0) ** 2, min=0.0))
    return torch.where(inside, bound, torch.full_like(bound, -1.0))


@dataclass
class BoundResult:
    """Per-input upper bounds for one (attribution, norm, eps, method); tensors are [B].

    - ``euclidean``: U >= ||A(x + delta) - A(x)||_2 over the perturbation set.
    - ``cosine``: lower bound on cos(A(x), A(x + delta)); -1 when vacuous.
    - ``attr_norm``: ||A(x)||_2.
    - ``operator_norm``: the p->2 operator-norm value used (taylor/region); NaN for interval.
    - ``iterations`` (int [B]), ``converged`` (bool [B]): solver diagnostics.
    - ``lower``: l-inf only, the sign-iteration (feasible) value of ||J||_{inf->2}, [B].
    - ``argmax``: region only, the point z where the largest operator norm was found [B, *S];
      ``source``: per input, which kind of point it was ("x", "random", "points", "ascent").
    - ``intervals``: interval only, (lower [B, *S], upper [B, *S]) containing A(z) for every z.
    - ``surrogate_beta``: set when the bound was computed on the smooth surrogate of a ReLU model.
    """

    method: str
    attribution: str
    norm: str
    eps: float
    euclidean: Tensor
    cosine: Tensor
    attr_norm: Tensor
    operator_norm: Tensor
    iterations: Tensor
    converged: Tensor
    lower: Tensor | None = None
    argmax: Tensor | None = None
    source: list[str] | None = None
    intervals: tuple[Tensor, Tensor] | None = None
    surrogate_beta: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_rows(self) -> list[dict[str, Any]]:
        """One plain dict (JSON-serialisable) per input."""
        n = self.euclidean.shape[0]
        cols: dict[str, Any] = {
            "euclidean": self.euclidean,
            "cosine": self.cosine,
            "attr_norm": self.attr_norm,
            "operator_norm": self.operator_norm,
            "iterations": self.iterations,
            "converged": self.converged,
        }
        if self.lower is not None:
            cols["operator_norm_lower"] = self.lower
        rows = []
        for i in range(n):
            row: dict[str, Any] = {
                "method": self.method,
                "attribution": self.attribution,
                "norm": self.norm,
                "eps": self.eps,
                "surrogate_beta": self.surrogate_beta,
                "seconds": self.seconds / n,
            }
            for k, v in cols.items():
                row[k] = v[i].item()
            if self.source is not None:
                row["source"] = self.source[i]
            if self.intervals is not None:
                lo, hi = self.intervals
                row["certified_stable_fraction"] = (
                    ((lo[i] > 0) | (hi[i] < 0)).double().mean().item()
                )
            rows.append(row)
        return rows
