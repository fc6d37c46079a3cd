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

from attrbound.interval.branching import BRANCHES, branch_gradient
from attrbound.interval.dag import Dag
from attrbound.interval.dag_forward import dag_forward
from attrbound.interval.dag_gradient import DagTrace, dag_gradient
from attrbound.interval.dag_gradient_crown import dag_crown_gradient
from attrbound.interval.forward import forward
from attrbound.interval.gradient_crown import GradTrace, crown_gradient
from attrbound.interval.graph import Net
from attrbound.interval.perturbation import InputSet
from attrbound.interval.rounding import Units, mag, mul, up

__all__ = ["RELAXATIONS", "gradient", "gradient_intervals"]

#: the gradient pass: interval products only, or intersected with CROWN-style linear bounds
RELAXATIONS = ("interval", "crown")


def gradient(
    net: Net, pre: list[tuple[Tensor, Tensor]], target: Tensor, units: Units,
    trace: GradTrace | None = None, derivs: list[tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Intervals [N, *S] of g(z) = grad_z f_t(z) given the pre-activation bounds ``pre``
    (:func:`attrbound.interval.forward.forward`) and the targets [N] (int64); ``derivs``, if
    given, replaces the derivative ranges of the activations (``pre`` is then unused). With
    ``trace``, also records what :func:`attrbound.interval.gradient_crown.crown_gradient`
    needs, and E, a bound on |evaluated - exact| of g: through op^T,
    |op^T| E (1 + gamma) + gamma |op^T| |w|; through a product with d, |d|_max E + 2 u |d y|_max.
    """
    k = net.out_shape[0]
    lo = F.one_hot(target, k).to(torch.float64)
    hi = lo.clone()
    e = torch.zeros_like(lo)
    if trace is not None:
        trace.tm = [[] for _ in net.blocks]
        trace.prods = [None] * len(net.acts)  # type: ignore[list-item]
    for i in range(len(net.blocks) - 1, -1, -1):
        tms: list[Tensor] = []
        for op in reversed(net.blocks[i]):
            if trace is not None:
                if op.exact:
                    e = op.transpose(e)
                    tms.append(torch.zeros(()))
                else:
                    g = units.gamma(op.fan)
                    tm = up(op.abs_transpose(mag(lo, hi)) * (1 + g))
                    e = up(op.abs_transpose(e) * (1 + g) + g * tm + units.abs_tiny(op.fan))
                    tms.append(tm)
            lo, hi = op.ibp_transpose(lo, hi, units)
        if trace is not None:
            trace.tm[i] = tms[::-1]
        if i > 0:
            if derivs is not None:
                dlo, dhi = derivs[i - 1]
            else:
                dlo, dhi = net.acts[i - 1].deriv_range(*pre[i - 1], units)
            if trace is not None:
                trace.prods[i - 1] = (dlo, dhi, lo, hi)
            lo, hi = mul(lo, hi, dlo, dhi, units)
            if trace is not None:
                e = up(mag(dlo, dhi) * e + 2 * units.u * mag(lo, hi) + units.abs_tiny(1))
    if trace is not None:
        trace.err = e
    return lo, hi


def gradient_intervals(
    net: Net | Dag, inset: InputSet, target: Tensor, tightening: str, units: Units,
    max_elements: int, relaxation: str = "crown", branches: int = BRANCHES,
) -> tuple[Tensor, Tensor]:
    """Intervals [N, *S] of g over the input set: the forward bounds, then the gradient pass
    (over the chain, or over the graph: attrbound.interval.dag_forward / dag_gradient).
    ``relaxation="crown"``: intersected with the linear bounds of
    :func:`attrbound.interval.gradient_crown.crown_gradient` (graphs:
    :func:`attrbound.interval.dag_gradient_crown.dag_crown_gradient`), so never looser. ``branches``
    (chain only): the budget of :func:`attrbound.interval.branching.branch_gradient` per
    input (1: no branching)."""
    if isinstance(net, Dag):
        bounds = dag_forward(net, inset, tightening, units, max_elements)
        if relaxation != "crown":
            return dag_gradient(net, bounds, target, units)
        dtrace = DagTrace()
        lo, hi = dag_gradient(net, bounds, target, units, dtrace)
        clo, chi = dag_crown_gradient(net, bounds, dtrace, target, units, max_elements)
        lo = torch.where(torch.isnan(clo), lo, torch.maximum(lo, clo))
        hi = torch.where(torch.isnan(chi), hi, torch.minimum(hi, chi))
        return lo, hi
    pre = forward(net, inset, tightening, units, max_elements)
    if not net.acts:
        return gradient(net, pre, target, units)
    trace = GradTrace()
    lo, hi = gradient(net, pre, target, units, trace)
    if relaxation == "crown":
        clo, chi = crown_gradient(net, trace, target, units, max_elements, lo)
        lo = torch.where(torch.isnan(clo), lo, torch.maximum(lo, clo))
        hi = torch.where(torch.isnan(chi), hi, torch.minimum(hi, chi))
    if branches > 1:
        lo, hi = branch_gradient(net, trace, target, units, branches, lo, hi, gradient)
    return lo, hi
