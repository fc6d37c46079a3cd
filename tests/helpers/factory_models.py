"""Factories for ``attrbound.intake.load_model("helpers.factory_models:NAME", weights=...)``.

:func:`residual_net` builds a small torchvision-style residual network with BatchNorm and
global average pooling for inputs [B, 3, 8, 8] -> logits [B, 3]; its activation is
softplus(10 z) / 10 so that its attribution maps have nonzero second derivatives. The other
factories are wrong on purpose, for the error tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """x -> act(x + BN(conv(act(BN(conv(x)))))), channels and size unchanged."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.softplus(self.bn1(self.conv1(x)), beta=10.0)
        return F.softplus(x + self.bn2(self.conv2(y)), beta=10.0)


class ResidualNet(nn.Module):
    """Conv stem -> BasicBlock -> global average pooling -> Linear: [B, 3, H, W] -> [B, 3]."""

    def __init__(self, channels: int = 4, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.block = BasicBlock(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.block(self.stem(x)).mean(dim=(2, 3)))


def residual_net() -> ResidualNet:
    """The untrained network, in training mode (as ``nn.Module`` constructors return it)."""
    return ResidualNet()


def calibrated_residual_net(seed: int = 0) -> ResidualNet:
    """:func:`residual_net` with random weights and BatchNorm statistics gathered on random
    inputs (so that eval mode differs from train mode), left in training mode."""
    torch.manual_seed(seed)
    model = residual_net()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 8, 8))
    return model


def wider_net() -> ResidualNet:
    """A network whose weights do not fit those of :func:`residual_net` (8 channels)."""
    return ResidualNet(channels=8)


def not_a_module() -> int:
    return 42


NOT_CALLABLE = 3
