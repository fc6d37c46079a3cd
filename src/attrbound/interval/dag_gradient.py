"""Gradient pass over the graph: intervals of g(z) = grad_z f_t(z) by the chain rule in reverse
topological order.

Starting from e_t at the logits, each node hands its gradient interval G to its inputs: affine
nodes through W^T (:meth:`attrbound.interval.ops.AffineOp.ibp_transpose`), activations times
their derivative range (:func:`attrbound.interval.rounding.mul`), add to both summands, cat
split along its dimension, a max pool to the positions that may hold each window's max
(derivative in [surely, possibly], both 0 or 1, so the products are exact; the fold of
overlapping windows is widened by 2 gamma_overlap |G|). Where a node is used several times the
arriving intervals are summed, widened by u |sum| (the model's backward adds them in its own
format, the bound in float64: u counts both) and rounded outward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attrbound.interval.dag import Dag
from attrbound.interval.rounding import Units, mag, mul, outward

__all__ = ["dag_gradient"]


def dag_gradient(
    dag: Dag, bounds: list[tuple[Tensor, Tensor]], target: Tensor, units: Units
) -> tuple[Tensor, Tensor]:
    """Intervals [N, *S] of g over the set, from the node bounds of
    :func:`attrbound.interval.dag_forward.dag_forward` and targets [N] (int64)."""
    k = dag.out_shape[0]
    one = F.one_hot(target, k).to(torch.float64)
    grads: dict[int, tuple[Tensor, Tensor]] = {len(dag.nodes) - 1: (one, one.clone())}

    def acc(t: int, lo: Tensor, hi: Tensor) -> None:
        if t in grads:
            lo, hi = grads[t][0] + lo, grads[t][1] + hi
            lo, hi = outward(lo, hi, units.u * mag(lo, hi) + units.abs_tiny(2))
        grads[t] = (lo, hi)

    for v in range(len(dag.nodes) - 1, -1, -1):
        if v not in grads:
            continue
        glo, ghi = grads.pop(v)
        node = dag.nodes[v]
        if node.kind == "input":
            return glo, ghi
        if node.kind == "affine":
            acc(node.args[0], *node.op.ibp_transpose(glo, ghi, units))
        elif node.kind == "act":
            dlo, dhi = node.op.deriv_range(*bounds[node.args[0]], units)
            acc(node.args[0], *mul(glo, ghi, dlo, dhi, units))
        elif node.kind == "add":
            acc(node.args[0], glo, ghi)
            acc(node.args[1], glo.clone(), ghi.clone())
        elif node.kind == "cat":
            sizes = [dag.nodes[a].shape[node.dim - 1] for a in node.args]
            for a, pl, ph in zip(node.args, glo.split(sizes, dim=node.dim),
                                 ghi.split(sizes, dim=node.dim), strict=True):
                acc(a, pl, ph)
        else:  # max
            acc(node.args[0], *_max_transpose(node.op, bounds[node.args[0]], glo, ghi, units))
    zero = torch.zeros((target.shape[0],) + dag.in_shape, dtype=torch.float64,
                       device=target.device)
    return zero, zero.clone()


def _max_transpose(op, pre: tuple[Tensor, Tensor], glo: Tensor, ghi: Tensor,
                   units: Units) -> tuple[Tensor, Tensor]:
    """G [N, C, Ho, Wo] through the max pool onto its input."""
    surely, possibly = op.deriv_states(*pre)  # [N, C, K, L]
    n, c = glo.shape[:2]
    gl, gh = glo.reshape(n, c, 1, -1), ghi.reshape(n, c, 1, -1)
    plo = torch.where(gl < 0, gl * possibly, gl * surely)
    phi = torch.where(gh > 0, gh * possibly, gh * surely)
    lo, hi = op.fold(plo), op.fold(phi)
    if op.overlap > 1:
        size = op.fold(torch.maximum(plo.abs(), phi.abs()))
        lo, hi = outward(lo, hi, 2 * units.gamma(op.overlap) * size + units.abs_tiny(op.overlap))
    return lo, hi
