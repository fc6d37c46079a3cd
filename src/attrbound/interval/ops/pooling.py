"""Average pooling: AvgPool2d, a fixed nonnegative linear map (so |W| = W)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrbound.interval.ops.base import AffineOp, register

__all__ = ["AvgPool2d"]


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
