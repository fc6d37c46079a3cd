"""Branch and bound on the derivative states of unstable ReLU neurons (chain models).

A ReLU neuron whose pre-activation interval contains 0 on both sides has derivative 0 or 1
(torch's derivative is [q > 0], exactly 0 or 1 in every format), so every point z of the set
follows one pattern of the unstable neurons' states. Fixing a set of them to each of its 2^k
patterns gives 2^k branches; each branch's interval gradient pass (the others keep [0, 1]) is
sound for the points of its pattern, so the union of the branches' intervals holds for every z
(and is intersected with the unbranched bound, so never looser).

Per input with U unstable neurons and a budget of ``branches``: if 2^U <= branches, all 2^U
patterns (exhaustive: every neuron is then fixed, the gradient of each pattern is a fixed
product of matrices, and the union is exact for the linearised pattern set up to rounding);
otherwise the k = floor(log2(branches)) unstable neurons with the widest gradient intervals
|y| at their product (from the trace of the first pass) are split.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from attrbound.interval.gradient_crown import GradTrace
from attrbound.interval.graph import Net
from attrbound.interval.rounding import Units, mag

__all__ = ["BRANCHES", "branch_gradient"]

#: default budget of branches per input (exhaustive for up to 6 unstable neurons)
BRANCHES = 64


def branch_gradient(
    net: Net, trace: GradTrace, target: Tensor, units: Units, branches: int,
    lo: Tensor, hi: Tensor, gradient: Callable[..., tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """The intervals lo, hi [N, *S] of g intersected with the union over the branches of each
    input's unstable ReLU neurons (``trace``: of the first gradient pass; ``gradient``: the
    interval pass, :func:`attrbound.interval.gradient.gradient`)."""

    relu = [i for i, a in enumerate(net.acts) if a.kind == "relu"]
    if not relu or branches < 2:
        return lo, hi
    lo, hi = lo.clone(), hi.clone()
    for b in range(lo.shape[0]):
        cands = []  # (score, act index, flat position)
        for i in relu:
            dl, du, yl, yu = (t[b] for t in trace.prods[i])
            unstable = ((dl == 0) & (du == 1)).flatten()
            pos = unstable.nonzero().flatten()
            score = mag(yl, yu).flatten()[pos]
            cands += [(float(sc), i, int(p)) for sc, p in zip(score, pos, strict=True)]
        if not cands:
            continue
        k = len(cands) if 2 ** len(cands) <= branches else int(math.log2(branches))
        if k == 0:
            continue
        cands.sort(key=lambda c: -c[0])
        chosen = cands[:k]
        p = 2**k
        bits = (torch.arange(p).unsqueeze(1) >> torch.arange(k).unsqueeze(0)) & 1
        bits = bits.to(torch.float64).to(lo.device)
        derivs = []
        for i, _ in enumerate(net.acts):
            dl, du = trace.prods[i][0][b], trace.prods[i][1][b]
            dl = dl.unsqueeze(0).repeat((p,) + (1,) * dl.dim()).flatten(1)
            du = du.unsqueeze(0).repeat((p,) + (1,) * du.dim()).flatten(1)
            for j, (_, ai, pos) in enumerate(chosen):
                if ai == i:
                    dl[:, pos] = bits[:, j]
                    du[:, pos] = bits[:, j]
            shape = (p,) + tuple(trace.prods[i][0].shape[1:])
            derivs.append((dl.reshape(shape), du.reshape(shape)))
        glo, ghi = gradient(net, [], target[b: b + 1].repeat(p), units, derivs=derivs)
        lo[b] = torch.maximum(lo[b], glo.amin(0))
        hi[b] = torch.minimum(hi[b], ghi.amax(0))
    return lo, hi
