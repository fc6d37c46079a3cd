"""Architectures users bring, in tiny sizes for tests (float32 or float64, eval mode).

- :class:`ResNet`: torchvision-style BasicBlocks (conv-BN-ReLU(inplace)-conv-BN, identity or
  1x1-conv-BN shortcut, ``out += identity``, ReLU(inplace)), global average pooling, Linear.
- :class:`FunctionalCNN`: a CNN whose forward calls ``F.relu`` and ``F.max_pool2d``.
- :class:`NormMLP`: Flatten -> Linear -> LayerNorm -> GELU -> Linear (smooth).
- :class:`TinyViT`: patch-embedding conv, a class token and position embedding, one pre-norm
  block (multi-head self-attention written out, then a GELU MLP, both residual), LayerNorm,
  a Linear head on the class token (smooth).
- :class:`Normalized`: (x - mean) / std with per-channel buffers, then an inner model.
- :class:`Tiny`: a conv, then one operation under test, then two per-example summaries.

``act`` and ``pool`` arguments replace the piecewise-linear functions (for hand-written smooth
references); BatchNorm statistics and affine parameters are random, so eval-mode BatchNorm is
a non-trivial affine map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Act = Callable[[Tensor], Tensor]


def _randomise_norms(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))


def ready(model: nn.Module, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """``model`` with random BatchNorm statistics, in ``dtype``, eval mode (params trainable,
    as a user's module would be)."""
    _randomise_norms(model, seed)
    return model.to(dtype).eval()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Stem conv-BN-ReLU, BasicBlocks (channels, each but the first with stride 2), global
    average pooling, Linear; inputs [B, cin, H, W]."""

    def __init__(self, cin: int = 3, channels: tuple[int, ...] = (4, 6), classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(cin, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        blocks, c = [], channels[0]
        for i, out in enumerate(channels):
            blocks.append(BasicBlock(c, out, 1 if i == 0 else 2))
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class FunctionalCNN(nn.Module):
    """conv -> F.relu -> F.max_pool2d(2), twice, then Linear; inputs [B, cin, H, W] with H, W
    divisible by 4."""

    def __init__(
        self, cin: int = 1, size: int = 8, classes: int = 3, act: Act = F.relu,
        pool: Act | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * (size // 4) ** 2, classes)
        self.act = act
        self.pool = pool or (lambda z: F.max_pool2d(z, 2))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.fc(x.flatten(1))


class NormMLP(nn.Module):
    def __init__(self, d: int = 12, hidden: int = 10, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TinyViT(nn.Module):
    """Patch embedding (conv, kernel = stride = patch), class token, position embedding, one
    pre-norm attention + MLP block, LayerNorm, head; inputs [B, cin, size, size]."""

    def __init__(
        self, cin: int = 3, size: int = 8, patch: int = 4, dim: int = 8, heads: int = 2,
        classes: int = 3,
    ) -> None:
        super().__init__()
        tokens = (size // patch) ** 2
        self.heads = heads
        self.embed = nn.Conv2d(cin, dim, patch, patch)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def attention(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = x + self.attention(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x)[:, 0])


class Normalized(nn.Module):
    """(x - mean) / std per channel (buffers), then ``inner``."""

    def __init__(self, inner: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner((x - self.mean) / self.std)


class Tiny(nn.Module):
    """conv -> ``op(self, z)`` -> (sum, mean of squares) per example: logits [B, 2]. ``weight``
    [3] is a parameter the op may use (a PReLU weight, a clamp of a parameter)."""

    def __init__(self, op: Callable[[nn.Module, Tensor], Tensor], cin: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 3, 3, padding=1)
        self.weight = nn.Parameter(torch.tensor([0.25, 0.1, 0.3]))
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        out = self.op(self, self.conv(x)).flatten(1)
        return torch.stack([out.sum(1), (out * out).mean(1)], dim=1)


class RandomDag(nn.Module):
    """A small graph for the interval bound's property tests, inputs [B, cin, 4, 4]: conv stem
    -> act -> a residual block (conv -> [BN] -> act -> conv -> [BN], + the stem, act) -> ``pool``
    ("avg", "max", "max3" = 3x3 stride 1 padding 1 max pooling, "adaptive", "none") -> [cat
    with a 1x1-conv branch of the stem] -> flatten -> Linear -> act -> Linear (3 logits).
    ``act`` is a module factory (nn.ReLU, nn.Tanh, ...); ``functional_relu``: F.relu in the
    forward instead of the module for the block's first activation."""

    def __init__(self, act: Callable[[], nn.Module], pool: str = "avg", bn: bool = True,
                 cat: bool = False, cin: int = 2, width: int = 3,
                 functional_relu: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(cin, width, 3, padding=1)
        self.a0, self.a1, self.a2, self.a3 = act(), act(), act(), act()
        self.c1 = nn.Conv2d(width, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.n1 = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.n2 = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.side = nn.Conv2d(width, 2, 1) if cat else None
        self.pool = pool
        self.functional_relu = functional_relu
        side = {"avg": 2, "max": 2, "max3": 4, "adaptive": 1, "none": 4}[pool]
        chans = width + (2 if cat else 0)
        self.fc1 = nn.Linear(chans * side * side, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a0(self.stem(x))
        y = self.n1(self.c1(h))
        y = F.relu(y) if self.functional_relu else self.a1(y)
        y = self.a2(self.n2(self.c2(y)) + h)
        if self.side is not None:
            y = torch.cat([y, self.side(h)], dim=1)
        if self.pool == "avg":
            y = F.avg_pool2d(y, 2)
        elif self.pool == "max":
            y = F.max_pool2d(y, 2)
        elif self.pool == "max3":
            y = nn.functional.max_pool2d(y, 3, 1, 1)
        elif self.pool == "adaptive":
            y = y.mean(dim=(2, 3))
        return self.fc2(self.a3(self.fc1(y.flatten(1))))
