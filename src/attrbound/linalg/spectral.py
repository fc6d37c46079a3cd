"""Batched spectral solvers for the operator norms of J (docs/design.md section 3.1).

Everything here is matrix-free: a linear operator is only ever applied to a batch of vectors
[B, n] (one vector per example, see :mod:`attrbound.linalg.operators`), and every solver runs all B
examples together, converging and reporting per example.

- :func:`lanczos`: extreme eigenpair of a symmetric operator by Lanczos with full
  re-orthogonalisation, stopped per example by the residual ``||K u - theta u|| <= tol *
  scale``; returns the Rayleigh quotient theta and the TRUE residual norm of its Ritz vector
  (recomputed with one more product).
- :func:`top_singular`: sigma_max(J), the l2 -> l2 norm, by Lanczos on M = J^T J, or on J
  itself when J is symmetric (saliency, smoothgrad: J is a Hessian or a mean of Hessians).
- :func:`sign_iteration`: s <- sign(M s), a feasible (lower) value of the inf -> 2 norm
  (the l-inf dual is in :mod:`attrbound.linalg.weighted`).

About "upper": a Krylov eigen-solver returns a Ritz value theta <= lambda_max. Without
``delta``, theta + ||r|| (r the residual of the Ritz vector) is an ESTIMATE: it brackets SOME
eigenvalue, not necessarily lambda_max. With ``delta`` (a fresh uniform random start), the
Christoffel bound of :mod:`attrbound.linalg.certificate` is an upper bound on lambda_max with
probability >= 1 - delta over that start, for every matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from attrbound.geometry import unit
from attrbound.linalg import certificate

MatVec = Callable[[Tensor], Tensor]


class LinearOperator(Protocol):
    """A batch of n x n matrices J_b applied to vectors [B, n] (see attrbound.linalg.operators)."""

    symmetric: bool

    def matvec(self, v: Tensor) -> Tensor: ...  # J v

    def rmatvec(self, u: Tensor) -> Tensor: ...  # J^T u

    def gram(self, v: Tensor) -> Tensor: ...  # J^T J v


def certified_gap(dtype: torch.dtype) -> float:
    """Default relative gap between a certified norm and its Ritz value at which a certifying
    solve stops (:func:`top_singular`, :func:`attrbound.linalg.inf_to_two`): 5e-3 in float32
    and lower precisions (about 1e-4 of the value is floating-point allowance there anyway),
    5e-5 in float64 (a float64 call asks for precision; small problems reach it cheaply).
    """
    return 5e-5 if dtype == torch.float64 else 5e-3



def default_tol(dtype: torch.dtype) -> float:
    """Relative residual tolerance: 1e-6 in float64, 1e-4 in lower precisions.

    float32 products carry relative errors of ~1e-6 of ||K||, so a tighter float32 tolerance
    could never be met.
    """
    return 1e-6 if dtype == torch.float64 else 1e-4


def round_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x cast to ``dtype`` rounding upward (never below x), e.g. a float64 bound to float32."""
    y = x.to(dtype)
    return torch.where(y.double() < x, torch.nextafter(y, torch.full_like(y, math.inf)), y)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=1)


