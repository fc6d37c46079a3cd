"""A probabilistic upper bound on lambda_max from one Lanczos run (docs/design.md section 3.3).

The Lanczos-polynomial (Christoffel-function) bound, after van Dorsselaer, Hochstenbach and
van der Vorst (SIAM J. Matrix Anal. Appl. 22, 2000). Statement: let K be symmetric n x n with
largest eigenvalue lambda_1, q_1 uniform on the unit sphere and independent of K, and
alpha_1..alpha_k, beta_1..beta_k the coefficients of k Lanczos steps from q_1 (q_{j+1} beta_j =
K q_j - alpha_j q_j - beta_{j-1} q_{j-1}). Define the Lanczos polynomials

    phi_0 = 1,   beta_j phi_j(t) = (t - alpha_j) phi_{j-1}(t) - beta_{j-1} phi_{j-2}(t),

so that q_{j+1} = phi_j(K) q_1, and the Christoffel sum C_m(t) = sum_{j=0}^{m} phi_j(t)^2 for
any m <= k (m = k needs beta_k > 0). With eta = delta * sqrt(pi / (2 n)) and
xi_m = the largest t with C_m(t) <= 1 / eta^2,

    P( lambda_1 <= xi_m for every m ) >= 1 - delta        (over q_1, for EVERY fixed K).

Proof. (i) q_1..q_{m+1} are orthonormal, so for unit a in R^{m+1},
||sum_j a_j phi_j(K) q_1|| = 1. Write q_1 = sum_i c_i u_i over unit eigenvectors and let
c = ||P_1 q_1|| be the norm of its part in the eigenspace of lambda_1. Then
1 = sum_i c_i^2 (sum_j a_j phi_j(lambda_i))^2 >= c^2 (sum_j a_j phi_j(lambda_1))^2; with
a_j = phi_j(lambda_1) / sqrt(C_m(lambda_1)) this reads C_m(lambda_1) <= 1 / c^2.
(ii) The roots of phi_j are the eigenvalues of T_j, all <= theta_1 = lambda_max(T_m) <=
lambda_1 (interlacing; Ritz values never exceed lambda_1). A polynomial with real roots all
<= theta_1 and a positive leading coefficient (phi_j's is 1 / (beta_1 ... beta_j)) is >= 0 and
nondecreasing on [theta_1, inf), so C_m is nondecreasing there (strictly, through phi_1).
Hence on the event c >= eta, C_m(lambda_1) <= 1 / eta^2 and lambda_1 <= xi_m, for every m at
once (adaptive stopping is free). (iii) P(c < eta) <= P(|<q_1, u_1>| < eta) for one unit
u_1 in the eigenspace; z = <q_1, u_1> has density Gamma(n/2) / (sqrt(pi) Gamma((n-1)/2))
(1 - z^2)^((n-3)/2) on [-1, 1], at most Gamma(n/2) / (sqrt(pi) Gamma((n-1)/2)) <
sqrt(n / (2 pi)) for n >= 3 (Gautschi's inequality), so P(|z| < eta) < 2 eta sqrt(n / (2 pi))
= eta sqrt(2 n / pi) = delta. (n = 2: P = (2 / pi) asin(eta) <= eta < delta; n = 1: c = 1.)

The bottom of the spectrum is the same statement for -K: C_m is nonincreasing on
(-inf, theta_min], and lambda_n >= the smallest t with C_m(t) <= 1 / eta^2.

Floating point: the proof is exact arithmetic. With full re-orthogonalisation the computed
coefficients are those of an exact Lanczos run on a nearby matrix (backward stability; its
distance is a modest multiple of the unit roundoff times ||K||), which :data:`MARGIN` covers
by a relative allowance of 1e-4 of the value in float32 (1e-10 in float64). That allowance
is argued, not proved; the products K q themselves (autograd in the model's dtype) are part
of the operator bounded.

Everything here is batched: coefficients [B, k], points t [B, G].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def eta(delta: float, n: int) -> float:
    """eta = delta * sqrt(pi / (2 n)): P(||P_1 q_1|| < eta) <= delta for q_1 uniform on S^{n-1}."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    return delta * math.sqrt(math.pi / (2 * max(int(n), 1)))


def margin(dtype: torch.dtype) -> float:
    """The relative floating-point allowance added to a certified value (module docstring)."""
    return 1e-10 if dtype == torch.float64 else 1e-4


#: largest |phi_j| carried: beyond it C(t) exceeds every target and the value no longer matters
_CAP = 1e150


