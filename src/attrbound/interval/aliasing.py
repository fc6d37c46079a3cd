"""In-place writes in a traced graph: accepted only where no later reader could see them.

The DAG computes every node out of place: an in-place op (``h.add_(y)``, ``out += y``,
``relu_``, ``nn.ReLU(inplace=True)``, ``F.relu(h, inplace=True)``) becomes a node whose value
is the written tensor. In the model the write lands in the storage of its first argument T,
which every alias of T shares: T's base and every view of it (view, reshape, flatten,
transpose, indexing, detach, contiguous, Identity, eval-mode Dropout; an in-place op returns
its argument too). A member of that alias class read after the write sees the written value
in the model but the old one in the DAG, and the logits check at x need not notice (a ReLU
written in place through a view is the identity at x when its units are positive there).

So a write is refused unless no member of T's alias class that exists before it is read
after it: the write must be the last use of that storage apart from its own result. Asking for
a shape (``size``, ``dim``, ``.shape``) reads no values and does not count. A write into the
model's input is refused too (it would change the caller's tensor and the point the bound is
centred at). The check is conservative (a reshape that copies counts as a view; so does
eval-mode dropout, which returns its input and writes nothing even with ``inplace=True``) and
needs no shapes.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from attrbound.errors import AttrboundError

__all__ = ["check_in_place_writes", "is_shape_query"]

#: methods and functions whose result may share its first argument's storage
_VIEWS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose",
    "permute", "squeeze", "unsqueeze", "expand", "expand_as", "contiguous", "detach", "t",
    "narrow", "select", "split", "chunk", "unbind", "as_strided", "diagonal", "movedim",
    "swapaxes", "swapdims", "getitem", "__getitem__", "alias", "real", "imag",
})
#: eval-mode dropout returns its input (aten's schema does not say so) and writes nothing
_DROPOUTS = frozenset({"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
                       "dropout1d", "dropout2d", "dropout3d"})
#: reads of a tensor's shape, not of its values
_SHAPE_QUERIES = frozenset({"size", "dim", "ndimension", "sym_size", "numel"})
_AUGMENTED = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d,
                 nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _name(target: Any) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverload):
        return target.__name__.split(".")[0]
    return getattr(target, "__name__", "")


def _inplace_flag(n: fx.Node) -> bool:
    """``inplace=True`` passed to a function that takes it (F.relu, F.leaky_relu, ...)."""
    if n.kwargs.get("inplace") is True:
        return True
    try:
        params = list(inspect.signature(n.target).parameters)
    except (TypeError, ValueError):
        return False
    if "inplace" in params and len(n.args) > params.index("inplace"):
        return n.args[params.index("inplace")] is True
    return False


def _writes(n: fx.Node, gm: fx.GraphModule) -> bool:
    """n writes into the storage of its first argument."""
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        return bool(getattr(m, "inplace", False)) and not isinstance(m, _VIEW_MODULES)
    if n.op == "call_method":
        name = str(n.target)
        return name in ("__iadd__", "__isub__", "__imul__", "__itruediv__") or (
            name.endswith("_") and not name.endswith("__"))
    if n.op != "call_function":
        return False
    if n.target in _AUGMENTED:
        return True
    if _name(n.target).rstrip("_") in _DROPOUTS:
        return False
    if isinstance(n.target, torch._ops.OpOverload):
        args = n.target._schema.arguments
        return bool(args) and args[0].alias_info is not None and args[0].alias_info.is_write
    return _name(n.target).endswith("_") or _inplace_flag(n)


def _aliases(n: fx.Node, gm: fx.GraphModule) -> bool:
    """n's result may share the storage of its first argument (a view or an in-place op)."""
    if _writes(n, gm):
        return True
    if n.op == "call_module":
        return isinstance(gm.get_submodule(str(n.target)), _VIEW_MODULES)
    if n.op not in ("call_method", "call_function"):
        return False
    if isinstance(n.target, torch._ops.OpOverload):
        rets = n.target._schema.returns
        if bool(rets) and rets[0].alias_info is not None:
            return True
    name = _name(n.target)
    return name in _VIEWS or name.rstrip("_") in _DROPOUTS


def is_shape_query(n: fx.Node) -> bool:
    """n asks for its argument's shape (``size``, ``dim``, ``.shape``, aten's ``sym_size``),
    not for its values."""
    if n.op in ("call_method", "call_function") and _name(n.target) in _SHAPE_QUERIES:
        return True
    return (n.op == "call_function" and n.target is getattr and len(n.args) > 1
            and n.args[1] in ("shape", "ndim", "dtype", "device"))


def _first_node(n: fx.Node) -> fx.Node | None:
    first = n.args[0] if n.args else None
    if isinstance(first, (list, tuple)):  # split / chunk outputs are read through getitem
        first = first[0] if first else None
    return first if isinstance(first, fx.Node) else None


def check_in_place_writes(gm: fx.GraphModule) -> None:
    """Raise one sentence for the first in-place write of ``gm`` that a later node could
    read through another alias of the written storage (module docstring)."""
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    root: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        first = _first_node(n)
        root[n] = root.get(first, first) if first is not None and _aliases(n, gm) else n
    for n in nodes:
        target = _first_node(n)
        if target is None or not _writes(n, gm):
            continue
        base, at = root[target], order[n]
        if base.op == "placeholder":
            raise AttrboundError(
                f"node {n.name} writes in place into the model's input; the interval method "
                "bounds the model around the caller's x: write that op out of place "
                "(x = x - mean).")
        for member in nodes[:at]:
            if root[member] is not base:
                continue
            late = [u for u in member.users if order[u] > at and not is_shape_query(u)]
            if late:
                raise AttrboundError(
                    f"node {n.name} writes in place into {target.name}, whose storage "
                    f"{late[0].name} reads again after the write; the interval method "
                    "computes every node out of place: write that op out of place "
                    "(torch.relu(h), out = out + y).")
