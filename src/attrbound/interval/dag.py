"""The network as a graph (DAG) of ops, traced by torch.fx, for models that are not a plain chain.

Nodes in topological order; node 0 is the input, the last node the logits [N, K]. Kinds:

- ``affine``: an :class:`~attrbound.interval.ops.AffineOp` of one node (Linear, Conv2d,
  BatchNorm, AvgPool2d, AdaptiveAvgPool2d, a mean over dimensions, flatten / view / reshape);
- ``act``: an elementwise :class:`~attrbound.interval.ops.Activation` of one node;
- ``max``: :class:`~attrbound.interval.ops.pooling.MaxPool2d` of one node;
- ``add``: the sum of two nodes of the same shape (residual connections);
- ``cat``: the concatenation of nodes along ``dim`` (counting the batch dimension).

Functional ``conv2d`` / ``linear`` / ``batch_norm`` with the model's parameters become the
layer's op. Graphs from ``torch.export`` (aten ops) are first rewritten as the same torch-level
calls (:mod:`attrbound.interval.aten`); a :class:`~attrbound.intake.Normalized` model
(``model((x - mean) / std)``, the command line's ``--mean`` / ``--std``) is its model's graph
after two ``affine`` nodes, x - mean and then / std.

In-place writes are checked first (:mod:`attrbound.interval.aliasing`: refused where another
alias of the storage is read after the write), ``detach`` is refused (no gradient flows through
it), and so is a higher-order op of an exported graph (a ``no_grad`` or autocast region).

Identity, contiguous and eval-mode dropout are no node at all (their input is used). Every
traced tensor keeps the batch as its first dimension (checked on a batch of two). The graph is
checked against the model: evaluated in float64 on the inputs it must reproduce the model's
logits, which catches in-place writes on shared tensors and anything fx records differently
from what the model computes.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from attrbound.errors import AttrboundError, first_line
from attrbound.intake.model import Normalized
from attrbound.interval.aliasing import check_in_place_writes, is_shape_query
from attrbound.interval.aten import to_torch_level
from attrbound.interval.graph import Net, NotAChain
from attrbound.interval.ops import SUPPORTED_LAYERS, Activation, AffineOp, lookup
from attrbound.interval.ops.affine import Elementwise
from attrbound.interval.ops.pooling import AdaptiveAvgPool2d, MaxPool2d, Mean
from attrbound.interval.ops.reshape import Reshape

__all__ = ["SUPPORTED_NODES", "Dag", "Node", "network"]

SUPPORTED_NODES = (
    "modules " + SUPPORTED_LAYERS.split(" (")[0] + ", MaxPool2d, AdaptiveAvgPool2d, Identity, "
    "Dropout (eval); functions relu, relu6, hardtanh, leaky_relu, tanh, sigmoid, softplus, elu, "
    "gelu, silu, "
    "max_pool2d, avg_pool2d, "
    "adaptive_avg_pool2d, mean, conv2d / linear / batch_norm (eval) with the model's "
    "parameters, add / + of two tensors, + - * / of a tensor and a constant "
    "(a number, a parameter or a buffer broadcast over the batch), negation, cat, flatten, "
    "view, reshape, contiguous, dropout (eval); torch.export graphs of these ops"
)

_RELU = {F.relu, torch.relu, "relu", "relu_", torch.relu_}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__iadd__"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub", "sub_", "__sub__", "__isub__"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__imul__"}
_DIV = {operator.truediv, operator.itruediv, torch.div, "div", "div_", "__truediv__",
        "__itruediv__"}
_NEG = {operator.neg, torch.neg, "neg", "__neg__"}
_CAT = {torch.cat, torch.concat}
_RESHAPE = {torch.flatten, "flatten", "view", "reshape", torch.reshape}
_SKIP = {"contiguous", "clone", torch.clone}
_DETACH = {"detach", torch.detach}


@dataclass
class Node:
    """One op of the graph: ``args`` are node indices, ``shape`` the output without the batch."""

    kind: str
    args: tuple[int, ...]
    shape: tuple[int, ...]
    op: Any = None
    dim: int = 0
    name: str = ""
    fn: Any = None  # act nodes: the torch module, for the check against the model


def network(model: nn.Module, x64: Tensor, device: torch.device) -> Net | Dag:
    """The chain :class:`Net` for an ``nn.Sequential`` of chain layers, else the traced
    :class:`Dag` (``model`` is the float64 eval copy, ``x64`` the float64 inputs)."""
    try:
        return Net(model, tuple(x64.shape[1:]), device)
    except NotAChain:
        return Dag(model, x64, device)


def _refuse_regions(model: nn.Module) -> None:
    """Refuse a torch.export graph with a higher-order op: a ``no_grad`` or autocast region
    is one (``wrap_with_set_grad_enabled``, ...), and retracing the graph with fx inlines its
    ops without the switch, so the gradient pass would go through a branch that has none."""
    if not isinstance(model, fx.GraphModule):
        return
    for n in model.graph.nodes:
        if n.op == "call_function" and isinstance(n.target, torch._ops.HigherOrderOperator):
            raise AttrboundError(
                f"the interval method cannot bound node {n.name} ({n.target.name()}): "
                "torch.export wrapped a no_grad, autocast or other region there; export the "
                "model without it.")


def _normalisation(model: Normalized, example: Tensor, device: torch.device
                   ) -> tuple[Tensor, Tensor]:
    """(mean, std) of a Normalized model, float64, shaped to broadcast over example [2, *S]
    with its own batch dimension of 1, as its forward does (and with its channel check)."""
    c = model.mean.numel()
    if c > 1 and (example.dim() < 2 or example.shape[1] != c):
        raise AttrboundError(
            f"mean/std have {c} channels but the inputs are shaped "
            f"{tuple(example.shape[1:])} after the batch (channels are dim 1).")
    shape = (1, c) + (1,) * max(example.dim() - 2, 0)
    mean, std = (t.detach().to(device=device, dtype=torch.float64).view(shape)
                 for t in (model.mean, model.std))
    return mean, std


def _unsupported(node: fx.Node, what: str) -> AttrboundError:
    return AttrboundError(
        f"the interval method does not support node {node.name} ({what}); "
        f"supported: {SUPPORTED_NODES}."
    )


def _arg(node: fx.Node, i: int, key: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


class Dag:
    """The traced graph of a model on inputs x64 [B, *S] (float64)."""

    def __init__(self, model: nn.Module, x64: Tensor, device: torch.device) -> None:
        self.in_shape = tuple(int(s) for s in x64.shape[1:])
        self._device = device
        wrapper = model if isinstance(model, Normalized) else None
        inner = model if wrapper is None else wrapper.model
        _refuse_regions(inner)
        try:
            gm = fx.symbolic_trace(inner)
        except Exception as exc:  # fx raises many types for untraceable code
            raise AttrboundError(
                f"the interval method could not trace {type(inner).__name__} with torch.fx "
                f"({first_line(exc)}); it needs a forward without data-dependent control flow."
            ) from None
        check_in_place_writes(gm)
        to_torch_level(gm)
        example = x64[:1].expand((2,) + self.in_shape).clone()
        self._normalisation = None if wrapper is None else _normalisation(wrapper, example,
                                                                           device)
        if self._normalisation is not None:
            mean, std = self._normalisation
            example = (example - mean) / std
        try:
            ShapeProp(gm).propagate(example)
        except Exception as exc:  # whatever the graph's own ops raise (ShapeProp wraps it)
            raise AttrboundError(
                f"the interval method could not run the traced graph of {type(inner).__name__} "
                f"on a batch of 2 inputs in float64 ({first_line(exc.__cause__ or exc)}); it "
                "needs a graph "
                "that takes any batch size (export with a dynamic batch dimension) and casts "
                "no dtype."
            ) from None
        self.nodes: list[Node] = []
        index: dict[fx.Node, int] = {}
        self.consts: dict[fx.Node, Tensor] = {}  # parameters and buffers used as tensors
        for n in gm.graph.nodes:
            if n.op == "get_attr":
                value = gm
                for part in str(n.target).split("."):
                    value = getattr(value, part)
                if isinstance(value, Tensor):
                    self.consts[n] = value.detach().to(device=device, dtype=torch.float64)
                    continue
            if n.op == "output":
                out = n.args[0]
                if not isinstance(out, fx.Node) or out not in index:
                    raise _unsupported(n, "the output must be one tensor of logits")
                self.output = index[out]
                continue
            meta = n.meta.get("tensor_meta")
            if not isinstance(meta, TensorMetadata):
                # a size or a shape (used by reshapes) is fine; other non-tensor results of
                # input-dependent tensors (sort's tuple, ...) are not
                uses = [a for a in n.all_input_nodes if a in index]
                if uses and not is_shape_query(n):
                    raise _unsupported(n, f"function {getattr(n.target, '__name__', n.target)}")
                continue
            if n.op != "placeholder" and not any(a in index for a in n.all_input_nodes):
                raise _unsupported(n, "a tensor computed inside the forward from parameters, "
                                   "buffers or constants only; store it as a buffer")
            if len(meta.shape) == 0 or int(meta.shape[0]) != 2:
                raise _unsupported(n, "it mixes examples of the batch")
            shape = tuple(int(s) for s in meta.shape[1:])
            got = self._convert(gm, n, index, shape, device)
            if isinstance(got, int):
                index[n] = got
            else:
                index[n] = len(self.nodes)
                self.nodes.append(got)
        if self.output != len(self.nodes) - 1:
            raise AttrboundError("the interval method needs the logits to be the last node.")
        self.out_shape = self.nodes[-1].shape
        if len(self.out_shape) != 1:
            raise AttrboundError(
                f"the model must output logits shaped [B, K], got [B, {self.out_shape}].")
        self.users: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for a in node.args:
                self.users[a].append(i)
        #: nodes bounded by back-substitution: pre-activations (inputs of act and max nodes)
        self.tight = sorted({a for i, nd in enumerate(self.nodes) if nd.kind in ("act", "max")
                             for a in nd.args if self.nodes[a].kind not in ("input", "act")})
        self._check(model, x64)

    def _convert(self, gm: fx.GraphModule, n: fx.Node, index: dict[fx.Node, int],
                 shape: tuple[int, ...], device: torch.device) -> Node | int:
        """The Node for fx node n, or the index of the node it is equal to (no-ops)."""
        if n.op == "placeholder":
            if self.nodes:
                raise _unsupported(n, "a second input")
            if self._normalisation is None:
                return Node("input", (), shape, name=n.name)
            mean, std = (torch.broadcast_to(t[0], shape).clone() for t in self._normalisation)
            one = torch.ones(shape, dtype=torch.float64, device=device)
            self.nodes += [Node("input", (), shape, name="x"),
                           Node("affine", (0,), shape, Elementwise(one, -mean, shape, "x - mean"),
                                name="x - mean")]
            return Node("affine", (1,), shape,
                        Elementwise(1 / std, torch.zeros_like(one), shape, "/ std"), name="/ std")
        if n.op not in ("call_module", "call_function", "call_method"):
            raise _unsupported(n, f"{n.op} {n.target}: a constant used as a tensor")
        tensor_args = [a for a in n.args if isinstance(a, fx.Node) and a in index]
        if n.op == "call_module":
            m = gm.get_submodule(str(n.target))
            return self._module(m, n, index, shape, device)
        target = n.target
        if n.op == "call_function" and target is operator.getitem:
            raise _unsupported(n, "indexing")
        if target in _CAT:
            parts = n.args[0]
            if not isinstance(parts, (list, tuple)) or not all(
                    isinstance(p, fx.Node) and p in index for p in parts):
                raise _unsupported(n, "cat of constants")
            dim = int(_arg(n, 1, "dim", 0)) % (len(shape) + 1)
            if dim == 0:
                raise _unsupported(n, "cat along the batch")
            return Node("cat", tuple(index[p] for p in parts), shape, dim=dim, name=n.name)
        src = index[tensor_args[0]] if tensor_args else None
        if src is None:
            raise _unsupported(n, f"{target}: no input-dependent tensor argument")
        ins = self.nodes[src].shape
        if target in _ADD | _SUB | _MUL | _DIV | _NEG:
            op = self._constant_op(n, target, index, ins, shape)
            if op is not None:
                return Node("affine", (src,), shape, op, name=n.name)
        if target in _ADD:
            others = [a for a in n.args[1:2] if isinstance(a, fx.Node) and a in index]
            if len(others) != 1 or n.kwargs.get("alpha", 1) != 1:
                raise _unsupported(n, "add with alpha, or a constant broadcasting the tensor "
                                   "to a larger shape")
            b = index[others[0]]
            if self.nodes[b].shape != ins or ins != shape:
                raise _unsupported(n, "add with broadcasting")
            return Node("add", (src, b), shape, name=n.name)
        if target in _RESHAPE:
            return src if ins == shape else Node("affine", (src,), shape, Reshape(ins, shape),
                                                 name=n.name)
        if target in _SKIP:
            return src
        if target in _DETACH:
            raise _unsupported(n, "detach: the model's gradient does not flow through it, and "
                               "the gradient pass has no such node")
        if target in (F.dropout, "dropout"):
            if _arg(n, 2, "training", True) and _arg(n, 1, "p", 0.5) > 0:
                raise AttrboundError(f"node {n.name} (dropout) runs in training mode; "
                                     "call model.eval().")
            return src
        mod = self._functional(n, target)
        if mod is not None:
            return self._module(mod, n, index, shape, device)
        layer = self._layer(n, target, index, ins)
        if layer is not None:
            return self._module(layer, n, index, shape, device, source=tensor_args[0])
        if target in (torch.mean, "mean"):
            dims = _arg(n, 1, "dim", None)
            if dims is None:
                raise _unsupported(n, "a mean over the batch")
            dims = (dims,) if isinstance(dims, int) else tuple(dims)
            if any(d % (len(ins) + 1) == 0 for d in dims):
                raise _unsupported(n, "a mean over the batch")
            op = Mean(dims, bool(_arg(n, 2, "keepdim", False)), ins)
            return Node("affine", (src,), shape, op, name=n.name)
        if target is F.adaptive_avg_pool2d:
            op = AdaptiveAvgPool2d(_arg(n, 1, "output_size", None), ins, device)
            return Node("affine", (src,), shape, op, name=n.name)
        name = getattr(target, "__name__", str(target))
        raise _unsupported(n, f"function {name}")

    def _constant_op(self, n: fx.Node, target: Any, index: dict[fx.Node, int],
                     ins: tuple[int, ...], shape: tuple[int, ...]) -> Elementwise | None:
        """The op of a tensor + - * / a constant (or -tensor), or None when both operands
        depend on the input (two-tensor add: a graph node; other products are refused)."""
        if target in _NEG:
            one = torch.ones(ins, dtype=torch.float64, device=self._device)
            return Elementwise(-one, torch.zeros_like(one), ins, n.name)
        args = list(n.args[:2])
        if len(args) != 2 or n.kwargs.get("alpha", 1) != 1 or ins != shape:
            return None
        first = isinstance(args[0], fx.Node) and args[0] in index
        second = isinstance(args[1], fx.Node) and args[1] in index
        if first == second:
            return None
        k = self._constant(n, args[1] if first else args[0], shape)
        one = torch.ones(shape, dtype=torch.float64, device=k.device)
        if target in _ADD:
            return Elementwise(one, k, ins, n.name)
        if target in _SUB:
            return Elementwise(one, -k, ins, n.name) if first else Elementwise(-one, k, ins,
                                                                                n.name)
        if target in _MUL:
            return Elementwise(k, torch.zeros_like(one), ins, n.name)
        if not first:
            raise _unsupported(n, "a constant divided by a tensor")
        if (k == 0).any():
            raise _unsupported(n, "a division by a constant with zeros")
        return Elementwise(1 / k, torch.zeros_like(one), ins, n.name)

    def _constant(self, n: fx.Node, arg: Any, shape: tuple[int, ...]) -> Tensor:
        """A constant operand (number, parameter or buffer) broadcast to one example's shape
        (float64); a constant with its own batch dimension other than 1 is refused."""
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return torch.full(shape, float(arg), dtype=torch.float64, device=self._device)
        if isinstance(arg, fx.Node) and arg in self.consts:
            k = self.consts[arg]
            if k.dim() == len(shape) + 1:
                if k.shape[0] != 1:
                    raise _unsupported(n, "a constant with a batch dimension")
                k = k[0]
            try:
                return torch.broadcast_to(k, shape).clone()
            except RuntimeError:
                raise _unsupported(n, f"a constant shaped {tuple(k.shape)} that does not "
                                   f"broadcast to {shape}") from None
        raise _unsupported(n, "an operand that is neither the input's tensor nor a constant")

    @staticmethod
    def _functional(n: fx.Node, target: Any) -> nn.Module | None:
        """The nn.Module equal to a functional call, or None."""
        if target in _RELU:
            return nn.ReLU()  # in place or not: aliasing.py has checked the write
        if target in (torch.tanh, F.tanh, "tanh"):
            return nn.Tanh()
        if target in (torch.sigmoid, F.sigmoid, "sigmoid"):
            return nn.Sigmoid()
        if target is F.softplus:
            return nn.Softplus(_arg(n, 1, "beta", 1.0), _arg(n, 2, "threshold", 20.0))
        if target is F.elu:
            return nn.ELU(_arg(n, 1, "alpha", 1.0))
        if target is F.leaky_relu:
            return nn.LeakyReLU(_arg(n, 1, "negative_slope", 0.01))
        if target is F.gelu:
            return nn.GELU(approximate=n.kwargs.get("approximate", "none"))
        if target in (F.silu, "silu"):
            return nn.SiLU()
        if target is F.relu6:
            return nn.ReLU6()
        if target is F.hardtanh:
            return nn.Hardtanh(_arg(n, 1, "min_val", -1.0), _arg(n, 2, "max_val", 1.0))
        if target in (F.max_pool2d, torch.max_pool2d):
            return nn.MaxPool2d(_arg(n, 1, "kernel_size", None), _arg(n, 2, "stride", None),
                                _arg(n, 3, "padding", 0), _arg(n, 4, "dilation", 1),
                                _arg(n, 6, "return_indices", False), _arg(n, 5, "ceil_mode",
                                                                          False))
        if target is F.avg_pool2d:
            return nn.AvgPool2d(_arg(n, 1, "kernel_size", None), _arg(n, 2, "stride", None),
                                _arg(n, 3, "padding", 0), _arg(n, 4, "ceil_mode", False),
                                _arg(n, 5, "count_include_pad", True),
                                _arg(n, 6, "divisor_override", None))
        return None

    def _layer(self, n: fx.Node, target: Any, index: dict[fx.Node, int],
               ins: tuple[int, ...]) -> nn.Module | None:
        """The layer equal to a functional conv2d, linear or batch_norm of the first argument
        with constant weights (the model's parameters and buffers), or None for other
        targets; weights that depend on the input, or batch_norm in training mode, are one
        sentence."""
        if target not in (F.conv2d, F.linear, F.batch_norm):
            return None
        if any(isinstance(a, fx.Node) and a in index for a in list(n.args[1:]) +
               list(n.kwargs.values())):
            raise _unsupported(n, f"{target.__name__} with weights that depend on the input")

        def const(i: int, key: str) -> Tensor | None:
            a = _arg(n, i, key, None)
            if a is None:
                return None
            if not (isinstance(a, fx.Node) and a in self.consts):
                raise _unsupported(n, f"{target.__name__} whose {key} is not a parameter or "
                                   "buffer of the model")
            return self.consts[a]

        def fixed(m: nn.Module, **tensors: Tensor | None) -> nn.Module:
            for name, t in tensors.items():  # the module was built on "meta": no weights yet
                if isinstance(getattr(m, name, None), nn.Parameter) or t is None:
                    setattr(m, name, None if t is None else nn.Parameter(t, False))
                else:
                    setattr(m, name, t)
            return m

        meta = {"device": "meta", "dtype": torch.float64}
        if target is F.conv2d:
            w, b = const(1, "weight"), const(2, "bias")
            if w is None or w.dim() != 4:
                raise _unsupported(n, "conv2d without a 4-d weight")
            stride, padding = _arg(n, 3, "stride", 1), _arg(n, 4, "padding", 0)
            dilation, groups = _arg(n, 5, "dilation", 1), int(_arg(n, 6, "groups", 1))
            if isinstance(padding, str):
                raise _unsupported(n, f"conv2d with padding={padding!r}")
            conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride,
                             padding, dilation, groups, bias=b is not None, **meta)
            return fixed(conv, weight=w, bias=b)
        if target is F.linear:
            w, b = const(1, "weight"), const(2, "bias")
            if w is None or w.dim() != 2:
                raise _unsupported(n, "linear without a 2-d weight")
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, **meta)
            return fixed(lin, weight=w, bias=b)
        if bool(_arg(n, 5, "training", False)):
            raise AttrboundError(f"node {n.name} (batch_norm) runs in training mode; "
                                 "call model.eval() before exporting or bounding it.")
        mean, var = const(1, "running_mean"), const(2, "running_var")
        w, b = const(3, "weight"), const(4, "bias")
        if mean is None or var is None or len(ins) not in (1, 3):
            raise _unsupported(n, "batch_norm without running statistics, or of a tensor "
                               "that is not [B, C] or [B, C, H, W]")
        kind = nn.BatchNorm2d if len(ins) == 3 else nn.BatchNorm1d
        affine = w is not None or b is not None
        bn = kind(mean.numel(), eps=float(_arg(n, 7, "eps", 1e-5)), affine=affine,
                  **meta).eval()
        if affine:  # the missing one of weight and bias is its identity value
            w = torch.ones_like(mean) if w is None else w
            b = torch.zeros_like(mean) if b is None else b
        return fixed(bn, weight=w, bias=b, running_mean=mean, running_var=var)

    def _module(self, m: nn.Module, n: fx.Node, index: dict[fx.Node, int],
                shape: tuple[int, ...], device: torch.device,
                source: fx.Node | None = None) -> Node | int:
        """The Node of module m applied to n's one tensor argument (or to ``source``, the
        input of a functional layer whose other arguments are its weights)."""
        args = [a for a in n.args if isinstance(a, fx.Node)] if source is None else [source]
        if len(args) != 1 or args[0] not in index:
            raise _unsupported(n, f"{type(m).__name__} of {len(args)} tensors")
        src = index[args[0]]
        ins = self.nodes[src].shape
        if isinstance(m, nn.MaxPool2d):
            if m.ceil_mode or m.return_indices or len(ins) != 3:
                raise _unsupported(n, "MaxPool2d with ceil_mode or return_indices")
            op = MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ins, n.name)
            return Node("max", (src,), shape, op, name=n.name)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return Node("affine", (src,), shape, AdaptiveAvgPool2d(m.output_size, ins, device),
                        name=n.name)
        build = lookup(m)
        if build is None:
            raise _unsupported(n, f"module {type(m).__name__}")
        try:
            op = build(m, ins, device, n.name)
        except (RuntimeError, IndexError) as exc:
            raise AttrboundError(f"node {n.name} ({type(m).__name__}) does not accept inputs "
                                 f"shaped {ins} ({first_line(exc)}).") from None
        if op is None:
            return src
        if isinstance(op, AffineOp):
            return Node("affine", (src,), tuple(op.out_shape), op, name=n.name)
        assert isinstance(op, Activation)
        return Node("act", (src,), ins, op, name=n.name, fn=m)

    def evaluate(self, x: Tensor) -> Tensor:
        """The graph's float64 forward pass on x [B, *S] (the check against the model)."""
        vals: list[Tensor] = []
        for node in self.nodes:
            a = [vals[i] for i in node.args]
            if node.kind == "input":
                v = x
            elif node.kind == "affine":
                v = node.op.forward(a[0])
            elif node.kind == "act":
                v = node.fn(a[0].clone())
            elif node.kind == "max":
                v = node.op.forward(a[0])
            elif node.kind == "add":
                v = a[0] + a[1]
            else:
                v = torch.cat(a, dim=node.dim)
            vals.append(v)
        return vals[-1]

    def _check(self, model: nn.Module, x64: Tensor) -> None:
        with torch.no_grad():
            ref = model(x64)
            got = self.evaluate(x64)
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-9,
                                                        atol=1e-9 * max(scale, 1e-300)):
            raise AttrboundError(
                "the interval method traced a graph that does not reproduce the model's "
                "logits (an in-place write on a shared tensor, or an operation fx records "
                "differently); use an nn.Sequential or a forward of the supported operations."
            )

    def ancestors(self, j: int) -> list[int]:
        """Node j and every node it depends on, in decreasing order."""
        seen = {j}
        stack = [j]
        while stack:
            for a in self.nodes[stack.pop()].args:
                if a not in seen:
                    seen.add(a)
                    stack.append(a)
        return sorted(seen, reverse=True)

    def size(self, i: int) -> int:
        return math.prod(self.nodes[i].shape)
