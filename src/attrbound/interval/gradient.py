"""Gradient pass: intervals of g(z) = grad_z f_t(z) over the input set by the chain rule,

    g = W_0^T D_1 W_1^T ... D_n W_n^T e_t,

in interval arithmetic: the fixed matrices W^T in centre-radius form (W^T c -/+ |W|^T r;
convolutions through their transpose; :meth:`attrbound.interval.ops.AffineOp.ibp_transpose`),
the diagonal D_i = sigma_i'(q_i) as the derivative range on each neuron's pre-activation
interval (:meth:`attrbound.interval.ops.Activation.deriv_range`), and the elementwise products
by the four end-point products (:func:`attrbound.interval.rounding.mul`), each rounded outward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attrbound.interval.dag import Dag
from attrbound.interval.dag_forward import dag_forward
from attrbound.interval.dag_gradient import dag_gradient
from attrbound.interval.forward import forward
from attrbound.interval.graph import Net
from attrbound.interval.perturbation import InputSet
from attrbound.interval.rounding import Units, mul

__all__ = ["gradient", "gradient_intervals"]


def gradient(
    net: Net, pre: list[tuple[Tensor, Tensor]], target: Tensor, units: Units
) -> tuple[Tensor, Tensor]:
    """Intervals [N, *S] of g(z) = grad_z f_t(z) given the pre-activation bounds ``pre``
    (:func:`attrbound.interval.forward.forward`) and the targets [N] (int64)."""
    k = net.out_shape[0]
    lo = F.one_hot(target, k).to(torch.float64)
    hi = lo.clone()
    for i in range(len(net.blocks) - 1, -1, -1):
        for op in reversed(net.blocks[i]):
            lo, hi = op.ibp_transpose(lo, hi, units)
        if i > 0:
            dlo, dhi = net.acts[i - 1].deriv_range(*pre[i - 1], units)
            lo, hi = mul(lo, hi, dlo, dhi, units)
    return lo, hi


def gradient_intervals(
    net: Net | Dag, inset: InputSet, target: Tensor, tightening: str, units: Units,
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    """Intervals [N, *S] of g over the input set: the forward bounds, then the gradient pass
    (over the chain, or over the graph: attrbound.interval.dag_forward / dag_gradient)."""
    if isinstance(net, Dag):
        bounds = dag_forward(net, inset, tightening, units, max_elements)
        return dag_gradient(net, bounds, target, units)
    pre = forward(net, inset, tightening, units, max_elements)
    return gradient(net, pre, target, units)
