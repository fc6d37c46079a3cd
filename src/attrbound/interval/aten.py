"""Graphs from torch.export: their aten ops rewritten as the torch-level calls the DAG knows.

``torch.export.export(model, ...).module()`` (a ``.pt2`` archive as attrbound loads it) is an
fx graph of ``torch.ops.aten.*`` overloads with the parameters as attributes. Each overload
below computes exactly what the torch-level function it is mapped to computes, so
:func:`to_torch_level` rewrites the node in place (target, and the arguments in the function's
order) and :class:`attrbound.interval.dag.Dag` converts it like the same call in an eager
``forward``. Overloads not listed keep their target, and the DAG refuses them with one sentence
naming the op. The rewritten graph is still checked against the model itself
(``Dag._check``: its float64 evaluation must reproduce the model's logits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

aten = torch.ops.aten

#: a node's new (torch-level function, args, kwargs), or None to keep the aten op
Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
Rewrite = Callable[[tuple[Any, ...], dict[str, Any]], Call | None]


def _same(fn: Callable[..., Any]) -> Rewrite:
    """The overload takes fn's arguments in fn's order."""
    return lambda args, kwargs: (fn, args, kwargs)


def _pool(fn: Callable[..., Any]) -> Rewrite:
    """max_pool2d / avg_pool2d: aten writes the default stride (the kernel size) as []."""

    def rewrite(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        args, kwargs = tuple(args), dict(kwargs)
        if len(args) > 2 and not args[2]:
            args = args[:2] + (None,) + args[3:]
        if "stride" in kwargs and not kwargs["stride"]:
            kwargs["stride"] = None
        return fn, args, kwargs

    return rewrite


def _batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    """aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum,
    eps, cudnn_enabled) as F.batch_norm(input, running_mean, running_var, weight, bias,
    training, momentum, eps)."""
    names = ("input", "weight", "bias", "running_mean", "running_var", "training",
             "momentum", "eps")
    given = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items()
                                                    if k in names}
    return F.batch_norm, (given["input"], given.get("running_mean"), given.get("running_var"),
                          given.get("weight"), given.get("bias"),
                          bool(given.get("training", False)), given.get("momentum", 0.1),
                          given.get("eps", 1e-5)), {}


def _elu(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call | None:
    """aten.elu(self, alpha, scale, input_scale) is F.elu(self, alpha) when both scales are 1
    (otherwise it stays unsupported)."""
    scale = args[2] if len(args) > 2 else kwargs.get("scale", 1)
    input_scale = args[3] if len(args) > 3 else kwargs.get("input_scale", 1)
    if scale != 1 or input_scale != 1:
        return None
    return F.elu, (args[0], args[1] if len(args) > 1 else kwargs.get("alpha", 1.0)), {}


#: aten overload -> its Rewrite
REWRITES: dict[Any, Rewrite] = {
    aten.conv2d.default: _same(F.conv2d),
    aten.conv2d.padding: _same(F.conv2d),
    aten.linear.default: _same(F.linear),
    aten.batch_norm.default: _batch_norm,
    aten.relu.default: _same(torch.relu),
    aten.relu_.default: _same(torch.relu),
    aten.leaky_relu.default: _same(F.leaky_relu),
    aten.leaky_relu_.default: _same(F.leaky_relu),
    aten.softplus.default: _same(F.softplus),
    aten.elu.default: _elu,
    aten.elu_.default: _elu,
    aten.tanh.default: _same(torch.tanh),
    aten.tanh_.default: _same(torch.tanh),
    aten.sigmoid.default: _same(torch.sigmoid),
    aten.sigmoid_.default: _same(torch.sigmoid),
    aten.gelu.default: _same(F.gelu),
    aten.hardtanh.default: _same(F.hardtanh),
    aten.hardtanh_.default: _same(F.hardtanh),
    aten.relu6.default: _same(F.relu6),
    aten.relu6_.default: _same(F.relu6),
    aten.silu.default: _same(F.silu),
    aten.silu_.default: _same(F.silu),
    aten.max_pool2d.default: _pool(F.max_pool2d),
    aten.avg_pool2d.default: _pool(F.avg_pool2d),
    aten.adaptive_avg_pool2d.default: _same(F.adaptive_avg_pool2d),
    aten.mean.dim: _same(torch.mean),
    aten.add.Tensor: _same(torch.add),
    aten.add_.Tensor: _same(torch.add),
    aten.sub.Tensor: _same(torch.sub),
    aten.sub_.Tensor: _same(torch.sub),
    aten.mul.Tensor: _same(torch.mul),
    aten.mul_.Tensor: _same(torch.mul),
    aten.div.Tensor: _same(torch.div),
    aten.div_.Tensor: _same(torch.div),
    aten.neg.default: _same(torch.neg),
    aten.cat.default: _same(torch.cat),
    aten.flatten.using_ints: _same(torch.flatten),
    aten.view.default: _same(torch.reshape),
    aten.reshape.default: _same(torch.reshape),
    aten._unsafe_view.default: _same(torch.reshape),
    aten.dropout.default: _same(F.dropout),
    aten.dropout_.default: _same(F.dropout),
    aten.clone.default: _same(torch.clone),
    aten.alias.default: _same(torch.clone),
    aten.detach.default: _same(torch.detach),
}


def to_torch_level(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite, in place, every node of ``gm`` whose target is an aten overload of
    :data:`REWRITES` as the equivalent torch-level call; returns gm (recompiled when a node
    changed). In-place overloads (add_, relu_, ...) become their out-of-place function:
    :func:`attrbound.interval.aliasing.check_in_place_writes` has refused, on the graph as
    exported, every write that another alias of its storage reads later, so the out-of-place
    node computes what the model does."""
    changed = False
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in REWRITES:
            continue
        got = REWRITES[n.target](tuple(n.args), dict(n.kwargs))
        if got is None:
            continue
        n.target, n.args, n.kwargs = got
        changed = True
    if changed:
        gm.recompile()
    return gm


__all__ = ["REWRITES", "to_torch_level"]
