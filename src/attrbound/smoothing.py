"""The math of smoothed attributions (docs/design.md section 10).

Let a(z) be a base attribution and u(z) = a(z) / ||a(z)||_2 its normalised map (u = 0 where
a = 0), so ||u(z)||_2 <= 1 everywhere. The smoothed attribution is

    h(x) = E_eta [ u(x + eta) ],   eta ~ P_0 = N(0, sigma^2 I)   ("gaussian")
                                   eta ~ P_0 = U(B(0, r))        ("uniform", l2 ball, r = sigma)

**Deviation bound (deterministic).** Write P_x for the law of x + eta. For every unit w,
z -> <w, u(z)> takes values in [-1, 1], and |E_P f - E_Q f| <= 2 TV(P, Q) for every f with
values in [-1, 1] (split f = f+ - f- over the set where dP > dQ). Hence

    ||h(x) - h(x')||_2 = sup_{||w|| = 1} <w, h(x) - h(x')> <= 2 TV(P_x, P_x'),

and TV depends only on rho = ||x - x'||_2 (both families are translation and rotation
invariant), increasing in rho:

- gaussian: TV = 2 Phi(rho / (2 sigma)) - 1 = erf(rho / (2 sqrt(2) sigma)) (the densities
  cross on the bisecting hyperplane; project on the line x x'). Since erf is concave on
  [0, inf) with erf'(0) = 2 / sqrt(pi), 2 TV <= sqrt(2/pi) rho / sigma: the Lipschitz
  constant sqrt(2/pi) / sigma of :func:`gaussian_lipschitz`, dimension-free (equivalently,
  the directional derivative E[u(x + sigma xi) <xi, v>] / sigma has norm <= E|<xi, v>| /
  sigma = sqrt(2/pi) / sigma). :func:`deviation_bound` uses the erf form, never larger.
- uniform: TV = vol(B(x, r) \\ B(x', r)) / vol(B(r)). The lens B(x, r) ∩ B(x', r) is two caps
  of height r - rho/2, each of volume fraction (1/2) I_{1 - t^2}((d + 1)/2, 1/2) with
  t = rho / (2 r) (the cap formula of Li 2011), so for rho <= 2r

      2 vol(B(x, r) \\ B(x', r)) / vol(B(r)) = 2 (1 - I_{1 - t^2}((d+1)/2, 1/2))
                                            = 2 I_{t^2}(1/2, (d + 1)/2),

  (I the regularised incomplete beta function, :func:`betainc`; I_x(a, b) = 1 - I_{1-x}(b,
  a)), and 2 for rho >= 2r. d = 1 gives 2 t, the overlap of two intervals. Its slope at
  rho = 0 is the Lipschitz constant of :func:`uniform_lipschitz`,
  2 Gamma(d/2 + 1) / (sqrt(pi) Gamma((d + 1)/2) r) ~ sqrt(2 d / pi) / r: it GROWS like
  sqrt(d), because a ball's mass sits in a shell of width ~ r / d at its boundary.

**Uniform against Gaussian.** At the same parameter (r = sigma) the uniform bound's slope is
larger by a factor ~ sqrt(d) (1.25 at d = 1, 1.6 at d = 2, 55 at d = 3072): the Gaussian
wins. At the same noise energy E||eta||^2 (r = sigma sqrt(d + 2),
:func:`matched_uniform_radius`) the uniform slope is the smaller one for every d (0.72 of the
Gaussian's at d = 1, 0.80 at d = 2, -> 1 as d grows) and its bound stays below the Gaussian's
up to rho ~ 3 sigma - 3.5 sigma (where the Gaussian bound is already ~ 1.8 of its maximum 2):
the uniform ball beats the Gaussian only at equal energy, and by a margin that vanishes with
d; its TV reaches 1 at rho = 2r, the Gaussian's never does.

**Input sets.** The bound holds for every x' with ||x' - x||_2 <= rho: an l2 ball of radius
eps gives rho = eps; an l-inf ball gives rho = sqrt(d) eps, or less inside the domain box
(:func:`l2_radius`). Restricting to points inside the domain or keeping the label only
shrinks the set, so the bound holds on it.

**Monte-Carlo estimate (probability >= 1 - alpha).** h(x) is estimated by
h_n = (1/n) sum_k u(x + eta_k) with eta_k i.i.d. from attrbound's own generator. The X_k =
u(x + eta_k) are independent with ||X_k|| <= 1, so F = ||h_n - h(x)|| changes by at most
2/n when one X_k changes (bounded differences), and E F <= sqrt(E F^2) = sqrt((E||X||^2 -
||h||^2) / n) <= 1 / sqrt(n). McDiarmid's inequality (bounded differences, c_k = 2/n) gives

    P( ||h_n - h(x)|| >= 1/sqrt(n) + s ) <= exp(-n s^2 / 2),

so with s = sqrt(2 ln(1/alpha) / n), ||h_n - h(x)|| < t(n, alpha) = (1 + sqrt(2 ln(1/alpha)))
/ sqrt(n) with probability >= 1 - alpha (:func:`estimate_radius`). It is dimension-free and
smaller than the vector Hoeffding bound of Pinelis 1994 (Theorem 3.5, martingale differences
of norm <= 2/n in a Hilbert space: P(F >= t) <= 2 exp(-n t^2 / 8)) for every alpha. The ONE
event F < t gives both uses at once: ||h(x) - h_n|| < t and, by the triangle inequality,
| ||h(x)|| - ||h_n|| | < t, so alpha need not be split between them.

**Cosine.** From E >= ||h(x') - h(x)|| and ||h(x)|| >= L = ||h_n|| - t: cos(h(x), h(x')) >=
sqrt(1 - (E / L)^2) when E < L (:func:`attrbound.results.cosine_from_euclidean`), with
probability >= 1 - alpha.

**Floating point.** :func:`deviation_bound` adds the rounding error of erf and of the
continued fraction (its log-prefactor's magnitude times 16 units of float64) and
:func:`estimate_radius` the error of forming u and the mean in float64
(2 (n + d + 4) 2^-53, Higham's gamma_k bounds for sums and norms), so each stays a bound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attrbound.errors import AttrboundError

SMOOTHINGS = ("gaussian", "uniform")
_EPS = 2.0**-52
_TINY = 1e-300


def _check_smoothing(smoothing: str) -> str:
    if smoothing not in SMOOTHINGS:
        raise AttrboundError(
            f"unknown smoothing {smoothing!r}; use one of {', '.join(SMOOTHINGS)}."
        )
    return smoothing


def check_sigma(sigma: object) -> float:
    """sigma as a float, or one clear error if it is not a finite number > 0."""
    try:
        value = float(sigma)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AttrboundError(f"sigma must be a number, got {sigma!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise AttrboundError(f"sigma must be a finite number > 0, got {sigma!r}.")
    return value


def check_samples(samples: object) -> int:
    """samples as an int, or one clear error if it is not an integer >= 1."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise AttrboundError(f"samples must be an integer >= 1, got {samples!r}.")
    return samples


