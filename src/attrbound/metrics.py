"""Batched dissimilarity and rank metrics between attribution maps (docs/design.md section 1).

Every function takes two batches of maps a, b: [B, *S] (same shape, any float dtype, any
device) and returns one value per example, [B], in a's dtype. The d = prod(S) entries of an
example are its features unless stated otherwise.

- :func:`euclidean`          ||a - b||_2
- :func:`cosine`             <a, b> / (||a|| ||b||)
- :func:`topk_intersection`  |topk(|a|) ∩ topk(|b|)| / k
- :func:`kendall`            Kendall's tau-b (scipy.stats.kendalltau's default)
- :func:`spearman`           Spearman's rho with average ranks for ties (scipy.stats.spearmanr)

Kendall's tau concerns all d(d-1)/2 pairs of features, but is computed without forming them
(Knight's sort-and-merge algorithm, batched): O(d log^2 d) work and O(d) memory per example.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attrbound.errors import AttrboundError

__all__ = ["euclidean", "cosine", "topk_intersection", "kendall", "spearman", "feature_map"]


def _flat(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise AttrboundError(f"maps must have the same shape, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}.")
    if a.dim() < 2:
        raise AttrboundError(f"maps must be batched [B, ...], got shape {tuple(a.shape)}.")
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)


def euclidean(a: Tensor, b: Tensor) -> Tensor:
    """||a_i - b_i||_2 per example: [B, *S] x [B, *S] -> [B]."""
    fa, fb = _flat(a, b)
    return (fa - fb).norm(dim=1)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity <a_i, b_i> / (||a_i|| ||b_i||) per example: -> [B] in [-1, 1].

    Convention for zero maps: two all-zero maps have similarity 1 (they are identical); a zero
    map and a non-zero map have similarity 0.
    """
    fa, fb = _flat(a, b)
    na, nb = fa.norm(dim=1), fb.norm(dim=1)
    denom = na * nb
    cos = (fa * fb).sum(dim=1) / denom.clamp_min(torch.finfo(fa.dtype).tiny)
    cos = cos.clamp(-1.0, 1.0)
    zero_a, zero_b = na == 0, nb == 0
    cos = torch.where(zero_a & zero_b, torch.ones_like(cos), cos)
    return torch.where(zero_a ^ zero_b, torch.zeros_like(cos), cos)


def feature_map(a: Tensor, reduce_channels: bool = False) -> Tensor:
    """Per-feature importance |a| as [B, d].

    With ``reduce_channels`` the absolute values are summed over dimension 1 (the channels of
    [B, C, H, W] images), giving one importance per pixel (d = H*W), the convention of
    Ghorbani et al. 2019; otherwise every entry is a feature (d = prod(S)).
    """
    m = a.abs()
    if reduce_channels and a.dim() >= 3:
        m = m.sum(dim=1)
    return m.reshape(a.shape[0], -1)


def topk_mask(m: Tensor, k: int) -> Tensor:
    """Boolean [B, d] marking the k largest entries of each row of m: [B, d]."""
    idx = m.topk(k, dim=1, sorted=False).indices
    return torch.zeros_like(m, dtype=torch.bool).scatter_(1, idx, True)


def topk_intersection(a: Tensor, b: Tensor, k: int, reduce_channels: bool = False) -> Tensor:
    """|topk(|a_i|) ∩ topk(|b_i|)| / k per example: -> [B] in [0, 1].

    Features are the entries of |a| (default) or, with ``reduce_channels``, |a| summed over
    channels (see :func:`feature_map`). Ties inside a map are broken by torch.topk; the
    result is exact for maps without ties at the k-th value. k must lie in [1, d].
    """
    _flat(a, b)
    ma, mb = feature_map(a, reduce_channels), feature_map(b, reduce_channels)
    d = ma.shape[1]
    if not 1 <= int(k) <= d:
        raise AttrboundError(f"k must lie in [1, {d}] (the number of features), got {k}.")
    both = topk_mask(ma, int(k)) & topk_mask(mb, int(k))
    return both.sum(dim=1).to(a.dtype) / int(k)


