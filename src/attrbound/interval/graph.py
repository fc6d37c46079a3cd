"""The network as the interval bound sees it: blocks of affine ops separated by activations.

    f = blocks[n] o acts[n-1] o blocks[n-1] o ... o acts[0] o blocks[0],

pre-activation i is q_i = blocks[i](h_i), h_0 = z, h_{i+1} = acts[i](q_i). Built from an
``nn.Sequential`` (nested allowed) by looking each leaf module up in the op registry
(:mod:`attrbound.interval.ops`). This chain is the one place that knows the model's structure:
any other model (residual adds, concatenations, max pooling, a custom forward) is traced
into the graph of :mod:`attrbound.interval.dag` instead (NotAChain says which).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from attrbound.errors import AttrboundError, first_line
from attrbound.interval.ops import SUPPORTED_LAYERS, Activation, AffineOp, lookup

__all__ = ["Net", "NotAChain", "leaves"]


class NotAChain(AttrboundError):
    """The model is not an nn.Sequential of chain layers (the graph of attrbound.interval.dag
    handles it)."""


def leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of every non-Sequential module, in order, through nested Sequentials."""
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from leaves(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix or type(module).__name__, module


class Net:
    """The chain of ``blocks`` (lists of AffineOp) and ``acts`` (one Activation between two
    blocks) of a model on inputs [N, *in_shape]; ``pre_shapes[i]`` is the shape of q_i
    (without the batch), ``out_shape`` that of the logits, (K,)."""

    def __init__(self, model: nn.Module, in_shape: tuple[int, ...], device: torch.device) -> None:
        if not isinstance(model, nn.Sequential) and any(True for _ in model.children()):
            raise NotAChain(f"{type(model).__name__} is not an nn.Sequential.")
        self.blocks: list[list[AffineOp]] = [[]]
        self.acts: list[Activation] = []
        shape = tuple(int(s) for s in in_shape)
        self.in_shape = shape
        for path, m in leaves(model):
            build = lookup(m)
            if build is None:
                raise NotAChain(f"layer {path} ({type(m).__name__}) is not a chain layer; "
                                f"chain layers: {SUPPORTED_LAYERS}.")
            try:
                node = build(m, shape, device, path)
            except (RuntimeError, IndexError) as exc:
                raise AttrboundError(
                    f"layer {path} ({type(m).__name__}) does not accept inputs shaped "
                    f"{shape} ({first_line(exc)})."
                ) from None
            if isinstance(node, AffineOp):
                self.blocks[-1].append(node)
                shape = node.out_shape
            elif isinstance(node, Activation):
                self.acts.append(node)
                self.blocks.append([])
        self.out_shape = shape
        if len(shape) != 1:
            raise AttrboundError(f"the model must output logits shaped [B, K], got [B, {shape}].")
        self.pre_shapes: list[tuple[int, ...]] = []
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
