"""The TorchFunctionMode that follows the input through one forward pass.

:class:`Tracer` sees every torch operation a forward pass calls (functions, Tensor methods,
``torch.ops.aten`` ops of exported graphs) and keeps track of which tensors depend on the
input: the input does, and so does every tensor an operation computes from an
input-dependent tensor, or writes into in place (and that tensor's base, for a view).
Operations on parameters, buffers and constants only are passed through unrecorded.

On input-dependent values it records (``beta`` None) or also replaces by its smooth
counterpart (``beta`` > 0, :data:`attrbound.smooth_ops.OPS`) each piecewise-linear
operation. A comparison a > b of input-dependent values is a mask: used as values (the
condition of ``where``, ``masked_fill``, a factor of ``mul``, a cast to floats, x[m] = v) it is
piecewise and gets the gate sigmoid(beta (a - b)) (logical not / and / or / xor of masks
combine their gates, moving a mask around keeps it); used for control flow only (``any``,
``all``, ``bool``, a shape) it is not. Operations that are piecewise with no smooth
counterpart (sort, topk, median, rounding, sign, fmod, hardshrink, a mask from == used as
values, and any other use of a mask) are recorded as unsupported, and refused with an error
when replacing. When replacing, the real ops kept only for their masks or indices run unseen
by the modes below (an inspection of a surrogate sees only the surrogate's function).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from attrbound.errors import AttrboundError
from attrbound.smooth_ops import OPS, gate, hidden, write_back

__all__ = ["Tracer", "tensors"]

T = torch.Tensor


def _name(func: Any) -> str:
    """The op's name without underscores around it ("__gt__" -> "gt")."""
    if isinstance(func, torch._ops.OpOverload):
        return func.overloadpacket.__name__.strip("_")
    return str(getattr(func, "__name__", repr(func))).strip("_")


def _key(func: Any) -> Any:
    return func.overloadpacket if isinstance(func, torch._ops.OpOverload) else func


def _table(names: Iterable[str], *owners: Any) -> set[Any]:
    """Every op called ``name`` on torch, Tensor, torch.nn.functional and aten."""
    ops: set[Any] = set()
    for n in names:
        for owner in owners:
            op = getattr(owner, n, None)
            if op is not None:
                ops.add(op)
    return ops


_OWNERS = (torch, T, torch.nn.functional, torch.ops.aten)
UNSUPPORTED = _table(
    ("hardshrink", "sort", "msort", "topk", "kthvalue", "median", "nanmedian", "quantile",
     "nanquantile", "mode", "cummax", "cummin", "sign", "sgn", "heaviside", "floor", "ceil",
     "round", "trunc", "fix", "frac", "fmod", "remainder", "__mod__", "__rmod__",
     "floor_divide", "__floordiv__", "__rfloordiv__", "fractional_max_pool2d",
     "fractional_max_pool3d"),
    *_OWNERS,
)
#: comparison -> True (a > b: gate sigmoid(beta (a - b))), False (a < b), None (no gate: ==)
COMPARISONS: dict[Any, bool | None] = {
    **dict.fromkeys(_table(("gt", "ge", "greater", "greater_equal", "__gt__", "__ge__"),
                           *_OWNERS), True),
    **dict.fromkeys(_table(("lt", "le", "less", "less_equal", "__lt__", "__le__"),
                           *_OWNERS), False),
    **dict.fromkeys(_table(("eq", "ne", "not_equal", "__eq__", "__ne__", "isclose"),
                           *_OWNERS), None),
}
LOGICAL = {
    **dict.fromkeys(_table(("logical_not", "bitwise_not", "__invert__"), *_OWNERS), "not"),
    **dict.fromkeys(_table(("logical_and", "bitwise_and", "__and__", "__rand__"), *_OWNERS),
                    "and"),
    **dict.fromkeys(_table(("logical_or", "bitwise_or", "__or__", "__ror__"), *_OWNERS), "or"),
    **dict.fromkeys(_table(("logical_xor", "bitwise_xor", "__xor__", "__rxor__"), *_OWNERS),
                    "xor"),
}
#: ops that use a mask as values: how to read their arguments
GATED = {
    torch.where: "where", torch.ops.aten.where: "where", T.where: "where_method",
    **dict.fromkeys(_table(("masked_fill",), *_OWNERS), "masked_fill"),
    T.masked_fill_: "masked_fill_",
    **dict.fromkeys(_table(("mul", "multiply", "__mul__", "__rmul__"), *_OWNERS), "mul"),
    **dict.fromkeys(_table(("mul_", "__imul__"), T), "mul_"),
    **dict.fromkeys(_table(("float", "double", "half", "bfloat16", "to", "type", "type_as",
                            "_to_copy"), T, torch.ops.aten), "cast"),
    T.__setitem__: "setitem",
}
#: ops that move a mask's entries around without changing them
STRUCTURAL = {
    "getitem", "view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "permute",
    "transpose", "flatten", "unflatten", "contiguous", "clone", "repeat", "broadcast_to", "t",
    "movedim", "narrow", "select", "slice", "detach", "alias", "unsafe_view",
}
_INPLACE_DUNDERS = {
    "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
    "__imatmul__",
}


