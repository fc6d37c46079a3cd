"""Independent references the tests compare attrbound against (docs/design.md sections 3-5).

Each reference computes the same quantity as a part of attrbound by a different, plainer
route: dense Jacobians by ``torch.autograd.functional.jacobian`` or one row at a time, their
SVD and eigen-decompositions, the inf -> 2 norm and the worst case over a cube by enumerating
every sign vector, hand-written projected gradient ascent, finite differences. They use
nothing of attrbound but an attribution's raw ``attribute(x, target)`` (the map under test)
where a test needs that map; projections and ball samples are re-implemented here.

Conventions: a batch is x [B, *S] with n = prod(S) features per example; a "map" is a
function fn: [B, *S] -> [B, *S] whose example b depends on x_b only; dense matrices are
[B, n, n]. Everything is meant for float64 and small n (enumerations cost 2^n).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn

import attrbound

Map = Callable[[Tensor], Tensor]

#: the largest n for which the enumerations below are allowed (2^n sign vectors)
MAX_ENUMERATION = 20


# ----------------------------------------------------------------------------------------
# Dense Jacobians of attribution maps
# ----------------------------------------------------------------------------------------


def map_jacobian(fn: Map, x: Tensor) -> Tensor:
    """J_b = d fn(x)_b / d x_b for every example, by ``torch.autograd.functional.jacobian``.

    fn: [B, *S] -> [B, *S], called on one example at a time ([1, *S]). Returns [B, n, n]
    with J_b[i, j] = d fn_i / d x_j (flattened features).
    """
    shape, n = tuple(x.shape[1:]), x[0].numel()
    mats = []
    for i in range(x.shape[0]):

        def one(z: Tensor) -> Tensor:
            return fn(z.reshape((1,) + shape)).reshape(n)

        mats.append(torch.autograd.functional.jacobian(one, x[i].reshape(n)))
    return torch.stack(mats)


def jacobian_by_rows(fn: Map, x: Tensor) -> Tensor:
    """The same [B, n, n] as :func:`map_jacobian`, by explicit loops: row i of every J_b is
    the gradient of sum_b fn(x)_{b,i} (examples are independent), one reverse pass per row."""
    b, n = x.shape[0], x[0].numel()
    z = x.detach().clone().requires_grad_(True)
    out = fn(z).reshape(b, n)
    rows = []
    for i in range(n):
        (g,) = torch.autograd.grad(out[:, i].sum(), z, retain_graph=i < n - 1)
        rows.append(g.reshape(b, n))
    return torch.stack(rows, dim=1)


def _targets(model: nn.Module, x: Tensor, target: int | Tensor | None) -> Tensor:
    if target is None:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    t = torch.as_tensor(target, dtype=torch.long, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def full_jacobian(
    model: nn.Module,
    attribution: str | Any,
    x: Tensor,
    *,
    target: int | Tensor | None = None,
    **options: Any,
) -> Tensor:
    """J_b = dA/dx at each x_b for an attrbound attribution, [B, n, n].

    ``attribution`` is a method name (with its ``options``, e.g. ``steps=8``) or an
    Attribution object; ``target``: int, int64 [B] or None (the predicted class). Only the
    map's raw ``attribute`` is used; the Jacobian itself is :func:`map_jacobian`'s.
    """
    a = attrbound.attribution(attribution, model, **options)
    t = _targets(model, x, target)
    shape, n = tuple(x.shape[1:]), x[0].numel()
    mats = []
    for i in range(x.shape[0]):

        def one(z: Tensor, i: int = i) -> Tensor:
            return a.attribute(z.reshape((1,) + shape), t[i : i + 1]).reshape(n)

        mats.append(torch.autograd.functional.jacobian(one, x[i].reshape(n)))
    return torch.stack(mats)


def top_singular_value(j: Tensor) -> Tensor:
    """sigma_max(J_b) by a dense SVD: [B, n, m] -> [B] (the l2 -> l2 operator norm)."""
    return torch.linalg.svdvals(j)[:, 0]


def top_eigenvalue(m: Tensor) -> Tensor:
    """lambda_max of symmetric matrices by a dense eigendecomposition: [B, n, n] -> [B]."""
    return torch.linalg.eigvalsh(m)[:, -1]


# ----------------------------------------------------------------------------------------
# Enumerations: sign vectors, the inf -> 2 norm, the dual, cube vertices
# ----------------------------------------------------------------------------------------


def sign_vectors(n: int, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> Tensor:
    """Every s in {-1, 1}^n, as [2^n, n] (lexicographic order, -1 before +1)."""
    if n > MAX_ENUMERATION:
        raise ValueError(f"enumerating 2^{n} sign vectors is too many (n <= {MAX_ENUMERATION})")
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=n)), dtype=dtype,
                        device=device)


def inf_to_two_enumerated(j: Tensor, return_sign: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """||J_b||_{inf->2} = max_{s in {-1,1}^n} ||J_b s||_2 by enumerating every sign vector.

    j: [B, m, n] -> [B]; with ``return_sign`` also a maximising s [B, n]. Exact (the maximum
    of the convex function s -> ||J s|| over the cube is at a vertex), cost 2^n products.
    """
    signs = sign_vectors(j.shape[-1], j.dtype, j.device)
    values = torch.einsum("bij,kj->bki", j, signs).norm(dim=2)  # [B, 2^n]
    best, idx = values.max(dim=1)
    return (best, signs[idx]) if return_sign else best


def dual_value(m: Tensor, v: Tensor) -> Tensor:
    """F(v) = n lambda_max(M - diag(v)) + sum_i v_i by a dense eigendecomposition.

    m: symmetric [B, n, n] (M = J^T J), v: [B, n] -> [B]. For every v, F(v) >= max_s s^T M s
    = ||J||_{inf->2}^2; v = 0 gives n sigma_max(J)^2.
    """
    n = m.shape[-1]
    return n * top_eigenvalue(m - torch.diag_embed(v)) + v.sum(dim=1)


def box_vertices(x: Tensor, eps: float, domain: tuple[float, float] | None = None) -> Tensor:
    """The 2^n vertices x + eps s of each example's l-inf cube (clipped to ``domain``).

    x: [B, *S] -> [2^n, B, *S].
    """
    shape = tuple(x.shape[1:])
    signs = sign_vectors(x[0].numel(), x.dtype, x.device).reshape((-1, 1) + shape)
    pts = x.unsqueeze(0) + eps * signs
    return pts if domain is None else pts.clamp(domain[0], domain[1])


def max_deviation(fn: Map, x: Tensor, points: Tensor) -> Tensor:
    """max_p ||fn(z_p) - fn(x)||_2 per example over given points [P, B, *S] -> [B]."""
    p, b = points.shape[:2]
    base = fn(x).detach().reshape(1, b, -1)
    maps = fn(points.reshape((p * b,) + tuple(x.shape[1:]))).detach().reshape(p, b, -1)
    return (maps - base).norm(dim=2).amax(dim=0)


def vertex_max_deviation(fn: Map, x: Tensor, eps: float,
                         domain: tuple[float, float] | None = None) -> Tensor:
    """Brute force over the cube: max over its 2^n vertices of ||fn(x + eps s) - fn(x)||_2.

    x: [B, *S] -> [B]. Equal to the worst case over the whole l-inf ball when s -> fn(x + eps
    s) - fn(x) is affine (a convex norm is maximal at a vertex); a lower value otherwise.
    Each example is evaluated alone (2^n points at a time).
    """
    return torch.cat([
        max_deviation(fn, x[i : i + 1], box_vertices(x[i : i + 1], eps, domain))
        for i in range(x.shape[0])
    ])


# ----------------------------------------------------------------------------------------
# Plain saliency, the ball, and a hand-written PGD on a map
# ----------------------------------------------------------------------------------------


def autograd_saliency(model: nn.Module, target: int | Tensor, create_graph: bool = True) -> Map:
    """z -> grad_z f_target(z) by ``torch.autograd.grad`` (no torch.func, no attrbound).

    ``target``: int or int64 [B] (the batch the map is called on). With ``create_graph`` the
    result can be differentiated again (what a PGD on the map needs). [B, *S] -> [B, *S].
    """

    def saliency(z: Tensor) -> Tensor:
        if not z.requires_grad:
            z = z.detach().requires_grad_(True)
        out = model(z)
        t = torch.as_tensor(target, dtype=torch.long, device=z.device)
        logit = out[:, t] if t.dim() == 0 else out.gather(1, t[:, None])[:, 0]
        return torch.autograd.grad(logit.sum(), z, create_graph=create_graph)[0]

    return saliency


def _per_example(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape((-1,) + (1,) * (like.dim() - 1))


def project_ball(delta: Tensor, x: Tensor, eps: float, norm: str,
                 domain: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """delta mapped into {||delta||_p <= eps, x + delta in domain}: l-inf clamps each entry to
    [-eps, eps], l2 scales delta down to radius eps; then x + delta is clamped to the domain.
    Shapes: delta, x [B, *S] -> [B, *S]; norm "2" or "inf"."""
    if norm == "inf":
        delta = delta.clamp(-eps, eps)
    else:
        r = delta.flatten(1).norm(dim=1).clamp_min(1e-30)
        e = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device)  # not float / tensor,
        delta = delta * _per_example(torch.clamp(e / r, max=1.0), delta)  # which is e * (1/r)
    if domain is not None:
        delta = (x + delta).clamp(domain[0], domain[1]) - x
    return delta


def uniform_ball(x: Tensor, eps: float, norm: str, n: int,
                 generator: torch.Generator | None = None,
                 domain: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """n points uniform in each example's ball, clipped to the domain: [n, B, *S].

    l-inf: uniform in the cube; l2: a Gaussian direction times radius eps U^(1/n_features).
    Drawn in float64 on the CPU from ``generator`` in the same order as
    ``attrbound.geometry.sample_ball``, so the same generator state gives the same points.
    """
    shape = (n,) + tuple(x.shape)
    if norm == "inf":
        u = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
        delta = u.to(device=x.device, dtype=x.dtype) * eps
    else:
        d = x[0].numel()
        g = torch.randn(shape, generator=generator, dtype=torch.float64)
        g = g / g.reshape(n, x.shape[0], -1).norm(dim=2).reshape(
            (n, x.shape[0]) + (1,) * (x.dim() - 1))
        r = torch.rand((n, x.shape[0]), generator=generator, dtype=torch.float64) ** (1.0 / d)
        delta = (g * r.reshape(r.shape + (1,) * (x.dim() - 1))).to(device=x.device,
                                                                    dtype=x.dtype) * eps
    pts = x.unsqueeze(0) + delta
    return pts if domain is None else pts.clamp(domain[0], domain[1])


def plain_pgd(
    fn: Map,
    x: Tensor,
    eps: float,
    norm: str,
    *,
    steps: int = 40,
    step_size: float | None = None,
    seed: int = 0,
    start_scale: float = 0.1,
    domain: tuple[float, float] | None = None,
) -> Tensor:
    """A hand-written PGD on D(z) = ||fn(z) - fn(x)||_2; returns the largest D seen, [B].

    fn must be differentiable twice in the sense that D's gradient exists (e.g.
    :func:`autograd_saliency` with create_graph). Start delta uniform in start_scale * eps *
    [-1, 1]^n (generator seeded with ``seed``), ``steps`` steps of alpha = ``step_size``
    (default 2.5 eps / steps): l-inf delta += alpha sign(g), l2 delta += alpha g / ||g||_2,
    then :func:`project_ball` (the ball, and the domain when given). Every iterate and the
    last point are scored. No label check: for models whose label never changes.
    """
    a0 = fn(x.detach().clone()).detach()
    g = torch.Generator().manual_seed(seed)
    delta = (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * eps * start_scale
    alpha = 2.5 * eps / steps if step_size is None else step_size
    best = torch.zeros(x.shape[0], dtype=x.dtype)
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        dev = (fn(x + delta) - a0).flatten(1).norm(dim=1)
        best = torch.maximum(best, dev.detach())
        (grad,) = torch.autograd.grad(dev.sum(), delta)
        if norm == "inf":
            step = grad.sign()
        else:
            step = grad / _per_example(grad.flatten(1).norm(dim=1).clamp_min(1e-30), grad)
        delta = project_ball(delta.detach() + alpha * step, x, eps, norm, domain)
    last = (fn(x + delta.detach()) - a0).flatten(1).norm(dim=1).detach()
    return torch.maximum(best, last)


def set_points(x: Tensor, eps: float, norm: str, n: int, seed: int) -> Tensor:
    """Points of the perturbation set (domain [0, 1]): n uniform samples, n random vertices
    (l-inf) or sphere points (l2), and x itself: [2n + 1, B, *S]."""
    g = torch.Generator().manual_seed(seed)
    uniform = uniform_ball(x, eps, norm, n, generator=g)
    signs = torch.randint(0, 2, (n,) + tuple(x.shape), generator=g).to(x.dtype) * 2 - 1
    if norm == "inf":
        edge = (x.unsqueeze(0) + eps * signs).clamp(0, 1)
    else:
        d = torch.randn((n,) + tuple(x.shape), generator=g, dtype=torch.float64).to(x.dtype)
        d = d / d.flatten(2).norm(dim=2).reshape(n, x.shape[0], *([1] * (x.dim() - 1)))
        edge = (x.unsqueeze(0) + eps * d).clamp(0, 1)
    return torch.cat([uniform, edge, x.unsqueeze(0)])


def directional_ascent_points(attr: Any, x: Tensor, target: Tensor, eps: float, norm: str,
                              steps: int = 4, seed: int = 0, runs: int = 2) -> Tensor:
    """Iterates of projected ascent on c . A(z) for ``runs`` random directions c: points where
    single features of the map move most (domain [0, 1], step 0.4 eps). [runs*steps, B, *S].

    ``attr`` is anything with ``attribute(z, target)`` (the map under test)."""
    g = torch.Generator().manual_seed(seed)
    pts = []
    for _ in range(runs):
        c = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
        z = uniform_ball(x, eps, norm, 1, generator=g)[0]
        for _ in range(steps):
            grad = torch.func.grad(lambda u, c=c: (c * attr.attribute(u, target)).sum())(z)
            if norm == "inf":
                step = grad.sign()
            else:
                step = grad / _per_example(grad.flatten(1).norm(dim=1).clamp_min(1e-30), grad)
            z = x + project_ball(z - x + 0.4 * eps * step, x, eps, norm)
            pts.append(z.detach())
    return torch.stack(pts)


def maps_at(attr: Any, points: Tensor, target: Tensor) -> Tensor:
    """A(z) at points [P, B, *S] (targets [B], repeated per point) -> [P, B, *S]."""
    p, b = points.shape[:2]
    out = attr.attribute(points.reshape((p * b,) + tuple(points.shape[2:])), target.repeat(p))
    return out.reshape(points.shape)


# ----------------------------------------------------------------------------------------
# Finite differences and plain deviation metrics
# ----------------------------------------------------------------------------------------


def central_difference(fn: Map, x: Tensor, v: Tensor, h: float = 1e-5) -> Tensor:
    """(fn(x + h v) - fn(x - h v)) / 2h: the directional derivative J v to O(h^2), [B, *S]."""
    return (fn(x + h * v) - fn(x - h * v)) / (2 * h)


def coordinate_gradient(phi: Callable[[Tensor], Tensor], x: Tensor, h: float = 1e-5) -> Tensor:
    """Gradient of a per-example scalar phi: [B, n] -> [B] by central differences along each
    coordinate, [B, n] (n + n evaluations of phi)."""
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.stack([(phi(x + h * e) - phi(x - h * e)) / (2 * h) for e in eye], dim=1)


def plain_deviations(a: Tensor, b: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(||b - a||_2, cos(a, b), |topk|a| ∩ topk|b|| / k) per example, [B] each, written with
    plain torch (entries of the flattened maps are the features; no zero-map convention)."""
    fa, fb = a.flatten(1), b.flatten(1)
    euclid = (fb - fa).norm(dim=1)
    cos = (fa * fb).sum(dim=1) / (fa.norm(dim=1) * fb.norm(dim=1))
    ia, ib = fa.abs().topk(k, dim=1).indices, fb.abs().topk(k, dim=1).indices
    shared = [len(set(p.tolist()) & set(q.tolist())) for p, q in zip(ia, ib, strict=True)]
    inter = torch.tensor(shared, dtype=a.dtype) / k
    return euclid, cos, inter


