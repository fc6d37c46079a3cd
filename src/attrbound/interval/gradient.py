"""Gradient pass: intervals of g(z) = grad_z f_t(z) over the input set by the chain rule,

    g = W_0^T D_1 W_1^T ... D_n W_n^T e_t,

in interval arithmetic: the fixed matrices W^T in centre-radius form (W^T c -/+ |W|^T r;
convolutions through their transpose; :meth:`attrbound.interval.ops.AffineOp.ibp_transpose`),
the diagonal D_i = sigma_i'(q_i) as the derivative range on each neuron's pre-activation
interval (:meth:`attrbound.interval.ops.Activation.deriv_range`), and the elementwise products
by the four end-point products (:func:`attrbound.interval.rounding.mul`), each rounded outward.

:func:`gradient_intervals` runs it over a chain or a graph, intersects it with the same pass in
exact arithmetic widened by E (:func:`pattern_gradient`), refines it by branch and bound on
ReLU states (:mod:`attrbound.interval.branching`) and, on the inputs where that is not
exhaustive, intersects it with the linear bounds of the CROWN-style gradient relaxation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attrbound.interval.branching import BRANCHES, Site, branch
from attrbound.interval.dag import Dag
from attrbound.interval.dag_forward import dag_forward
from attrbound.interval.dag_gradient import DagTrace, dag_gradient
from attrbound.interval.dag_gradient_crown import dag_crown_gradient
from attrbound.interval.forward import forward
from attrbound.interval.gradient_crown import GradTrace, crown_gradient
from attrbound.interval.graph import Net
from attrbound.interval.perturbation import InputSet
from attrbound.interval.rounding import EXACT, Units, mag, mul, outward, up

__all__ = ["RELAXATIONS", "RELAX_CUTOFF", "gradient", "gradient_intervals", "pattern_gradient",
           "worth_relaxing"]

#: the gradient pass: interval products only, or intersected with CROWN-style linear bounds
RELAXATIONS = ("interval", "crown")
#: features whose weighted gradient width is at most this share of the largest get no linear
#: bound (:func:`worth_relaxing`)
RELAX_CUTOFF = 1e-3


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


def pattern_gradient(
    net: Net, derivs: list[tuple[Tensor, Tensor]], target: Tensor, units: Units,
) -> tuple[Tensor, Tensor]:
    """Intervals [N, *S] of g for the derivative boxes ``derivs``: the interval pass in the
    model's units, intersected with the pass in exact units widened by E (the bound on
    |evaluated - exact| of g that the first pass traces). The second is much narrower where
    the boxes are points (a fixed pattern): its width is then 2 E plus the float64 rounding,
    while the first compounds the model's rounding through every layer's |W^T| r."""
    trace = GradTrace()
    lo, hi = gradient(net, [], target, units, trace, derivs)
    xlo, xhi = gradient(net, [], target, EXACT, None, derivs)
    assert trace.err is not None
    return _meet(lo, hi, xlo, xhi, trace.err)


def _meet(lo: Tensor, hi: Tensor, xlo: Tensor, xhi: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
    """[lo, hi] intersected with [xlo - e, xhi + e] (rounded outward)."""
    elo, ehi = outward(xlo, xhi, e)
    return torch.maximum(lo, elo), torch.minimum(hi, ehi)


def gradient_intervals(
    net: Net | Dag, inset: InputSet, target: Tensor, tightening: str, units: Units,
    max_elements: int, relaxation: str = "crown", branches: int = BRANCHES,
    weight: Tensor | None = None, group: int = 1,
) -> tuple[Tensor, Tensor]:
    """Intervals [N, *S] of g over the input set: the forward bounds, then the gradient pass
    (over the chain, or over the graph: attrbound.interval.dag_forward / dag_gradient), each
    intersected with its exact-units pass widened by E (:func:`pattern_gradient`).

    ``relaxation="crown"``: intersected with the linear bounds of
    :func:`attrbound.interval.gradient_crown.crown_gradient` (graphs:
    :func:`attrbound.interval.dag_gradient_crown.dag_crown_gradient`), so never looser, on the
    inputs where branching is not exhaustive. ``branches``: the budget of
    :func:`attrbound.interval.branching.branch` per input (1: no branching; inputs with no
    unstable ReLU neuron and every derivative fixed are still exhaustive).

    ``weight`` [N, *S] (>= 0; None: 1) and ``group``: how much each feature of g counts in
    the attribution (integrated gradients: w_k |z - b|_max on path node k; ``group`` = m
    consecutive rows, one input's nodes); the linear bounds are computed only for the
    features of :func:`worth_relaxing`."""
    if isinstance(net, Dag):
        return _dag_intervals(net, inset, target, tightening, units, max_elements, relaxation,
                              branches, weight, group)
    pre = forward(net, inset, tightening, units, max_elements)
    if not net.acts:
        return gradient(net, pre, target, units)
    trace = GradTrace()
    lo, hi = gradient(net, pre, target, units, trace)
    derivs = [(p[0], p[1]) for p in trace.prods]
    xlo, xhi = gradient(net, [], target, EXACT, None, derivs)
    assert trace.err is not None
    lo, hi = _meet(lo, hi, xlo, xhi, trace.err)
    relu = [i for i, a in enumerate(net.acts) if a.kind == "relu"]
    sites: list[Site] = [(*trace.prods[i][:2], mag(*trace.prods[i][2:])) for i in relu]
    fixed = torch.full((lo.shape[0],), len(relu) == len(net.acts), device=lo.device)

    def evaluate(rows: Tensor, dv: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        full = [(d[0][rows], d[1][rows]) for d in derivs]
        for i, d in zip(relu, dv, strict=True):
            full[i] = d
        return pattern_gradient(net, full, target[rows], units)

    chunk = max_elements // (8 * net.widest(len(net.blocks) - 1))
    blo, bhi, exhaustive = branch(sites, fixed, branches, lo, hi, evaluate, chunk)
    if relaxation == "crown":
        only = worth_relaxing(blo, bhi, weight, group)
        _relax_rest(blo, bhi, exhaustive, lambda rest: crown_gradient(
            net, trace.subset(rest), target[rest], max_elements, lo[rest], only[rest]))
    return blo, bhi


def _dag_intervals(
    dag: Dag, inset: InputSet, target: Tensor, tightening: str, units: Units,
    max_elements: int, relaxation: str, branches: int, weight: Tensor | None, group: int,
) -> tuple[Tensor, Tensor]:
    """:func:`gradient_intervals` over a graph."""
    bounds = dag_forward(dag, inset, tightening, units, max_elements)
    trace = DagTrace()
    lo, hi = dag_gradient(dag, bounds, target, units, trace)
    derivs = dict(trace.derivs)
    xlo, xhi = dag_gradient(dag, bounds, target, EXACT, derivs=derivs)
    assert trace.err is not None
    lo, hi = _meet(lo, hi, xlo, xhi, trace.err)
    acts = [v for v, nd in enumerate(dag.nodes) if nd.kind == "act"]
    pooled = {nd.args[0] for nd in dag.nodes if nd.kind == "max"}
    # an activation no gradient reaches (its output unused) has no derivative box: nothing to
    # branch on, and it is fixed (it does not take part in g)
    relu = [v for v in acts if dag.nodes[v].op.kind == "relu" and v in derivs]
    sites: list[Site] = [(*derivs[v], mag(*trace.grads[v])) for v in relu]
    reached = [v for v in acts if v in derivs]
    fixed = torch.full((lo.shape[0],), len(relu) == len(reached), device=lo.device)
    for nd in dag.nodes:
        if nd.kind == "max":
            surely, possibly = nd.op.deriv_states(*bounds[nd.args[0]])
            fixed &= (surely == possibly).flatten(1).all(1)

    def evaluate(rows: Tensor, dv: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        full = {v: (d[0][rows], d[1][rows]) for v, d in derivs.items()}
        full.update(zip(relu, dv, strict=True))
        sub = [(b[0][rows], b[1][rows]) if i in pooled else None
               for i, b in enumerate(bounds)]
        tr = DagTrace()
        blo, bhi = dag_gradient(dag, sub, target[rows], units, tr, derivs=full)
        xl, xh = dag_gradient(dag, sub, target[rows], EXACT, derivs=full)
        assert tr.err is not None
        return _meet(blo, bhi, xl, xh, tr.err)

    chunk = max_elements // (8 * max(dag.size(i) for i in range(len(dag.nodes))))
    blo, bhi, exhaustive = branch(sites, fixed, branches, lo, hi, evaluate, chunk)
    if relaxation == "crown":
        only = worth_relaxing(blo, bhi, weight, group)
        _relax_rest(blo, bhi, exhaustive, lambda rest: dag_crown_gradient(
            dag, [(b[0][rest], b[1][rest]) for b in bounds], trace.subset(rest), target[rest],
            max_elements, only[rest]))
    return blo, bhi


def worth_relaxing(lo: Tensor, hi: Tensor, weight: Tensor | None, group: int) -> Tensor:
    """The features [N, prod(S)] (bool) whose gradient interval [lo, hi] [N, *S] gets the
    linear bound: those whose weighted width c = weight (hi - lo) is above RELAX_CUTOFF times
    the largest c of its group (``group`` consecutive rows: one input's path nodes), and any
    with an infinite or NaN width.

    The linear bound can only narrow an interval, so a skipped feature costs at most its own
    c: together the skipped features of a group add at most n_skipped (RELAX_CUTOFF max c)^2
    to the squared attribution widths, which are at least (max c)^2. On integrated gradients
    this skips the features whose path hardly moves (|z - b| <= eps: MNIST's background);
    the measured cost is in benchmarks/RESULTS.md (the interval section)."""
    c = (hi - lo).flatten(1)
    if weight is not None:
        c = c * weight.flatten(1)
    finite = torch.isfinite(c)
    size = torch.where(finite, c, torch.zeros_like(c))
    top = size.reshape(-1, group * c.shape[1]).amax(1).repeat_interleave(group)
    return (c > RELAX_CUTOFF * top.unsqueeze(1)) | ~finite


def _relax_rest(lo: Tensor, hi: Tensor, exhaustive: Tensor,
                linear: Callable[[Tensor], tuple[Tensor, Tensor]]) -> None:
    """Intersect lo, hi [N, *S] in place, on the inputs not ``exhaustive`` [N], with the
    linear bounds ``linear(rows)`` of those rows (NaN: no bound). An exhaustive input's union
    of fixed patterns already lies inside them (up to float64 rounding)."""
    if exhaustive.all():
        return
    rest = (~exhaustive).nonzero().flatten()
    clo, chi = linear(rest)
    lo[rest] = torch.where(torch.isnan(clo), lo[rest], torch.maximum(lo[rest], clo))
    hi[rest] = torch.where(torch.isnan(chi), hi[rest], torch.minimum(hi[rest], chi))
