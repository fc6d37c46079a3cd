"""Certified bounds by interval propagation through the forward AND gradient passes (DESIGN 4).

For a model f = F_n o sigma_n o ... o sigma_1 o F_0 (F_i affine blocks, sigma_i elementwise
activations), target t and the perturbation set

    S(x) = { z : ||z - x||_p <= eps,  lo <= z <= hi }          (p in {2, inf}),

:func:`interval_bound` computes per-feature intervals [l_i, u_i] that contain A_i(z) for every
z in S(x), where A is saliency g(z) = grad f_t(z), input x gradient z * g(z), or integrated
gradients (z - b) * sum_k w_k g(b + t_k (z - b)). How:

1. Forward: bounds on every pre-activation q_i over S(x).
   - interval arithmetic (IBP) in centre-radius form: [c - r, c + r] -> W c + b -/+ |W| r;
   - l2: the first block's exact radius, q_0 in W x + b -/+ eps ||W_j||_2 (row norms of the
     block's matrix; for a convolution the kernel restricted to the input patch), intersected
     with the box bound;
   - ``tightening="crown"`` (default): every pre-activation is also bounded by back-substitution
     (CROWN, Zhang et al. 2018): linear relaxations a_lo q + b_lo <= sigma(q) <= a_up q + b_up on
     each neuron's interval (ReLU: triangle; convex softplus / ELU: tangent below, chord above;
     S-shaped tanh / sigmoid: tangent or chord by sign, lines through an endpoint when the
     interval straddles 0), propagated back to the input and minimised over the box (and the l2
     ball); the result is intersected with IBP, so it is never looser.
2. Activation derivatives from each neuron's interval: ReLU {0}, {1} or [0, 1]; softplus
   sigmoid(beta q) (monotone; 1 above torch's threshold); ELU 1 or alpha e^q; tanh 1 - tanh^2 and
   sigmoid s (1 - s) (even, maximal at 0).
3. Backward: g = W_0^T D_1 W_1^T ... D_n W_n^T e_t by interval arithmetic: fixed matrices in
   centre-radius form (W^T c, |W|^T r; convolutions through their transpose), interval
   elementwise products by the four end-point products.
4. The attribution: saliency g; input x gradient [z] * [g]; integrated gradients: each path node's
   set b + t_k (S(x) - b) is a box (and for l2 the ball of radius t_k eps around b + t_k (x - b)),
   bounded like an input set, weighted and summed, times [z - b].

From the intervals I = [l, u] of A over S(x) and the (tiny) intervals P = [pl, pu] of A(x):

    euclidean <= sqrt( sum_i max((u_i - pl_i)^2, (pu_i - l_i)^2) )      (>= ||A(z) - A(x)||_2),
    cos(A(x), A(z)) >= max( dot_min / (|P|_max |I|_max)  if dot_min >= 0
                            else dot_min / (|P|_min |I|_min)  (-1 if that is 0),
                            sqrt(1 - (U / |P|_min)^2)  if U < |P|_min else -1 ),

with dot_min = sum_i min(P_i * I_i) the interval minimum of A(x) . A(z) and |.|_min/max the
smallest / largest Euclidean norm over a box (the second term is
:func:`attrbound.bounds.cosine_from_euclidean` with outward rounding).

What "sound" means here. Everything is computed in float64 on a float64 copy of the weights.
After every operation the interval is widened outward so that it contains BOTH the value in exact
arithmetic and the value the model computes in its own floating-point format (the evaluation
format: the lower precision of the model's parameters and the inputs; TF32 when a float32 CUDA
computation may use it), by the standard rounding model, with u = u_eval + 2^-53:
- dot products of n terms (Linear, Conv2d, AvgPool2d, their transposes, sums of products):
  error <= gamma_n * (|W| |v| + |b|) with gamma_n = (n + 2) u / (1 - (n + 2) u), taken twice
  (once for the bound's own float64 arithmetic, once for the model's evaluation), in any summation
  order (BLAS blocking, FMA); this assumes dot-product convolution algorithms (not FFT or
  Winograd, which PyTorch does not use in float64, nor on CPU in float32);
- elementwise products, sums and end points: rounded outward with ``torch.nextafter``;
- library functions (exp, log1p, tanh, sigmoid, expm1): within K_FUNC = 32 units in the last
  place of the exact result of their float arguments, plus their condition (e.g. exp(beta q)
  has relative error |beta q| u from the rounding of beta q); activation derivatives likewise;
- an absolute term (n + 2) * 4 * tiny (smallest normal number) per operation covers underflow.
The CROWN linear bounds are for the exact network; they are widened by an a-priori bound on the
model's own evaluation error of each pre-activation (propagated forward alongside IBP), and their
float64 computation adds gamma * sum |Lambda| |v| per back-substitution step. The cost of these
margins is a floor on the width of the intervals: about 1e-5 relative for float32 models,
1e-13 for float64. With ``evaluation="exact"`` the margins cover only exact arithmetic (and the
float64 rounding of the bound itself).

Batched over inputs; device and dtype follow the inputs (results in the input's dtype, rounded
outward).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrbound._validate import check_domain, check_eps, check_in_domain
from attrbound.attributions import (
    Attribution,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    check_batch,
    resolve_target,
)
from attrbound.attributions import attribution as make_attribution
from attrbound.errors import AttrboundError, check_choice
from attrbound.geometry import parse_norm
from attrbound.results import BoundResult, cosine_from_euclidean

__all__ = ["interval_bound", "attribution_intervals", "TIGHTENINGS", "cosine_from_euclidean"]

TIGHTENINGS = ("none", "crown")
EVALUATIONS = ("float", "exact")
ATTRIBUTIONS = ("saliency", "input_x_gradient", "integrated_gradients")
SUPPORTED_LAYERS = (
    "Linear, Conv2d, Flatten, AvgPool2d, BatchNorm1d, BatchNorm2d (eval), ReLU, Softplus, ELU, "
    "Tanh, Sigmoid (Identity and eval-mode Dropout are skipped; nested nn.Sequential is allowed)"
)
#: units in the last place allowed for a library function (exp, log1p, tanh, ...) of a float
#: argument; PyTorch's CPU (SLEEF u10) and CUDA implementations are within 1-4.
K_FUNC = 32
#: default size (float64 entries) of one CROWN back-substitution tensor [inputs, rows, *layer]
MAX_ELEMENTS = 2**23
_U64 = 2.0**-53

# ----------------------------------------------------------------------------------------
# Rounding
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Units:
    """u: unit roundoff budget (evaluation format + float64); tiny: per-term underflow slack."""

    u: float
    tiny: float

    def gamma(self, n: int) -> float:
        """gamma_n = (n + 2) u / (1 - (n + 2) u): relative error of an n-term dot product."""
        nu = (n + 2) * self.u
        if nu >= 0.5:
            raise AttrboundError(
                f"a layer sums {n} terms, too many for a sound rounding margin at unit "
                f"roundoff {self.u:.3g}; use a float64 model."
            )
        return nu / (1 - nu)

    def abs_tiny(self, n: int) -> float:
        return 4.0 * (n + 2) * self.tiny


def _down(t: Tensor) -> Tensor:
    return torch.nextafter(t, torch.full_like(t, -math.inf))


def _up(t: Tensor) -> Tensor:
    return torch.nextafter(t, torch.full_like(t, math.inf))


def _outward(lo: Tensor, hi: Tensor, err: Tensor | float) -> tuple[Tensor, Tensor]:
    return _down(lo - err), _up(hi + err)


def _center_radius(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """c, r with [c - r, c + r] containing [lo, hi] (r rounded up)."""
    c = 0.5 * (lo + hi)
    return c, _up(torch.maximum(hi - c, c - lo))


def _mag(lo: Tensor, hi: Tensor) -> Tensor:
    return torch.maximum(lo.abs(), hi.abs())


def _mul(
    alo: Tensor, ahi: Tensor, blo: Tensor, bhi: Tensor, units: _Units
) -> tuple[Tensor, Tensor]:
    """Interval product [a] * [b] (elementwise): min / max of the four end-point products,
    widened by the evaluation and float64 rounding of one product."""
    p = torch.stack([alo * blo, alo * bhi, ahi * blo, ahi * bhi])
    lo, hi = p.amin(dim=0), p.amax(dim=0)
    return _outward(lo, hi, 2 * units.u * _mag(lo, hi) + units.abs_tiny(1))


def _cast_out(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Cast float64 bounds to ``dtype``, rounding lo down and hi up."""
    lo_c, hi_c = lo.to(dtype), hi.to(dtype)
    lo_c = torch.where(lo_c.double() > lo, _down(lo_c), lo_c)
    hi_c = torch.where(hi_c.double() < hi, _up(hi_c), hi_c)
    return lo_c, hi_c