def _tied_pairs(same: Tensor) -> Tensor:
    """Number of tied pairs from a sorted row's "equal to the previous entry" mask [B, d].

    An entry at position i in a run of equal values that started at position s ties with the
    i - s entries before it, so the tied pairs are sum_i (i - s_i).
    """
    pos = torch.arange(same.shape[1], device=same.device).expand_as(same)
    start = torch.where(same, torch.zeros_like(pos), pos).cummax(dim=1).values
    return (pos - start).sum(dim=1).to(torch.float64)


def _strict_inversions(v: Tensor) -> Tensor:
    """#{(i, j): i < j, v_i > v_j} per row of v [B, d], by merge counting in O(d log^2 d).

    Level by level, rows are split into blocks of size s already sorted; for each pair of
    neighbouring blocks (left, right) the inversions across them are, per right entry u, the
    left entries > u: s - searchsorted(left, u, right=True). The pair is then sorted into one
    block of size 2s. Padding with +inf at the end adds no inversion.
    """
    b, d = v.shape
    size = 1 << max(0, (d - 1).bit_length())
    if size > d:
        pad = torch.full((b, size - d), torch.inf, dtype=v.dtype, device=v.device)
        v = torch.cat([v, pad], dim=1)
    count = torch.zeros(b, dtype=torch.int64, device=v.device)
    s = 1
    while s < size:
        blocks = v.reshape(b, size // (2 * s), 2, s)
        left, right = blocks[:, :, 0].contiguous(), blocks[:, :, 1].contiguous()
        not_greater = torch.searchsorted(left, right, right=True)
        count += (s - not_greater).sum(dim=(1, 2))
        v = blocks.reshape(b, size // (2 * s), 2 * s).sort(dim=2).values.reshape(b, size)
        s *= 2
    return count.to(torch.float64)


def kendall(a: Tensor, b: Tensor) -> Tensor:
    """Kendall's tau-b per example (scipy.stats.kendalltau's default variant): -> [B].

    tau_b = (P - Q) / sqrt((n0 - n1) (n0 - n2)) with P, Q the concordant and discordant pairs
    of the d features, n0 = d(d-1)/2, n1 / n2 the pairs tied in a / in b. Knight's
    algorithm, batched: sort the features by (a, b); then P - Q = n0 - n1 - n2 + n3 - 2 S with
    n3 the pairs tied in both and S the strict inversions of b in that order, counted by
    merging (O(d log^2 d) work and O(d) memory per example, not the O(d^2) of all pairs).
    NaN when a map is constant.
    """
    fa, fb = _flat(a, b)
    d = fa.shape[1]
    # lexicographic sort by (a, b): stable sort by b, then stable sort by a
    ob = fb.sort(dim=1, stable=True).indices
    a1, b1 = fa.gather(1, ob), fb.gather(1, ob)
    oa = a1.sort(dim=1, stable=True).indices
    a2, b2 = a1.gather(1, oa), b1.gather(1, oa)
    same_a = torch.zeros_like(a2, dtype=torch.bool)
    same_a[:, 1:] = a2[:, 1:] == a2[:, :-1]
    same_ab = same_a.clone()
    same_ab[:, 1:] &= b2[:, 1:] == b2[:, :-1]
    sb = fb.sort(dim=1).values
    same_b = torch.zeros_like(sb, dtype=torch.bool)
    same_b[:, 1:] = sb[:, 1:] == sb[:, :-1]
    n0 = d * (d - 1) / 2.0
    n1, n2, n3 = _tied_pairs(same_a), _tied_pairs(same_b), _tied_pairs(same_ab)
    numerator = n0 - n1 - n2 + n3 - 2 * _strict_inversions(b2)
    tau = numerator / torch.sqrt((n0 - n1) * (n0 - n2))
    return tau.clamp(-1.0, 1.0).to(a.dtype)


def average_ranks(m: Tensor) -> Tensor:
    """Ranks 1..d of each row of m: [B, d], ties given their average rank (scipy's rankdata)."""
    srt = m.sort(dim=1).values
    lo = torch.searchsorted(srt, m.contiguous(), right=False)
    hi = torch.searchsorted(srt, m.contiguous(), right=True)
    return (lo + hi + 1).to(torch.float64) / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rho per example: the Pearson correlation of the average ranks -> [B].

    Matches scipy.stats.spearmanr (average ranks for ties). NaN when a map is constant.
    """
    fa, fb = _flat(a, b)
    ra, rb = average_ranks(fa), average_ranks(fb)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    rho = (ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1))
    return rho.clamp(-1.0, 1.0).to(a.dtype)
