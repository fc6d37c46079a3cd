"""The layers the interval bound supports, one file per op family, all in one registry.

- :mod:`.base`: the base classes AffineOp and Activation, REGISTRY, register, lookup;
- :mod:`.affine`: Linear, Conv2d, BatchNorm1d / BatchNorm2d (eval);
- :mod:`.pooling`: AvgPool2d;
- :mod:`.reshape`: Flatten, and Identity / eval-mode Dropout (skipped);
- :mod:`.activations`: ReLU, LeakyReLU, Hardtanh / ReLU6, Softplus, ELU, Tanh, Sigmoid, GELU,
  SiLU.

Importing this package registers every op. To support a new layer, write its class in its
family's file (or a new one imported here), decorate it with ``@register(nn.TheModule)`` and
add it to SUPPORTED_LAYERS.
"""

from __future__ import annotations

from attrbound.interval.ops.activations import (
    ELU,
    GELU,
    Hardtanh,
    LeakyReLU,
    ReLU,
    Sigmoid,
    SiLU,
    Softplus,
    Tanh,
)
from attrbound.interval.ops.affine import BatchNorm, Conv2d, Linear
from attrbound.interval.ops.base import REGISTRY, Activation, AffineOp, Builder, lookup, register
from attrbound.interval.ops.pooling import AvgPool2d
from attrbound.interval.ops.reshape import Flatten, Skip

__all__ = [
    "ELU", "GELU", "Hardtanh", "REGISTRY", "SUPPORTED_LAYERS", "Activation", "AffineOp",
    "AvgPool2d",
    "BatchNorm", "LeakyReLU",
    "Builder", "Conv2d", "Flatten", "Linear", "ReLU", "SiLU", "Sigmoid", "Skip", "Softplus", "Tanh",
    "lookup", "register",
]

SUPPORTED_LAYERS = (
    "Linear, Conv2d, Flatten, AvgPool2d, BatchNorm1d, BatchNorm2d (eval), ReLU, ReLU6, "
    "Hardtanh, LeakyReLU, "
    "Softplus, ELU, Tanh, Sigmoid, GELU, SiLU (Identity and eval-mode Dropout are skipped; "
    "nested "
    "nn.Sequential is allowed)"
)