def integrated_gradients_by_loop(gradient: Map, x: Tensor, baseline: Tensor,
                                 nodes: Tensor, weights: Tensor) -> Tensor:
    """(x - b) * sum_k w_k g(b + t_k (x - b)) with one gradient call per node (no batching of
    path points): gradient [B, *S] -> [B, *S], nodes t_k and weights w_k [m]."""
    total = torch.zeros_like(x)
    for t, w in zip(nodes.tolist(), weights.tolist(), strict=True):
        total = total + w * gradient(baseline + t * (x - baseline))
    return (x - baseline) * total


def smoothgrad_by_loop(gradient: Map, x: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """(1/n) sum_k g(x + sigma xi_k), one gradient call per noise sample xi_k (noise
    [n, *S], the same for every example): [B, *S] -> [B, *S]."""
    return torch.stack([gradient(x + sigma * xi) for xi in noise]).mean(dim=0)


__all__ = [
    "MAX_ENUMERATION", "autograd_saliency", "box_vertices", "central_difference",
    "coordinate_gradient", "directional_ascent_points", "dual_value", "full_jacobian",
    "inf_to_two_enumerated", "integrated_gradients_by_loop", "jacobian_by_rows", "map_jacobian",
    "maps_at", "max_deviation", "plain_deviations", "plain_pgd", "project_ball", "set_points",
    "sign_vectors", "smoothgrad_by_loop", "top_eigenvalue", "top_singular_value",
    "uniform_ball", "vertex_max_deviation", "weighted_dual_value",
]


def cosine_at_least(maps: Tensor, a: Tensor, bound: Tensor) -> Tensor:
    """Whether cos(maps[p, b], a[b]) >= bound[b] holds EXACTLY, per point: bool [P, B].

    maps [P, B, *S], a [B, *S], bound [B]. A float64 cosine of two nearly equal maps carries a
    rounding error of a few 1e-16, which can put it below a certified bound of 1 - 1e-16 that
    the exact value meets; so every pair the float comparison fails is decided again in exact
    rational arithmetic on the float64 values: with c = bound, cos >= c  <=>  a.m >= c ||a|| ||m||,
    i.e. (a.m >= 0 and (c <= 0 or (a.m)^2 >= c^2 (a.a)(m.m))) or (a.m < 0 and c < 0 and
    (a.m)^2 <= c^2 (a.a)(m.m)).
    """
    m = maps.flatten(2).double()
    v = a.flatten(1).double()
    ok = torch.nn.functional.cosine_similarity(m, v.unsqueeze(0), dim=2) >= bound.unsqueeze(0)
    for p, b in (~ok).nonzero().tolist():
        mv = [Fraction(t) for t in m[p, b].tolist()]
        av = [Fraction(t) for t in v[b].tolist()]
        c = Fraction(float(bound[b]))
        dot = sum(x * y for x, y in zip(av, mv, strict=True))
        scale = c * c * sum(x * x for x in av) * sum(y * y for y in mv)
        if dot >= 0:
            ok[p, b] = c <= 0 or dot * dot >= scale
        else:
            ok[p, b] = c < 0 and dot * dot <= scale
    return ok


def weighted_dual_value(m: Tensor, w: Tensor) -> Tensor:
    """(sum_i w_i) * lambda_max(W^{-1/2} M W^{-1/2}) by a dense eigendecomposition.

    m: symmetric PSD [B, n, n], w > 0 [B, n] -> [B]. For every w > 0 it is >= max_s s^T M s
    = ||J||_{inf->2}^2 (the weighted, PSD form of the dual).
    """
    r = w.rsqrt()
    return w.sum(dim=1) * top_eigenvalue(r[:, :, None] * m * r[:, None, :])