# ----------------------------------------------------------------------------------------
# Affine layers (float64 copies on the inputs' device)
# ----------------------------------------------------------------------------------------


class _Op:
    """An affine layer v -> W v + b. ``fan`` bounds the terms of one dot product of W or W^T;
    ``bias`` is b broadcastable to [*out_shape] (or None); ``err_bias`` the magnitude of the
    constant terms the layer adds (for rounding margins)."""

    name = "op"
    fan = 1
    exact = False  # a pure reshape: no rounding at all
    bias: Tensor | None = None
    err_bias: Tensor | None = None

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        self.in_shape = in_shape
        self.out_shape: tuple[int, ...] = in_shape

    def linear(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def abs_linear(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def transpose(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def abs_transpose(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, v: Tensor) -> Tensor:
        out = self.linear(v)
        return out if self.bias is None else out + self.bias


def _vjp(fn: Any, in_shape: tuple[int, ...], v: Tensor) -> Tensor:
    """W^T v for the linear map fn (its vector-Jacobian product at 0)."""
    with torch.enable_grad():
        z = v.new_zeros((v.shape[0],) + in_shape, requires_grad=True)
        return torch.autograd.grad(fn(z), z, v)[0]


class _Linear(_Op):
    name = "Linear"

    def __init__(self, m: nn.Linear, in_shape: tuple[int, ...], device: torch.device) -> None:
        super().__init__(in_shape)
        self.w = m.weight.detach().to(device=device, dtype=torch.float64)
        self.w_abs = self.w.abs()
        if m.bias is not None:
            self.bias = m.bias.detach().to(device=device, dtype=torch.float64)
            self.err_bias = self.bias.abs()
        self.fan = max(m.in_features, m.out_features)
        self.out_shape = in_shape[:-1] + (m.out_features,)

    def linear(self, v: Tensor) -> Tensor:
        return F.linear(v, self.w)

    def abs_linear(self, v: Tensor) -> Tensor:
        return F.linear(v, self.w_abs)

    def sq_linear(self, v: Tensor) -> Tensor:
        return F.linear(v, self.w**2)

    def transpose(self, v: Tensor) -> Tensor:
        return v @ self.w

    def abs_transpose(self, v: Tensor) -> Tensor:
        return v @ self.w_abs


class _Conv(_Op):
    name = "Conv2d"

    def __init__(self, m: nn.Conv2d, in_shape: tuple[int, ...], device: torch.device) -> None:
        super().__init__(in_shape)
        if m.padding_mode != "zeros":
            raise AttrboundError(
                f"the interval method supports Conv2d with zero padding only, got "
                f"padding_mode={m.padding_mode!r}."
            )
        self.w = m.weight.detach().to(device=device, dtype=torch.float64)
        self.w_abs = self.w.abs()
        self.kw = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation,
                   "groups": m.groups}
        if m.bias is not None:
            b = m.bias.detach().to(device=device, dtype=torch.float64)
            self.bias = b.view(-1, 1, 1)
            self.err_bias = self.bias.abs()
        kk = m.kernel_size[0] * m.kernel_size[1]
        self.fan = kk * max(m.in_channels, m.out_channels) // m.groups
        self.out_shape = tuple(self.linear(torch.zeros((1,) + in_shape, dtype=torch.float64,
                                                       device=device)).shape[1:])

    def linear(self, v: Tensor) -> Tensor:
        return F.conv2d(v, self.w, None, **self.kw)

    def abs_linear(self, v: Tensor) -> Tensor:
        return F.conv2d(v, self.w_abs, None, **self.kw)

    def sq_linear(self, v: Tensor) -> Tensor:
        return F.conv2d(v, self.w**2, None, **self.kw)

    def _t(self, w: Tensor, v: Tensor) -> Tensor:
        if isinstance(self.kw["padding"], str):
            return _vjp(lambda u: F.conv2d(u, w, None, **self.kw), self.in_shape, v)
        return torch.nn.grad.conv2d_input((v.shape[0],) + self.in_shape, w, v, **self.kw)

    def transpose(self, v: Tensor) -> Tensor:
        return self._t(self.w, v)

    def abs_transpose(self, v: Tensor) -> Tensor:
        return self._t(self.w_abs, v)


class _AvgPool(_Op):
    name = "AvgPool2d"

    def __init__(self, m: nn.AvgPool2d, in_shape: tuple[int, ...], device: torch.device) -> None:
        super().__init__(in_shape)
        self.kw = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                   "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad,
                   "divisor_override": m.divisor_override}
        k = nn.modules.utils._pair(m.kernel_size)
        s = nn.modules.utils._pair(m.stride if m.stride is not None else m.kernel_size)
        self._k, self._s = list(k), list(s)
        self._p = list(nn.modules.utils._pair(m.padding))
        self.fan = k[0] * k[1] * math.ceil(k[0] / s[0]) * math.ceil(k[1] / s[1]) + 1
        self.out_shape = tuple(self.linear(torch.zeros((1,) + in_shape, dtype=torch.float64,
                                                       device=device)).shape[1:])

    def linear(self, v: Tensor) -> Tensor:
        return F.avg_pool2d(v, **self.kw)

    abs_linear = linear

    def transpose(self, v: Tensor) -> Tensor:
        k = self.kw
        shape = (v.shape[0],) + self.in_shape
        return torch.ops.aten.avg_pool2d_backward(
            v, v.new_zeros(()).expand(shape), self._k, self._s, self._p, k["ceil_mode"],
            k["count_include_pad"], k["divisor_override"],
        )

    abs_transpose = transpose


class _BatchNorm(_Op):
    """Eval-mode batch norm: v -> s (v - mean) + beta per channel (dim 1), s = w / sqrt(var + e)."""

    def __init__(self, m: nn.modules.batchnorm._BatchNorm, in_shape: tuple[int, ...],
                 device: torch.device) -> None:
        super().__init__(in_shape)
        self.name = type(m).__name__
        f64 = {"device": device, "dtype": torch.float64}
        c = m.num_features
        w = m.weight.detach().to(**f64) if m.weight is not None else torch.ones(c, **f64)
        beta = m.bias.detach().to(**f64) if m.bias is not None else torch.zeros(c, **f64)
        mean, var = m.running_mean.to(**f64), m.running_var.to(**f64)
        view = (c,) + (1,) * (len(in_shape) - 1)
        s = w / torch.sqrt(var + m.eps)
        self.s, self.s_abs = s.view(view), s.abs().view(view)
        self.bias = (beta - mean * s).view(view)
        self.err_bias = (beta.abs() + (mean * s).abs()).view(view)
        self.fan = 8  # s itself and the shift carry a few roundings

    def linear(self, v: Tensor) -> Tensor:
        return v * self.s

    def abs_linear(self, v: Tensor) -> Tensor:
        return v * self.s_abs

    transpose = linear
    abs_transpose = abs_linear


class _Flatten(_Op):
    name = "Flatten"
    exact = True
    fan = 0

    def __init__(self, m: nn.Flatten, in_shape: tuple[int, ...]) -> None:
        super().__init__(in_shape)
        if m.start_dim == 0:
            raise AttrboundError("the interval method does not support Flatten(start_dim=0), "
                                 "which merges the batch dimension.")
        self.start, self.end = m.start_dim, m.end_dim
        self.out_shape = tuple(torch.empty((1,) + in_shape).flatten(m.start_dim, m.end_dim)
                               .shape[1:])

    def linear(self, v: Tensor) -> Tensor:
        return v.flatten(self.start, self.end)

    abs_linear = linear

    def transpose(self, v: Tensor) -> Tensor:
        return v.reshape((v.shape[0],) + self.in_shape)

    abs_transpose = transpose


# ----------------------------------------------------------------------------------------
# Activations: values, derivatives, linear relaxations, each with rounding margins
# ----------------------------------------------------------------------------------------


class _Act:
    """An elementwise increasing activation sigma (as torch evaluates it).

    ``value`` / ``slope``: a smooth reference s and s' in float64 with torch's sigma in
    [s - jump, s]; ``kind``: "relu", "convex", "sshape" (convex below 0, concave above) or "none"
    (no curvature used: constant relaxation).
    """

    name = "act"
    kind = "none"
    jump = 0.0

    def value(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def slope(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def value_err(self, vmag: Tensor, xmag: Tensor, units: _Units) -> Tensor:
        """Bound on |computed sigma(x) - sigma(x)| for |sigma| <= vmag, |x| <= xmag."""
        return K_FUNC * units.u * vmag + units.abs_tiny(1)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
        """[dlo, dhi] containing sigma'(q) (exact and as evaluated) for q in [lo, hi]."""
        raise NotImplementedError

    def range(self, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
        """[sigma(lo), sigma(hi)] (increasing) widened by evaluation errors."""
        vlo, vhi = self.value(lo), self.value(hi)
        err = self.value_err(_mag(vlo, vhi), _mag(lo, hi), units)
        return _outward(vlo - self.jump, vhi, err)

    def lipschitz(self, lo: Tensor, hi: Tensor, units: _Units) -> Tensor:
        return self.deriv_range(lo, hi, units)[1].clamp_min(0)

    def relax(
        self, lo: Tensor, hi: Tensor, units: _Units
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(a_lo, b_lo, a_up, b_up) with a_lo q + b_lo <= sigma(q) <= a_up q + b_up on [lo, hi]."""
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
        b_lo, b_up = torch.where(ok, _down(b_lo), rlo), torch.where(ok, _up(b_up), rhi)
        return a_lo, b_lo, a_up, b_up


class _ReLU(_Act):
    name = "ReLU"
    kind = "relu"

    def value(self, x: Tensor) -> Tensor:
        return x.clamp_min(0)

    def slope(self, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    def range(self, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
        return lo.clamp_min(0), hi.clamp_min(0)  # exact in every format

    def deriv_range(self, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
        # torch's derivative is [q > 0]; at q = 0 exactly it is 0, inside [0, 1]
        return (lo > 0).to(lo.dtype), (hi > 0).to(lo.dtype)

    def relax(
        self, lo: Tensor, hi: Tensor, units: _Units
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        zero, one = torch.zeros_like(lo), torch.ones_like(lo)
        unstable = (lo < 0) & (hi > 0)
        denom = torch.where(unstable, _down(hi - lo), one)
        slope = _up(hi.clamp_min(0) / denom).clamp(max=1.0)
        slope = torch.where(unstable, slope, zero)
        a_up = torch.where(lo >= 0, one, slope)
        b_up = torch.where(unstable, _up(-slope * lo), zero)
        a_lo = torch.where(lo >= 0, one, torch.where(unstable & (hi > -lo), one, zero))
        return a_lo, zero, a_up, b_up


class _Softplus(_Act):
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

    def value_err(self, vmag: Tensor, xmag: Tensor, units: _Units) -> Tensor:
        return K_FUNC * units.u * (vmag + xmag + 1 / self.beta) + units.abs_tiny(1)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
        dlo, dhi = self.slope(lo), self.slope(hi)
        # where beta q may exceed the threshold (as evaluated) the derivative is exactly 1
        near = self.beta * hi * (1 + 4 * units.u) + units.tiny > self.threshold
        err = (self.beta * _mag(lo, hi) + K_FUNC) * units.u * dhi + units.abs_tiny(1)
        dlo, dhi = _outward(dlo, dhi, err)
        return dlo, torch.where(near, torch.maximum(dhi, torch.ones_like(dhi)), dhi)


class _ELU(_Act):
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

    def value_err(self, vmag: Tensor, xmag: Tensor, units: _Units) -> Tensor:
        return K_FUNC * units.u * (vmag + self.alpha) + units.abs_tiny(1)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
        # pieces: alpha e^q on [lo, min(hi, 0)] (if lo <= 0), 1 on (0, hi] (if hi > 0)
        neg_lo = self.alpha * torch.exp(lo.clamp(max=0))
        neg_hi = self.alpha * torch.exp(hi.clamp(max=0))
        has_neg, has_pos = lo <= 0, hi > 0
        inf = torch.full_like(lo, math.inf)
        dlo = torch.minimum(torch.where(has_neg, neg_lo, inf),
                            torch.where(has_pos, torch.ones_like(lo), inf))
        dhi = torch.maximum(torch.where(has_neg, neg_hi, -inf),
                            torch.where(has_pos, torch.ones_like(lo), -inf))
        err = K_FUNC * units.u * (self.alpha + (_mag(lo, hi) + 1) * dhi) + units.abs_tiny(1)
        return _outward(dlo, dhi, err)


class _Tanh(_Act):
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
        return self.slope(_mag(lo, hi)), self.slope(amin)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
        dlo, dhi = self._even_range(lo, hi)
        # evaluated as 1 - y^2 with y = tanh(q) in the evaluation format
        return _outward(dlo, dhi, 2 * K_FUNC * units.u + units.abs_tiny(2))


class _Sigmoid(_Tanh):
    name = "Sigmoid"

    def value(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def slope(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x) * torch.sigmoid(-x)

    def value_err(self, vmag: Tensor, xmag: Tensor, units: _Units) -> Tensor:
        return K_FUNC * units.u * vmag * (1 + xmag) + units.abs_tiny(1)

    def deriv_range(self, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
        dlo, dhi = self._even_range(lo, hi)
        err = 2 * K_FUNC * units.u * (1 + _mag(lo, hi)) + units.abs_tiny(2)
        return _outward(dlo, dhi, err)


# ----------------------------------------------------------------------------------------
# The network: blocks of affine layers separated by activations
# ----------------------------------------------------------------------------------------


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix or type(module).__name__, module


class _Net:
    """f = blocks[n] o acts[n-1] o blocks[n-1] o ... o acts[0] o blocks[0]; pre-activation i is
    q_i = blocks[i](h_i), h_0 = z, h_{i+1} = acts[i](q_i)."""

    def __init__(self, model: nn.Module, in_shape: tuple[int, ...], device: torch.device) -> None:
        if not isinstance(model, nn.Sequential) and any(True for _ in model.children()):
            raise AttrboundError(
                f"the interval method needs an nn.Sequential model (nested Sequential allowed) "
                f"to follow its layers; got {type(model).__name__}."
            )
        self.blocks: list[list[_Op]] = [[]]
        self.acts: list[_Act] = []
        shape = tuple(int(s) for s in in_shape)
        self.in_shape = shape
        for path, m in _leaves(model, ""):
            op: _Op | None = None
            act: _Act | None = None
            try:
                if isinstance(m, (nn.Identity,)):
                    continue
                if isinstance(m, nn.Dropout):
                    if m.training and m.p > 0:
                        raise AttrboundError(
                            f"layer {path} (Dropout) is in training mode; call model.eval()."
                        )
                    continue
                if isinstance(m, nn.Linear):
                    op = _Linear(m, shape, device)
                elif isinstance(m, nn.Conv2d):
                    op = _Conv(m, shape, device)
                elif isinstance(m, nn.AvgPool2d):
                    op = _AvgPool(m, shape, device)
                elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    if m.training or m.running_mean is None:
                        raise AttrboundError(
                            f"layer {path} ({type(m).__name__}) must be in eval mode with "
                            "running statistics; call model.eval()."
                        )
                    op = _BatchNorm(m, shape, device)
                elif isinstance(m, nn.Flatten):
                    op = _Flatten(m, shape)
                elif isinstance(m, nn.ReLU):
                    act = _ReLU()
                elif isinstance(m, nn.Softplus):
                    act = _Softplus(m)
                elif isinstance(m, nn.ELU):
                    act = _ELU(m)
                elif isinstance(m, nn.Tanh):
                    act = _Tanh()
                elif isinstance(m, nn.Sigmoid):
                    act = _Sigmoid()
                else:
                    raise AttrboundError(
                        f"the interval method does not support layer {path} "
                        f"({type(m).__name__}); supported: {SUPPORTED_LAYERS}."
                    )
            except (RuntimeError, IndexError) as exc:
                raise AttrboundError(
                    f"layer {path} ({type(m).__name__}) does not accept inputs shaped "
                    f"{shape} ({str(exc).splitlines()[0]})."
                ) from None
            if op is not None:
                if isinstance(op, (_Linear,)) and (not shape or shape[-1] != op.w.shape[1]):
                    raise AttrboundError(
                        f"layer {path} (Linear) expects {op.w.shape[1]} features, got inputs "
                        f"shaped {shape}."
                    )
                self.blocks[-1].append(op)
                shape = op.out_shape
            else:
                assert act is not None
                self.acts.append(act)
                self.blocks.append([])
        self.out_shape = shape
        if len(shape) != 1:
            raise AttrboundError(f"the model must output logits shaped [B, K], got [B, {shape}].")
        self.pre_shapes = []
        s = self.in_shape
        for block in self.blocks:
            for op in block:
                s = op.out_shape
            self.pre_shapes.append(s)

    def widest(self, j: int) -> int:
        """Largest per-example size of any tensor between the input and pre-activation j."""
        sizes = [math.prod(self.in_shape)]
        for block in self.blocks[: j + 1]:
            sizes += [math.prod(op.out_shape) for op in block]
        return max(sizes)


# ----------------------------------------------------------------------------------------
# Forward bounds: IBP, l2 first-layer radius, CROWN back-substitution
# ----------------------------------------------------------------------------------------


@dataclass
class _InputSet:
    """Box [lo, hi] [N, *S], and for l2 the ball of ``radius`` [N] around ``center``."""

    lo: Tensor
    hi: Tensor
    center: Tensor | None = None
    radius: Tensor | None = None

    def part(self, s: slice) -> _InputSet:
        return _InputSet(self.lo[s], self.hi[s],
                         None if self.center is None else self.center[s],
                         None if self.radius is None else self.radius[s])


def _ibp_op(op: _Op, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor, Tensor]:
    """[lo, hi] through W v + b in centre-radius form; also mvec = |W| |v|_max + |b| (>= the
    magnitudes every rounding error of this layer is relative to)."""
    if op.exact:
        return op.linear(lo), op.linear(hi), torch.zeros_like(op.linear(lo))
    c, r = _center_radius(lo, hi)
    cc, rr = op.forward(c), op.abs_linear(r)
    mvec = op.abs_linear(c.abs() + r)
    if op.err_bias is not None:
        mvec = mvec + op.err_bias
    mvec = _up(mvec * (1 + units.gamma(op.fan)))
    err = 2 * units.gamma(op.fan) * mvec + units.abs_tiny(op.fan)
    return _down(cc - rr - err), _up(cc + rr + err), mvec


def _ibp_transpose(op: _Op, lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
    """[lo, hi] through W^T (no bias)."""
    if op.exact:
        return op.transpose(lo), op.transpose(hi)
    c, r = _center_radius(lo, hi)
    cc, rr = op.transpose(c), op.abs_transpose(r)
    mag = op.abs_transpose(c.abs() + r)
    err = 3 * units.gamma(op.fan) * mag + units.abs_tiny(op.fan)
    return _down(cc - rr - err), _up(cc + rr + err)


def _absdot(lam: Tensor, vec: Tensor, shared: bool) -> Tensor:
    """sum over features of |Lambda| * vec: Lambda [R, *s] (shared by all inputs) or [n, R, *s],
    vec [n, *s] -> [n, R]."""
    return _dot(lam.abs(), vec, shared)


def _dot(lam: Tensor, vec: Tensor, shared: bool) -> Tensor:
    a = lam.flatten(-(vec.dim() - 1)) if vec.dim() > 1 else lam
    v = vec.flatten(1)
    if shared:
        return v @ a.transpose(0, 1)
    return torch.bmm(a, v.unsqueeze(2)).squeeze(2)


def _apply_t(op: _Op, lam: Tensor, shared: bool) -> Tensor:
    lead = lam.shape[:1] if shared else lam.shape[:2]
    out = op.transpose(lam.reshape((-1,) + op.out_shape))
    return out.reshape(lead + op.in_shape)


def _op_gamma(op: _Op, units: _Units) -> float:
    return units.gamma(op.fan + math.prod(op.out_shape))


def _through_block(
    block: list[_Op], mv: list[Tensor], lam: Tensor, shared: bool, const: Tensor, err: Tensor,
    units: _Units, counted: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Lambda . v_out = (Lambda W) . v_in + Lambda . b, layer by layer backwards; each layer adds
    gamma * |Lambda| . (|W| |v_in|_max + |b|) to ``err`` [n, R] (the rounding of Lambda W and of
    Lambda . b, both dot products). ``counted``: the last layer's term is already in ``err``."""
    for o in range(len(block) - 1, -1, -1):
        op = block[o]
        if not op.exact:
            if not (counted and o == len(block) - 1):
                err = err + _op_gamma(op, units) * _absdot(lam, mv[o], shared)
            if op.bias is not None:
                full = op.bias.expand(op.out_shape).reshape(-1)
                const = const + lam.flatten(-len(op.out_shape)) @ full
        lam = _apply_t(op, lam, shared)
    return lam, const, err


def _relax_step(
    act: _Act,
    lo: Tensor,
    hi: Tensor,
    lam: Tensor,
    const: Tensor,
    err: Tensor,
    units: _Units,
    shared: bool,
    next_op: tuple[_Op, Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Lambda . sigma(q) >= (Lambda+ a_lo + Lambda- a_up) . q + Lambda+ . b_lo + Lambda- . b_up
    for q in [lo, hi], computed as Lambda a_mid + |Lambda| a_half with a_mid = (a_lo + a_up) / 2,
    a_half = (a_lo - a_up) / 2 (likewise b).

    ``shared``: Lambda [R, *s] is the same for all n inputs and stands for the rows +Lambda and
    -Lambda: the result is [n, 2R, *s] (+rows first). Otherwise Lambda is [n, R, *s].
    The rounding of the new Lambda and constant (including that of a_mid, a_half) adds
    3 gamma * |Lambda| . (|a|_max |q|_max + |b|_max) + 2 u |const| to ``err``; ``next_op`` =
    (layer, its mvec) whose output is q: its error term gamma |Lambda'| . mvec is added here
    too, with |Lambda'| <= |Lambda| |a|_max (1 + 4u)."""
    a_lo, b_lo, a_up, b_up = act.relax(lo, hi, units)
    ab = lam.abs()
    amax = torch.maximum(a_lo.abs(), a_up.abs())
    vec = amax * _mag(lo, hi) + torch.maximum(b_lo.abs(), b_up.abs())
    cols = [(0.5 * (b_lo - b_up)).flatten(1), vec.flatten(1)]
    if next_op is not None:
        cols.append((amax * next_op[1]).flatten(1))
    both = torch.stack(cols, dim=2)  # [n, d, k]
    n, d = both.shape[:2]
    g = 3 * units.gamma(d)
    if shared:
        r = lam.shape[0]
        res = torch.matmul(ab.reshape(r, d), both)  # [n, R, k]
        dotb = _dot(lam, 0.5 * (b_lo + b_up), True)
        const = torch.cat([const + dotb + res[..., 0], -const - dotb + res[..., 0]], dim=1)
        add = g * res[..., 1]
        if next_op is not None:
            add = add + _op_gamma(next_op[0], units) * (1 + 4 * units.u) * res[..., 2]
        err = torch.cat([err + add, err + add], dim=1)
        shape = lam.shape[1:]
        p = lam.unsqueeze(0) * (0.5 * (a_lo + a_up)).unsqueeze(1)
        q = ab.unsqueeze(0) * (0.5 * (a_lo - a_up)).unsqueeze(1)
        new = lam.new_empty((n, 2 * r) + shape)
        torch.add(p, q, out=new[:, :r])
        torch.sub(q, p, out=new[:, r:])
    else:
        r = lam.shape[1]
        res = torch.bmm(ab.reshape(n, r, d), both)
        const = const + _dot(lam, 0.5 * (b_lo + b_up), False) + res[..., 0]
        err = err + g * res[..., 1]
        if next_op is not None:
            err = err + _op_gamma(next_op[0], units) * (1 + 4 * units.u) * res[..., 2]
        new = lam * (0.5 * (a_lo + a_up)).unsqueeze(1)
        new.addcmul_(ab, (0.5 * (a_lo - a_up)).unsqueeze(1))
    err = err + 2 * units.u * const.abs()
    return new, const, err


def _concretize(
    lam: Tensor, shared: bool, const: Tensor, err: Tensor, inset: _InputSet, units: _Units
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds [n, R] of const + Lambda . z - / + err over the box (and the l2
    ball): Lambda . c -/+ |Lambda| . r, and Lambda . x -/+ rho ||Lambda||_2."""
    d = math.prod(inset.lo.shape[1:])
    gd = units.gamma(d)
    c, rad = _center_radius(inset.lo, inset.hi)
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
        norms = _up(flat.norm(dim=-1) * (1 + gd))
        if shared:
            norms = norms.unsqueeze(0)
        reach = inset.radius.unsqueeze(1) * norms
        dotx = res[..., 1]
        slack = 2 * gd * (res_abs[..., 2] + reach)
        lo = torch.maximum(lo, dotx - reach - slack)
        hi = torch.minimum(hi, dotx + reach + slack)
    if const.dim() == 1:
        const = const.unsqueeze(0)
    margin = 4 * units.u * (const.abs() + _mag(lo, hi) + err) + units.abs_tiny(d)
    return _down(const + lo - err - margin), _up(const + hi + err + margin)


def _crown(
    net: _Net,
    j: int,
    pre: list[tuple[Tensor, Tensor]],
    mvecs: list[list[Tensor]],
    inset: _InputSet,
    units: _Units,
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds [N, *shape(q_j)] of pre-activation j by back-substitution.

    Rows Lambda = +/- e_i (one per neuron and sign), in chunks of neurons. Through blocks[j] the
    rows are the same for every input (computed once, with the +rows only); from the first
    relaxation on they are per input ([n, 2R, *s], chunks of inputs). Every floating-point step
    adds gamma * sum |Lambda| |v|_max to the error term (module docstring)."""
    shape = net.pre_shapes[j]
    k = math.prod(shape)
    n = inset.lo.shape[0]
    per = net.widest(j)
    rows = max(1, min(k, max_elements // (2 * per)))
    nb = max(1, min(n, max_elements // (2 * rows * per)))
    dev = inset.lo.device
    lower = inset.lo.new_empty((n, k))
    upper = inset.lo.new_empty((n, k))
    for r0 in range(0, k, rows):
        r = min(rows, k - r0)
        lam = torch.zeros((r, k), dtype=torch.float64, device=dev)
        lam[torch.arange(r, device=dev), torch.arange(r0, r0 + r, device=dev)] = 1.0
        lam = lam.reshape((r,) + shape)
        const = lam.new_zeros(r)
        err = lam.new_zeros(n, r)
        lam, const, err = _through_block(net.blocks[j], mvecs[j], lam, True, const, err, units)
        if j == 0:
            lo, hi = _concretize(lam, True, const, err, inset, units)
            lower[:, r0 : r0 + r], upper[:, r0 : r0 + r] = lo, hi
            continue
        for n0 in range(0, n, nb):
            s = slice(n0, n0 + nb)
            lam_s, const_s, err_s, shared = lam, const, err[s], True
            for i in range(j - 1, -1, -1):
                block, mv = net.blocks[i], [v[s] for v in mvecs[i]]
                nxt = (block[-1], mv[-1]) if block and not block[-1].exact else None
                lam_s, const_s, err_s = _relax_step(net.acts[i], pre[i][0][s], pre[i][1][s],
                                                    lam_s, const_s, err_s, units, shared, nxt)
                shared = False
                lam_s, const_s, err_s = _through_block(block, mv, lam_s, False, const_s, err_s,
                                                       units, counted=nxt is not None)
            lo, _ = _concretize(lam_s, False, const_s, err_s, inset.part(s), units)
            lower[s, r0 : r0 + r] = lo[:, :r]
            upper[s, r0 : r0 + r] = -lo[:, r:]
    return lower.reshape((n,) + shape), upper.reshape((n,) + shape)


def _first_layer_ball(net: _Net, inset: _InputSet, units: _Units) -> tuple[Tensor, Tensor] | None:
    """The exact l2 bound of q_0 = W z + b when blocks[0] is one Linear or Conv2d (plus reshapes):
    q_0 in W x + b -/+ rho ||W_i||_2, the row norms from the squared weights (for a convolution,
    the kernel restricted to the input patch: conv(1, W^2)). None for other first blocks."""
    ops = net.blocks[0]
    real = [op for op in ops if not op.exact]
    if len(real) != 1 or not isinstance(real[0], (_Linear, _Conv)) or inset.center is None:
        return None
    assert inset.radius is not None
    v = inset.center
    lo = hi = v
    for op in ops:
        if op.exact:
            if isinstance(v, Tensor):
                v = op.linear(v)
            lo, hi = op.linear(lo), op.linear(hi)
            continue
        assert isinstance(op, (_Linear, _Conv))
        g = units.gamma(op.fan)
        cc = op.forward(v)
        mag = op.abs_linear(v.abs())
        if op.err_bias is not None:
            mag = mag + op.err_bias
        sq = op.sq_linear(torch.ones_like(v[:1]))
        norms = _up(torch.sqrt(_up(sq * (1 + 2 * g))))
        reach = _up(inset.radius.view((-1,) + (1,) * (cc.dim() - 1)) * norms * (1 + 4 * units.u))
        err = 2 * g * (mag + reach) + units.abs_tiny(op.fan)
        lo, hi = _down(cc - reach - err), _up(cc + reach + err)
    return lo, hi


def _forward(
    net: _Net, inset: _InputSet, tightening: str, units: _Units, max_elements: int
) -> list[tuple[Tensor, Tensor]]:
    """Bounds [lo, hi] of every pre-activation q_i over the input set (each containing the exact
    value and the value as evaluated)."""
    lo, hi = inset.lo, inset.hi
    e = torch.zeros_like(lo)  # bound on |evaluated - exact| of the current quantity
    pre: list[tuple[Tensor, Tensor]] = []
    mvecs: list[list[Tensor]] = []
    for i, act in enumerate(net.acts):
        mv = []
        for op in net.blocks[i]:
            lo, hi, m = _ibp_op(op, lo, hi, units)
            mv.append(m)
            if op.exact:
                e = op.linear(e)
            else:
                g = units.gamma(op.fan)
                e = _up(op.abs_linear(e) * (1 + g) + g * m + units.abs_tiny(op.fan))
        mvecs.append(mv)
        tight: tuple[Tensor, Tensor] | None = None
        if i == 0 and inset.radius is not None:
            tight = _first_layer_ball(net, inset, units)
        if tight is None and (tightening == "crown" or (i == 0 and inset.radius is not None)):
            tight = _crown(net, i, pre, mvecs, inset, units, max_elements)
        if tight is not None:
            lc, uc = _outward(tight[0], tight[1], e)
            lo, hi = torch.maximum(lo, lc), torch.minimum(hi, uc)
        pre.append((lo, hi))
        lip = act.lipschitz(lo, hi, units)
        vlo, vhi = act.range(lo, hi, units)
        # evaluated and exact pre-activations may lie on either side of softplus' threshold,
        # where torch's value jumps down by act.jump (0 for the other activations)
        e = _up(lip * e + act.value_err(_mag(vlo, vhi), _mag(lo, hi), units) + act.jump)
        lo, hi = vlo, vhi
    return pre


def _gradient(
    net: _Net, pre: list[tuple[Tensor, Tensor]], target: Tensor, units: _Units
) -> tuple[Tensor, Tensor]:
    """Intervals [N, *S] of g(z) = grad_z f_t(z) given the pre-activation bounds."""
    k = net.out_shape[0]
    lo = F.one_hot(target, k).to(torch.float64)
    hi = lo.clone()
    for i in range(len(net.blocks) - 1, -1, -1):
        for op in reversed(net.blocks[i]):
            lo, hi = _ibp_transpose(op, lo, hi, units)
        if i > 0:
            dlo, dhi = net.acts[i - 1].deriv_range(*pre[i - 1], units)
            lo, hi = _mul(lo, hi, dlo, dhi, units)
    return lo, hi


def _gradient_intervals(
    net: _Net, inset: _InputSet, target: Tensor, tightening: str, units: _Units,
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    pre = _forward(net, inset, tightening, units, max_elements)
    return _gradient(net, pre, target, units)


# ----------------------------------------------------------------------------------------
# Attribution intervals
# ----------------------------------------------------------------------------------------


def _attribution_box(
    net: _Net,
    attr: Attribution,
    x: Tensor,
    inset: _InputSet,
    target: Tensor,
    tightening: str,
    units: _Units,
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    """Intervals [B, *S] of A(z) over the input set (x: float64 [B, *S], the set's centre)."""
    if isinstance(attr, IntegratedGradients):
        return _ig_box(net, attr, x, inset, target, tightening, units, max_elements)
    glo, ghi = _gradient_intervals(net, inset, target, tightening, units, max_elements)
    if isinstance(attr, InputXGradient):
        return _mul(inset.lo, inset.hi, glo, ghi, units)
    return glo, ghi


def _ig_box(
    net: _Net,
    attr: IntegratedGradients,
    x: Tensor,
    inset: _InputSet,
    target: Tensor,
    tightening: str,
    units: _Units,
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    """(z - b) * sum_k w_k g(b + t_k (z - b)): path node k's set is b + t_k (set - b)."""
    b = attr.baseline_for(x)  # float64 [B, *S]
    t = torch.as_tensor(attr.t, dtype=torch.float64, device=x.device)
    w = torch.as_tensor(attr.w, dtype=torch.float64, device=x.device)
    m, bsz, shape = t.numel(), x.shape[0], x.shape[1:]
    tv = t.view((1, m) + (1,) * len(shape))
    bb = b.unsqueeze(1)
    dlo = _down(inset.lo - b)
    dhi = _up(inset.hi - b)
    # z_k = b + t_k (z - b), also as evaluated: t_k rounded, three roundings
    plo = bb + tv * dlo.unsqueeze(1)
    phi = bb + tv * dhi.unsqueeze(1)
    slack = 8 * units.u * (bb.abs() + tv * _mag(dlo, dhi).unsqueeze(1)) + units.abs_tiny(3)
    plo, phi = _outward(plo, phi, slack)
    center = radius = None
    if inset.radius is not None and inset.center is not None:
        center = bb + tv * (inset.center - b).unsqueeze(1)
        # the ball of radius t_k eps around the exact centre contains every exact node; widen
        # it by the l2 size of the per-coordinate slack (rounding of nodes and centres)
        extra = (slack + 4 * units.u * center.abs()).flatten(2).norm(dim=2)
        radius = _up((t.view(1, m) * inset.radius.view(-1, 1) + extra) * (1 + 8 * units.u))
        center = center.reshape((bsz * m,) + shape)
        radius = radius.reshape(-1)
    path = _InputSet(plo.reshape((bsz * m,) + shape), phi.reshape((bsz * m,) + shape),
                     center, radius)
    glo, ghi = _gradient_intervals(net, path, target.repeat_interleave(m), tightening, units,
                                   max_elements)
    glo, ghi = glo.reshape((bsz, m) + shape), ghi.reshape((bsz, m) + shape)
    wv = w.view((1, m) + (1,) * len(shape))  # all weights are > 0
    slo, shi = (wv * glo).sum(dim=1), (wv * ghi).sum(dim=1)
    mag = (wv * _mag(glo, ghi)).sum(dim=1)
    slo, shi = _outward(slo, shi, 2 * (m + 4) * units.u * mag + units.abs_tiny(m))
    dlo, dhi = _outward(dlo, dhi, 2 * units.u * _mag(dlo, dhi) + units.abs_tiny(1))
    return _mul(dlo, dhi, slo, shi, units)


# ----------------------------------------------------------------------------------------
# Euclidean and cosine bounds from the intervals
# ----------------------------------------------------------------------------------------


def _sum_up(v: Tensor, units: _Units) -> Tensor:
    """Upper bound on the exact sum of nonnegative rows v [B, d] (float64 rounding only)."""
    g = (v.shape[1] + 2) * _U64 * 2
    return _up(v.sum(dim=1) * (1 + g))


def _sum_down(v: Tensor) -> Tensor:
    g = (v.shape[1] + 2) * _U64 * 2
    return _down(v.sum(dim=1) - g * v.abs().sum(dim=1))


def _norm_range(lo: Tensor, hi: Tensor, units: _Units) -> tuple[Tensor, Tensor]:
    """(min, max) of ||v||_2 over the box [lo, hi] (rows of [B, d])."""
    big = _up(_mag(lo, hi) ** 2)
    small = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo)))
    small = _down(small**2)
    return _down(torch.sqrt(_sum_down(small).clamp_min(0))), _up(torch.sqrt(_sum_up(big, units)))


def _deviation_bounds(
    lo: Tensor, hi: Tensor, plo: Tensor, phi: Tensor, units: _Units
) -> tuple[Tensor, Tensor]:
    """(euclidean upper bound, cosine lower bound) [B] for A(z) in [lo, hi], A(x) in [plo, phi]."""
    lo, hi, plo, phi = (t.flatten(1) for t in (lo, hi, plo, phi))
    dev = _up(torch.maximum((hi - plo).abs(), (phi - lo).abs()))
    euclid = _up(torch.sqrt(_sum_up(_up(dev * dev), units)))
    prods = torch.stack([plo * lo, plo * hi, phi * lo, phi * hi])
    dot_min = _sum_down(_down(prods.amin(dim=0)))
    pmin, pmax = _norm_range(plo, phi, units)
    imin, imax = _norm_range(lo, hi, units)
    neg1 = torch.full_like(dot_min, -1.0)
    pos_case = _down(dot_min / _up(pmax * imax).clamp_min(torch.finfo(torch.float64).tiny))
    den = _down(pmin * imin)
    neg_case = torch.where(den > 0, _down(dot_min / den.clamp_min(1e-300)), neg1)
    cos_dot = torch.where(dot_min >= 0, pos_case, neg_case)
    # cosine_from_euclidean(euclid, |A(x)|_min), rounded so that it stays a lower bound
    ratio = _up(euclid / pmin.clamp_min(torch.finfo(torch.float64).tiny))
    inside = (ratio < 1) & (pmin > 0)
    y = _down(1 - _up(ratio * ratio)).clamp_min(0)
    cos_euc = torch.where(inside, _down(torch.sqrt(y)), neg1)
    cos = torch.maximum(cos_dot, cos_euc).clamp(-1.0, 1.0)
    return euclid, torch.nan_to_num(cos, nan=-1.0)


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


def _units_for(model: nn.Module, x: Tensor, evaluation: str) -> _Units:
    """Unit roundoff of the format the model is evaluated in (+ float64 for the bound)."""
    if evaluation == "exact":
        return _Units(u=2 * _U64, tiny=torch.finfo(torch.float64).tiny)
    tensors = list(model.parameters()) + list(model.buffers())
    dtypes = [x.dtype] + [t.dtype for t in tensors if t.is_floating_point()]
    worst = max(dtypes, key=lambda d: torch.finfo(d).eps)
    u_eval = torch.finfo(worst).eps / 2
    if worst == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        u_eval = max(u_eval, 2.0**-8)  # float32 matmuls may then run in bfloat16 (8 bits)
    if worst == torch.float32 and x.device.type == "cuda":
        if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32:
            u_eval = max(u_eval, 2.0**-11)  # TF32 keeps 10 mantissa bits
    return _Units(u=u_eval + _U64, tiny=torch.finfo(worst).tiny)


def _resolve_attribution(attribution: str | Attribution, model: nn.Module,
                         options: dict[str, Any]) -> Attribution:
    if isinstance(attribution, SmoothGrad) or (
        isinstance(attribution, str) and attribution.lower().replace("-", "_") == "smoothgrad"
    ):
        raise AttrboundError(
            "the interval method does not support smoothgrad (its Gaussian noise points would "
            "each need their own bound); use method='region' or 'taylor' for smoothgrad."
        )
    if isinstance(attribution, Attribution):
        if not isinstance(attribution, (Saliency, InputXGradient, IntegratedGradients)):
            raise AttrboundError(
                f"the interval method supports {', '.join(ATTRIBUTIONS)}, not "
                f"{type(attribution).__name__}."
            )
        if options:
            raise AttrboundError(
                f"unknown option(s) {', '.join(sorted(options))} for the interval method; its "
                "options are tightening, evaluation and max_elements (attribution options "
                "belong to the Attribution object)."
            )
        return make_attribution(attribution, model)
    return make_attribution(attribution, model, **options)


def attribution_intervals(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float,
    norm: str | float,
    attribution: str | Attribution = "saliency",
    target: int | Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    tightening: str = "crown",
    evaluation: str = "float",
    max_elements: int = MAX_ELEMENTS,
    **attribution_options: Any,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 intervals (lo, hi) [B, *S] of A(z) over the perturbation set and (plo, phi) of
    A(x) itself (the zero-radius set), before rounding to the input's dtype.

    Arguments as for :func:`interval_bound`. Mostly for tests and experiments.
    """
    out = _prepare(model, x, eps, norm, attribution, target, domain, tightening, evaluation,
                   max_elements, attribution_options)
    return out["lo"], out["hi"], out["plo"], out["phi"]


def _prepare(
    model: nn.Module,
    x: Tensor,
    eps: Any,
    norm: Any,
    attribution: str | Attribution,
    target: int | Tensor | None,
    domain: tuple[float, float] | None,
    tightening: str,
    evaluation: str,
    max_elements: int,
    attribution_options: dict[str, Any],
) -> dict[str, Any]:
    check_batch(x, model)
    norm = parse_norm(norm)
    eps = check_eps(eps)
    domain = check_domain(domain)
    check_choice("tightening", tightening, TIGHTENINGS)
    check_choice("evaluation", evaluation, EVALUATIONS)
    if int(max_elements) < 1:
        raise AttrboundError(f"max_elements must be >= 1, got {max_elements}.")
    attr = _resolve_attribution(attribution, model, attribution_options)
    check_in_domain(x, domain)
    net = _Net(model, tuple(x.shape[1:]), x.device)
    tgt = resolve_target(model, x, target)
    units = _units_for(model, x, evaluation)
    xd = x.detach().to(torch.float64)
    blo, bhi = _down(xd - eps), _up(xd + eps)
    if domain is not None:
        blo, bhi = blo.clamp_min(domain[0]), bhi.clamp_max(domain[1])
    radius = None
    if norm == "2":
        radius = torch.full((x.shape[0],), eps, dtype=torch.float64, device=x.device)
    inset = _InputSet(blo, bhi, xd if norm == "2" else None, radius)
    a64 = attr.with_model(_float64_copy(model))
    lo, hi = _attribution_box(net, a64, xd, inset, tgt, tightening, units, int(max_elements))
    point = _InputSet(xd, xd.clone())
    plo, phi = _attribution_box(net, a64, xd, point, tgt, "none", units, int(max_elements))
    lo, hi = torch.nan_to_num(lo, nan=-math.inf), torch.nan_to_num(hi, nan=math.inf)
    plo, phi = torch.nan_to_num(plo, nan=-math.inf), torch.nan_to_num(phi, nan=math.inf)
    return {"lo": lo, "hi": hi, "plo": plo, "phi": phi, "attr": a64, "target": tgt,
            "norm": norm, "eps": eps, "units": units, "x64": xd}


def _float64_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).to(torch.float64)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def interval_bound(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float,
    norm: str | float,
    attribution: str | Attribution = "saliency",
    target: int | Tensor | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    **options: Any,
) -> BoundResult:
    """Certified bounds on the attribution deviation by interval propagation (DESIGN.md 4).

    For every z in S(x) = {||z - x||_p <= eps, domain[0] <= z <= domain[1]}, the returned
    ``intervals`` (lo, hi) [B, *S] contain A(z); from them (module docstring)

        euclidean  >= ||A(z) - A(x)||_2          and      cosine <= cos(A(x), A(z)).

    Args:
        model: an ``nn.Sequential`` (nested allowed) of Linear, Conv2d, Flatten, AvgPool2d,
            BatchNorm1d/2d (eval), ReLU, Softplus, ELU, Tanh, Sigmoid; any other layer raises
            AttrboundError naming it. ReLU is handled exactly (no surrogate).
        x: inputs [B, *S] inside ``domain``.
        eps, norm: radius (> 0) and norm (2 or "inf").
        attribution: "saliency", "input_x_gradient", "integrated_gradients" or such an
            :class:`~attrbound.attributions.Attribution` (its steps, nodes and baseline are used);
            smoothgrad is not supported.
        target: class explained (int or [B]); None = the predicted class.
        domain: the input box (lo, hi) or None.
        **options: ``tightening`` = "crown" (default; CROWN back-substitution bounds on every
            pre-activation, intersected with IBP) or "none" (IBP, plus the exact first-layer
            radius for l2); ``evaluation`` = "float" (default: sound for the attribution as the
            model computes it in its own format AND in exact arithmetic) or "exact" (exact
            arithmetic only); ``max_elements`` (default 2^23): float64 entries of one CROWN
            back-substitution chunk (memory ~ 6x that); ``surrogate_beta`` is accepted and
            ignored (ReLU is bounded exactly; recorded in ``extra``); ``attribution_options``
            (dict) or any other keyword (e.g. ``steps=16``) are options of the attribution
            method named by ``attribution``.

    Returns:
        BoundResult with method "interval": ``euclidean`` [B] (rounded up), ``cosine`` [B]
        (certified lower bound, rounded down, -1 when vacuous), ``attr_norm`` ||A(x)||_2 [B]
        (float64 model), ``operator_norm`` NaN, ``iterations`` 0, ``converged`` True,
        ``intervals`` (lo, hi) in the input's dtype (rounded outward); ``extra`` holds
        ``tightening``, ``evaluation`` and ``unit_roundoff``.

    Cost: one IBP pass and one interval gradient pass per input (per path node for integrated
    gradients); with CROWN, per pre-activation layer with K neurons, 2K rows carried back through
    the layers below it (the dominant cost for convolutional layers).

    Example::

        res = interval_bound(model, images, eps=0.01, norm="inf")
        res.euclidean, res.cosine       # [B] certified
        lo, hi = res.intervals           # [B, C, H, W]: A(z) in [lo, hi] for all z in the ball
    """
    started = time.perf_counter()
    tightening = options.pop("tightening", "crown")
    evaluation = options.pop("evaluation", "float")
    max_elements = options.pop("max_elements", MAX_ELEMENTS)
    # ReLU is bounded exactly, on the real model: a smooth surrogate is never needed
    ignored_beta = options.pop("surrogate_beta", None)
    opts = dict(options.pop("attribution_options", None) or {})
    opts.update(options)
    out = _prepare(model, x, eps, norm, attribution, target, domain, tightening, evaluation,
                   max_elements, opts)
    lo, hi, plo, phi = out["lo"], out["hi"], out["plo"], out["phi"]
    units: _Units = out["units"]
    euclid, cos = _deviation_bounds(lo, hi, plo, phi, units)
    with torch.no_grad():
        a = out["attr"].attribute(out["x64"], out["target"])
    attr_norm = a.flatten(1).norm(dim=1)
    dt = x.dtype
    b = x.shape[0]
    _, euclid_c = _cast_out(euclid, euclid, dt)
    cos_c, _ = _cast_out(cos, cos, dt)
    return BoundResult(
        method="interval",
        attribution=out["attr"].name,
        norm=out["norm"],
        eps=out["eps"],
        euclidean=euclid_c,
        cosine=cos_c,
        attr_norm=attr_norm.to(dt),
        operator_norm=torch.full((b,), math.nan, dtype=dt, device=x.device),
        iterations=torch.zeros(b, dtype=torch.long, device=x.device),
        converged=torch.ones(b, dtype=torch.bool, device=x.device),
        intervals=_cast_out(lo, hi, dt),
        seconds=time.perf_counter() - started,
        extra={"tightening": tightening, "evaluation": evaluation,
               "unit_roundoff": units.u - _U64 if evaluation == "float" else 0.0,
               "attribution_options": out["attr"].options(),
               "surrogate_beta_ignored": ignored_beta},
    )