def tensors(obj: Any, out: list[Tensor] | None = None) -> list[Tensor]:
    """The tensors in obj (nested tuples, lists and dict values)."""
    out = [] if out is None else out
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            tensors(o, out)
    return out


def _mutates(func: Any, kwargs: dict[str, Any]) -> bool:
    if "out" in kwargs or kwargs.get("inplace") is True:
        return True
    if isinstance(func, torch._ops.OpOverload):
        return bool(func._schema.is_mutable)
    name = getattr(func, "__name__", "")
    return name in _INPLACE_DUNDERS or (name.endswith("_") and not name.endswith("__"))


@dataclass
class _Mask:
    ref: weakref.ref
    name: str  # the comparison it came from
    gateable: bool
    gate: Tensor | None  # sigmoid(beta (a - b)), when smoothing


class Tracer(TorchFunctionMode):
    """Follows input-dependent tensors through a forward pass; records (beta None) or also
    replaces (beta > 0) each piecewise-linear operation applied to them."""

    def __init__(self, inputs: Iterable[Tensor], beta: float | None) -> None:
        super().__init__()
        self.beta = beta
        self.smoothed: dict[str, None] = {}  # ordered sets of op names
        self.unsupported: dict[str, None] = {}
        self._live: dict[int, weakref.ref] = {}
        self._masks: dict[int, _Mask] = {}
        for t in inputs:
            self.mark(t)

    # -- bookkeeping -----------------------------------------------------------------------

    def _forget(self, table: dict[int, Any], key: int) -> Any:
        def drop(ref: weakref.ref) -> None:
            entry = table.get(key)
            if entry is ref or getattr(entry, "ref", None) is ref:
                del table[key]

        return drop

    def mark(self, t: Tensor) -> None:
        """Record t as input-dependent."""
        if id(t) in self._masks:
            del self._masks[id(t)]
        self._live[id(t)] = weakref.ref(t, self._forget(self._live, id(t)))

    def is_live(self, t: Tensor) -> bool:
        ref = self._live.get(id(t))
        return ref is not None and ref() is t

    def mask(self, t: Tensor) -> _Mask | None:
        m = self._masks.get(id(t))
        return m if m is not None and m.ref() is t else None

    def _add_mask(self, t: Any, name: str, gateable: bool, g: Tensor | None) -> None:
        if isinstance(t, Tensor):
            self._live.pop(id(t), None)
            ref = weakref.ref(t, self._forget(self._masks, id(t)))
            self._masks[id(t)] = _Mask(ref, name, gateable, g)

    def _refuse(self, what: str) -> None:
        self.unsupported[what] = None
        if self.beta is not None:
            raise AttrboundError(
                f"the model applies {what} to input-dependent values; it is piecewise but has "
                "no smooth counterpart in attrbound's surrogate, so derivative-based methods "
                "cannot be used on this model (use bound method 'interval' or attack method "
                "'random', or write it with relu / clamp / max-pool)."
            )

    # -- the mode --------------------------------------------------------------------------

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        given = tensors((args, kwargs))
        live = [t for t in given if self.is_live(t)]
        masks = [(t, m) for t in given if (m := self.mask(t)) is not None]
        if not live and not masks:
            return func(*args, **kwargs)
        key = _key(func)
        if masks:
            out = self._on_mask(func, key, args, kwargs, masks)
        else:
            out = self._on_live(func, key, args, kwargs, live)
        if _mutates(func, kwargs):
            for t in tensors((args[:1], kwargs.get("out"))):
                if self.mask(t) is None:
                    self.mark(t)
                    base = getattr(t, "_base", None)
                    if base is not None:
                        self.mark(base)
        for t in tensors(out):
            if self.mask(t) is None:
                self.mark(t)
        return out

    def _on_live(self, func: Any, key: Any, args: Any, kwargs: Any, live: list[Tensor]) -> Any:
        op = OPS.get(key)
        if (op is not None and any(t.is_floating_point() for t in live)
                and (op.applies is None or op.applies(args, kwargs))):
            self.smoothed[op.name] = None
            if self.beta is None:
                return func(*args, **kwargs)
            try:
                return op.handler(self.beta, *args, **kwargs)
            except NotImplementedError as exc:
                self._refuse(str(exc))
        if key in COMPARISONS:
            out = self._real(func, args, kwargs)
            greater = COMPARISONS[key]
            floating = any(t.is_floating_point() for t in live)
            gateable = greater is not None and floating
            g = None
            if gateable and self.beta is not None:
                other = kwargs.get("other", args[1] if len(args) > 1 else None)
                g = gate(args[0], other, greater, self.beta)
            self._add_mask(out, _name(func), gateable, g)
            return out
        if key in UNSUPPORTED and any(t.is_floating_point() for t in live):
            self._refuse(_name(func))
        return func(*args, **kwargs)

    def _real(self, func: Any, args: Any, kwargs: Any) -> Any:
        """The original op; when smoothing, unseen by the modes below this one (its mask is
        bookkeeping of the surrogate, not an operation of the surrogate's function)."""
        return func(*args, **kwargs) if self.beta is None else hidden(func, *args, **kwargs)

    def _on_mask(self, func: Any, key: Any, args: Any, kwargs: Any, masks: list) -> Any:
        mask_t, first = masks[0]
        kind = GATED.get(key)
        if key in LOGICAL:
            out = self._real(func, args, kwargs)
            gates = [(self.mask(t), t) for t in tensors((args, kwargs))]
            gateable = all(m is None or m.gateable for m, _ in gates)
            g = None
            if gateable and self.beta is not None:
                vals = [m.gate if m is not None else t.to(first.gate) for m, t in gates]
                g = _combine(LOGICAL[key], vals)
            self._add_mask(out, first.name, gateable, g)
            return out
        gated = (kind is not None and len(masks) == 1 and first.gateable
                 and _gated_fits(kind, mask_t, args, kwargs))
        if gated and kind != "cast":
            self.smoothed[f"{first.name} (as a mask)"] = None
            if self.beta is None:
                return func(*args, **kwargs)
            out = hidden(func, *args, **kwargs) if kind in ("where", "where_method") else None
            return _gated(kind, first.gate, mask_t, out, args, kwargs)
        out = self._real(func, args, kwargs)
        outs = tensors(out)
        if not outs:
            return out  # only control flow: (x < 0).any() in an if, a shape, an item
        if gated and outs[0].is_floating_point():  # a cast to values
            self.smoothed[f"{first.name} (as a mask)"] = None
            return out if self.beta is None else _gated(kind, first.gate, mask_t, out, args, kwargs)
        moved = _name(func) in STRUCTURAL or kind == "cast"
        if moved and args and args[0] is mask_t and len(outs) == 1:
            g = None
            if first.gateable and self.beta is not None:
                g = func(first.gate, *args[1:], **kwargs) if kind != "cast" else first.gate
            self._add_mask(outs[0], first.name, first.gateable, g)
            return out
        if _name(func) in ("any", "all") and len(outs) == 1:
            self._add_mask(outs[0], first.name, False, None)
            return out
        self._refuse(f"{_name(func)} of a {first.name} mask")
        return out

    def outputs_live(self, out: Any) -> bool:
        return any(self.is_live(t) or self.mask(t) is not None for t in tensors(out))


