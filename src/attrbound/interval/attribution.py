"""Attribution intervals from gradient intervals: A(z) for every z in the input set.

- saliency: g(z);
- input x gradient: [z] * [g] (interval product);
- integrated gradients: (z - b) * sum_k w_k g(b + t_k (z - b)); each path node's set
  b + t_k (S(x) - b) (:func:`attrbound.interval.perturbation.path_sets`) is bounded like an
  input set, the node intervals are weighted and summed, times [z - b].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attrbound.attributions import (
    Attribution,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)
from attrbound.attributions import attribution as make_attribution
from attrbound.errors import AttrboundError
from attrbound.interval.dag import Dag
from attrbound.interval.gradient import gradient_intervals
from attrbound.interval.graph import Net
from attrbound.interval.perturbation import InputSet, path_sets
from attrbound.interval.rounding import Units, down, mag, mul, outward, up

__all__ = ["ATTRIBUTIONS", "attribution_box", "resolve_attribution"]

ATTRIBUTIONS = ("saliency", "input_x_gradient", "integrated_gradients")


def resolve_attribution(attribution: str | Attribution, model: nn.Module,
                        options: dict[str, Any]) -> Attribution:
    """The Attribution for a name (with its ``options``) or an Attribution object (then no
    options); smoothgrad and attributions outside ATTRIBUTIONS raise AttrboundError."""
    if isinstance(attribution, SmoothGrad) or (
        isinstance(attribution, str) and attribution.lower().replace("-", "_") == "smoothgrad"
    ):
        raise AttrboundError(
            "the interval method does not support smoothgrad (its Gaussian noise points would "
            "each need their own bound); use method='region' or 'taylor' for smoothgrad."
        )
    if isinstance(attribution, Attribution):
        if not isinstance(attribution, (Saliency, InputXGradient, IntegratedGradients)):
            raise AttrboundError(
                f"the interval method supports {', '.join(ATTRIBUTIONS)}, not "
                f"{type(attribution).__name__}."
            )
        if options:
            raise AttrboundError(
                f"unknown option(s) {', '.join(sorted(options))} for the interval method; its "
                "options are tightening, evaluation and max_elements (attribution options "
                "belong to the Attribution object)."
            )
        return make_attribution(attribution, model)
    return make_attribution(attribution, model, **options)


def attribution_box(
    net: Net | Dag,
    attr: Attribution,
    x: Tensor,
    inset: InputSet,
    target: Tensor,
    tightening: str,
    units: Units,
    max_elements: int,
    relaxation: str = "crown",
    branches: int = 1,
) -> tuple[Tensor, Tensor]:
    """Intervals [B, *S] of A(z) over the input set (x: float64 [B, *S], the set's centre);
    ``relaxation``, ``branches``: of the gradient pass
    (attrbound.interval.gradient.gradient_intervals)."""
    if isinstance(attr, IntegratedGradients):
        return _ig_box(net, attr, x, inset, target, tightening, units, max_elements, relaxation,
                       branches)
    weight = mag(inset.lo, inset.hi) if isinstance(attr, InputXGradient) else None
    glo, ghi = gradient_intervals(net, inset, target, tightening, units, max_elements,
                                  relaxation, branches, weight)
    if isinstance(attr, InputXGradient):
        return mul(inset.lo, inset.hi, glo, ghi, units)
    return glo, ghi


def _ig_box(
    net: Net | Dag,
    attr: IntegratedGradients,
    x: Tensor,
    inset: InputSet,
    target: Tensor,
    tightening: str,
    units: Units,
    max_elements: int,
    relaxation: str = "crown",
    branches: int = 1,
) -> tuple[Tensor, Tensor]:
    """(z - b) * sum_k w_k g(b + t_k (z - b)): path node k's set is b + t_k (set - b); the
    weighted sum of m node intervals is widened by 2 (m + 4) u sum_k w_k |g_k|_max."""
    b = attr.baseline_for(x)  # float64 [B, *S]
    t = torch.as_tensor(attr.t, dtype=torch.float64, device=x.device)
    w = torch.as_tensor(attr.w, dtype=torch.float64, device=x.device)
    m, bsz, shape = t.numel(), x.shape[0], x.shape[1:]
    path = path_sets(inset, b, t, units)
    wv = w.view((1, m) + (1,) * len(shape))  # all weights are > 0
    # node k's gradient counts w_k |z - b| in the attribution
    weight = mag(inset.lo - b, inset.hi - b).unsqueeze(1) * wv
    glo, ghi = gradient_intervals(net, path, target.repeat_interleave(m), tightening, units,
                                  max_elements, relaxation, branches,
                                  weight.reshape((bsz * m,) + shape), m)
    glo, ghi = glo.reshape((bsz, m) + shape), ghi.reshape((bsz, m) + shape)
    slo, shi = (wv * glo).sum(dim=1), (wv * ghi).sum(dim=1)
    size = (wv * mag(glo, ghi)).sum(dim=1)
    slo, shi = outward(slo, shi, 2 * (m + 4) * units.u * size + units.abs_tiny(m))
    dlo, dhi = down(inset.lo - b), up(inset.hi - b)  # z - b
    dlo, dhi = outward(dlo, dhi, 2 * units.u * mag(dlo, dhi) + units.abs_tiny(1))
    return mul(dlo, dhi, slo, shi, units)