def check_alpha(alpha: object) -> float:
    """alpha as a float, or one clear error if it does not lie in (0, 1)."""
    try:
        value = float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AttrboundError(f"alpha must be a number in (0, 1), got {alpha!r}.") from None
    if not 0 < value < 1:
        raise AttrboundError(f"alpha must lie in (0, 1), got {alpha!r}.")
    return value


def _betacf(a: float, b: float, x: float, max_iter: int) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz; Numerical Recipes' betacf)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) < 4 * _EPS:
            return h
    raise AttrboundError(f"betainc({a}, {b}, {x}) did not converge in {max_iter} steps.")


def betainc_with_error(a: float, b: float, x: float) -> tuple[float, float]:
    """(I_x(a, b), a bound on its absolute rounding error), float64, a, b > 0, 0 <= x <= 1.

    I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) * betacf, on x < (a + 1) / (a + b + 2) where the
    continued fraction converges fast (in O(sqrt(max(a, b))) steps), and 1 - I_{1-x}(b, a)
    beyond. The error bound: 16 float64 units times the magnitude of the log-prefactor's
    terms (lgamma of arguments up to a + b, and the logs), plus the fraction's tolerance.
    """
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise AttrboundError(f"betainc needs a, b > 0 and 0 <= x <= 1, got {a}, {b}, {x}.")
    if x == 0.0 or x == 1.0:
        return x, 0.0
    la, lb, lab = math.lgamma(a), math.lgamma(b), math.lgamma(a + b)
    lx, l1x = math.log(x), math.log1p(-x)
    log_front = lab - la - lb + a * lx + b * l1x
    magnitude = abs(lab) + abs(la) + abs(lb) + abs(a * lx) + abs(b * l1x) + 1.0
    rel = 16 * _EPS * magnitude + 64 * _EPS
    max_iter = 1000 + 20 * int(math.sqrt(max(a, b)))
    if x < (a + 1.0) / (a + b + 2.0):
        value = math.exp(log_front) * _betacf(a, b, x, max_iter) / a
        return value, rel * value
    tail = math.exp(log_front) * _betacf(b, a, 1.0 - x, max_iter) / b
    return 1.0 - tail, rel * tail + _EPS


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) in float64 (a, b > 0, x in [0, 1])."""
    return betainc_with_error(a, b, x)[0]


def gaussian_lipschitz(sigma: float) -> float:
    """sqrt(2/pi) / sigma: l2 Lipschitz constant of h under N(0, sigma^2 I), any dimension."""
    return math.sqrt(2.0 / math.pi) / check_sigma(sigma)


def uniform_lipschitz(radius: float, dim: int) -> float:
    """2 Gamma(d/2 + 1) / (sqrt(pi) Gamma((d + 1)/2) r): the slope at rho = 0 of the uniform
    bound 2 I_{(rho / 2r)^2}(1/2, (d+1)/2), its l2 Lipschitz constant (the bound is concave
    in rho); ~ sqrt(2 d / pi) / r for large d."""
    r, d = check_sigma(radius), int(dim)
    return 2.0 * math.exp(math.lgamma(d / 2 + 1) - math.lgamma((d + 1) / 2)) / (
        math.sqrt(math.pi) * r
    )


def matched_uniform_radius(sigma: float, dim: int) -> float:
    """The radius r = sigma sqrt(d + 2) whose uniform ball has the noise energy
    E||eta||^2 = d r^2 / (d + 2) of N(0, sigma^2 I) in R^d."""
    return check_sigma(sigma) * math.sqrt(int(dim) + 2)


def total_variation(smoothing: str, rho: float, sigma: float, dim: int) -> tuple[float, float]:
    """(TV(P_x, P_x'), a bound on its rounding error) for ||x - x'||_2 = rho in R^dim."""
    _check_smoothing(smoothing)
    sigma = check_sigma(sigma)
    if not rho >= 0:
        raise AttrboundError(f"the l2 radius must be >= 0, got {rho}.")
    if rho == 0:
        return 0.0, 0.0
    if smoothing == "gaussian":
        value = math.erf(rho / (2.0 * math.sqrt(2.0) * sigma))
        return value, 8 * _EPS * value + _TINY
    t = rho / (2.0 * sigma)
    if t >= 1.0:
        return 1.0, 0.0
    return betainc_with_error(0.5, (int(dim) + 1) / 2.0, t * t)


def deviation_bound(smoothing: str, rho: float, sigma: float, dim: int) -> float:
    """E >= max_{||x' - x||_2 <= rho} ||h(x') - h(x)||_2 = 2 TV, rounding error included,
    capped at 2 (||h|| <= 1). Deterministic: no sampling enters it."""
    value, err = total_variation(smoothing, rho, sigma, dim)
    return min(2.0, 2.0 * (value + err) * (1 + 4 * _EPS))


def lipschitz(smoothing: str, sigma: float, dim: int) -> float:
    """The l2 Lipschitz constant of h: :func:`gaussian_lipschitz` or :func:`uniform_lipschitz`."""
    if _check_smoothing(smoothing) == "gaussian":
        return gaussian_lipschitz(sigma)
    return uniform_lipschitz(sigma, dim)


def estimate_radius(samples: int, alpha: float, dim: int) -> float:
    """t(n, alpha) = (1 + sqrt(2 ln(1/alpha))) / sqrt(n) plus float64 rounding: with
    probability >= 1 - alpha, ||h_n - h(x)||_2 < t (McDiarmid; module docstring)."""
    n, a = check_samples(samples), check_alpha(alpha)
    t = (1.0 + math.sqrt(2.0 * math.log(1.0 / a))) / math.sqrt(n)
    return t * (1 + 8 * _EPS) + 2 * (n + int(dim) + 4) * 2.0**-53


def l2_radius(x: Tensor, eps: float, norm: str, domain: tuple[float, float] | None) -> Tensor:
    """rho [B] (float64) >= ||x' - x||_2 for every x' of the perturbation set of x [B, *S]:
    eps for l2; for l-inf sqrt(sum_i m_i^2) with m_i = min(eps, max(x_i - lo, hi - x_i)) the
    farthest coordinate i can move inside the domain box (sqrt(d) eps without a domain),
    rounded up."""
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    if norm == "2":
        return torch.full((x.shape[0],), float(eps), dtype=torch.float64, device=x.device)
    reach = torch.full_like(flat, float(eps))
    if domain is not None:
        reach = torch.minimum(reach, torch.maximum(flat - domain[0], domain[1] - flat))
    d = flat.shape[1]
    return (reach**2).sum(dim=1).sqrt() * (1 + (d + 4) * _EPS)


def draw_noise(smoothing: str, sigma: float, count: int, shape: tuple[int, ...],
               generator: torch.Generator, device: torch.device | str,
               dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``count`` draws of eta, [count, *shape], and their unit directions s = xi / ||xi||.

    gaussian: eta = sigma xi, xi ~ N(0, I); uniform: eta = r U^(1/d) s (U ~ U(0, 1)), uniform
    in the l2 ball of radius r = sigma. Drawn with ``generator`` (on ``device``) in float64,
    returned in ``dtype``.
    """
    xi = torch.randn((count,) + shape, generator=generator, device=device, dtype=torch.float64)
    norms = xi.reshape(count, -1).norm(dim=1).clamp_min(_TINY)
    s = xi / norms.reshape((-1,) + (1,) * len(shape))
    if _check_smoothing(smoothing) == "gaussian":
        return (sigma * xi).to(dtype), s.to(dtype)
    d = math.prod(shape)
    u = torch.rand(count, generator=generator, device=device, dtype=torch.float64)
    radius = sigma * u ** (1.0 / d)
    return (radius.reshape((-1,) + (1,) * len(shape)) * s).to(dtype), s.to(dtype)
