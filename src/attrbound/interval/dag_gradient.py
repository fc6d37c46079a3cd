"""Gradient pass over the graph: intervals of g(z) = grad_z f_t(z) by the chain rule in reverse
topological order.

Starting from e_t at the logits, each node hands its gradient interval G to its inputs: affine
nodes through W^T (:meth:`attrbound.interval.ops.AffineOp.ibp_transpose`), activations times
their derivative range (:func:`attrbound.interval.rounding.mul`), add to both summands, cat
split along its dimension, a max pool to the positions that may hold each window's max
(derivative in [surely, possibly], both 0 or 1, so the products are exact; the fold of
overlapping windows is widened by 2 gamma_overlap |G|). Where a node is used several times the
arriving intervals are summed (each float64 addition rounded outward) and widened by the
model's rounding of that sum in its own format and in any order: u |sum| for two terms (one
addition, commutative), gamma_{k-1} sum |term| for k >= 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from attrbound.interval.dag import Dag
from attrbound.interval.rounding import U64, Units, down, mag, mul, outward, up

__all__ = ["DagTrace", "dag_gradient"]


@dataclass
class DagTrace:
    """Recorded by :func:`dag_gradient` for the linear bounds of
    :mod:`attrbound.interval.dag_gradient_crown`: per node its gradient interval G_v
    (``grads``), for affine nodes |op^T| |G_v| rounded up (``tm``), for act nodes the
    derivative range (``derivs``), and E [N, *S], a bound on |evaluated - exact| of g."""

    grads: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    tm: dict[int, Tensor] = field(default_factory=dict)
    derivs: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    err: Tensor | None = None

    def subset(self, rows: Tensor) -> DagTrace:
        """The trace of the inputs ``rows`` [M] (int64)."""
        assert self.err is not None
        return DagTrace(grads={v: (a[rows], b[rows]) for v, (a, b) in self.grads.items()},
                        tm={v: t[rows] for v, t in self.tm.items()},
                        derivs={v: (a[rows], b[rows]) for v, (a, b) in self.derivs.items()},
                        err=self.err[rows])


def dag_gradient(
    dag: Dag, bounds: list[tuple[Tensor, Tensor]], target: Tensor, units: Units,
    trace: DagTrace | None = None, derivs: dict[int, tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Intervals [N, *S] of g over the set, from the node bounds of
    :func:`attrbound.interval.dag_forward.dag_forward` and targets [N] (int64); ``derivs``,
    if given, replaces the derivative ranges of the act nodes (their bounds are then unused,
    entries may be None). With
    ``trace``, also E: through op^T |op^T| E (1 + gamma) + gamma |op^T| |G|; times d,
    |d|_max E + 2 u |d G|_max; summed at fan-outs, plus the model's rounding of that sum in
    any order (:func:`settle`)."""
    k = dag.out_shape[0]
    one = F.one_hot(target, k).to(torch.float64)
    grads: dict[int, tuple[Tensor, Tensor]] = {len(dag.nodes) - 1: (one, one.clone())}
    errs: dict[int, Tensor] = {len(dag.nodes) - 1: torch.zeros_like(one)}

    absum: dict[int, Tensor] = {}  # sum of the arriving terms' magnitudes
    count: dict[int, int] = {}

    def acc(t: int, lo: Tensor, hi: Tensor, e: Tensor | None = None) -> None:
        size = mag(lo, hi)
        if t in grads:
            lo, hi = down(grads[t][0] + lo), up(grads[t][1] + hi)
            size = up(absum[t] + size)
            if e is not None:
                e = up(errs[t] + e)
        grads[t], absum[t] = (lo, hi), size
        count[t] = count.get(t, 0) + 1
        if e is not None:
            errs[t] = e

    def settle(v: int, lo: Tensor, hi: Tensor, e: Tensor | None
               ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The model sums the k terms arriving at v in an order of its own: one addition
        (k = 2) errs by u |sum| whatever the order, k terms by gamma_{k-1} sum |term|."""
        k, size = count.pop(v, 1), absum.pop(v, None)
        if k < 2 or size is None:
            return lo, hi, e
        slack = (units.u * mag(lo, hi) if k == 2 else units.gamma(k - 1) * size)
        slack = slack + units.abs_tiny(k)
        lo, hi = outward(lo, hi, slack)
        return lo, hi, None if e is None else up(e + slack)

    for v in range(len(dag.nodes) - 1, -1, -1):
        if v not in grads:
            continue
        glo, ghi = grads.pop(v)
        e = errs.pop(v, None) if trace is not None else None
        glo, ghi, e = settle(v, glo, ghi, e)
        node = dag.nodes[v]
        if trace is not None:
            trace.grads[v] = (glo, ghi)
        if node.kind == "input":
            if trace is not None:
                trace.err = e
            return glo, ghi
        if node.kind == "affine":
            op = node.op
            ea = None
            if trace is not None and e is not None:
                if op.exact:
                    ea = op.transpose(e)
                else:
                    g = units.gamma(op.fan)
                    tm = up(op.abs_transpose(mag(glo, ghi)) * (1 + g))
                    trace.tm[v] = tm
                    ea = up(op.abs_transpose(e) * (1 + g) + g * tm + units.abs_tiny(op.fan))
            acc(node.args[0], *op.ibp_transpose(glo, ghi, units), ea)
        elif node.kind == "act":
            if derivs is not None:
                dlo, dhi = derivs[v]
            else:
                dlo, dhi = node.op.deriv_range(*bounds[node.args[0]], units)
            plo, phi = mul(glo, ghi, dlo, dhi, units)
            ea = None
            if trace is not None and e is not None:
                trace.derivs[v] = (dlo, dhi)
                ea = up(mag(dlo, dhi) * e + 2 * units.u * mag(plo, phi) + units.abs_tiny(1))
            acc(node.args[0], plo, phi, ea)
        elif node.kind == "add":
            acc(node.args[0], glo, ghi, e)
            acc(node.args[1], glo.clone(), ghi.clone(), None if e is None else e.clone())
        elif node.kind == "cat":
            sizes = [dag.nodes[a].shape[node.dim - 1] for a in node.args]
            eparts = (e.split(sizes, dim=node.dim) if e is not None
                      else [None] * len(node.args))
            for a, pl, ph, ep in zip(node.args, glo.split(sizes, dim=node.dim),
                                     ghi.split(sizes, dim=node.dim), eparts, strict=True):
                acc(a, pl, ph, ep)
        else:  # max
            lo_, hi_ = _max_transpose(node.op, bounds[node.args[0]], glo, ghi, units)
            ea = None
            if trace is not None and e is not None:
                # the indicator is 0 or 1: |fold(s E)| <= fold(possibly E), plus the fold's sums
                _, possibly = node.op.deriv_states(*bounds[node.args[0]])
                n, c = e.shape[:2]
                ea = node.op.fold(possibly * e.reshape(n, c, 1, -1))
                if node.op.overlap > 1:
                    size = node.op.fold(possibly * mag(glo, ghi).reshape(n, c, 1, -1))
                    ea = up(ea * (1 + 4 * U64) + 2 * units.gamma(node.op.overlap) * size
                            + units.abs_tiny(node.op.overlap))
            acc(node.args[0], lo_, hi_, ea)
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
