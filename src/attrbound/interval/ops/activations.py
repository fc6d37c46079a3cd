"""Elementwise activations: ReLU, LeakyReLU, Hardtanh / ReLU6, Softplus, ELU, Tanh, Sigmoid,
GELU, SiLU.

Derivatives from each neuron's interval (docs/design.md section 4): ReLU {0}, {1} or [0, 1];
LeakyReLU {a}, {1} or their hull; Hardtanh / ReLU6 {0}, {1} or [0, 1]; softplus sigmoid(beta q)
(monotone; 1 above torch's threshold); ELU 1 or alpha e^q; tanh 1 - tanh^2 and sigmoid s (1 -
s) (even, maximal at 0); GELU Phi(q) + q phi(q) (increasing on [-sqrt 2, sqrt 2], decreasing
outside); SiLU s (1 + q (1 - s)), s = sigmoid(q) (increasing on about [-2.40, 2.40]). Linear
relaxations: ReLU the triangle; convex LeakyReLU (a <= 1), softplus, ELU (alpha <= 1) and
S-shaped tanh / sigmoid by the base class
(:meth:`attrbound.interval.ops.base.Activation.relax`); GELU and SiLU, which are not monotone,
by their constant range; Hardtanh by the identity between its kinks, else its constant range.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from attrbound.errors import AttrboundError
from attrbound.interval.ops.base import Activation, register
from attrbound.interval.rounding import K_FUNC, Units, down, mag, outward, up

__all__ = ["ELU", "GELU", "Hardtanh", "LeakyReLU", "ReLU", "SiLU", "Sigmoid", "Softplus",
           "Tanh"]


@register(nn.ReLU)
class ReLU(Activation):
    """max(q, 0), bounded exactly (no smooth surrogate)."""

    name = "ReLU"
    kind = "relu"
    zero_below = True

    def value(self, x: Tensor) -> Tensor:
        return x.clamp_min(0)

    def slope(self, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    def range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        return lo.clamp_min(0), hi.clamp_min(0)  # exact in every format

    def deriv_range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        # torch's derivative is [q > 0]; at q = 0 exactly it is 0, inside [0, 1]
        return (lo > 0).to(lo.dtype), (hi > 0).to(lo.dtype)

    def relax(
        self, lo: Tensor, hi: Tensor, units: Units
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Unstable neurons (lo < 0 < hi): upper line the chord hi (q - lo) / (hi - lo) (slope
        rounded up, capped at 1), lower line q if hi > -lo else 0; stable ones exact."""
        zero, one = torch.zeros_like(lo), torch.ones_like(lo)
        unstable = (lo < 0) & (hi > 0)
        denom = torch.where(unstable, down(hi - lo), one)
        slope = up(hi.clamp_min(0) / denom).clamp(max=1.0)
        slope = torch.where(unstable, slope, zero)
        a_up = torch.where(lo >= 0, one, slope)
        b_up = torch.where(unstable, up(-slope * lo), zero)
        a_lo = torch.where(lo >= 0, one, torch.where(unstable & (hi > -lo), one, zero))
        return a_lo, zero, a_up, b_up


@register(nn.LeakyReLU)
class LeakyReLU(Activation):
    """q for q > 0, a q below (a = negative_slope >= 0): increasing, convex for a <= 1 (no
    curvature used for a > 1). torch's derivative at q = 0 is a; its a is a rounded to the
    evaluation format (|fl(a) - a| <= u a), so the derivative intervals of the negative piece
    are a (1 -/+ 2u), and the value's rounding is within the base class's K_FUNC u |value|."""

    name = "LeakyReLU"

    def __init__(self, m: nn.LeakyReLU) -> None:
        self.a = float(m.negative_slope)
        if not self.a >= 0:
            raise AttrboundError("the interval method needs LeakyReLU negative_slope >= 0 (an "
                                 f"increasing activation), got {self.a}.")
        self.kind = "convex" if self.a <= 1 else "none"
        self.zero_below = self.a == 0

    def value(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, self.a * x)

    def slope(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, self.a))

    def deriv_range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        # pieces: a on q <= 0 (present if lo <= 0), 1 on q > 0 (present if hi > 0)
        slack = 2 * units.u * self.a + units.abs_tiny(1)
        has_neg, has_pos = lo <= 0, hi > 0
        inf = torch.full_like(lo, math.inf)
        one = torch.ones_like(lo)
        dlo = torch.minimum(torch.where(has_neg, torch.full_like(lo, self.a - slack), inf),
                            torch.where(has_pos, one, inf))
        dhi = torch.maximum(torch.where(has_neg, torch.full_like(lo, self.a + slack), -inf),
                            torch.where(has_pos, one, -inf))
        return down(dlo), up(dhi)


