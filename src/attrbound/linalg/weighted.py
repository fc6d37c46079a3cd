"""||J||_{inf->2} from above by the weighted (PSD) dual, certified, and from below by signs.

docs/design.md sections 3.1 and 3.3. With M = J^T J and any weights w > 0, W = diag(w):
for s in {-1, 1}^n, s^T M s = (W^{1/2} s)^T B_w (W^{1/2} s) <= lambda_max(B_w) ||W^{1/2} s||^2,
B_w = W^{-1/2} M W^{-1/2}, and ||W^{1/2} s||^2 = sum_i w_i, so

    ||J||_{inf->2}^2 = max_s s^T M s <= (sum_i w_i) * lambda_max(B_w)       for EVERY w > 0.

(Its minimum over w is the SDP value max {<M, X> : X PSD, diag X = 1}: v = lambda w is
dual-feasible, diag(v) >= M.) Any w is valid, so w is chosen from few products:

1. sketch: ``sketch_steps`` Lanczos steps on M from ``start`` give Q_{k+1} [n, k+1] and
   T~ [(k+1), k] with M Q_k = Q_{k+1} T~; the same run certifies lambda_max(M) (the v = 0
   bound n lambda_max(M), with delta / 2);
2. surrogate: M^ = Q_{k+1} T~ T_k^+ T~^T Q_{k+1}^T + tau (I - Q_{k+1} Q_{k+1}^T) (Nystrom
   form of M on the Krylov space, tau = theta_{floor(k/2)}(T_k), about lambda_{k+1});
3. the SDP on M^ by Burer-Monteiro, V [n, r] with unit rows, V <- rownormalise(M^ V)
   (monotone for PSD M^; ``dual_steps`` iterations, O(n k r) each, no products with M); the
   weights are its dual guess w_i = ||(M^ V)_i|| (floored at 1e-6 of their mean);
4. lower value: the best of random-hyperplane roundings sign(V g) and sign(top Ritz vector),
   ranked on M^, then the sign iteration on M (a feasible s, ||J s|| <= ||J||_{inf->2});
   s is returned with s_0 = +1 (||J s|| = ||J (-s)||);
4b. gate: the certificate's run of step 5 at w (from step 3) doubles as the probe: after
   ``probe_steps`` steps (or when it stops earlier) its Ritz value theta <= lambda_max(B_w)
   gives est = sqrt(sum w * theta), an estimate of the weighted bound from below; the
   examples with est > ``refine_above`` * lower value abandon that run and go on to step 4c,
   the others run on to their certificate (so the gate costs them no product);
4c. refinement on M itself (``refine_steps`` > 0), on the gated examples' operator only:
   from V's top ``refine_rank`` principal directions (row-normalised), ``refine_steps``
   Burer-Monteiro steps on M with momentum 1/2, Y = rownormalise(V + (V - V_prev) / 2),
   V <- rownormalise(M Y) (``refine_rank`` products each, in one batch); then
   w_i = ||(M Y)_i||. M^ misses M's slowly decaying tail (integrated gradients: M is far
   from low rank), and its isotropic tau puts weight on the wrong coordinates. The roundings
   of step 4 are redone with sign(Y g) and sign(M Y g) as further candidates, then the sign
   iteration; the better of the two lower values is kept; a second fresh run
   (``refine_start``) then certifies the new w as in step 5;
5. certificate: a FRESH random-start Lanczos run on B_w (never warm-started; it must be
   independent of ``start`` and of the local generator (BM, roundings), from which w was
   chosen; a refined example's run is independent of its new w in the same way, the
   abandoned run only chose to refine) to the Christoffel bound with delta / 2
   (:mod:`attrbound.linalg.certificate`; it holds at every step of the run, so a stop chosen
   from the run is allowed), stopped once within ``tol`` of its Ritz value.

upper = min(sqrt(sum w * xi_w), sqrt(n * xi_M)): both hold together with probability
>= 1 - delta (union bound over the sketch and the one run whose value is used; an abandoned
run's value is discarded), for every J, over attrbound's random starts.

With a ``proxy`` (an operator P on the same space whose P^T P is close to M and whose
products cost less: integrated gradients on a coarser quadrature, :mod:`attrbound.bounds.solve`)
steps 1-4c choose w and the sign vector on P instead, with the refinement on every example
and no gate (its products are cheap, and w must be good for M, which P only approximates);
then the sign iteration goes on from P's best sign vector on M, and step 5 certifies w on M
itself. Any w > 0 is valid, so upper = sqrt(sum w * xi_w) holds for M with probability
>= 1 - delta (the one run whose value is used); the sketch certifies P, not M, so there is
no v = 0 value (``upper_v0`` is NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attrbound.linalg import certificate
from attrbound.linalg.spectral import (
    Eigen,
    LinearOperator,
    MatVec,
    _restricted,
    certified_gap,
    lanczos,
    random_start,
    round_up,
    sign_iteration,
)


@dataclass
class Sketch:
    """A fixed-step Lanczos run on M: basis [B, k+1, n], alphas / betas float64 [B, k]
    (column j-1: alpha_j, beta_j), the top Ritz value ``ritz`` and the certified
    lambda_max(M) [B]."""

    basis: Tensor
    alphas: Tensor
    betas: Tensor
    ritz: Tensor
    certified: Tensor


def sketch(gram: MatVec, start: Tensor, steps: int, delta: float) -> Sketch:
    """``steps`` (at most n) Lanczos steps with full re-orthogonalisation on M from ``start``
    (uniform random, so the run also certifies lambda_max(M) with probability >= 1 - delta).
    An example whose Krylov space becomes invariant continues with zero vectors."""
    b, n = start.shape
    k = max(1, min(int(steps), n))
    q = start / start.norm(dim=1, keepdim=True)
    basis = q.new_zeros((b, k + 1, n))
    basis[:, 0] = q
    alphas = torch.zeros(b, k, dtype=torch.float64, device=start.device)
    betas = torch.zeros_like(alphas)
    count = torch.full((b,), k, dtype=torch.long, device=start.device)
    knorm = torch.zeros(b, dtype=torch.float64, device=start.device)
    q_prev, beta_prev = torch.zeros_like(q), torch.zeros(b, dtype=q.dtype, device=q.device)
    dead = torch.zeros(b, dtype=torch.bool, device=start.device)
    rounding = torch.finfo(start.dtype).eps
    for j in range(k):
        w = gram(q)
        alpha = (w * q).sum(dim=1)
        w = w - alpha[:, None] * q - beta_prev[:, None] * q_prev
        for _ in range(2):
            w = w - torch.einsum("bk,bkn->bn", torch.einsum("bkn,bn->bk", basis[:, : j + 1], w),
                                 basis[:, : j + 1])
        beta = w.norm(dim=1)
        alphas[:, j] = torch.where(dead, 0.0, alpha.double())
        betas[:, j] = torch.where(dead, 0.0, beta.double())
        knorm = torch.maximum(knorm, alpha.double().abs() + beta.double())
        newly = ~dead & (beta.double() <= rounding * knorm)
        count = torch.where(newly, j + 1, count)
        dead |= newly
        q_prev, beta_prev = q, torch.where(dead, torch.zeros_like(beta), beta)
        q = torch.where(dead[:, None], torch.zeros_like(w), w / beta.clamp_min(1e-300)[:, None])
        basis[:, j + 1] = q
    target = 1.0 / certificate.eta(delta, n) ** 2
    t = _tridiagonal(alphas, betas)
    top = torch.linalg.eigvalsh(t)[:, -1]
    size = top.abs().clamp_min(1e-300)
    xi = certificate.upper_end(alphas, betas, count, top, size, target)
    xi = xi + certificate.margin(start.dtype) * xi.abs()
    return Sketch(basis, alphas, betas, top, xi)


def _tridiagonal(alphas: Tensor, betas: Tensor) -> Tensor:
    """T_k [B, k, k] from alphas [B, k] and betas [B, k] (the last beta is not in T_k)."""
    off = betas[:, :-1]
    return torch.diag_embed(alphas) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)


@dataclass
class Surrogate:
    """M^ = Q G Q^T + tau (I - Q Q^T) per example: Q [B, n, m], G [B, m, m], tau [B]."""

    q: Tensor
    g: Tensor
    tau: Tensor

    def apply(self, v: Tensor) -> Tensor:
        """M^ V for V [B, n, r] (float64)."""
        c = torch.bmm(self.q.transpose(1, 2), v)  # batched BLAS, several times einsum's speed
        tau = self.tau[:, None, None]
        return torch.baddbmm(tau * v, self.q, torch.bmm(self.g, c) - tau * c)


def surrogate(s: Sketch) -> Surrogate:
    """The Nystrom surrogate of M on the sketch's Krylov space (module docstring, step 2)."""
    t = _tridiagonal(s.alphas, s.betas)
    b, k = s.alphas.shape
    evals, evecs = torch.linalg.eigh(t)
    keep = evals > 1e-12 * evals[:, -1:].abs().clamp_min(1e-300)
    inv = torch.where(keep, 1.0 / evals.clamp_min(1e-300), torch.zeros_like(evals))
    t_pinv = evecs @ torch.diag_embed(inv) @ evecs.transpose(1, 2)
    tt = torch.cat([t, torch.zeros(b, 1, k, dtype=t.dtype, device=t.device)], dim=1)
    tt[:, k, k - 1] = s.betas[:, k - 1]
    g = tt @ t_pinv @ tt.transpose(1, 2)
    tau = evals[:, k - 1 - k // 2].clamp_min(0)
    return Surrogate(s.basis.transpose(1, 2).double(), g, tau)


def _floored(w: Tensor) -> Tensor:
    """Weights [B, n] (>= 0, e.g. row norms ||(M V)_i||) floored at 1e-6 of their mean (and
    at 1e-300): the dual needs w > 0 (B_w = W^-1/2 M W^-1/2)."""
    return torch.maximum(w, 1e-6 * w.mean(dim=1, keepdim=True)).clamp_min(1e-300)


def _rownormalise(v: Tensor) -> Tensor:
    return v / v.norm(dim=2, keepdim=True).clamp_min(1e-300)


def burer_monteiro(m: Surrogate, rank: int, steps: int, gen: torch.Generator) -> Tensor:
    """V [B, n, r] with unit rows after ``steps`` ascent steps V <- rownormalise(M^ V)."""
    b, n, _ = m.q.shape
    v = torch.randn((b, n, rank), generator=gen, dtype=torch.float64).to(m.q.device)
    v = _rownormalise(v)
    for _ in range(int(steps)):
        v = _rownormalise(m.apply(v))
    return v


def refine(block: Callable[[Tensor], Tensor], v: Tensor, rank: int, steps: int
           ) -> tuple[Tensor, Tensor]:
    """``steps`` >= 1 Burer-Monteiro steps on the real M (module docstring, step 4c) from V's
    top ``rank`` principal directions, with momentum 1/2. ``block`` applies M to every column
    of Y [B, n, r'] (float64 in and out; :func:`_block_gram`), r' = min(rank, r, n). Returns
    (Y [B, n, r'], the last point multiplied, and M Y, float64); costs r' * steps products."""
    u, sv, _ = torch.linalg.svd(v, full_matrices=False)  # u [B, n, min(n, r)]
    r = max(1, min(int(rank), u.shape[2]))
    cur = _rownormalise(u[:, :, :r] * sv[:, None, :r])
    prev = cur
    for _ in range(max(1, int(steps))):
        y = _rownormalise(cur + 0.5 * (cur - prev))
        my = block(y)
        prev, cur = cur, _rownormalise(my)
    return y, my


def _block_gram(op: LinearOperator, sub: LinearOperator, rows: Tensor, r: int,
                dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """Y [len(rows), n, r] (float64) -> M Y of the examples ``rows``: one product of an
    operator that holds each of those examples r times when op can be restricted (one batch
    of r * len(rows) vectors costs less than r batches of len(rows): a product's fixed cost
    is paid once), else r products of ``sub`` (those examples' operator,
    :func:`_rows_operator`)."""
    if hasattr(op, "restrict"):
        rep = op.restrict(rows.repeat_interleave(r))  # type: ignore[attr-defined]

        def apply(y: Tensor) -> Tensor:
            k, n, rr = y.shape
            flat = y.to(dtype).transpose(1, 2).reshape(k * rr, n)
            return rep.gram(flat).double().reshape(k, rr, n).transpose(1, 2)

        return apply
    return lambda y: torch.stack([sub.gram(y[:, :, j].to(dtype)).double()
                                  for j in range(y.shape[2])], dim=2)


def top_ritz_vector(s: Sketch) -> Tensor:
    """The sketch's top Ritz vector of M, Q_k y with y the top eigenvector of T_k: [B, n]."""
    k = s.alphas.shape[1]
    y = torch.linalg.eigh(_tridiagonal(s.alphas, s.betas))[1][:, :, -1]  # [B, k]
    return torch.einsum("bk,bkn->bn", y.to(s.basis.dtype), s.basis[:, :k])


def best_rounding(m: Surrogate, v: Tensor, ritz: Tensor, rounds: int,
                  gen: torch.Generator, more: tuple[Tensor, ...] = ()) -> Tensor:
    """The sign vector of largest s^T M^ s [B, n] (``ritz``'s dtype) among the ``rounds``
    random roundings sign(V g), g ~ N(0, I_r) drawn from ``gen`` (Goemans-Williamson style,
    V [B, n, r] from :func:`burer_monteiro`), and sign(ritz) (the Ritz vector [B, n]);
    zero entries become +1; ``more``: further factors [B, n, r'], each rounded the same way.
    Scored on the surrogate only: no product with M."""
    b = v.shape[0]
    parts = []
    for f in (v, *more):
        g = torch.randn((f.shape[2], rounds), generator=gen, dtype=torch.float64).to(f.device)
        parts.append(torch.sign(f @ g))
    cands = torch.cat(parts + [torch.sign(ritz.double())[:, :, None]], 2)
    cands = torch.where(cands == 0, torch.ones_like(cands), cands)
    scores = (cands * m.apply(cands)).sum(dim=1)  # s^T M^ s [B, rounds + 1]
    return cands[torch.arange(b, device=v.device), :, scores.argmax(dim=1)].to(ritz.dtype)


@dataclass
class InfToTwo:
    """Result of :func:`inf_to_two`, per example ([B]).

    - ``upper``: min(sqrt(sum w * xi_w), sqrt(n * xi_M)), certified (module docstring): an
      upper bound on ||J||_{inf->2} with probability >= 1 - delta.
    - ``ritz``: the same expression at the Ritz values (an estimate, never above the
      weighted bound it approximates).
    - ``lower``: ||J s||_2 of the best sign vector s found (feasible); ``sign``: that s,
      with s_0 = +1.
    - ``upper_v0``: sqrt(n * xi_M), the certified v = 0 bound sqrt(n) sigma_max.
    - ``weights``: w [B, n]; ``shift``: the equivalent additive dual v = xi_w w [B, n]
      (diag(v) >= M on the certificate's event).
    - ``iterations`` / ``converged``: of the certifying run whose value is used;
      ``products``: products with M in all (sketch, sign iterations, the abandoned run's
      steps, refinement, certificates); ``refined``: bool,
      whether the example passed the gate and was refined (module docstring, 4b-4c; with a
      proxy: refined on the proxy, every example when refine_steps > 0).
    - ``proxy_products``: products with the proxy's P^T P (zeros without a proxy).
    """

    upper: Tensor
    ritz: Tensor
    lower: Tensor
    upper_v0: Tensor
    sign: Tensor
    weights: Tensor
    shift: Tensor
    iterations: Tensor
    converged: Tensor
    products: Tensor
    refined: Tensor | None = None
    proxy_products: Tensor | None = None


class _RowsOperator:
    """The examples ``rows`` of an operator that cannot restrict itself (only ``gram``,
    [len(rows), n] -> [len(rows), n]): the whole batch's product with the other rows zero."""

    def __init__(self, op: LinearOperator, rows: Tensor, b: int) -> None:
        self.op, self.rows, self.b = op, rows, b

    def gram(self, q: Tensor) -> Tensor:
        full = q.new_zeros((self.b,) + q.shape[1:])
        full[self.rows] = q
        return self.op.gram(full)[self.rows]


def _rows_operator(op: LinearOperator, rows: Tensor, b: int) -> LinearOperator:
    """op itself when rows is the whole batch, else op.restrict(rows), else a
    :class:`_RowsOperator`."""
    if rows.numel() == b:
        return op
    if hasattr(op, "restrict"):
        return op.restrict(rows)  # type: ignore[attr-defined,no-any-return]
    return _RowsOperator(op, rows, b)  # type: ignore[return-value]


def _weighted_restrict(op: LinearOperator, scale: Tensor
                       ) -> Callable[[Tensor], MatVec] | None:
    base = _restricted(op, "gram")
    if base is None:
        return None

    def make(rows: Tensor) -> MatVec:
        apply, sc = base(rows), scale[rows]
        return lambda q: sc * apply(sc * q)

    return make


def weighted_bound(
    op: LinearOperator, w: Tensor, start: Tensor, *, tol: float | None = None,
    max_iter: int = 100, delta: float = 1e-3,
    gate: tuple[int, Callable[[Tensor, Tensor], Tensor]] | None = None,
) -> tuple[Tensor, Tensor, Eigen]:
    """sqrt(sum_i w_i * lambda_max(W^{-1/2} M W^{-1/2})) for weights w > 0 [B, n], certified.

    One certifying Lanczos run (``delta``; ``start`` a fresh uniform random start drawn
    independently of w) on B_w, stopped once the certified norm is within ``tol`` (default
    :func:`certified_gap`) of its Ritz value. Returns (certified upper [B], the Ritz value of
    the same expression [B], the run's :class:`Eigen`). For every w > 0 the exact value is
    >= ||J||_{inf->2} (module docstring), so ``upper`` is an upper bound on it with
    probability >= 1 - delta.
    """
    dt = start.dtype
    tol = certified_gap(dt) if tol is None else float(tol)
    scale = w.double().rsqrt().to(dt)

    def bw(q: Tensor) -> Tensor:
        return scale * op.gram(scale * q)

    e = lanczos(bw, start, which="largest", tol=(1 + tol) ** 2 - 1, max_iter=max_iter,
                restrict=_weighted_restrict(op, scale), delta=delta, gate=gate)
    wsum = w.double().sum(dim=1)
    upper = round_up((wsum * e.certified.double()).clamp_min(0).sqrt() * (1 + 1e-15), dt)
    ritz = (wsum * e.value.double().clamp_min(0)).sqrt().to(dt)
    return upper, ritz, e


def inf_to_two(
    op: LinearOperator,
    start: Tensor,
    *,
    certify_start: Tensor | None = None,
    refine_start: Tensor | None = None,
    tol: float | None = None,
    max_iter: int = 100,
    dual_steps: int = 25,
    inner_iter: int = 12,
    sign_steps: int = 50,
    delta: float = 1e-3,
    rank: int = 25,
    rounds: int = 16,
    refine_rank: int = 4,
    refine_steps: int = 8,
    refine_above: float = 1.10,
    probe_steps: int = 4,
    proxy: LinearOperator | None = None,
) -> InfToTwo:
    """||J_b||_{inf->2} bracketed per example: certified weighted dual above, signs below.

    Args:
        op: the operator (``op.gram`` applies M = J^T J); start: [B, n] uniform random start
            of the sketch (:func:`random_start`).
        certify_start: [B, n] uniform random start of the certifying run, drawn independently
            of ``start`` (default: drawn from a generator seeded 0x5EED + 1).
        refine_start: [B, n] the same for the refined examples' second run, drawn
            independently of both (default: from a generator seeded 0x5EED + 2).
        tol: relative gap of the certified norm to its Ritz value at which the certifying run
            stops (default :func:`certified_gap`); max_iter: its most steps (default 100).
        dual_steps: Burer-Monteiro iterations on the surrogate (default 25; 0: w = 1, the
            v = 0 bound sqrt(n) sigma_max). inner_iter: Lanczos steps of the sketch
            (default 12). sign_steps: most sign-iteration steps (default 50).
        delta: failure probability of ``upper`` (default 1e-3; delta / 2 per run).
        rank, rounds: Burer-Monteiro rank (default 25) and roundings sign(V g) (default 16).
        refine_rank, refine_steps: rank (default 4) and steps (default 8; 0: off, w from M^
            alone, no gate) of the Burer-Monteiro refinement on M (step 4c), refine_rank *
            refine_steps products for each refined example.
        refine_above, probe_steps: the gate (step 4b): an example is refined when
            sqrt(sum w * theta) > refine_above * lower (default 1.10; 0: every example,
            inf: none), theta the Ritz value after ``probe_steps`` (default 4) steps of the
            certifying run on B_w (a refined example's run is abandoned there).
        proxy: an operator on the same space as op, close to it and cheaper per product
            (default None): the sketch, the weights (refined on every example, no gate)
            and the sign iteration's start are computed on it, the certificate and the
            lower value on op (module docstring); refine_above and probe_steps are then
            unused.

    Returns:
        :class:`InfToTwo` (values of the inf -> 2 norm itself, i.e. square roots).
    """
    b, n = start.shape
    dt = start.dtype
    tol = certified_gap(dt) if tol is None else float(tol)
    if certify_start is None:
        certify_start = random_start((b, n), start, torch.Generator().manual_seed(0x5EED + 1))
    if proxy is not None:
        return _on_proxy(op, proxy, start, certify_start, tol=tol, max_iter=max_iter,
                         dual_steps=dual_steps, inner_iter=inner_iter, sign_steps=sign_steps,
                         delta=delta, rank=rank, rounds=rounds, refine_rank=refine_rank,
                         refine_steps=refine_steps)
    sk = sketch(op.gram, start, inner_iter, delta / 2)
    k = sk.alphas.shape[1]
    products = torch.full((b,), k, dtype=torch.long, device=start.device)
    v0 = round_up((n * sk.certified).clamp_min(0).sqrt() * (1 + 1e-15), dt)
    sur = surrogate(sk)
    ritz_vec = top_ritz_vector(sk)
    gen = torch.Generator().manual_seed(0)
    if dual_steps > 0:
        v = burer_monteiro(sur, rank, dual_steps, gen)
        w = sur.apply(v).norm(dim=2)
        w = _floored(w)
        best = best_rounding(sur, v, ritz_vec, rounds, gen)
    else:
        w = torch.ones(b, n, dtype=torch.float64, device=start.device)
        best = ritz_vec
    s, low, st = sign_iteration(op.gram, best, max_steps=sign_steps,
                                restrict=_restricted(op, "gram"))
    products = products + st + 1
    gated = dual_steps > 0 and refine_steps > 0 and not math.isinf(refine_above)
    wsum = w.sum(dim=1)

    def decide(theta: Tensor, rows: Tensor) -> Tensor:
        """Gate (step 4b): refine where the weighted bound's Ritz estimate at w exceeds
        refine_above times the lower value."""
        est = (wsum[rows] * theta.clamp_min(0)).sqrt()
        return est > refine_above * low[rows].double()

    up_w, ritz, e = weighted_bound(op, w, certify_start, tol=tol, max_iter=max_iter,
                                   delta=delta / 2, gate=(probe_steps, decide) if gated else None)
    products = products + e.iterations
    refined = torch.zeros(b, dtype=torch.bool, device=start.device) if e.abandoned is None \
        else e.abandoned
    rows = refined.nonzero().flatten()
    if rows.numel() > 0:  # step 4c on those examples' operator only, then their own run
        sub = _rows_operator(op, rows, b)
        r = max(1, min(int(refine_rank), v.shape[2], n))
        y, my = refine(_block_gram(op, sub, rows, r, dt), v[rows], r, refine_steps)
        products[rows] += y.shape[2] * max(1, int(refine_steps))
        w[rows] = _floored(my.norm(dim=2))
        sur_r = Surrogate(sur.q[rows], sur.g[rows], sur.tau[rows])
        best_r = best_rounding(sur_r, v[rows], ritz_vec[rows], rounds, gen, (y, my))
        s_r, low_r, st_r = sign_iteration(sub.gram, best_r, max_steps=sign_steps,
                                          restrict=_restricted(sub, "gram"))
        products[rows] += st_r + 1
        better = low_r > low[rows]
        s[rows] = torch.where(better[:, None], s_r, s[rows])
        low[rows] = torch.where(better, low_r, low[rows])
        if refine_start is None:
            refine_start = random_start((b, n), start,
                                        torch.Generator().manual_seed(0x5EED + 2))
        up_r, ritz_r, e_r = weighted_bound(sub, w[rows], refine_start[rows], tol=tol,
                                           max_iter=max_iter, delta=delta / 2)
        products[rows] += e_r.iterations
        up_w[rows], ritz[rows] = up_r, ritz_r
        e.iterations[rows], e.converged[rows] = e_r.iterations, e_r.converged
        e.certified[rows] = e_r.certified
    s = s * s[:, :1]  # ||J s|| = ||J (-s)||: s_0 = +1 (BoxOperator: direction(s) is a vertex)
    upper = torch.minimum(up_w, v0)
    use_v0 = v0 < up_w
    return InfToTwo(
        upper=torch.maximum(upper, low),  # below a feasible value: the event failed
        ritz=torch.where(use_v0, (n * sk.ritz.clamp_min(0)).sqrt().to(dt), ritz),
        lower=low, upper_v0=v0, sign=s, weights=w.to(dt),
        shift=(e.certified.double()[:, None] * w).to(dt),
        iterations=e.iterations, converged=e.converged, products=products, refined=refined,
        proxy_products=torch.zeros_like(products),
    )


def _on_proxy(
    op: LinearOperator, proxy: LinearOperator, start: Tensor, certify_start: Tensor, *,
    tol: float, max_iter: int, dual_steps: int, inner_iter: int, sign_steps: int,
    delta: float, rank: int, rounds: int, refine_rank: int, refine_steps: int,
) -> InfToTwo:
    """:func:`inf_to_two` with w and the sign vector chosen on ``proxy`` (module docstring,
    last paragraph)."""
    b, n = start.shape
    dt = start.dtype
    sk = sketch(proxy.gram, start, inner_iter, delta)  # its certificate (of P) is unused
    cheap = torch.full((b,), sk.alphas.shape[1], dtype=torch.long, device=start.device)
    sur = surrogate(sk)
    ritz_vec = top_ritz_vector(sk)
    gen = torch.Generator().manual_seed(0)
    refined = torch.zeros(b, dtype=torch.bool, device=start.device)
    if dual_steps > 0:
        v = burer_monteiro(sur, rank, dual_steps, gen)
        w = sur.apply(v).norm(dim=2)
        more: tuple[Tensor, ...] = ()
        if refine_steps > 0:
            r = max(1, min(int(refine_rank), v.shape[2], n))
            rows = torch.arange(b, device=start.device)
            y, my = refine(_block_gram(proxy, proxy, rows, r, dt), v, r, refine_steps)
            cheap += y.shape[2] * int(refine_steps)
            w, more, refined = my.norm(dim=2), (y, my), ~refined
        w = _floored(w)
        best = best_rounding(sur, v, ritz_vec, rounds, gen, more)
    else:
        w = torch.ones(b, n, dtype=torch.float64, device=start.device)
        best = ritz_vec
    best, _, st_p = sign_iteration(proxy.gram, best, max_steps=sign_steps,
                                   restrict=_restricted(proxy, "gram"))
    out = with_weights(op, w, best, certify_start, tol=tol, max_iter=max_iter,
                       sign_steps=sign_steps, delta=delta)
    out.refined, out.proxy_products = refined, cheap + st_p + 1
    return out


def with_weights(
    op: LinearOperator, w: Tensor, sign: Tensor, certify_start: Tensor, *,
    tol: float | None = None, max_iter: int = 100, sign_steps: int = 50, delta: float = 1e-3,
) -> InfToTwo:
    """||J_b||_{inf->2} bracketed from weights and a sign vector chosen elsewhere.

    w > 0 [B, n] and sign [B, n] (entries +-1) may come from anywhere (a cheaper operator
    close to M, the solve at a nearby point), since every w > 0 gives a valid dual: the sign
    iteration on M goes on from ``sign`` (the lower value), and one fresh random-start
    certifying run on B_w (``certify_start``, drawn independently of w) gives
    upper = sqrt(sum w * xi_w) with probability >= 1 - delta. No sketch runs, so
    ``upper_v0`` is NaN. Costs the sign steps + 1 and the certifying run's products.
    """
    dt = certify_start.dtype
    s, low, st = sign_iteration(op.gram, sign, max_steps=sign_steps,
                                restrict=_restricted(op, "gram"))
    w = w.double()
    up_w, ritz, e = weighted_bound(op, w, certify_start, tol=tol, max_iter=max_iter,
                                   delta=delta)
    return InfToTwo(
        upper=torch.maximum(up_w, low), ritz=ritz, lower=low,
        upper_v0=torch.full_like(up_w, float("nan")), sign=s * s[:, :1], weights=w.to(dt),
        shift=(e.certified.double()[:, None] * w).to(dt), iterations=e.iterations,
        converged=e.converged, products=st + 1 + e.iterations,
        refined=torch.zeros_like(e.converged, dtype=torch.bool),
        proxy_products=torch.zeros_like(st),
    )


__all__ = ["InfToTwo", "Sketch", "Surrogate", "best_rounding", "burer_monteiro", "inf_to_two",
           "refine", "sketch", "surrogate", "top_ritz_vector", "weighted_bound", "with_weights"]