def christoffel(alphas: Tensor, betas: Tensor, count: Tensor, t: Tensor) -> Tensor:
    """C(t) = sum_{j=0}^{count_b} phi_j(t)^2 per example and point.

    alphas, betas: float64 [B, k] (column j-1 holds alpha_j, beta_j); count: int64 [B], the
    number of polynomials beyond phi_0 (<= k; phi_j uses beta_j as its divisor, at least the
    smallest positive float: beta_k = 0, an invariant Krylov space, makes phi_k infinite
    beyond theta, i.e. lambda_1 = theta_1 on the event); t: [B, G].
    Returns [B, G]. Values are capped (:data:`_CAP`) once they exceed any sensible target.
    """
    b, k = alphas.shape
    p_prev = torch.zeros_like(t)
    p = torch.ones_like(t)
    total = torch.ones_like(t)
    for j in range(1, k + 1):
        use = (count >= j)[:, None]
        if not bool(use.any()):
            break
        a = alphas[:, j - 1 : j]
        bj = betas[:, j - 1 : j]
        bprev = betas[:, j - 2 : j - 1] if j >= 2 else torch.zeros_like(bj)
        div = torch.where(use, bj.clamp_min(torch.finfo(bj.dtype).tiny), torch.ones_like(bj))
        nxt = torch.nan_to_num((t - a) * p - bprev * p_prev, nan=0.0) / div
        nxt = nxt.clamp(-_CAP, _CAP)
        total = torch.where(use, (total + nxt * nxt).clamp(max=_CAP), total)
        p_prev, p = p, torch.where(use, nxt, p)
    return total


def exceeds(alphas: Tensor, betas: Tensor, count: Tensor, t: Tensor, target: float) -> Tensor:
    """C(t_b) >= target, per example: t [B] -> bool [B] (then xi <= t_b, top end)."""
    return christoffel(alphas, betas, count, t[:, None])[:, 0] >= target


def upper_end(
    alphas: Tensor, betas: Tensor, count: Tensor, theta: Tensor, scale: Tensor, target: float,
    *, sign: float = 1.0, sections: int = 32, rounds: int = 3, known: Tensor | None = None,
) -> Tensor:
    """xi = the t beyond theta (sign = +1: above the top Ritz value; -1: below the bottom one)
    where C(t) reaches ``target`` = 1 / eta^2, from above: returns a t with C(t) >= target,
    beyond the root by at most 32^-3 (3e-5) of the first bracket's width.

    theta, scale: float64 [B] (scale > 0 sets the first step, e.g. |theta|). known: optional
    float64 [B], a distance from theta already found to satisfy C >= target (NaN where none
    is known; a certifying run knows its stopping point). The bracket grows by factors of 8
    from 1e-6 scale (or starts at ``known``) until C >= target, then shrinks by ``rounds``
    multisections of ``sections`` points (C is monotone beyond theta, module docstring).
    Returns [B].
    """
    scale = scale.clamp_min(torch.finfo(torch.float64).tiny)
    gap = 1e-6 * scale
    if known is not None:
        gap = torch.where(torch.isfinite(known) & (known > 0), known, gap)
    lo = torch.zeros_like(gap)  # the last distance found short of the target (or 0)
    for _ in range(80):
        hi_ok = exceeds(alphas, betas, count, theta + sign * gap, target)
        if bool(hi_ok.all()):
            break
        lo = torch.where(hi_ok, lo, gap)
        gap = torch.where(hi_ok, gap, 8 * gap)
    hi = gap  # distances from theta; C(theta + sign hi) >= target
    frac = torch.linspace(0, 1, sections + 1, dtype=torch.float64, device=theta.device)[1:]
    for _ in range(rounds):
        dist = lo[:, None] + (hi - lo)[:, None] * frac[None, :]  # [B, G]
        ok = christoffel(alphas, betas, count, theta[:, None] + sign * dist) >= target
        first = torch.where(ok.any(dim=1), ok.float().argmax(dim=1),
                            torch.full_like(lo, sections - 1, dtype=torch.long))
        rows = torch.arange(theta.shape[0], device=theta.device)
        new_hi = dist[rows, first]
        new_lo = torch.where(first > 0, dist[rows, (first - 1).clamp_min(0)], lo)
        lo, hi = new_lo, torch.minimum(new_hi, hi)
    return theta + sign * hi


__all__ = ["christoffel", "eta", "exceeds", "margin", "upper_end"]