@register(nn.Hardtanh)
class Hardtanh(Activation):
    """clamp(q, m, M) (nn.Hardtanh; nn.ReLU6 is m = 0, M = 6), bounded exactly: the value is
    a clamp, exact in every format; torch's derivative is 1 for m < q < M and 0 elsewhere
    (the ends included). The kinks as the model compares with them are m and M rounded to
    its format, so each is taken as the interval k (1 -/+ 2u) -/+ tiny; a neuron surely
    between them is the identity (exact relaxation), any other gets its constant range."""

    name = "Hardtanh"

    def __init__(self, m: nn.Hardtanh) -> None:
        self.low, self.high = float(m.min_val), float(m.max_val)
        if not self.low < self.high:
            raise AttrboundError("the interval method needs Hardtanh min_val < max_val, got "
                                 f"{self.low} and {self.high}.")

    def _kinks(self, units: Units) -> tuple[float, float, float, float]:
        """(m1, m2, M1, M2): the rounded kinks lie in [m1, m2] and [M1, M2]."""
        r, t = 2 * units.u, units.tiny
        m, big = self.low, self.high
        return (m - abs(m) * r - t, m + abs(m) * r + t, big - abs(big) * r - t,
                big + abs(big) * r + t)

    def value(self, x: Tensor) -> Tensor:
        return x.clamp(self.low, self.high)

    def slope(self, x: Tensor) -> Tensor:
        return ((x > self.low) & (x < self.high)).to(x.dtype)

    def range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        m1, m2, big1, big2 = self._kinks(units)
        return lo.clamp(m1, big1), hi.clamp(m2, big2)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        m1, m2, big1, big2 = self._kinks(units)
        surely = (lo > m2) & (hi < big1)
        maybe = (hi > m1) & (lo < big2)
        return surely.to(lo.dtype), maybe.to(lo.dtype)

    def relax(
        self, lo: Tensor, hi: Tensor, units: Units
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The identity where [lo, hi] lies surely between the kinks, else the constant
        range."""
        m1, m2, big1, big2 = self._kinks(units)
        rlo, rhi = self.range(lo, hi, units)
        inside = (lo > m2) & (hi < big1)
        zero, one = torch.zeros_like(lo), torch.ones_like(lo)
        a = torch.where(inside, one, zero)
        return a, torch.where(inside, zero, rlo), a, torch.where(inside, zero, rhi)


@register(nn.Softplus)
class Softplus(Activation):
    """torch.nn.Softplus: log1p(exp(beta q)) / beta, and q itself where beta q > threshold."""

    name = "Softplus"
    kind = "convex"

    def __init__(self, m: nn.Softplus) -> None:
        self.beta, self.threshold = float(m.beta), float(m.threshold)
        # above the threshold torch returns q = s(q) - log1p(exp(-beta q)) / beta
        self.jump = math.log1p(math.exp(-self.threshold)) / self.beta * (1 + 1e-12) + 1e-300

    def value(self, x: Tensor) -> Tensor:
        return x.clamp_min(0) + torch.log1p(torch.exp(-self.beta * x.abs())) / self.beta

    def slope(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.beta * x)

    def value_err(self, vmag: Tensor, xmag: Tensor, units: Units) -> Tensor:
        return K_FUNC * units.u * (vmag + xmag + 1 / self.beta) + units.abs_tiny(1)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        dlo, dhi = self.slope(lo), self.slope(hi)
        # where beta q may exceed the threshold (as evaluated) the derivative is exactly 1
        near = self.beta * hi * (1 + 4 * units.u) + units.tiny > self.threshold
        err = (self.beta * mag(lo, hi) + K_FUNC) * units.u * dhi + units.abs_tiny(1)
        dlo, dhi = outward(dlo, dhi, err)
        return dlo, torch.where(near, torch.maximum(dhi, torch.ones_like(dhi)), dhi)


@register(nn.ELU)
class ELU(Activation):
    """q for q > 0, alpha (e^q - 1) below; convex for alpha <= 1, else no curvature used."""

    name = "ELU"

    def __init__(self, m: nn.ELU) -> None:
        self.alpha = float(m.alpha)
        if not self.alpha > 0:
            raise AttrboundError(f"the interval method needs ELU alpha > 0, got {self.alpha}.")
        self.kind = "convex" if self.alpha <= 1 else "none"

    def value(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, self.alpha * torch.expm1(x.clamp(max=0)))

    def slope(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, torch.ones_like(x), self.alpha * torch.exp(x.clamp(max=0)))

    def value_err(self, vmag: Tensor, xmag: Tensor, units: Units) -> Tensor:
        return K_FUNC * units.u * (vmag + self.alpha) + units.abs_tiny(1)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        # pieces: alpha e^q on [lo, min(hi, 0)] (if lo <= 0), 1 on (0, hi] (if hi > 0)
        neg_lo = self.alpha * torch.exp(lo.clamp(max=0))
        neg_hi = self.alpha * torch.exp(hi.clamp(max=0))
        has_neg, has_pos = lo <= 0, hi > 0
        inf = torch.full_like(lo, math.inf)
        dlo = torch.minimum(torch.where(has_neg, neg_lo, inf),
                            torch.where(has_pos, torch.ones_like(lo), inf))
        dhi = torch.maximum(torch.where(has_neg, neg_hi, -inf),
                            torch.where(has_pos, torch.ones_like(lo), -inf))
        err = K_FUNC * units.u * (self.alpha + (mag(lo, hi) + 1) * dhi) + units.abs_tiny(1)
        return outward(dlo, dhi, err)


@register(nn.Tanh)
class Tanh(Activation):
    """tanh: S-shaped, derivative 1 - tanh^2 even and decreasing in |q|."""

    name = "Tanh"
    kind = "sshape"

    def value(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def slope(self, x: Tensor) -> Tensor:
        return torch.cosh(x).pow(-2)

    def _even_range(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """(min, max) of the slope, even and decreasing in |q|, over [lo, hi]."""
        amin = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo),
                           torch.minimum(lo.abs(), hi.abs()))
        return self.slope(mag(lo, hi)), self.slope(amin)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        dlo, dhi = self._even_range(lo, hi)
        # evaluated as 1 - y^2 with y = tanh(q) in the evaluation format
        return outward(dlo, dhi, 2 * K_FUNC * units.u + units.abs_tiny(2))


@register(nn.Sigmoid)
class Sigmoid(Tanh):
    """The logistic sigmoid s: S-shaped, derivative s (1 - s) even and decreasing in |q|."""

    name = "Sigmoid"

    def value(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def slope(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x) * torch.sigmoid(-x)

    def value_err(self, vmag: Tensor, xmag: Tensor, units: Units) -> Tensor:
        return K_FUNC * units.u * vmag * (1 + xmag) + units.abs_tiny(1)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        dlo, dhi = self._even_range(lo, hi)
        err = 2 * K_FUNC * units.u * (1 + mag(lo, hi)) + units.abs_tiny(2)
        return outward(dlo, dhi, err)


def _newton(f: Callable[[float], float], df: Callable[[float], float], q: float) -> float:
    """A root of f near q (float64 Newton steps)."""
    for _ in range(40):
        q -= f(q) / df(q)
    return q


class _OneDip(Activation):
    """A smooth activation q g(q) with one minimum (at ``argmin``, value ``minimum``) and a
    slope that increases between its extremes at ``slope_at`` = (a, b) and decreases outside
    them (``slope_min`` at a, ``slope_max`` at b): GELU and SiLU. Not monotone, so ``range``
    takes the minimum where an interval contains the minimiser, the slope range takes the
    slope's extremes where an interval contains a or b, the Lipschitz constant is max |slope|,
    and the relaxation is the constant range (kind "none"). Each constant is the float64
    value at a float64 approximation of its extremiser, moved outward by 1e-12. Rounding:
    the value within K_FUNC u (|value| + |q|) (GELU's 1 + erf(q / sqrt 2) cancels for q << 0,
    so its error is relative to |q|; for SiLU's q / (1 + exp(-q)) the |q| term is margin), the
    slope within K_FUNC u (1 + |q|) (sigmoid's absolute error is multiplied by about |q| in
    SiLU's s (1 + q (1 - s)); likewise phi's in GELU's Phi + q phi).
    """

    kind = "none"
    argmin = minimum = slope_min = slope_max = 0.0
    slope_at = (0.0, 0.0)

    def value_err(self, vmag: Tensor, xmag: Tensor, units: Units) -> Tensor:
        return K_FUNC * units.u * (vmag + xmag) + units.abs_tiny(1)

    def range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        vlo, vhi = self.value(lo), self.value(hi)
        inside = (lo <= self.argmin) & (hi >= self.argmin)
        rmin = torch.where(inside, torch.full_like(lo, self.minimum), torch.minimum(vlo, vhi))
        rmax = torch.maximum(vlo, vhi)
        err = self.value_err(mag(rmin, rmax), mag(lo, hi), units)
        return outward(rmin, rmax, err)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        dl, dh = self.slope(lo), self.slope(hi)
        a, b = self.slope_at
        dlo = torch.where((lo <= a) & (hi >= a), torch.full_like(lo, self.slope_min),
                          torch.minimum(dl, dh))
        dhi = torch.where((lo <= b) & (hi >= b), torch.full_like(lo, self.slope_max),
                          torch.maximum(dl, dh))
        return outward(dlo, dhi, K_FUNC * units.u * (1 + mag(lo, hi)) + units.abs_tiny(2))

    def lipschitz(self, lo: Tensor, hi: Tensor, units: Units) -> Tensor:
        dlo, dhi = self.deriv_range(lo, hi, units)
        return mag(dlo, dhi)


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _gelu(x: float) -> float:
    return 0.5 * x * math.erfc(-x / math.sqrt(2))


def _gelu_slope(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2)) + x * _phi(x)


@register(nn.GELU)
class GELU(_OneDip):
    """torch.nn.GELU (approximate="none"): q Phi(q), Phi the standard normal CDF; minimum
    about -0.17 at q about -0.7518 (Newton on the slope, whose derivative is phi(q) (2 - q^2)),
    slope extremes -0.129 and 1.129 at -+sqrt 2. torch evaluates 0.5 q (1 + erf(q / sqrt 2))."""

    name = "GELU"
    argmin = _newton(_gelu_slope, lambda q: _phi(q) * (2 - q * q), -0.75)
    minimum = _gelu(argmin) - 1e-12
    slope_at = (-math.sqrt(2), math.sqrt(2))
    slope_min = _gelu_slope(-math.sqrt(2)) - 1e-12
    slope_max = _gelu_slope(math.sqrt(2)) + 1e-12

    def __init__(self, m: nn.GELU) -> None:
        if m.approximate != "none":
            raise AttrboundError("the interval method supports GELU(approximate='none') only, "
                                 f"got approximate={m.approximate!r}.")

    def value(self, x: Tensor) -> Tensor:
        return 0.5 * x * torch.erfc(-x / math.sqrt(2))

    def slope(self, x: Tensor) -> Tensor:
        return 0.5 * torch.erfc(-x / math.sqrt(2)) + x * torch.exp(-0.5 * x * x) / math.sqrt(
            2 * math.pi)


def _sig(x: float) -> float:
    return 0.5 * (1 + math.tanh(0.5 * x))


def _silu(x: float) -> float:
    return x * _sig(x)


def _silu_slope(x: float) -> float:
    return _sig(x) * (1 + x * (1 - _sig(x)))


def _silu_curvature(x: float) -> float:
    """SiLU'' = s (1 - s) (2 + q (1 - 2 s)), s = sigmoid(q)."""
    s = _sig(x)
    return s * (1 - s) * (2 + x * (1 - 2 * s))


@register(nn.SiLU)
class SiLU(_OneDip):
    """torch.nn.SiLU (swish): q sigmoid(q); minimum about -0.2785 at q about -1.2785 (where
    1 + q (1 - sigmoid q) = 0), slope extremes about -0.0998 and 1.0998 at q about -+2.3994
    (where 2 + q (1 - 2 sigmoid q) = 0). torch evaluates q / (1 + exp(-q)) and the slope
    s (1 + q (1 - s))."""

    name = "SiLU"
    argmin = _newton(_silu_slope, _silu_curvature, -1.3)
    minimum = _silu(argmin) - 1e-12
    _b = _newton(lambda q: 2 + q * (1 - 2 * _sig(q)),
                 lambda q: (1 - 2 * _sig(q)) - 2 * q * _sig(q) * (1 - _sig(q)), 2.4)
    slope_at = (-_b, _b)
    slope_min = _silu_slope(-_b) - 1e-12
    slope_max = _silu_slope(_b) + 1e-12

    def value(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)

    def slope(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))
