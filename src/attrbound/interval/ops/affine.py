"""Affine layers with weights: Linear, Conv2d and eval-mode BatchNorm1d / BatchNorm2d.

Each holds float64 copies of its parameters on the inputs' device. ``fan`` bounds the number of
terms of one dot product of W or of W^T (the rounding model of attrbound.interval.rounding).
Linear and Conv2d also give ``sq_linear`` (W^2 v), from which the exact l2 first-layer radius
is computed (attrbound.interval.perturbation.first_layer_ball).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrbound.errors import AttrboundError
from attrbound.interval.ops.base import AffineOp, register

__all__ = ["BatchNorm", "Conv2d", "Linear"]


def _vjp(fn: Callable[[Tensor], Tensor], in_shape: tuple[int, ...], v: Tensor) -> Tensor:
    """W^T v for the linear map fn (its vector-Jacobian product at 0)."""
    with torch.enable_grad():
        z = v.new_zeros((v.shape[0],) + in_shape, requires_grad=True)
        return torch.autograd.grad(fn(z), z, v)[0]


@register(nn.Linear)
class Linear(AffineOp):
    """v -> v W^T + b on the last dimension; fan = max(in_features, out_features)."""

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

    @classmethod
    def from_module(cls, m: nn.Module, in_shape: tuple[int, ...], device: torch.device,
                    path: str) -> Linear:
        assert isinstance(m, nn.Linear)
        op = cls(m, in_shape, device)
        if not in_shape or in_shape[-1] != op.w.shape[1]:
            raise AttrboundError(
                f"layer {path} (Linear) expects {op.w.shape[1]} features, got inputs "
                f"shaped {in_shape}."
            )
        return op

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


@register(nn.Conv2d)
class Conv2d(AffineOp):
    """A zero-padded 2-d convolution; W^T is conv2d_input (or a vector-Jacobian product for
    string padding); fan = kernel size * max(in, out channels) / groups."""

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


class Elementwise(AffineOp):
    """v -> a * v + c with constants a, c of the per-example shape: a tensor plus, minus, times
    or divided by a constant (input normalisation (x - mean) / std, scalings). For a division
    a = 1 / s in float64, so, as for BatchNorm, fan = 8 covers a's rounding and the shift's."""

    def __init__(self, a: Tensor, c: Tensor, in_shape: tuple[int, ...], name: str) -> None:
        super().__init__(in_shape)
        self.name = name
        self.a, self.a_abs = a, a.abs()
        self.bias, self.err_bias = c, c.abs()
        self.fan = 8

    def linear(self, v: Tensor) -> Tensor:
        return v * self.a

    def abs_linear(self, v: Tensor) -> Tensor:
        return v * self.a_abs

    transpose = linear
    abs_transpose = abs_linear


@register(nn.BatchNorm1d, nn.BatchNorm2d)
class BatchNorm(Elementwise):
    """Eval-mode batch norm: v -> s (v - mean) + beta per channel (dim 1), s = w / sqrt(var + e)."""

    def __init__(self, m: nn.modules.batchnorm._BatchNorm, in_shape: tuple[int, ...],
                 device: torch.device) -> None:
        f64 = {"device": device, "dtype": torch.float64}
        c = m.num_features
        w = m.weight.detach().to(**f64) if m.weight is not None else torch.ones(c, **f64)
        beta = m.bias.detach().to(**f64) if m.bias is not None else torch.zeros(c, **f64)
        mean, var = m.running_mean.to(**f64), m.running_var.to(**f64)
        view = (c,) + (1,) * (len(in_shape) - 1)
        s = w / torch.sqrt(var + m.eps)  # s itself and the shift carry a few roundings: fan 8
        super().__init__(s.view(view), (beta - mean * s).view(view), in_shape, type(m).__name__)
        self.err_bias = (beta.abs() + (mean * s).abs()).view(view)

    @classmethod
    def from_module(cls, m: nn.Module, in_shape: tuple[int, ...], device: torch.device,
                    path: str) -> BatchNorm:
        assert isinstance(m, nn.modules.batchnorm._BatchNorm)
        if m.training or m.running_mean is None:
            raise AttrboundError(
                f"layer {path} ({type(m).__name__}) must be in eval mode with "
                "running statistics; call model.eval()."
            )
        return cls(m, in_shape, device)


