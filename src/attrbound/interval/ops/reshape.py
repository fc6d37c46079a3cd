"""Layers that move no values: Flatten (a pure reshape, no rounding) and the identity maps
(Identity, eval-mode Dropout), which are left out of the network."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attrbound.errors import AttrboundError
from attrbound.interval.ops.base import AffineOp, register
from attrbound.interval.rounding import Units

__all__ = ["Flatten", "Reshape", "Skip"]


@register(nn.Identity, nn.Dropout)
class Skip:
    """Identity and eval-mode Dropout: the identity map, so no node at all."""

    @classmethod
    def from_module(cls, m: nn.Module, in_shape: tuple[int, ...], device: torch.device,
                    path: str) -> None:
        if isinstance(m, nn.Dropout) and m.training and m.p > 0:
            raise AttrboundError(f"layer {path} (Dropout) is in training mode; call model.eval().")
        return None


class Reshape(AffineOp):
    """v -> v.reshape(N, *out_shape) (view, reshape, flatten in a traced graph): exact."""

    name = "reshape"
    exact = True
    fan = 0

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__(in_shape)
        self.out_shape = out_shape

    def linear(self, v: Tensor) -> Tensor:
        return v.reshape((v.shape[0],) + self.out_shape)

    abs_linear = linear

    def transpose(self, v: Tensor) -> Tensor:
        return v.reshape((v.shape[0],) + self.in_shape)

    abs_transpose = transpose

    def ibp(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor, Tensor]:
        return self.linear(lo), self.linear(hi), torch.zeros_like(self.linear(lo))

    def eval_error(self, e: Tensor, mvec: Tensor, units: Units) -> Tensor:
        return self.linear(e)

    def ibp_transpose(self, lo: Tensor, hi: Tensor, units: Units) -> tuple[Tensor, Tensor]:
        return self.transpose(lo), self.transpose(hi)


@register(nn.Flatten)
class Flatten(Reshape):
    """v -> v.flatten(start_dim, end_dim), i.e. a :class:`Reshape` to the flattened shape:
    exact, so intervals and errors pass unchanged."""

    name = "Flatten"

    def __init__(self, m: nn.Flatten, in_shape: tuple[int, ...], device: torch.device) -> None:
        if m.start_dim == 0:
            raise AttrboundError("the interval method does not support Flatten(start_dim=0), "
                                 "which merges the batch dimension.")
        out_shape = tuple(torch.empty((1,) + in_shape).flatten(m.start_dim, m.end_dim).shape[1:])
        super().__init__(in_shape, out_shape)
