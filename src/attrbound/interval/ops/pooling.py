"""Pooling: AvgPool2d, AdaptiveAvgPool2d and a mean over dimensions (fixed nonnegative linear
maps, so |W| = W), and MaxPool2d (a max over each window, with its own relaxation)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrbound.interval.ops.base import AffineOp, register

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "MaxPool2d", "Mean"]


@register(nn.AvgPool2d)
class AvgPool2d(AffineOp):
    """W^T through aten's avg_pool2d_backward; fan = the window size times the number of
    windows covering one input (each input term of W^T v), plus 1 for the division."""

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


@register(nn.AdaptiveAvgPool2d)
class AdaptiveAvgPool2d(AffineOp):
    """F.adaptive_avg_pool2d: a fixed nonnegative linear map (|W| = W); W^T by a
    vector-Jacobian product. fan = H * W + 1 bounds the terms of every row of W and of W^T
    (a window never holds more than the whole map; one more for the division)."""

    name = "AdaptiveAvgPool2d"

    def __init__(self, output_size: Any, in_shape: tuple[int, ...],
                 device: torch.device) -> None:
        super().__init__(in_shape)
        self.size = output_size
        self.fan = in_shape[-1] * in_shape[-2] + 1
        self.out_shape = tuple(self.linear(torch.zeros((1,) + in_shape, dtype=torch.float64,
                                                       device=device)).shape[1:])

    @classmethod
    def from_module(cls, m: nn.Module, in_shape: tuple[int, ...], device: torch.device,
                    path: str) -> AdaptiveAvgPool2d:
        assert isinstance(m, nn.AdaptiveAvgPool2d)
        return cls(m.output_size, in_shape, device)

    def linear(self, v: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(v, self.size)

    abs_linear = linear

    def transpose(self, v: Tensor) -> Tensor:
        with torch.enable_grad():
            z = v.new_zeros((v.shape[0],) + self.in_shape, requires_grad=True)
            return torch.autograd.grad(self.linear(z), z, v)[0]

    abs_transpose = transpose


class Mean(AffineOp):
    """v -> v.mean(dims, keepdim): nonnegative weights 1/count; fan = count + 1 (the sum and
    the division). ``dims`` count the batch dimension (>= 1)."""

    name = "mean"

    def __init__(self, dims: tuple[int, ...], keepdim: bool, in_shape: tuple[int, ...]) -> None:
        super().__init__(in_shape)
        nd = len(in_shape) + 1
        self.dims = tuple(sorted(d % nd for d in dims))
        self.keepdim = keepdim
        self.count = math.prod(in_shape[d - 1] for d in self.dims)
        self.fan = self.count + 1
        self.out_shape = tuple(torch.empty((1,) + in_shape).mean(self.dims, keepdim=keepdim)
                               .shape[1:])

    def linear(self, v: Tensor) -> Tensor:
        return v.mean(self.dims, keepdim=self.keepdim)

    abs_linear = linear

    def transpose(self, v: Tensor) -> Tensor:
        if not self.keepdim:
            for d in self.dims:
                v = v.unsqueeze(d)
        return v.expand((v.shape[0],) + self.in_shape) / self.count

    abs_transpose = transpose


class MaxPool2d:
    """F.max_pool2d (no ceil mode, no indices): y_w = max of window w.

    Windows are read with padding -inf ([N, C, K, L]: K positions per window, L windows).
    Bounds: IBP is the max of the ends (exact). Linear relaxation per window (docs/design.md
    section 4): with j* the position of the largest lower end, x_j* <= y_w always, and
    y_w <= x_j* when j* dominates (lo_j* >= hi_j for every other j), else y_w <= max_j hi_j.
    Derivative: torch routes the gradient of y_w to one maximising position; position j may
    receive it iff hi_j >= max_{i != j} lo_i and surely does iff lo_j > max_{i != j} hi_i."""

    name = "MaxPool2d"

    def __init__(self, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
                 in_shape: tuple[int, ...], path: str) -> None:
        pair = nn.modules.utils._pair
        self.k, self.p, self.d = pair(kernel_size), pair(padding), pair(dilation)
        self.s = pair(stride if stride is not None and stride != [] else kernel_size)
        self.in_shape = in_shape
        c, h, w = in_shape[-3:]
        self.padded = (h + 2 * self.p[0], w + 2 * self.p[1])
        out = F.max_pool2d(torch.zeros((1,) + in_shape), self.k, self.s, self.p, self.d)
        self.out_shape = tuple(out.shape[1:])
        ones = torch.ones((1, self.kk, math.prod(self.out_shape[-2:])))
        cover = F.fold(ones, self.padded, self.k, self.d, 0, self.s)
        #: most windows covering one input: terms of one sum of the backward pass
        self.overlap = int(cover.max())

    @property
    def kk(self) -> int:
        return self.k[0] * self.k[1]

    def windows(self, v: Tensor) -> Tensor:
        """[M, *in_shape] -> [M, C, K, L] (padding -inf)."""
        m, c = v.shape[0], self.in_shape[-3]
        v = F.pad(v, (self.p[1], self.p[1], self.p[0], self.p[0]), value=-math.inf)
        cols = F.unfold(v.reshape((m * c, 1) + self.padded), self.k, self.d, 0, self.s)
        return cols.reshape(m, c, self.kk, -1)

    def fold(self, cols: Tensor) -> Tensor:
        """Sum of window entries [M, C, K, L] back onto the input [M, *in_shape]."""
        m, c = cols.shape[:2]
        out = F.fold(cols.reshape(m * c, self.kk, -1), self.padded, self.k, self.d, 0, self.s)
        h, w = self.in_shape[-2:]
        out = out[..., self.p[0]: self.p[0] + h, self.p[1]: self.p[1] + w]
        return out.reshape((m,) + self.in_shape)

    def forward(self, v: Tensor) -> Tensor:
        return F.max_pool2d(v, self.k, self.s, self.p, self.d)

    def others_max(self, cols: Tensor) -> Tensor:
        """For each window position j, max over the other positions i != j (-inf if none)."""
        if self.kk == 1:
            return torch.full_like(cols, -math.inf)
        top = cols.topk(2, dim=2).values
        first, second = top[:, :, :1], top[:, :, 1:2]
        return torch.where(cols == first, second, first)

    def relax(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(j* [M, C, L], dominant [M, C, L] bool, max hi [M, C, L]) from the input bounds."""
        wlo, whi = self.windows(lo), self.windows(hi)
        jstar = wlo.argmax(dim=2)
        lo_j = wlo.gather(2, jstar.unsqueeze(2))
        rest = whi.scatter(2, jstar.unsqueeze(2), -math.inf).amax(dim=2)
        dominant = lo_j.squeeze(2) >= rest
        return jstar, dominant, whi.amax(dim=2)

    def scatter(self, coef: Tensor, jstar: Tensor) -> Tensor:
        """Coefficients [M, C, L] at positions j* [M, C, L] onto the input [M, *in_shape]."""
        m, c, nw = coef.shape
        cols = coef.new_zeros((m, c, self.kk, nw))
        cols.scatter_(2, jstar.unsqueeze(2), coef.unsqueeze(2))
        return self.fold(cols)

    def deriv_states(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """(surely, possibly) [M, C, K, L] as floats: the derivative of y_w in x_j lies in
        [surely, possibly] (each 0 or 1)."""
        wlo, whi = self.windows(lo), self.windows(hi)
        possibly = (whi >= self.others_max(wlo)) & (whi > -math.inf)
        surely = wlo > self.others_max(whi)
        return surely.to(lo.dtype), possibly.to(lo.dtype)
