"""Branch and bound on the derivative states of unstable ReLU neurons (chains and graphs).

A ReLU neuron whose pre-activation interval contains 0 on both sides has derivative 0 or 1
(torch's derivative is [q > 0], exactly 0 or 1 in every format), so every point z of the set
follows one pattern of the unstable neurons' states. Fixing k of them to each of its 2^k
patterns gives 2^k branches; each branch's gradient pass (the other neurons keep their boxes)
is sound for the points of its pattern, so the union of the branches' intervals holds for every
z; it is intersected with the unbranched bound, so never looser.

Per input with U unstable neurons and a budget of ``branches``: if 2^U <= branches, all 2^U
patterns; otherwise the k = floor(log2(branches)) unstable neurons with the widest gradient
intervals |y| at their product (from the trace of the first pass) are split. Where every
derivative of an input is then fixed (all activations ReLU, every max-pool window decided:
``fixed``), the enumeration is exhaustive: each branch's gradient is one fixed product of
matrices, and the union is exact for the linearised pattern set up to rounding. Such inputs are
marked ``exhaustive`` (the linear relaxation has nothing left to gain on them).

All inputs' branches form one batch (in chunks of ``chunk`` rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["BRANCHES", "Site", "branch"]

#: default budget of branches per input (exhaustive for up to 6 unstable neurons)
BRANCHES = 64

#: one branchable ReLU: its derivative box (dlo, dhi) [N, *shape] and the score [N, *shape] of
#: each neuron (the magnitude of the gradient it multiplies)
Site = tuple[Tensor, Tensor, Tensor]

#: the gradient pass of branch rows: (inputs [P] int64, the sites' derivative boxes [P, *shape])
#: -> intervals (lo, hi) [P, *S] of g for the points of each row's pattern
Evaluate = Callable[[Tensor, list[tuple[Tensor, Tensor]]], tuple[Tensor, Tensor]]


def branch(
    sites: list[Site], fixed: Tensor, branches: int, lo: Tensor, hi: Tensor,
    evaluate: Evaluate, chunk: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The intervals lo, hi [N, *S] of g intersected with the union over each input's branches,
    and ``exhaustive`` [N] (bool): every pattern of every unstable neuron enumerated on an
    input whose other derivatives are all fixed (``fixed`` [N], bool)."""
    n = lo.shape[0]
    dev = lo.device
    chunk = max(1, chunk)  # rows per gradient pass (the caller's memory budget may round to 0)
    if not sites:
        return lo, hi, fixed.clone()
    flat_lo = torch.cat([s[0].flatten(1) for s in sites], 1)  # [N, T]
    flat_hi = torch.cat([s[1].flatten(1) for s in sites], 1)
    unstable = (flat_lo == 0) & (flat_hi == 1)
    count = unstable.sum(1)  # U [N]
    cap = int(math.log2(branches)) if branches >= 2 else 0
    k = torch.where(count <= cap, count, torch.full_like(count, cap))
    exhaustive = fixed & (k == count)
    kmax = int(k.max())
    if kmax == 0:
        return lo, hi, exhaustive
    score = torch.cat([s[2].flatten(1) for s in sites], 1)
    score = torch.where(unstable, score, torch.full_like(score, -1.0))
    chosen = score.topk(kmax, dim=1).indices  # [N, kmax], the widest unstable first
    per = 2 ** k  # branches of each input (1: nothing to branch)
    has = (k > 0).nonzero().flatten()
    inputs = has.repeat_interleave(per[has])  # [P]
    start = torch.cumsum(per[has], 0) - per[has]
    pattern = torch.arange(inputs.numel(), device=dev) - start.repeat_interleave(per[has])
    bits = (pattern.unsqueeze(1) >> torch.arange(kmax, device=dev).unsqueeze(0)) & 1
    used = torch.arange(kmax, device=dev).unsqueeze(0) < k[inputs].unsqueeze(1)  # [P, kmax]
    sizes = [s[0][0].numel() for s in sites]
    shapes = [tuple(s[0].shape[1:]) for s in sites]
    blo, bhi = lo[has].clone(), hi[has].clone()
    first = torch.full((n,), -1, dtype=torch.long, device=dev)
    first[has] = torch.arange(has.numel(), device=dev)
    ulo = torch.full_like(blo, math.inf)
    uhi = torch.full_like(bhi, -math.inf)
    for r0 in range(0, inputs.numel(), chunk):
        rows = inputs[r0: r0 + chunk]
        pos = chosen[rows]
        val = bits[r0: r0 + chunk].to(flat_lo.dtype)
        keep = used[r0: r0 + chunk]
        dl = flat_lo[rows]
        du = flat_hi[rows]
        dl = dl.scatter(1, pos, torch.where(keep, val, dl.gather(1, pos)))
        du = du.scatter(1, pos, torch.where(keep, val, du.gather(1, pos)))
        derivs = [(a.reshape((-1,) + sh), b.reshape((-1,) + sh)) for a, b, sh in
                  zip(dl.split(sizes, 1), du.split(sizes, 1), shapes, strict=True)]
        glo, ghi = evaluate(rows, derivs)
        slot = first[rows]
        idx = slot.view((-1,) + (1,) * (glo.dim() - 1)).expand_as(glo)
        ulo.scatter_reduce_(0, idx, glo, "amin")
        uhi.scatter_reduce_(0, idx, ghi, "amax")
    lo, hi = lo.clone(), hi.clone()
    lo[has] = torch.maximum(blo, ulo)
    hi[has] = torch.minimum(bhi, uhi)
    return lo, hi, exhaustive