def random_start(
    shape: tuple[int, int], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Unit Gaussian vectors [B, n] drawn on the CPU from ``generator``, on like's device."""
    g = torch.randn(shape, generator=generator, dtype=torch.float64)
    return unit(g).to(device=like.device, dtype=like.dtype)


@dataclass
class Eigen:
    """Result of :func:`lanczos`, per example ([B] unless stated).

    - ``value``: Rayleigh quotient theta = u^T K u of the returned unit vector.
    - ``vector``: the Ritz vector u [B, n].
    - ``residual``: ||K u - theta u||_2 (recomputed, not the Lanczos estimate).
    - ``product``: K u [B, n] (reusable by the caller).
    - ``iterations``: Lanczos steps taken (products with K, not counting the final one).
    - ``converged``: the residual estimate met ``tol * max(|theta|, scale)`` (certifying: the
      certified value came within ``tol`` of theta), or the Krylov space became invariant
      (theta is then an exact eigenvalue).
    - ``certified``: only with ``delta``: an upper bound on lambda_max (``which="largest"``)
      or on max |lambda| (``"magnitude"``) valid with probability >= 1 - delta over the
      start vector (:mod:`attrbound.linalg.certificate`); None otherwise.
    - ``abandoned``: only with ``gate``: bool, the examples the gate stopped (their other
      fields describe the run up to then; nothing of theirs is certified).
    """

    value: Tensor
    vector: Tensor
    residual: Tensor
    product: Tensor | None
    iterations: Tensor
    converged: Tensor
    certified: Tensor | None = None
    abandoned: Tensor | None = None

    @property
    def upper(self) -> Tensor:
        """theta + ||r||: an upper estimate of the eigenvalue theta approximates."""
        return self.value + self.residual


def lanczos(
    matvec: MatVec,
    start: Tensor,
    *,
    which: str = "largest",
    tol: float | None = None,
    max_iter: int = 100,
    scale: Tensor | float | None = None,
    restrict: Callable[[Tensor], MatVec] | None = None,
    delta: float | None = None,
    gate: tuple[int, Callable[[Tensor, Tensor], Tensor]] | None = None,
) -> Eigen:
    """Extreme eigenpair of a symmetric operator K, batched: Lanczos with full re-orthogonalisation.

    Builds, per example, the Krylov basis q_1 = start/||start||, q_{k+1} proportional to
    (I - Q Q^T) K q_k and the tridiagonal T_k = Q^T K Q; the Ritz pair (theta, Q s) of T_k
    approximates the extreme eigenpair. Stops example b once
    ``beta_k |s_k| <= tol * max(|theta|, scale_b)`` (beta_k |s_k| is the residual norm of the Ritz
    pair in exact arithmetic), and the whole batch once every example stopped or ``max_iter``
    (at most n) steps were made. Without ``restrict``, stopped examples keep riding along with
    the batch (their result is frozen), so one call costs max_b(iterations_b) + 1 products of
    the whole batch; with it, the batch is cut down to the running examples after every step
    in which one stopped: a running example then no longer pays for the stopped ones
    (benchmarks/RESULTS.md).

    Args:
        matvec: v [B, n] -> K v [B, n], K_b symmetric.
        start: nonzero start vectors [B, n] (warm start, or :func:`random_start`).
        which: ``"largest"`` (algebraic, lambda_max) or ``"magnitude"`` (the eigenvalue of
            largest |lambda|, e.g. sigma_max of a symmetric J).
        tol: relative residual tolerance (default :func:`default_tol` of start's dtype).
        max_iter: most Lanczos steps (default 100); the basis costs max_iter * B * n memory.
        scale: [B] or float; the residual is compared with tol * max(|theta|, scale)
            (default 0: purely relative). Pass the size of K when theta may be near 0.
        restrict: optional; rows (int64 indices into the batch) -> the matvec of those
            examples' K_b only ([len(rows), n] -> [len(rows), n]). Default None (no cutting).
        delta: None (default) or a probability in (0, 1): CERTIFYING mode. The start must
            then be a fresh :func:`random_start` drawn independently of K (never a warm
            start). Example b stops once the Christoffel bound xi_k of
            :mod:`attrbound.linalg.certificate` (with eta of delta, or of delta / 2 at each
            end for ``"magnitude"``) lies within ``tol * max(|theta|, scale)`` of theta, and
            ``certified`` = xi (1 + margin) is returned (with probability >= 1 - delta an
            upper bound on lambda_max, or on max |lambda|). ``value`` is then the Ritz value
            of T_k, ``residual`` the Lanczos estimate beta_k |s_k| and ``product`` None (no
            extra product).
        gate: None (default) or (steps, decide): each example is shown to
            ``decide(theta [b], rows [b]) -> bool [b]`` once, after ``steps`` steps or when it
            stops earlier (theta its top Ritz value, rows its indices in the batch); the
            examples decided True stop there, ``abandoned``. The caller spends no products on
            a probe: the first steps of the run are the probe, and the others run on.

    Returns:
        :class:`Eigen`. The tridiagonal eigenproblems are solved in float64.
    """
    if which not in ("largest", "magnitude"):
        raise ValueError(f"which must be 'largest' or 'magnitude', got {which!r}")
    tol = default_tol(start.dtype) if tol is None else float(tol)
    b, n = start.shape
    steps = max(1, min(int(max_iter), n))
    dev = start.device
    scale_t = torch.zeros(b, dtype=torch.float64, device=dev)
    if scale is not None:
        scale_t = torch.as_tensor(scale, dtype=torch.float64, device=dev).expand(b).clone()

    # per example of the batch
    vectors = torch.zeros_like(start)  # the Ritz vector Q s, set when the example stops
    converged = torch.zeros(b, dtype=torch.bool, device=dev)
    iterations = torch.zeros(b, dtype=torch.long, device=dev)
    tiny = torch.finfo(start.dtype).tiny

    # per running example (rows of the batch in ``live``); cut down by ``restrict``
    live = torch.arange(b, device=dev)
    apply = matvec
    q = unit(start)
    # Krylov basis [slots, b_live, n], filled row by row; grown by doubling (no re-stacking)
    basis = q.new_empty((min(steps + 1, 4), b, n))
    basis[0] = q
    knorm = torch.zeros(b, dtype=torch.float64, device=dev)  # running estimate of ||K_b||
    rounding = torch.finfo(start.dtype).eps
    alphas = torch.zeros(b, steps, dtype=torch.float64, device=dev)
    betas = torch.zeros(b, steps, dtype=torch.float64, device=dev)
    q_prev = torch.zeros_like(q)
    beta_prev = torch.zeros(b, dtype=q.dtype, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    certified = torch.zeros(b, dtype=torch.float64, device=dev)
    values = torch.zeros(b, dtype=torch.float64, device=dev)
    residuals = torch.zeros(b, dtype=torch.float64, device=dev)
    target = 0.0
    abandoned = torch.zeros(b, dtype=torch.bool, device=dev)
    shown = torch.zeros(b, dtype=torch.bool, device=dev)  # rows the gate has decided on
    if delta is not None:
        target = 1.0 / certificate.eta(delta / (2 if which == "magnitude" else 1), n) ** 2
        allowance = certificate.margin(start.dtype)

    for k in range(steps):
        w = apply(q)
        alpha = _dot(w, q)
        w = w - alpha[:, None] * q - beta_prev[:, None] * q_prev
        stack = basis[: k + 1]  # [k+1, b_live, n], a view
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            w = w - torch.einsum("kb,kbn->bn", torch.einsum("kbn,bn->kb", stack, w), stack)
        beta = w.norm(dim=1)
        alphas[:, k] = alpha.double()
        betas[:, k] = beta.double()
        knorm = torch.maximum(knorm, alpha.double().abs() + beta.double() + beta_prev.double())

        rows = torch.arange(live.shape[0], device=dev)
        t = torch.diag_embed(alphas[:, : k + 1])
        if k > 0:
            off = betas[:, :k]
            t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        evals, evecs = torch.linalg.eigh(t)  # ascending
        if which == "largest":
            pick = torch.full((live.shape[0],), k, dtype=torch.long, device=dev)
        else:
            pick = evals.abs().argmax(dim=1)
        theta = evals[rows, pick]
        s = evecs[rows, :, pick]  # [b_live, k+1]
        estimate = beta.double() * s[:, -1].abs()
        # breakdown: K q_k lies in the basis up to rounding, the Krylov space is invariant
        invariant = (beta <= tiny) | (beta.double() <= rounding * knorm)
        if delta is None:
            ok = estimate <= tol * torch.maximum(theta.abs(), scale_t[live])
        else:  # phi_0 .. phi_{k+1}; a tiny beta_{k+1} makes phi_{k+1} huge beyond theta
            count = torch.full((live.shape[0],), k + 1, dtype=torch.long, device=dev)
            top, bottom = evals[:, -1], evals[:, 0]
            size = torch.maximum(torch.maximum(top.abs(), bottom.abs()), scale_t[live])
            a_k, b_k = alphas[:, : k + 1], betas[:, : k + 1]
            if which == "magnitude":  # max |lambda| <= size (1 + tol): both ends inside it
                edge = size * (1 + tol)
                ok = certificate.exceeds(a_k, b_k, count, edge, target)
                ok &= certificate.exceeds(a_k, b_k, count, -edge, target)
                known_top, known_bottom = edge - top, bottom + edge
            else:
                ok = certificate.exceeds(a_k, b_k, count, top + tol * size, target)
                known_top = tol * size
            nan = torch.full_like(size, math.nan)
        stop = ~done & (ok | invariant | torch.tensor(k == steps - 1, device=dev))
        if gate is not None:  # examples at the gate's step, or stopping before it
            ask = ~done & ~shown[live] & (stop | torch.tensor(k + 1 >= gate[0], device=dev))
            if bool(ask.any()):
                quit_ = torch.zeros_like(ask)
                quit_[ask] = gate[1](theta[ask], live[ask]).to(torch.bool)
                shown[live[ask]] = True
                abandoned[live[quit_]] = True
                stop = stop | quit_
                ok = ok & ~quit_
                invariant = invariant & ~quit_
        if stop.any():
            idx = live[stop]
            vectors[idx] = torch.einsum("bk,kbn->bn", s[stop].to(q.dtype), stack[:, stop])
            iterations[idx] = k + 1
            converged[idx] = (ok | invariant)[stop]
            values[idx], residuals[idx] = theta[stop], estimate[stop]
            if delta is not None:
                a_s, b_s, c_s = a_k[stop], b_k[stop], count[stop]
                # where the run stopped on ok, that distance is known to reach the target
                xi = certificate.upper_end(a_s, b_s, c_s, top[stop], size[stop], target,
                                           known=torch.where(ok, known_top, nan)[stop])
                if which == "magnitude":
                    low = certificate.upper_end(
                        a_s, b_s, c_s, bottom[stop], size[stop], target, sign=-1.0,
                        known=torch.where(ok, known_bottom, nan)[stop])
                    xi = torch.maximum(xi.abs(), low.abs())
                certified[idx] = xi + allowance * torch.maximum(xi.abs(), size[stop])
            done |= stop
        if bool(done.all()):
            break
        # stopped examples ride along with q = 0 (their T_k no longer changes)
        q_prev, beta_prev = q, torch.where(done, torch.zeros_like(beta), beta)
        q = torch.where((invariant | done)[:, None], torch.zeros_like(w),
                        w / beta.clamp_min(tiny)[:, None])
        if k + 1 == basis.shape[0]:
            grown = basis.new_empty((min(steps + 1, 2 * basis.shape[0]),) + basis.shape[1:])
            grown[: k + 1] = basis
            basis = grown
        basis[k + 1] = q
        running = ~done
        if restrict is not None and int(running.sum()) < live.shape[0]:
            live, apply = live[running], restrict(live[running])
            basis = basis[: k + 2, running]  # the filled slots only
            alphas, betas, knorm = alphas[running], betas[running], knorm[running]
            q, q_prev, beta_prev = q[running], q_prev[running], beta_prev[running]
            done = done[running]

    u = unit(vectors)
    if delta is not None:
        dt = start.dtype
        return Eigen(values.to(dt), u, residuals.to(dt), None, iterations, converged,
                     round_up(certified, dt), abandoned if gate is not None else None)
    ku = matvec(u)
    value = _dot(u, ku)
    residual = (ku - value[:, None] * u).norm(dim=1)
    return Eigen(value, u, residual, ku, iterations, converged)


@dataclass
class Singular:
    """Result of :func:`top_singular`, per example ([B]).

    - ``sigma``: the Ritz estimate of sigma_max(J) (sqrt(theta) of M, or |theta| of a
      symmetric J); never above sigma_max in exact arithmetic.
    - ``upper``: certifying (``delta`` given): the certified value, an upper bound on
      sigma_max with probability >= 1 - delta over the start vector; otherwise sigma with the
      residual margin, sqrt(theta + ||r||) or |theta| + ||r|| (an estimate).
    - ``vector``: the right singular vector v [B, n] (unit).
    - ``eigen``: the underlying :class:`Eigen` (of M, or of J when symmetric).
    """

    sigma: Tensor
    upper: Tensor
    vector: Tensor
    eigen: Eigen

    @property
    def iterations(self) -> Tensor:
        return self.eigen.iterations

    @property
    def converged(self) -> Tensor:
        return self.eigen.converged


def top_singular(
    op: LinearOperator,
    start: Tensor,
    *,
    tol: float | None = None,
    max_iter: int = 100,
    delta: float | None = None,
) -> Singular:
    """sigma_max(J_b) for every example: the l2 -> l2 operator norm, matrix-free.

    General J: Lanczos on M = J^T J (one J v and one J^T u per step), sigma = sqrt(theta).
    Symmetric J (``op.symmetric``): Lanczos on J itself for the eigenvalue of largest
    magnitude (one product per step; the Krylov space of J contains that of J^2 at half the
    cost), sigma = |theta|.

    Without ``delta``: upper = sqrt(theta + ||M u - theta u||) or |theta| + ||J u - theta u||
    (an estimate), stop on the relative residual ``tol`` (default :func:`default_tol`).
    With ``delta`` (certifying; ``start`` must be a fresh :func:`random_start`): upper =
    sqrt(xi) of M's certified lambda_max, or the certified max |lambda| of J, valid with
    probability >= 1 - delta; each example stops once upper <= sigma (1 + tol) (``tol`` is
    then the relative gap of the NORM, default :func:`certified_gap`).

    Shapes: start [B, n] -> fields [B] and vector [B, n].
    """
    if delta is not None:
        tol = certified_gap(start.dtype) if tol is None else float(tol)
    if op.symmetric:
        e = lanczos(op.matvec, start, which="magnitude", tol=tol, max_iter=max_iter,
                    restrict=_restricted(op, "matvec"), delta=delta)
        sigma = e.value.abs()
        upper = sigma + e.residual if e.certified is None else e.certified
        return Singular(sigma, upper, e.vector, e)
    gap = None if tol is None or delta is None else (1 + tol) ** 2 - 1
    e = lanczos(op.gram, start, which="largest", tol=gap if delta is not None else tol,
                max_iter=max_iter, restrict=_restricted(op, "gram"), delta=delta)
    theta = e.value.clamp_min(0)
    if e.certified is None:
        return Singular(theta.sqrt(), (theta + e.residual).sqrt(), e.vector, e)
    upper = round_up(e.certified.double().clamp_min(0).sqrt() * (1 + 1e-15), start.dtype)
    return Singular(theta.sqrt(), upper, e.vector, e)


def _restricted(
    op: LinearOperator, product: str, shift: Tensor | None = None
) -> Callable[[Tensor], MatVec] | None:
    """rows -> the ``product`` (``"matvec"`` or ``"gram"``) of op restricted to those rows,
    minus diag(shift[rows]) when a shift [B, n] is given; None when op cannot be restricted
    (an operator may offer ``restrict(rows)``, see :mod:`attrbound.linalg.operators`)."""
    if not hasattr(op, "restrict"):
        return None

    def make(rows: Tensor) -> MatVec:
        apply = getattr(op.restrict(rows), product)  # type: ignore[attr-defined]
        if shift is None:
            return apply
        v = shift[rows]
        return lambda q: apply(q) - v * q

    return make


def _signs(v: Tensor, fallback: Tensor | None = None) -> Tensor:
    """sign(v) with zeros replaced by the fallback's sign (or +1)."""
    s = torch.sign(v)
    fill = torch.ones_like(s) if fallback is None else fallback
    return torch.where(s == 0, fill, s)


def sign_iteration(
    gram: MatVec, start: Tensor, *, max_steps: int = 50,
    restrict: Callable[[Tensor], MatVec] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Feasible lower value of ||J||_{inf->2} = max_{s in {-1,1}^n} sqrt(s^T M s), M = J^T J.

    s_0 = sign(start), s_{t+1} = sign(M s_t): the power method for maximising the convex
    quadratic s^T M s over the cube (Boyd's power method for the inf -> 2 norm). For PSD M
    the value never decreases: s_{t+1}^T M s_{t+1} >= s_t^T M s_t; an iterate that did not
    improve is rejected and the example stops (also when s is a fixed point). Each step costs
    one product with M.

    ``restrict`` (optional, as in :func:`lanczos`): rows -> the product of those examples
    only; once some examples stopped, the others run on their own (most stop after a few
    steps, and a step of the whole batch costs as much as its slowest example's).

    Returns (s [B, n] with entries +-1, value [B] = sqrt(s^T M s) = ||J s||_2, steps [B]).
    """
    s = _signs(start)
    ms = gram(s)
    val = _dot(s, ms)
    b = s.shape[0]
    active = torch.ones(b, dtype=torch.bool, device=s.device)
    steps = torch.zeros(b, dtype=torch.long, device=s.device)
    cur, apply = torch.arange(b, device=s.device), gram  # the rows ``apply`` computes
    for _ in range(int(max_steps)):
        new = _signs(ms, s)
        active = active & (new != s).any(dim=1)
        if not bool(active.any()):
            break
        if restrict is not None and int(active.sum()) < cur.shape[0]:
            cur = active.nonzero().flatten()
            apply = restrict(cur)
        on = active[cur]
        trial = torch.where(on[:, None], new[cur], s[cur])
        ms_new = apply(trial)
        val_new = _dot(trial, ms_new)
        better = on & (val_new > val[cur])
        s[cur] = torch.where(better[:, None], trial, s[cur])
        ms[cur] = torch.where(better[:, None], ms_new, ms[cur])
        val[cur] = torch.where(better, val_new, val[cur])
        steps[cur] += on.long()
        active = torch.zeros_like(active)
        active[cur] = better
    return s, val.clamp_min(0).sqrt(), steps


__all__ = [
    "Eigen",
    "LinearOperator",
    "Singular",
    "certified_gap",
    "default_tol",
    "lanczos",
    "round_up",
    "random_start",
    "sign_iteration",
    "top_singular",
]
