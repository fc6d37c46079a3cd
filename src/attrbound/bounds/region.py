"""The region bound (docs/design.md section 3.2): U(x) = eps * sup_{z in P(x)} ||J(z)||_{p->2}.

A(x + delta) - A(x) = int_0^1 J(x + t delta) delta dt, so the sup of the operator norm over
the perturbation set P(x) bounds the deviation. The sup is estimated, per input, by the
maximum of the operator norm at x (exactly taylor's solve), at random points of P(x), at
points the caller passes (e.g. attack iterates) and along projected gradient ascent on
||J(z)||_{p->2} inside P(x):

- every point z other than x is scored by a cheap lower estimate of ||J(z)||_{p->2}
  (||J(z) w|| with w x's singular / sign vector, refined by power / sign steps at z): one
  product per random point; the caller's points are searched along their segments from x
  (:func:`_segment_candidates`), one product from x's vector and one from the segment's
  direction per candidate, then ``points_iter`` refinement steps for each point itself and
  its best interior candidate;
- the ascent climbs phi(z) = u^T J(z) w with (u, w) tracking the top singular pair (l2) or
  (J s / ||J s||, s) (l-inf) by alternating half-steps of the power / sign iteration
  (:func:`attrbound.linalg.bilinear_gradient`);
- the best-scoring point gets a tight solve; operator_norm is the largest value found, so
  region >= taylor always.

The sup is an estimate, so the bound is practical, not certified.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attrbound.attributions import Attribution
from attrbound.bounds.solve import Call, Estimate, coarse_map, in_rows, prepare, solve
from attrbound.errors import AttrboundError
from attrbound.geometry import (
    default_step_size,
    per_example,
    project,
    sample_ball,
    steepest_direction,
    unit,
)
from attrbound.linalg import JacobianOperator, bilinear_gradient, clipped_box, is_symmetric
from attrbound.results import BoundResult

#: the kinds of point the largest operator norm can come from (BoundResult.source)
SOURCES = ("x", "random", "points", "ascent")


def check_points(
    points: Any, x: Tensor, eps: float, norm: str, domain: tuple[float, float] | None
) -> Tensor | None:
    """Caller points as [B, P, *S] (or [B, *S], one per input) inside the perturbation set
    (projected), or None."""
    if points is None:
        return None
    if not isinstance(points, Tensor):
        raise AttrboundError(f"points must be a tensor [B, P, *S], got {type(points).__name__}.")
    shape = tuple(x.shape)
    if tuple(points.shape) == shape:
        points = points.unsqueeze(1)
    if points.dim() != x.dim() + 1 or points.shape[0] != shape[0] or tuple(
        points.shape[2:]
    ) != shape[1:] or points.shape[1] < 1:
        raise AttrboundError(
            f"points must be shaped [B, P, {', '.join(map(str, shape[1:]))}] with B = "
            f"{shape[0]}, got {tuple(points.shape)}."
        )
    points = points.detach().to(device=x.device, dtype=x.dtype)
    if not torch.isfinite(points).all():
        raise AttrboundError("points contain NaN or infinite values.")
    p = points.shape[1]
    xr = x.unsqueeze(1).expand_as(points).reshape((-1,) + shape[1:])
    flat = points.reshape((-1,) + shape[1:])
    inside = xr + project(flat - xr, xr, eps, norm, domain)
    return inside.reshape((shape[0], p) + shape[1:])


# ----------------------------------------------------------------------------------------
# Scoring and ascent (every step batched over the points)
# ----------------------------------------------------------------------------------------


def _vertex(g: Tensor, w: Tensor, box: tuple[Tensor, Tensor] | None, eps: float) -> Tensor:
    """The l-inf step to the best vertex for the linear function <g, .>: sign(g) (zeros keep
    w's entries), or with a clipped box (c, r) [N, n] the vertex (c + r sign(g)) / eps."""
    if box is None:
        return torch.where(g == 0, w, torch.sign(g))
    c, r = (t.reshape(g.shape) for t in box)
    return (c + r * torch.sign(g)) / eps


def _screen(
    attr: Attribution, z: Tensor, target: Tensor, warm: Tensor, norm: str, iters: int,
    box: tuple[Tensor, Tensor] | None = None, eps: float = 1.0,
) -> Tensor:
    """Cheap lower estimate of ||J(z)||_{p->2}, z [N, *S], from x's vector warm [N, n]:
    ||J(z) w|| after ``iters`` - 1 power-iteration steps w <- J^T J w / ||J^T J w||
    from w = warm (l2, unit w: a value <= sigma_max), or sign-iteration steps
    s <- sign(J^T J s) from s = warm (l-inf: a feasible value ||J s||); 2 iters - 1
    products per point (``screen_iter`` for random points, ``points_iter`` for the
    caller's)."""
    op = JacobianOperator(attr, z, target)
    w = warm
    for _ in range(iters - 1):
        m = op.gram(w)
        w = unit(m) if norm == "2" else _vertex(m, w, box, eps)
    return op.matvec(w).flatten(1).norm(dim=1)


def _ascend(
    attr: Attribution, x: Tensor, target: Tensor, z: Tensor, w: Tensor, eps: float, norm: str,
    domain: tuple[float, float] | None, opts: dict[str, Any],
    box: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Projected gradient ascent on ||J(z)||_{p->2} from z [N, *S]; (best score [N], point).

    phi(z) = u^T J(z) w with w the right singular vector (l2, unit) or a sign vector s
    (l-inf) and u = J w / ||J w||. Step t computes grad phi and, alternately, J(z) w (then
    u <- J w / ||J w||) or J(z)^T u (then w <- J^T u / ||J^T u|| or sign(J^T u)), i.e. half a
    power / sign iteration per step, tracking the pair as z moves. Every iterate is scored by
    the lower value it yields (||J w||_2, ||J^T u||_2 for l2, <J^T u, w> at the best vertex w
    for l-inf, ||J^T u||_1 on the cube, or of the clipped ``box``), then
    z <- x + Proj(z - x + alpha dir(grad)), dir = sign (l-inf) or grad / ||grad||_2 (l2).

    Integrated gradients climb the coarser quadrature of ``coarse_ig_steps``
    (:func:`~attrbound.bounds.solve.coarse_map`); the best point
    is then rescored with the full map and the vector tracked there, so the score returned
    is always a lower value of the full map's ||J(z)||_{p->2}.
    """
    full, attr = attr, coarse_map(attr, opts["coarse_ig_steps"])
    steps = opts["ascent_steps"]
    alpha = opts["step_size"] or default_step_size(eps, steps)
    symmetric = is_symmetric(attr)
    w = w.reshape(z.shape)
    jw = JacobianOperator(attr, z, target).matvec(w)
    best = jw.flatten(1).norm(dim=1)
    best_z, best_w = z, w
    u = unit(jw)
    for t in range(steps):
        transpose = t % 2 == 0
        if transpose or not symmetric:
            g, aux = bilinear_gradient(attr, z, target, u, w, transpose=transpose)
        else:  # J = J^T: J w = J^T w by the reverse-mode path, cheaper than forward mode
            g, aux = bilinear_gradient(attr, z, target, w, u, transpose=True)
        if transpose:  # aux = J(z)^T u
            flat = aux.flatten(1)
            if norm == "2":
                score, w = flat.norm(dim=1), unit(aux)
            else:  # <u, J w> at the best vertex w: a feasible value of the (clipped) set
                w = _vertex(aux, w, box, eps)
                score = (flat * w.flatten(1)).sum(dim=1)
        else:  # aux = J(z) w
            score = aux.flatten(1).norm(dim=1)
            u = unit(aux)
        better = score > best
        best = torch.where(better, score, best)
        best_z = torch.where(per_example(better, z), z, best_z)
        best_w = torch.where(per_example(better, z), w, best_w)
        z = x + project(z - x + alpha * steepest_direction(g, norm), x, eps, norm, domain)
        if domain is not None:
            z = z.clamp(domain[0], domain[1])
    score = JacobianOperator(attr, z, target).matvec(w).flatten(1).norm(dim=1)
    better = score > best
    best, best_z = torch.where(better, score, best), torch.where(per_example(better, z), z, best_z)
    if attr is not full:
        best_w = torch.where(per_example(better, z), w, best_w)
        best = JacobianOperator(full, best_z, target).matvec(best_w).flatten(1).norm(dim=1)
    return best, best_z


#: where the caller's points' segments are searched, z = x + t (p - x)
SEGMENT = (0.25, 0.5, 0.75, 1.0)


def _segment_candidates(
    x: Tensor, points: Tensor, eps: float, norm: str, box: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor]:
    """Candidates on the segments from x [B, *S] to the caller's points [P, B, *S] (each
    projected into the set first), and each one's own start vector:
    (z [P * len(SEGMENT), B, *S], w [P * len(SEGMENT), B, n]).

    A(p) - A(x) = int_0^1 J(x + t (p - x)) (p - x) dt, so where an attack moved the map by D
    the operator norm along its segment reaches D / ||p - x||_p somewhere, often inside it (a
    sharp surrogate changes J along the way) rather than at p. The start vector is the
    segment's own direction, a feasible vector of the set: (p - x) / ||p - x||_2 for l2,
    (p - x) / eps for l-inf (a point of the clipped box / eps; at a vertex when the attack
    ended at one)."""
    delta = points - x.unsqueeze(0)
    flat = delta.flatten(2)
    if norm == "2":
        w = flat / flat.norm(dim=2, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    else:
        w = flat / eps
        if box is not None:  # inside the clipped box already (points were projected)
            c, r = box
            w = torch.minimum(torch.maximum(w, (c - r) / eps), (c + r) / eps)
    t = torch.tensor(SEGMENT, dtype=x.dtype, device=x.device)
    cand = x + t.reshape((-1,) + (1,) * x.dim()).unsqueeze(1) * delta.unsqueeze(0)
    p = points.shape[0]
    return cand.reshape((len(SEGMENT) * p,) + tuple(x.shape)), w.repeat(len(SEGMENT), 1, 1)


# ----------------------------------------------------------------------------------------
# One pass, and the method
# ----------------------------------------------------------------------------------------


@dataclass
class RegionPass:
    """What one pass of region yields, per input [B]: the estimate of the sup (``best``),
    taylor's solve at x (``at_x``, with its time ``seconds_x``), the point where the sup was
    found (``argmax`` [B, *S]) and its kind (``source``, one of :data:`SOURCES`)."""

    best: Estimate
    at_x: Estimate
    seconds_x: float
    argmax: Tensor
    source: list[str]


def region_pass(
    attr: Attribution, x: Tensor, target: Tensor, eps: float, norm: str,
    domain: tuple[float, float] | None, opts: dict[str, Any],
    gens: tuple[torch.Generator, torch.Generator], points: Tensor | None, limit: int,
) -> RegionPass:
    """eps * sup_{z in P(x)} ||J(z)||_{p->2} estimated (without the eps) for one pass
    x [B, *S]; points: [P, B, *S] or None; at most ``limit`` points per batched product."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    gen = gens[1]
    started = time.perf_counter()
    box = clipped_box(x, eps, domain) if norm == "inf" else None
    sx = solve(attr, x, target, norm, opts, gens[0], box=box, eps=eps)
    seconds_x = time.perf_counter() - started
    at_x = Estimate.of(sx)
    best = torch.full((b,), -math.inf, dtype=sx.upper.dtype, device=x.device)
    best_z = x
    code = torch.zeros(b, dtype=torch.long, device=x.device)
    rows = torch.arange(b, device=x.device)

    def consider(score: Tensor, z: Tensor, kind: int) -> None:
        nonlocal best, best_z, code
        better = score > best
        best = torch.where(better, score, best)
        best_z = torch.where(per_example(better, z), z, best_z)
        code = torch.where(better, torch.full_like(code, kind), code)

    search = coarse_map(attr, opts["coarse_ig_steps"])

    def screen(m: Attribution, flat: Tensor, reps: int, iters: int,
               warm: Tensor | None = None) -> Tensor:
        """Scores of flat [reps * B, *S] (candidate-major), from x's vector or ``warm``."""
        tt, of = target.repeat(reps), rows.repeat(reps)
        warm = sx.vector.repeat(reps, 1) if warm is None else warm
        bx = None if box is None else (box[0].repeat(reps, 1), box[1].repeat(reps, 1))
        (scores,) = in_rows(
            lambda sl: (_screen(m.for_rows(of[sl], x.shape), flat[sl], tt[sl], warm[sl], norm,
                                iters, None if bx is None else (bx[0][sl], bx[1][sl]), eps),),
            reps * b, limit,
        )
        return scores

    if opts["random"] > 0:
        cand = sample_ball(x, eps, norm, opts["random"], gen, domain)
        k = cand.shape[0]
        top, idx = screen(search, cand.reshape((k * b,) + shape), k,
                          opts["screen_iter"]).reshape(k, b).max(0)
        picked = cand[idx, rows]
        if search is not attr:  # a score of the coarse map is no value of the full one
            top = screen(attr, picked, 1, opts["screen_iter"])
        consider(top, picked, 1)

    if points is not None:
        cand, warm = _segment_candidates(x, points, eps, norm, box)  # [T * P, B, ...]
        k, steps = cand.shape[0], len(SEGMENT)
        flat, flat_warm = cand.reshape((k * b,) + shape), warm.reshape(k * b, -1)
        own = screen(search, flat, k, 1, flat_warm).reshape(k, b)  # 1 product each
        from_x = screen(search, flat, k, 1).reshape(k, b)  # 1 product each
        start = torch.where((own >= from_x)[..., None], warm,
                            sx.vector.unsqueeze(0).expand(k, -1, -1))
        # per caller point: the point itself and its best-scoring interior candidate
        p = k // steps
        inner = torch.maximum(own, from_x).reshape(steps, p, b)[:-1].argmax(dim=0)  # [P, B]
        pick = torch.cat([inner * p + torch.arange(p, device=x.device)[:, None],
                          (steps - 1) * p + torch.arange(p, device=x.device)[:, None]
                          .expand(p, b)])  # [2P, B] indices into the T * P candidates
        picked, start = cand[pick, rows], start[pick, rows]
        iters = opts["points_iter"]
        refined = screen(search, picked.reshape((2 * p * b,) + shape), 2 * p, iters,
                         start.reshape(2 * p * b, -1)).reshape(2 * p, b)
        top, j = refined.max(dim=0)
        picked, start = picked[j, rows], start[j, rows]
        if search is not attr:  # a score of the coarse map is no value of the full one
            top = screen(attr, picked, 1, iters, start)
        consider(top, picked, 2)

    if opts["ascent_steps"] > 0:
        r = opts["restarts"]
        first = torch.where(per_example(torch.isfinite(best), x), best_z, x)
        starts = [first] + [sample_ball(x, eps, norm, 1, gen, domain)[0] for _ in range(r - 1)]
        z0, xx = torch.cat(starts), x.repeat((r,) + (1,) * len(shape))
        tt, ww, of = target.repeat(r), sx.vector.repeat(r, 1), rows.repeat(r)
        bx = None if box is None else (box[0].repeat(r, 1), box[1].repeat(r, 1))
        scores, zs = in_rows(
            lambda sl: _ascend(attr.for_rows(of[sl], x.shape), xx[sl], tt[sl], z0[sl], ww[sl],
                               eps, norm, domain, opts,
                               None if bx is None else (bx[0][sl], bx[1][sl])),
            r * b, limit,
        )
        top, idx = scores.reshape(r, b).max(dim=0)
        consider(top, zs.reshape((r, b) + shape)[idx, rows], 3)

    if not bool(torch.isfinite(best).any()):
        return RegionPass(at_x, at_x, seconds_x, x.clone(), [SOURCES[0]] * b)
    sb = solve(attr, best_z, target, norm, opts, gen, box=box, eps=eps)
    value = torch.maximum(sb.upper, best)  # the lower estimate can only add safety
    use = value > sx.upper

    def pick(new: Tensor | None, old: Tensor | None) -> Tensor | None:
        return None if old is None or new is None else torch.where(use, new, old)

    lower = None
    if sx.lower is not None and sb.lower is not None:  # every score is a feasible lower
        lower = torch.maximum(torch.maximum(sx.lower, sb.lower), best)  # value of the sup
    top = Estimate(
        operator_norm=torch.where(use, value, at_x.operator_norm),
        attr_norm=at_x.attr_norm,
        iterations=torch.where(use, sb.iterations, at_x.iterations),
        converged=torch.where(use, sb.converged, at_x.converged),
        lower=lower,
        operator_norm_v0=pick(sb.v0, at_x.operator_norm_v0),
        operator_norm_ritz=pick(sb.ritz, at_x.operator_norm_ritz),
    )
    source = [SOURCES[int(c)] if u else SOURCES[0] for c, u in zip(code, use, strict=True)]
    return RegionPass(top, at_x, seconds_x, torch.where(per_example(use, x), best_z, x), source)


#: runs of region's own attack (option ``attack_steps``): the spectral start and one random
ATTACK_RUNS = 2


def attack_points(
    model: nn.Module, x: Tensor, attr: Attribution, *, eps: float, norm: str, target: Tensor,
    domain: tuple[float, float] | None, surrogate_beta: float | None, steps: int, seed: int,
    batch_size: int | None = None,
) -> Tensor:
    """Points [B, 1 + ATTACK_RUNS, *S] for region's segment search, from a short pgd attack
    on the same map (on the surrogate when ``surrogate_beta`` is set): its result and each
    run's best iterate (:func:`attrbound.attacks.attack`, ``steps`` steps, the default
    schedule, ``ATTACK_RUNS`` runs, ``seed``, ``batch_size`` inputs per pass: region's
    option, None for the attack's default), as the campaign passes its attacks' points.

    Why: at l-inf region's own ascent on ||J(z)|| climbs poorly (docs/design.md 3.2), while
    the attack goes to the vertices where the map moves most, and the ascent started there
    finds more (benchmarks/results/region_search.md: with 5 steps no input beaten, where
    region alone was beaten once).
    """
    from attrbound.attacks import attack  # bounds -> attacks: region searches their points

    res = attack(model, x, eps=eps, norm=norm, attribution=attr, method="pgd", steps=steps,
                 restarts=ATTACK_RUNS, seed=seed, surrogate_beta=surrogate_beta,
                 target=target, domain=domain,
                 batch_size=None if batch_size is None else batch_size * ATTACK_RUNS)
    return torch.cat([res.x_adv.unsqueeze(1), res.points], dim=1)


@torch.no_grad()  # torch.func transforms inside still differentiate; no graph to the weights
def run(
    model: nn.Module, x: Tensor, attr: Attribution, *, eps: float, norm: str,
    target: int | Tensor | None, domain: tuple[float, float] | None,
    surrogate_beta: float | None, options: dict[str, Any],
) -> BoundResult:
    """method="region" of :func:`attrbound.bound`, on checked arguments (x [B, *S]
    detached, norm parsed, eps > 0, attr an :class:`Attribution`); result tensors [B], plus
    ``argmax`` [B, *S], ``source`` and ``at_x`` (taylor's bound, from the solves at x)."""
    started = time.perf_counter()
    call: Call = prepare("region", model, x, attr, target=target,
                         surrogate_beta=surrogate_beta, options=options, inside=domain)
    points = check_points(call.opts["points"], x, eps, norm, domain)
    call.opts["points"] = points  # [B, P, *S]: the caller's points, as recorded in the result
    if call.opts["attack_steps"] > 0:
        found = attack_points(model, x, attr, eps=eps, norm=norm, target=call.target,
                              domain=domain, surrogate_beta=call.beta,
                              steps=call.opts["attack_steps"], seed=int(call.opts["seed"]),
                              batch_size=call.opts["batch_size"])
        found = check_points(found, x, eps, norm, domain)
        points = found if points is None else torch.cat([points, found], dim=1)
    parts = []
    for sl, chunk in call.passes(x):
        pts = None if points is None else points[sl].transpose(0, 1)
        parts.append(region_pass(chunk, x[sl], call.target[sl], eps, norm, domain, call.opts,
                                 call.gens, pts, call.limit))
    at_x = call.result("taylor", Estimate.cat([p.at_x for p in parts]), eps=eps, norm=norm,
                       seconds=sum(p.seconds_x for p in parts), from_region=True)
    return call.result(
        "region", Estimate.cat([p.best for p in parts]), eps=eps, norm=norm,
        seconds=time.perf_counter() - started, at_x=at_x,
        argmax=torch.cat([p.argmax for p in parts]),
        source=[s for p in parts for s in p.source],
    )
