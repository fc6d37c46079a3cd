"""Elementwise activations: ReLU, Softplus, ELU, Tanh, Sigmoid.

Derivatives from each neuron's interval (docs/design.md section 4): ReLU {0}, {1} or [0, 1];
softplus sigmoid(beta q) (monotone; 1 above torch's threshold); ELU 1 or alpha e^q; tanh
1 - tanh^2 and sigmoid s (1 - s) (even, maximal at 0). Linear relaxations: ReLU the triangle;
convex softplus / ELU (alpha <= 1) and S-shaped tanh / sigmoid by the base class
(:meth:`attrbound.interval.ops.base.Activation.relax`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attrbound.errors import AttrboundError
from attrbound.interval.ops.base import Activation, register
from attrbound.interval.rounding import K_FUNC, Units, down, mag, outward, up

__all__ = ["ELU", "ReLU", "Sigmoid", "Softplus", "Tanh"]


@register(nn.ReLU)
class ReLU(Activation):
    """max(q, 0), bounded exactly (no smooth surrogate)."""

    name = "ReLU"
    kind = "relu"

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


@register(nn.Softplus)
class Softplus(Activation):
    """torch.nn.Softplus: log1p(exp(beta q)) / beta, and q itself where beta q > threshold."""

    name = "Softplus"
    kind = "convex"

    def __init__(self, m: nn.Softplus) -> None:
        self.beta, self.threshold = float(m.beta), float(m.threshold)
        # above the threshold torch returns q = s(q) - log1p(exp(-beta q)) / beta
        self.jump = math.log1p(math.exp(-self.threshold)) / self.beta * (1 + 1e-12) + 1e-300

    @classmethod
    def from_module(cls, m: nn.Module, in_shape: tuple[int, ...], device: torch.device,
                    path: str) -> Softplus:
        assert isinstance(m, nn.Softplus)
        return cls(m)

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

    @classmethod
    def from_module(cls, m: nn.Module, in_shape: tuple[int, ...], device: torch.device,
                    path: str) -> ELU:
        assert isinstance(m, nn.ELU)
        return cls(m)

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
