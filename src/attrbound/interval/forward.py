"""Forward pass: bounds on every pre-activation q_i over the input set.

- interval arithmetic (IBP) in centre-radius form, [c - r, c + r] -> W c + b -/+ |W| r
  (:meth:`attrbound.interval.ops.AffineOp.ibp`);
- l2: the first block's exact radius (:func:`attrbound.interval.perturbation.first_layer_ball`),
  intersected with the box bound;
- ``tightening="crown"`` (default): every pre-activation is also bounded by back-substitution
  (CROWN, Zhang et al. 2018): linear relaxations a_lo q + b_lo <= sigma(q) <= a_up q + b_up on
  each neuron's interval (:meth:`attrbound.interval.ops.Activation.relax`), propagated back to
  the input and minimised over the box (and the l2 ball); the result is intersected with IBP,
  so it is never looser. Before a ReLU only the neurons whose bound can matter are bounded
  (:func:`to_bound`), each input its own (:func:`rows_per_input`).

Every bound contains the exact value and the value as the model evaluates it: alongside IBP a
bound e on |evaluated - exact| is propagated, and the CROWN bounds (for the exact network) are
widened by it; every back-substitution step adds gamma * sum |Lambda| |v|_max for its own
float64 rounding, gamma at float64's unit (attrbound.interval.rounding.EXACT).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from attrbound.interval.graph import Net
from attrbound.interval.ops import Activation, AffineOp
from attrbound.interval.perturbation import InputSet, first_layer_ball
from attrbound.interval.rounding import EXACT, Units, center_radius, down, mag, outward, up

__all__ = ["MAX_ELEMENTS", "TIGHTENINGS", "crown", "forward", "input_unit_rows", "put_rows",
           "rows_per_input", "to_bound"]

TIGHTENINGS = ("none", "crown")
#: default size (float64 entries) of one CROWN back-substitution tensor [inputs, rows, *layer]:
#: 16 MB. glibc serves blocks above its mmap threshold (at most 32 MB) from fresh pages that
#: the kernel faults in and zeroes on every allocation, and each chunk allocates several such
#: tensors: at 2^23 (64 MB) half the time of a LeNet bound went to page faults
MAX_ELEMENTS = 2**21


def forward(
    net: Net, inset: InputSet, tightening: str, units: Units, max_elements: int
) -> list[tuple[Tensor, Tensor]]:
    """Bounds [lo, hi] [N, *pre_shapes[i]] of every pre-activation q_i over the input set (each
    containing the exact value and the value as evaluated)."""
    lo, hi = inset.lo, inset.hi
    e = torch.zeros_like(lo)  # bound on |evaluated - exact| of the current quantity
    pre: list[tuple[Tensor, Tensor]] = []
    mvecs: list[list[Tensor]] = []
    for i, act in enumerate(net.acts):
        mv = []
        for op in net.blocks[i]:
            lo, hi, m = op.ibp(lo, hi, units)
            mv.append(m)
            e = op.eval_error(e, m, units)
        mvecs.append(mv)
        tight: tuple[Tensor, Tensor] | None = None
        if i == 0 and inset.radius is not None:
            tight = first_layer_ball(net, inset, EXACT)  # widened by e below
        if tight is None and (tightening == "crown" or (i == 0 and inset.radius is not None)):
            only = to_bound(act, lo, hi, inset)  # see crown
            if only is None or bool(only.any()):
                tight = crown(net, i, pre, mvecs, inset, units, max_elements, only)
        if tight is not None:
            lc, uc = outward(tight[0], tight[1], e)
            lo, hi = torch.maximum(lo, lc), torch.minimum(hi, uc)
        pre.append((lo, hi))
        lip = act.lipschitz(lo, hi, units)
        vlo, vhi = act.range(lo, hi, units)
        # evaluated and exact pre-activations may lie on either side of softplus' threshold,
        # where torch's value jumps down by act.jump (0 for the other activations)
        e = up(lip * e + act.value_err(mag(vlo, vhi), mag(lo, hi), units) + act.jump)
        lo, hi = vlo, vhi
    return pre


def crown(
    net: Net,
    j: int,
    pre: list[tuple[Tensor, Tensor]],
    mvecs: list[list[Tensor]],
    inset: InputSet,
    units: Units,
    max_elements: int,
    only: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds [N, *shape(q_j)] of pre-activation j by back-substitution.

    ``only``: bool [N, prod(shape)], the (flattened) neurons to bound per input (None: all);
    the others get (-inf, inf) (no information; the caller intersects with IBP). Before a
    ReLU the caller passes :func:`to_bound`'s: a neuron IBP puts at q <= 0 outputs exactly 0
    with derivative 0 whatever its interval, and on a box set a stably active one is skipped
    too (see there).

    Rows Lambda = +/- e_i, per input (:func:`rows_per_input`, padded to the chunk's widest
    input). Through blocks[j] the rows of a chunk's neurons are computed once for all its
    inputs (the +rows only); from the first relaxation on they are per input ([n, 2R, *s]).
    One chunk holds at most about ``max_elements`` float64 entries. ``pre``: the bounds of
    q_0 .. q_{j-1}; ``mvecs``: per block, each layer's mvec (AffineOp.ibp)."""
    shape = net.pre_shapes[j]
    k = math.prod(shape)
    n = inset.lo.shape[0]
    per = net.widest(j)
    if only is None:
        only = torch.ones((n, k), dtype=torch.bool, device=inset.lo.device)
    lower = inset.lo.new_full((n, k), -math.inf)
    upper = inset.lo.new_full((n, k), math.inf)
    for s, pos, valid in rows_per_input(only, max_elements // (2 * per)):
        uniq, inv = torch.unique(pos, return_inverse=True)  # the chunk's neurons, once
        u = uniq.numel()
        lam = input_unit_rows(uniq.unsqueeze(0), k)[0].reshape((u,) + shape)
        const = lam.new_zeros(u)
        err = lam.new_zeros(pos.shape[0], u)
        lam, const, err = _through_block(net.blocks[j], [v[s] for v in mvecs[j]], lam, True,
                                         const, err)
        if j == 0:
            lo, hi = _concretize(lam, True, const, err, inset.part(s))
            lo, hi = lo.gather(1, inv), hi.gather(1, inv)
        else:
            lam_s = lam[inv]  # [m, r, *s_in]: each input's rows
            const_s, err_s = const[inv], err.gather(1, inv)
            lam_s = torch.cat([lam_s, -lam_s], 1)
            const_s = torch.cat([const_s, -const_s], 1)
            err_s = torch.cat([err_s, err_s], 1)
            r = pos.shape[1]
            for i in range(j - 1, -1, -1):
                block, mv = net.blocks[i], [v[s] for v in mvecs[i]]
                nxt = (block[-1], mv[-1]) if block and not block[-1].exact else None
                lam_s, const_s, err_s = _relax_step(net.acts[i], pre[i][0][s], pre[i][1][s],
                                                    lam_s, const_s, err_s, units, nxt)
                lam_s, const_s, err_s = _through_block(block, mv, lam_s, False, const_s, err_s,
                                                       counted=nxt is not None)
            lo2, _ = _concretize(lam_s, False, const_s, err_s, inset.part(s))
            lo, hi = lo2[:, :r], -lo2[:, r:]
        put_rows(lower, upper, s, pos, valid, lo, hi)
    return lower.reshape((n,) + shape), upper.reshape((n,) + shape)


def to_bound(act: Activation, lo: Tensor, hi: Tensor, inset: InputSet,
             values_used: bool = False) -> Tensor | None:
    """The neurons [N, prod(shape)] (bool) of a pre-activation with IBP bounds lo, hi [N, *s]
    that CROWN tightens before ``act`` (None: all of them).

    Before a ReLU (``act.zero_below``): not those with hi <= 0 (exactly 0 with derivative 0
    whatever the interval, so tightening them changes nothing), and on a box set (l-inf: no
    ball) not those with lo > 0 either, unless ``values_used``. A stably active neuron's
    relaxation is the identity whatever its interval, so where the ReLU's outputs only feed
    linear ops (every later pre-activation is itself bounded by CROWN, which uses the
    relaxation, not the interval) its bound only reaches later layers through their IBP and
    the float64 rounding terms. That IBP can still beat CROWN on a later neuron and decide its
    state: a trade of tightness for time. Measured: bit-equal on the bench LeNet (l-inf
    0.002-0.03) and ResNet-BN (0.001-0.01) and in test_interval; on a tiny untrained residual
    network at l-inf 0.08 (a review's search) the summed saliency width grew 1.8% (input x
    gradient 1.9%, integrated gradients 0.08%); and it cut the CROWN rows of the LeNet's
    second layer 8x for integrated gradients' path nodes (forward CROWN 20 s -> 1 s at 32
    steps). ``values_used``: a max pool or another activation reads the
    ReLU's output intervals themselves (a graph; its window decisions and relaxation need
    them: one certified euclidean went 1.4e-6 -> 0.038 on a CNN with F.max_pool2d when they
    were skipped). On l2 sets CROWN's ball makes those intervals much narrower than IBP's
    box, and the later IBP gains from them (0.06% on the ResNet-BN at l2 0.02), so they are
    kept."""
    if not act.zero_below:
        return None
    live = hi > 0
    if inset.radius is None and not values_used:
        live = live & (lo <= 0)
    return live.flatten(1)


def rows_per_input(only: Tensor, budget: int) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """Chunks (s, pos, valid) of the True entries of ``only`` [N, k] (bool): inputs s (a
    slice), pos [m, r] (int64) the flattened neurons of each input in ascending order, padded
    with neurons it does not bound (``valid`` [m, r] False) to the chunk's widest input. Each
    chunk has m * r <= max(budget, r) entries, r <= max(1, budget)."""
    n = only.shape[0]
    count = only.sum(1)
    order = torch.argsort((~only).to(torch.int8), dim=1, stable=True)  # True first
    rows = max(1, min(int(count.max()) if n else 1, budget))
    nb = max(1, budget // rows)
    ar = torch.arange(only.shape[1], device=only.device)
    for n0 in range(0, n, nb):
        s = slice(n0, min(n, n0 + nb))
        widest = int(count[s].max())
        for r0 in range(0, widest, rows):
            r1 = min(widest, r0 + rows)
            yield s, order[s, r0:r1], ar[r0:r1].unsqueeze(0) < count[s].unsqueeze(1)


def input_unit_rows(pos: Tensor, k: int) -> Tensor:
    """E [m, r, k] float64 on pos' device, E[i, j, pos[i, j]] = 1: each input's rows of a
    :func:`rows_per_input` chunk."""
    eye = torch.zeros(pos.shape + (k,), dtype=torch.float64, device=pos.device)
    return eye.scatter_(2, pos.unsqueeze(2), 1.0)


def put_rows(lower: Tensor, upper: Tensor, s: slice, pos: Tensor, valid: Tensor, lo: Tensor,
             hi: Tensor) -> None:
    """Write a :func:`rows_per_input` chunk's results lo, hi [m, r] into lower, upper [N, k]
    in place; padding entries (``valid`` False) keep what is there (the "no bound" value)."""
    for out, val in ((lower, lo), (upper, hi)):
        view = out[s]
        view.scatter_(1, pos, torch.where(valid, val, view.gather(1, pos)))


def _absdot(lam: Tensor, vec: Tensor, shared: bool) -> Tensor:
    """sum over features of |Lambda| * vec: Lambda [R, *s] (shared by all inputs) or [n, R, *s],
    vec [n, *s] -> [n, R]."""
    return _dot(lam.abs(), vec, shared)


def _dot(lam: Tensor, vec: Tensor, shared: bool) -> Tensor:
    """sum over features of Lambda * vec (shapes as for _absdot)."""
    a = lam.flatten(-(vec.dim() - 1)) if vec.dim() > 1 else lam
    v = vec.flatten(1)
    if shared:
        return v @ a.transpose(0, 1)
    return torch.bmm(a, v.unsqueeze(2)).squeeze(2)


def _through_block(
    block: list[AffineOp], mv: list[Tensor], lam: Tensor, shared: bool, const: Tensor,
    err: Tensor, counted: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Lambda . v_out = (Lambda W) . v_in + Lambda . b, layer by layer backwards; each layer adds
    gamma * |Lambda| . (|W| |v_in|_max + |b|) to ``err`` [n, R] (the rounding of Lambda W and of
    Lambda . b, both float64 dot products: gamma at float64's unit, EXACT). ``counted``: the
    last layer's term is already in ``err``."""
    for o in range(len(block) - 1, -1, -1):
        op = block[o]
        if not op.exact:
            if not (counted and o == len(block) - 1):
                err = err + op.crown_gamma(EXACT) * _absdot(lam, mv[o], shared)
            if op.bias is not None:
                full = op.bias.expand(op.out_shape).reshape(-1)
                const = const + lam.flatten(-len(op.out_shape)) @ full
        lam = op.backward(lam, shared)
    return lam, const, err


def _relax_step(
    act: Activation,
    lo: Tensor,
    hi: Tensor,
    lam: Tensor,
    const: Tensor,
    err: Tensor,
    units: Units,
    next_op: tuple[AffineOp, Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Lambda . sigma(q) >= (Lambda+ a_lo + Lambda- a_up) . q + Lambda+ . b_lo + Lambda- . b_up
    for q in [lo, hi], computed as Lambda a_mid + |Lambda| a_half with a_mid = (a_lo + a_up) / 2,
    a_half = (a_lo - a_up) / 2 (likewise b); Lambda [n, R, *s], one set of rows per input.

    The rounding of the new Lambda and constant (including that of a_mid, a_half) adds
    3 gamma * |Lambda| . (|a|_max |q|_max + |b|_max) + 2 u |const| to ``err`` (gamma and u of
    float64, EXACT; ``units``, the model's, only for the relaxation itself); ``next_op`` =
    (layer, its mvec) whose output is q: its error term gamma |Lambda'| . mvec is added here
    too, with |Lambda'| <= |Lambda| |a|_max (1 + 4u)."""
    a_lo, b_lo, a_up, b_up = act.relax(lo, hi, units)
    ab = lam.abs()
    amax = torch.maximum(a_lo.abs(), a_up.abs())
    vec = amax * mag(lo, hi) + torch.maximum(b_lo.abs(), b_up.abs())
    cols = [(0.5 * (b_lo - b_up)).flatten(1), vec.flatten(1)]
    if next_op is not None:
        cols.append((amax * next_op[1]).flatten(1))
    both = torch.stack(cols, dim=2)  # [n, d, k]
    n, d = both.shape[:2]
    r = lam.shape[1]
    res = torch.bmm(ab.reshape(n, r, d), both)
    const = const + _dot(lam, 0.5 * (b_lo + b_up), False) + res[..., 0]
    err = err + 3 * EXACT.gamma(d) * res[..., 1]
    if next_op is not None:
        err = err + next_op[0].crown_gamma(EXACT) * (1 + 4 * EXACT.u) * res[..., 2]
    new = lam * (0.5 * (a_lo + a_up)).unsqueeze(1)
    new.addcmul_(ab, (0.5 * (a_lo - a_up)).unsqueeze(1))
    err = err + 2 * EXACT.u * const.abs()
    return new, const, err


def _concretize(
    lam: Tensor, shared: bool, const: Tensor, err: Tensor, inset: InputSet
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds [n, R] of const + Lambda . z - / + err over the box (and the l2
    ball): Lambda . c -/+ |Lambda| . r, and Lambda . x -/+ rho ||Lambda||_2."""
    d = math.prod(inset.lo.shape[1:])
    gd = EXACT.gamma(d)  # the bound's own float64 dot products
    c, rad = center_radius(inset.lo, inset.hi)
    ball = inset.radius is not None and inset.center is not None
    flat = lam.reshape(lam.shape[: 1 if shared else 2] + (d,))
    vecs = [c, rad, c.abs() + rad]
    if ball:
        assert inset.center is not None
        vecs += [inset.center, inset.center.abs()]
    stacked = torch.stack([v.reshape(-1, d) for v in vecs], dim=2)  # [n, d, k]
    res_abs = torch.matmul(flat.abs(), stacked[..., 1:3] if not ball else stacked[..., [1, 2, 4]])
    res = torch.matmul(flat, stacked[..., [0, 3]] if ball else stacked[..., :1])
    dot, width, slack = res[..., 0], res_abs[..., 0], 2 * gd * res_abs[..., 1]
    lo, hi = dot - width - slack, dot + width + slack
    if ball:
        assert inset.radius is not None
        norms = up(flat.norm(dim=-1) * (1 + gd))
        if shared:
            norms = norms.unsqueeze(0)
        reach = inset.radius.unsqueeze(1) * norms
        dotx = res[..., 1]
        slack = 2 * gd * (res_abs[..., 2] + reach)
        lo = torch.maximum(lo, dotx - reach - slack)
        hi = torch.minimum(hi, dotx + reach + slack)
    if const.dim() == 1:
        const = const.unsqueeze(0)
    margin = 4 * EXACT.u * (const.abs() + mag(lo, hi) + err) + EXACT.abs_tiny(d)
    return down(const + lo - err - margin), up(const + hi + err + margin)
