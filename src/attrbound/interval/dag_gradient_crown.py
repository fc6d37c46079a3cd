"""Linear (CROWN-style) bounds on the gradient over a graph: the forward-mode dual of the
gradient pass of :mod:`attrbound.interval.dag_gradient`.

With G_v the gradient at node v (G_out = e_t, G_a = sum over the users c of a of
J_{c,a}^T G_c), Lambda . G_input = mu_out . e_t for the tangents mu_v = sum over the
arguments a of v of J_{v,a} mu_a, mu_input = Lambda (in topological order: affine nodes
op(mu_a), add mu_a + mu_b, cat the concatenation). The products with derivatives are relaxed
as in :mod:`attrbound.interval.gradient_crown`: at an activation, mu_a . (d * G_v) >=
(mu_a a) . G_v + mu_a . b with the chord lines of min_d / max_d (d G) over the derivative box
and G_v's interval (:func:`~attrbound.interval.gradient_crown.relax_product`); at a max pool,
each window position's term c s G_w with s in [surely, possibly]. The float64 rounding of every
step is charged to ``err``; the model's own rounding by E from the interval pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attrbound.interval.dag import Dag
from attrbound.interval.dag_gradient import DagTrace
from attrbound.interval.forward import _absdot, input_unit_rows, put_rows, rows_per_input
from attrbound.interval.gradient_crown import relax_product
from attrbound.interval.rounding import EXACT, U64, Units, down, mag, up

__all__ = ["dag_crown_gradient"]


def dag_crown_gradient(
    dag: Dag, bounds: list[tuple[Tensor, Tensor]], trace: DagTrace, target: Tensor,
    max_elements: int, only: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds [N, *S] of g (exact backward pass, any derivative states in the
    boxes), widened by E; ``only``: bool [N, prod(S)], the features to bound per input (None:
    all), the others get NaN (no bound). Each step charges the rounding of this bound's own
    float64 arithmetic (units EXACT); the model's rounding of its backward pass is all in E."""
    units = EXACT
    assert trace.err is not None
    n = trace.err.shape[0]
    k = math.prod(dag.in_shape)
    widest = max(dag.size(i) for i in range(len(dag.nodes)))
    if only is None:
        only = torch.ones((n, k), dtype=torch.bool, device=trace.err.device)
    lower = trace.err.new_full((n, k), math.nan)
    upper = trace.err.new_full((n, k), math.nan)
    last_use = {a: i for i, nd in enumerate(dag.nodes) for a in nd.args}
    for s, pos, valid in rows_per_input(only, max_elements // (8 * widest)):
        m, r = pos.shape
        eye = input_unit_rows(pos, k)
        lam = torch.cat([eye, -eye], 1).reshape((m, 2 * r) + dag.in_shape)
        lo = _rows(dag, bounds, trace, lam, target[s], units, s, last_use)
        put_rows(lower, upper, s, pos, valid, lo[:, :r], -lo[:, r:])
    e = trace.err.reshape(n, k)
    lo = down(lower - e - 4 * units.u * lower.abs())
    hi = up(upper + e + 4 * units.u * upper.abs())
    return lo.reshape((n,) + dag.in_shape), hi.reshape((n,) + dag.in_shape)


def _rows(dag: Dag, bounds: list[tuple[Tensor, Tensor]], trace: DagTrace, lam: Tensor,
          target: Tensor, units: Units, s: slice, last_use: dict[int, int]) -> Tensor:
    """Lower bound [m, R] of Lambda . g for rows Lambda [m, R, *S] (each input's own)."""
    m = s.stop - s.start
    r = lam.shape[1]
    const = lam.new_zeros(m, r)
    err = lam.new_zeros(m, r)
    mus: dict[int, Tensor] = {0: lam}
    out = len(dag.nodes) - 1
    for v in range(1, len(dag.nodes)):
        node = dag.nodes[v]
        if v not in trace.grads:  # no gradient reaches v: G_v = 0, its tangent is unused
            mu = None
        elif node.kind == "affine":
            a = mus[node.args[0]]
            op = node.op
            if not op.exact:
                err = err + op.crown_gamma(units) * _absdot(a, trace.tm[v][s], False)
            mu = op.linear(a.reshape((m * r,) + op.in_shape)).reshape((m, r) + op.out_shape)
        elif node.kind == "add":
            mu = mus[node.args[0]] + mus[node.args[1]]
            glo, ghi = (t[s] for t in trace.grads[v])
            err = err + 2 * units.u * _absdot(mu, mag(glo, ghi), False)
        elif node.kind == "cat":
            mu = torch.cat([mus[a] for a in node.args], dim=node.dim + 1)
        elif node.kind == "act":
            a = mus[node.args[0]]
            dl, du = (t[s] for t in trace.derivs[v])
            glo, ghi = (t[s] for t in trace.grads[v])
            mu, const, err = _product(a, dl, du, glo, ghi, const, err, units)
        else:  # max
            a = mus[node.args[0]]
            mu, const, err = _max(node.op, bounds[node.args[0]], a, trace.grads[v], s, const,
                                  err, units)
        if mu is not None:
            mus[v] = mu
        for arg in node.args:
            if last_use.get(arg) == v:
                mus.pop(arg, None)
    if out not in mus:
        return lam.new_zeros(m, r)
    mu = mus[out]
    final = mu.gather(2, target.view(m, 1, 1).expand(m, r, 1)).squeeze(2)
    total = const + final
    return down(total - err - 4 * units.u * (total.abs() + err) - units.abs_tiny(2))


def _product(a: Tensor, dl: Tensor, du: Tensor, glo: Tensor, ghi: Tensor, const: Tensor,
             err: Tensor, units: Units) -> tuple[Tensor, Tensor, Tensor]:
    """mu . (d * G) >= (mu a_sel) . G + mu . b_sel (per sign of mu)."""
    a_lo, b_lo, a_up, b_up = relax_product(dl, du, glo, ghi)
    pos = a >= 0
    sl = torch.where(pos, a_lo.unsqueeze(1), a_up.unsqueeze(1))
    b = torch.where(pos, b_lo.unsqueeze(1), b_up.unsqueeze(1))
    mb = a * b
    d = math.prod(mb.shape[2:])
    const = const + mb.flatten(2).sum(2)
    err = err + units.gamma(d) * mb.abs().flatten(2).sum(2)
    mu = a * sl
    err = err + 2 * U64 * _absdot(mu, mag(glo, ghi), False)
    err = err + 2 * units.u * const.abs()
    return mu, const, err


def _max(op, pre: tuple[Tensor, Tensor], a: Tensor, grad: tuple[Tensor, Tensor], s: slice,
         const: Tensor, err: Tensor, units: Units) -> tuple[Tensor, Tensor, Tensor]:
    """mu_a . fold(s * G_w) = sum over windows w and positions k of c_wk s_wk G_w with
    c = the window entries of mu_a (zero padding); each product relaxed per sign of c."""
    surely, possibly = op.deriv_states(pre[0][s], pre[1][s])  # [m, C, K, L]
    glo, ghi = (t[s] for t in grad)
    m, c = glo.shape[:2]
    r = a.shape[1]
    pad = (op.p[1], op.p[1], op.p[0], op.p[0])
    x = F.pad(a.reshape((m * r,) + op.in_shape), pad)
    cols = F.unfold(x.reshape((m * r * c, 1) + op.padded), op.k, op.d, 0, op.s)
    cols = cols.reshape(m, r, c, op.kk, -1)  # coefficients c_wk
    gl, gh = glo.reshape(m, 1, c, 1, -1), ghi.reshape(m, 1, c, 1, -1)
    a_lo, b_lo, a_up, b_up = relax_product(surely.unsqueeze(1), possibly.unsqueeze(1), gl, gh)
    pos = cols >= 0
    sl = torch.where(pos, a_lo, a_up)
    b = torch.where(pos, b_lo, b_up)
    mb = cols * b
    d = math.prod(mb.shape[2:])
    const = const + mb.flatten(2).sum(2)
    err = err + units.gamma(d) * mb.abs().flatten(2).sum(2)
    terms = cols * sl  # [m, R, C, K, L]
    mu = terms.sum(3)
    err = err + units.gamma(op.kk + 1) * (terms.abs().sum(3) * mag(gl, gh).squeeze(3)
                                          ).flatten(2).sum(2)
    err = err + 2 * units.u * const.abs()
    return mu.reshape((m, r) + tuple(glo.shape[1:])), const, err
