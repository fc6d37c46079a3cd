"""The two kinds of network node the interval bound propagates through, and their registry.

- :class:`AffineOp`: v -> W v + b (Linear, Conv2d, BatchNorm, AvgPool2d, Flatten). It holds
  float64 copies of its parameters on the inputs' device and implements W v, |W| v, W^T v and
  |W|^T v; from these the base class derives interval propagation (IBP) through W v + b and
  through W^T, the model's own evaluation error, and the back-substitution step Lambda -> Lambda W.
- :class:`Activation`: an elementwise increasing sigma with its value, derivative range and
  linear relaxations, each with rounding margins (docs/design.md section 4).

:data:`REGISTRY` maps ``nn.Module`` types to builders; :func:`register` adds an op class for
one or more module types. A new layer is supported by writing its op class in the file of its
family and registering it; :mod:`attrbound.interval.graph` builds the network from the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from attrbound.interval.rounding import K_FUNC, Units, center_radius, down, mag, outward, up

__all__ = ["REGISTRY", "Activation", "AffineOp", "Builder", "lookup", "register"]


class AffineOp:
    """An affine layer v -> W v + b on inputs [N, *in_shape].

    ``fan`` bounds the terms of one dot product of W or W^T; ``bias`` is b broadcastable to
    [*out_shape] (or None); ``err_bias`` the magnitude of the constant terms the layer adds (for
    rounding margins); ``exact``: a pure reshape, no rounding at all.
    """

    name = "op"
    fan = 1
    exact = False
    bias: Tensor | None = None
    err_bias: Tensor | None = None

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        self.in_shape = in_shape
        self.out_shape: tuple[int, ...] = in_shape

    @classmethod
    def from_module(cls, m: nn.Module, in_shape: tuple[int, ...], device: torch.device,
                    path: str) -> AffineOp | None:
        """The op for layer ``m`` (at ``path`` in the model) on inputs shaped ``in_shape``."""
        return cls(m, in_shape, device)  # type: ignore[call-arg]

    def linear(self, v: Tensor) -> Tensor:
        """W v, v [N, *in_shape] -> [N, *out_shape]."""
        raise NotImplementedError

    def abs_linear(self, v: Tensor) -> Tensor:
        """|W| v."""
        raise NotImplementedError

    def transpose(self, v: Tensor) -> Tensor:
        """W^T v, v [N, *out_shape] -> [N, *in_shape]."""
        raise NotImplementedError

    def abs_transpose(self, v: Tensor) -> Tensor:
        """|W|^T v."""
        raise NotImplementedError

    def forward(self, v: Tensor) -> Tensor:
        """W v + b."""
        out = self.linear(v)
        return out if self.bias is None else out + self.bias

    def ibp(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor, Tensor]:
        """[lo, hi] through W v + b in centre-radius form: W c + b -/+ |W| r; also
        mvec = |W| |v|_max + |b| (>= the magnitudes every rounding error of this layer is
        relative to), rounded up. The interval is widened by 2 gamma_fan mvec (the bound's own
        float64 evaluation and the model's)."""
        c, r = center_radius(lo, hi)
        cc, rr = self.forward(c), self.abs_linear(r)
        mvec = self.abs_linear(c.abs() + r)
        if self.err_bias is not None:
            mvec = mvec + self.err_bias
        mvec = up(mvec * (1 + units.gamma(self.fan)))
        err = 2 * units.gamma(self.fan) * mvec + units.abs_tiny(self.fan)
        return down(cc - rr - err), up(cc + rr + err), mvec

    def eval_error(self, e: Tensor, mvec: Tensor, units: Units) -> Tensor:
        """Bound on |evaluated - exact| of the output given that bound ``e`` on the input: the
        input error through |W| plus this layer's own rounding gamma mvec."""
        g = units.gamma(self.fan)
        return up(self.abs_linear(e) * (1 + g) + g * mvec + units.abs_tiny(self.fan))

    def ibp_transpose(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        """[lo, hi] through W^T (no bias): W^T c -/+ |W|^T r, widened by
        3 gamma_fan |W|^T (|c| + r)."""
        c, r = center_radius(lo, hi)
        cc, rr = self.transpose(c), self.abs_transpose(r)
        m = self.abs_transpose(c.abs() + r)
        err = 3 * units.gamma(self.fan) * m + units.abs_tiny(self.fan)
        return down(cc - rr - err), up(cc + rr + err)

    def backward(self, lam: Tensor, shared: bool) -> Tensor:
        """Lambda -> Lambda W for rows Lambda [R, *out_shape] (``shared``: the same for every
        input) or [n, R, *out_shape]; returns [R or (n, R), *in_shape]."""
        lead = lam.shape[:1] if shared else lam.shape[:2]
        out = self.transpose(lam.reshape((-1,) + self.out_shape))
        return out.reshape(lead + self.in_shape)

    def crown_gamma(self, units: Units) -> float:
        """Relative rounding of one back-substitution step through this layer (Lambda W and
        Lambda . b): gamma of fan + out_size terms."""
        return units.gamma(self.fan + math.prod(self.out_shape))


class Activation:
    """An elementwise increasing activation sigma (as torch evaluates it).

    ``value`` / ``slope``: a smooth reference s and s' in float64 with torch's sigma in
    [s - jump, s]; ``kind``: "relu", "convex", "sshape" (convex below 0, concave above) or "none"
    (no curvature used: constant relaxation).
    """

    name = "act"
    kind = "none"
    jump = 0.0
    #: exactly 0, with derivative 0, on q <= 0 (ReLU): a neuron whose interval lies there
    #: outputs [0, 0] whatever its width, so CROWN need not bound it
    zero_below = False

    def __init__(self, m: nn.Module | None = None) -> None:
        """Parameter-free activations ignore the module; parametrised ones read theirs."""

    @classmethod
    def from_module(cls, m: nn.Module, in_shape: tuple[int, ...], device: torch.device,
                    path: str) -> Activation | None:
        """The activation for layer ``m`` (elementwise: the shape is unchanged)."""
        return cls(m)

    def value(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def slope(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def value_err(self, vmag: Tensor, xmag: Tensor, units: Units) -> Tensor:
        """Bound on |computed sigma(x) - sigma(x)| for |sigma| <= vmag, |x| <= xmag."""
        return K_FUNC * units.u * vmag + units.abs_tiny(1)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        """[dlo, dhi] containing sigma'(q) (exact and as evaluated) for q in [lo, hi]."""
        raise NotImplementedError

    def range(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        """[sigma(lo), sigma(hi)] (increasing) widened by evaluation errors."""
        vlo, vhi = self.value(lo), self.value(hi)
        err = self.value_err(mag(vlo, vhi), mag(lo, hi), units)
        return outward(vlo - self.jump, vhi, err)

    def lipschitz(self, lo: Tensor, hi: Tensor, units: Units) -> Tensor:
        """Upper bound on sigma' over [lo, hi] (propagates evaluation errors forward)."""
        return self.deriv_range(lo, hi, units)[1].clamp_min(0)

    def relax(
        self, lo: Tensor, hi: Tensor, units: Units
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(a_lo, b_lo, a_up, b_up) with a_lo q + b_lo <= sigma(q) <= a_up q + b_up on [lo, hi].

        convex: tangent at the midpoint below, chord above; sshape: the same on an interval
        within q <= 0, mirrored (chord below, tangent above) within q >= 0, and lines through an
        end point with slope min(sigma'(end), chord) when the interval straddles 0; "none":
        the constant bounds of ``range``. Each intercept is moved outward by K_FUNC u times the
        magnitudes involved (the float evaluation of sigma at the touching points)."""
        rlo, rhi = self.range(lo, hi, units)
        zero = torch.zeros_like(lo)
        if self.kind == "none":
            return zero, rlo, zero, rhi
        width = hi - lo
        ok = width > 0
        w = torch.where(ok, width, torch.ones_like(width))
        ylo, yhi = self.value(lo), self.value(hi)
        chord = (yhi - ylo) / w
        m = (0.5 * (lo + hi)).clamp(lo, hi)
        ym, am = self.value(m), self.slope(m)
        span = lo.abs() + hi.abs()
        ku = K_FUNC * units.u

        def margin(y1: Tensor, y2: Tensor, a: Tensor) -> Tensor:
            return ku * (y1.abs() + y2.abs() + a.abs() * span) + units.tiny * (1 + span)

        # convex pieces: tangent at m below, chord above
        t_a, t_b = am, ym - am * m - margin(ym, ym, am)
        c_lo_b = ylo - chord * lo - margin(ylo, yhi, chord)  # chord as a lower line (concave)
        c_up_b = ylo - chord * lo + margin(ylo, yhi, chord)  # chord as an upper line (convex)
        if self.kind == "convex":
            a_lo, b_lo, a_up, b_up = t_a, t_b, chord, c_up_b
        else:  # sshape
            tu_b = ym - am * m + margin(ym, ym, am)  # tangent as an upper line (concave part)
            d_lo = torch.minimum(self.slope(lo), chord)
            d_up = torch.minimum(self.slope(hi), chord)
            m_lo_b = ylo - d_lo * lo - margin(ylo, yhi, d_lo)
            m_up_b = yhi - d_up * hi + margin(ylo, yhi, d_up)
            neg, pos = hi <= 0, lo >= 0
            a_lo = torch.where(neg, t_a, torch.where(pos, chord, d_lo))
            b_lo = torch.where(neg, t_b, torch.where(pos, c_lo_b, m_lo_b))
            a_up = torch.where(neg, chord, torch.where(pos, am, d_up))
            b_up = torch.where(neg, c_up_b, torch.where(pos, tu_b, m_up_b))
        b_lo = b_lo - self.jump
        a_lo, a_up = torch.where(ok, a_lo, zero), torch.where(ok, a_up, zero)
        b_lo, b_up = torch.where(ok, down(b_lo), rlo), torch.where(ok, up(b_up), rhi)
        return a_lo, b_lo, a_up, b_up


#: (module, input shape without batch, device, the layer's path in the model) -> its node, or
#: None for a layer that is the identity map (Identity, eval-mode Dropout)
Builder = Callable[[nn.Module, tuple[int, ...], torch.device, str], AffineOp | Activation | None]
REGISTRY: dict[type[nn.Module], Builder] = {}

_C = TypeVar("_C")


def register(*module_types: type[nn.Module]) -> Callable[[_C], _C]:
    """Class decorator: the class's ``from_module`` builds the node for these module types."""

    def deco(cls: _C) -> _C:
        for t in module_types:
            REGISTRY[t] = cls.from_module  # type: ignore[attr-defined]
        return cls

    return deco


def lookup(module: nn.Module) -> Builder | None:
    """The builder registered for the module's class or its nearest registered base class."""
    for cls in type(module).__mro__:
        if cls in REGISTRY:
            return REGISTRY[cls]
    return None
