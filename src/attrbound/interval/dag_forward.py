"""Forward pass over the graph: bounds on every node over the input set.

Topological order. IBP per node kind (affine: centre-radius through W; act: the activation's
range; max: the max of the ends, exact; add: end-point sums; cat: concatenation), each rounded
outward so that it holds the exact value and the value as the model evaluates it; alongside, a
bound e on |evaluated - exact| per node (add: e_a + e_b + u |a + b|; max: the window max of e).

``tightening="crown"``: each pre-activation (a node feeding an activation or a max pool) is also
bounded by back-substitution over the graph: rows Lambda = +/- e_i start at the node and are
carried backwards in reverse topological order through its ancestors; where the graph fans out
(a node used twice) the Lambdas arriving from its users are summed; through an activation its
linear relaxation (:func:`attrbound.interval.forward._relax_step`), through a max pool that of
:class:`~attrbound.interval.ops.pooling.MaxPool2d`. The rounding of every float64 step (Lambda W,
Lambda . b, the sums at fan-outs, the max pool's fold and constant) is charged to ``err``; the
bound, for the exact network, is widened by e and intersected with IBP.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attrbound.interval.dag import Dag
from attrbound.interval.forward import (
    _absdot,
    _concretize,
    _relax_step,
    input_unit_rows,
    put_rows,
    rows_per_input,
    to_bound,
)
from attrbound.interval.perturbation import InputSet
from attrbound.interval.rounding import EXACT, U64, Units, mag, outward, up

__all__ = ["dag_crown", "dag_forward"]


def dag_forward(
    dag: Dag, inset: InputSet, tightening: str, units: Units, max_elements: int
) -> list[tuple[Tensor, Tensor]]:
    """Bounds (lo, hi) [N, *shape] of every node of the graph over the input set."""
    bounds: list[tuple[Tensor, Tensor]] = []
    errs: list[Tensor] = []
    mvecs: list[Tensor | None] = []
    tight = set(dag.tight)
    for i, node in enumerate(dag.nodes):
        mv = None
        if node.kind == "input":
            lo, hi = inset.lo, inset.hi
            e = torch.zeros_like(lo)
        elif node.kind == "affine":
            a = node.args[0]
            lo, hi, mv = node.op.ibp(*bounds[a], units)
            e = node.op.eval_error(errs[a], mv, units)
        elif node.kind == "add":
            (la, ha), (lb, hb) = bounds[node.args[0]], bounds[node.args[1]]
            lo, hi = la + lb, ha + hb
            lo, hi = outward(lo, hi, units.u * mag(lo, hi) + units.abs_tiny(2))
            ein = errs[node.args[0]] + errs[node.args[1]]
            e = up(ein * (1 + 4 * U64) + units.u * (mag(lo, hi) + ein) + units.abs_tiny(2))
        elif node.kind == "cat":
            lo = torch.cat([bounds[a][0] for a in node.args], dim=node.dim)
            hi = torch.cat([bounds[a][1] for a in node.args], dim=node.dim)
            e = torch.cat([errs[a] for a in node.args], dim=node.dim)
        elif node.kind == "max":
            a = node.args[0]
            lo, hi = node.op.forward(bounds[a][0]), node.op.forward(bounds[a][1])
            e = node.op.forward(errs[a])
        else:  # act
            a = node.args[0]
            act, (plo, phi) = node.op, bounds[a]
            lip = act.lipschitz(plo, phi, units)
            lo, hi = act.range(plo, phi, units)
            e = up(lip * errs[a] + act.value_err(mag(lo, hi), mag(plo, phi), units) + act.jump)
        mvecs.append(mv)
        if i in tight and tightening == "crown":
            bounds.append((lo, hi))
            only = None
            users = [dag.nodes[u] for u in dag.users[i]]
            if all(u.kind == "act" and u.op.zero_below for u in users):
                # as in forward.crown; a max pool or activation after the ReLU reads its
                # output intervals (act nodes are not bounded by CROWN themselves)
                read = any(dag.nodes[w].kind in ("act", "max")
                           for u in dag.users[i] for w in dag.users[u])
                only = to_bound(users[0].op, lo, hi, inset, read)
            if only is None or bool(only.any()):
                lc, uc = dag_crown(dag, i, bounds, mvecs, inset, units, max_elements, only)
                lc, uc = outward(lc, uc, e)
                lo, hi = torch.maximum(lo, lc), torch.minimum(hi, uc)
                bounds[i] = (lo, hi)
        else:
            bounds.append((lo, hi))
        errs.append(e)
    return bounds


def dag_crown(
    dag: Dag,
    j: int,
    bounds: list[tuple[Tensor, Tensor]],
    mvecs: list[Tensor | None],
    inset: InputSet,
    units: Units,
    max_elements: int,
    only: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds [N, *shape_j] of node j by back-substitution over the graph.

    Rows per input (:func:`attrbound.interval.forward.rows_per_input`) in chunks of neurons
    and inputs so that one Lambda holds about ``max_elements / 4`` float64 entries (several
    Lambdas are alive at once across a residual block). ``only``: bool [N, prod(shape)], the
    (flattened) neurons to bound per input, the others get (-inf, inf), as in
    :func:`attrbound.interval.forward.crown`."""
    shape = dag.nodes[j].shape
    k = math.prod(shape)
    n = inset.lo.shape[0]
    anc = dag.ancestors(j)
    per = max(dag.size(i) for i in anc)
    if only is None:
        only = torch.ones((n, k), dtype=torch.bool, device=inset.lo.device)
    lower = inset.lo.new_full((n, k), -math.inf)
    upper = inset.lo.new_full((n, k), math.inf)
    for s, pos, valid in rows_per_input(only, max_elements // (8 * per)):
        m, r = pos.shape
        eye = input_unit_rows(pos, k)
        lam = torch.cat([eye, -eye], 1).reshape((m, 2 * r) + shape)
        lo = _back_substitute(dag, anc, lam, bounds, mvecs, inset.part(s), units, s)
        put_rows(lower, upper, s, pos, valid, lo[:, :r], -lo[:, r:])
    return lower.reshape((n,) + shape), upper.reshape((n,) + shape)


def _back_substitute(
    dag: Dag, anc: list[int], lam0: Tensor, bounds: list[tuple[Tensor, Tensor]],
    mvecs: list[Tensor | None], inset: InputSet, units: Units, s: slice,
) -> Tensor:
    """Lower bound [m, R] of Lambda0 . v_j over the set, v_j = the node anc[0]."""
    m, r = lam0.shape[:2]
    lams: dict[int, Tensor] = {anc[0]: lam0}
    const = lam0.new_zeros(m, r)
    err = lam0.new_zeros(m, r)
    final: Tensor | None = None

    def acc(t: int, lam: Tensor) -> None:
        nonlocal err
        if t in lams:
            lam = lams[t] + lam
            # |fl(a + b) - (a + b)| <= u |fl(a + b)|, times |v_t| <= mag of its bounds
            err = err + 2 * EXACT.u * _absdot(lam, mag(*bounds[t])[s], False)
        lams[t] = lam

    for v in anc:
        lam = lams.pop(v, None)
        if lam is None:
            continue
        node = dag.nodes[v]
        if node.kind == "input":
            final = lam
        elif node.kind == "affine":
            op = node.op
            if not op.exact:
                mv = mvecs[v]
                assert mv is not None
                err = err + op.crown_gamma(EXACT) * _absdot(lam, mv[s], False)
                if op.bias is not None:
                    full = op.bias.expand(op.out_shape).reshape(-1)
                    const = const + lam.flatten(2) @ full
            acc(node.args[0], op.backward(lam, False))
        elif node.kind == "add":
            acc(node.args[0], lam)
            acc(node.args[1], lam)
        elif node.kind == "cat":
            sizes = [dag.nodes[a].shape[node.dim - 1] for a in node.args]
            for a, part in zip(node.args, lam.split(sizes, dim=node.dim + 1), strict=True):
                acc(a, part)
        elif node.kind == "act":
            a = node.args[0]
            plo, phi = bounds[a][0][s], bounds[a][1][s]
            new, const, err = _relax_step(node.op, plo, phi, lam, const, err, units, None)
            acc(a, new)
        else:  # max
            a = node.args[0]
            new, const, err = _max_step(node.op, bounds[a][0][s], bounds[a][1][s], lam, const,
                                        err)
            acc(a, new)
    if final is None:
        final = lam0.new_zeros((m, r) + dag.in_shape)
    lo, _ = _concretize(final, False, const, err, inset)
    return lo


def _max_step(op, lo: Tensor, hi: Tensor, lam: Tensor, const: Tensor, err: Tensor
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Lambda . y >= (Lambda+ + Lambda- [dominant]) . x_j* + Lambda- [not dominant] . max hi
    (y = max pool of x; MaxPool2d.relax). The fold of overlapping windows and the constant's
    dot product (float64 arithmetic: gamma at float64's unit) are charged to ``err``."""
    m, r = lam.shape[:2]
    jstar, dom, top = op.relax(lo, hi)  # [m, C, L]
    c, nw = jstar.shape[1:]
    flat = lam.reshape(m, r, c, nw)
    dom_ = dom.unsqueeze(1)
    coef = torch.where(dom_, flat, flat.clamp_min(0))
    neg = torch.where(dom_, torch.zeros_like(flat), flat.clamp_max(0))
    topv = top.unsqueeze(1)
    const = const + (neg * topv).flatten(2).sum(2)
    d = c * nw
    err = err + 2 * EXACT.gamma(d) * (neg.abs() * topv.abs()).flatten(2).sum(2)
    js = jstar.repeat_interleave(r, dim=0)
    new = op.scatter(coef.reshape(m * r, c, nw), js).reshape((m, r) + op.in_shape)
    if op.overlap > 1:
        absn = op.scatter(coef.abs().reshape(m * r, c, nw), js).reshape((m, r) + op.in_shape)
        err = err + 2 * EXACT.gamma(op.overlap) * _absdot(absn, mag(lo, hi), False)
    err = err + 2 * EXACT.u * const.abs()
    return new, const, err