def _combine(kind: str, gates: list[Tensor]) -> Tensor:
    if kind == "not":
        return 1 - gates[0]
    a, b = gates[0], gates[1]
    if kind == "and":
        return a * b
    if kind == "or":
        return a + b - a * b
    return a + b - 2 * a * b


def _gated_fits(kind: str, mask: Tensor, args: Any, kwargs: Any) -> bool:
    """Whether the mask stands where the op reads a mask (the condition of where, ...)."""
    position = {"where": 0, "where_method": 1, "masked_fill": 1, "masked_fill_": 1,
                "setitem": 1, "cast": 0, "mul_": 1}.get(kind)
    if position is None:  # mul: either factor
        return any(a is mask for a in args[:2]) or kwargs.get("other") is mask
    return len(args) > position and args[position] is mask


def _gated(kind: str, g: Tensor, mask: Tensor, out: Any, args: Any, kwargs: Any) -> Any:
    """The smooth value of a gated op: the mask replaced by its gate g."""
    if kind == "cast":
        return g.to(dtype=out.dtype, device=out.device)
    if kind in ("where", "where_method"):
        if kind == "where":
            a = args[1] if len(args) > 1 else kwargs.get("input")
            b = args[2] if len(args) > 2 else kwargs.get("other")
        else:
            a = args[0]
            b = args[2] if len(args) > 2 else kwargs.get("other")
        return (g * a + (1 - g) * b).to(out.dtype)
    if kind in ("masked_fill", "masked_fill_", "setitem"):
        x, value = args[0], (args[2] if len(args) > 2 else kwargs.get("value"))

        def fill(z: Tensor) -> Tensor:
            return (g * value + (1 - g) * z).to(z.dtype)

        if kind == "masked_fill":
            return fill(x)
        write_back(x, fill)
        return x if kind == "masked_fill_" else None
    factors = [a for a in (*args[:2], kwargs.get("other")) if a is not None]
    other = [a for a in factors if a is not mask][0] if len(factors) > 1 else 1.0
    if kind == "mul_":
        return write_back(args[0], lambda z: z * g)
    return g * other
