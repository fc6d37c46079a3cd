"""Smooth counterparts of piecewise-linear operations, at inverse temperature beta > 0.

With sp(z) = softplus(beta z) / beta (``F.softplus(z, beta)``, whose threshold 20 returns z
itself where beta z > 20, as ``nn.Softplus`` does), each replacement and its distance to the
original, pointwise for every z:

- ``relu(z)`` -> sp(z);  0 <= sp(z) - relu(z) <= log(2)/beta.
- ``clamp(z, lo, hi)`` (also ``clip``, ``hardtanh``, ``relu6`` = clamp(z, 0, 6)) ->
  lo + sp(z - lo) - sp(z - hi), which stays inside [lo, hi]; |error| <= log(2)/beta. One-sided:
  lo + sp(z - lo) or hi - sp(hi - z), error in [0, log(2)/beta]. lo >= hi is torch's constant hi.
- ``leaky_relu(z, a)`` -> a z + (1 - a) sp(z);  |error| <= |1 - a| log(2)/beta. ``prelu`` is
  the same with its weight a per channel (dim 1); ``rrelu`` in eval mode uses its fixed slope
  a = (lower + upper) / 2 (in training mode it is random and refused).
- ``threshold(z, t, v)`` (z where z > t, else v) -> t + sp(z - t) when v = t (exact relu
  form, same bound); for v != t it has a jump of size |t - v|, smoothed by the gate
  v + (z - v) sigmoid(beta (z - t)), error <= 0.28/beta + |t - v| / 2 (at z = t).
- ``hardsigmoid(z)`` = clamp(z + 3, 0, 6) / 6 -> its smooth clamp / 6; error <= log(2)/(6 beta).
  ``hardswish(z)`` = z hardsigmoid(z) -> z times that; error <= |z| log(2)/(6 beta).
- ``abs(z)`` = relu(z) + relu(-z) -> sp(z) + sp(-z) = 2 sp(z) - z;  0 <= error <= 2 log(2)/beta.
  (So (z + |z|) / 2 gets exactly sp(z), the relu replacement.)
- ``softshrink(z, l)`` = relu(z - l) - relu(-z - l) -> sp(z - l) - sp(-z - l); |error| <=
  log(2)/beta.
- ``maximum(a, b)`` -> log(e^{beta a} + e^{beta b}) / beta, error in [0, log(2)/beta];
  ``minimum`` (also ``fmax``/``fmin``, ``max``/``min`` of two tensors) by -max(-a, -b).
- Reductions (``max`` / ``min`` / ``amax`` / ``amin`` over dims) are left as they are: they
  pick among values (a nearest prototype, a global maximum), which leaves the derivative
  nonzero almost everywhere unless the values are piecewise linear themselves (and then the
  ops that make them so are replaced).
- ``max_pool{1,2,3}d`` -> the same smooth maximum over each window: the input is padded with
  -inf (which adds nothing to the sum), cut into the pool's windows (kernel, stride, padding,
  dilation and ceil_mode as torch has them, so the shape is torch's) and reduced by
  logsumexp; error in [0, log(prod kernel)/beta]. With indices, the real max-pool's indices
  are returned.
- ``adaptive_max_pool{1,2,3}d`` -> the smooth maximum over torch's adaptive windows
  [floor(i L / O), ceil((i + 1) L / O)); error in [0, log(largest window)/beta].
- A comparison a > b (or >=) used as a mask -> the gate sigmoid(beta (a - b)) (a < b, <=:
  sigmoid(beta (b - a))); ``where(m, x, y)`` -> g x + (1 - g) y, ``x * m`` -> g x,
  ``masked_fill(m, v)`` -> g v + (1 - g) x, not m -> 1 - g, m1 and m2 -> g1 g2. The error is
  |x - y| sigmoid(-beta |a - b|): small where the original is continuous (x = y where a = b),
  up to |x - y| / 2 at a jump.

Every function takes the original op's arguments (torch's names and defaults) after ``beta``,
and returns what the original returns (a tensor, or a tuple with the real indices). In-place
variants compute from a copy of z and write the result back into z (so code that relies on the
side effect keeps working and autograd keeps the copy it saved).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Number = float | int


def sp(z: Tensor, beta: float) -> Tensor:
    """softplus(beta z) / beta, elementwise (the smooth relu)."""
    return F.softplus(z, beta=beta)


def clamp(z: Tensor, lo: Any, hi: Any, beta: float) -> Tensor:
    """The smooth clamp lo + sp(z - lo) - sp(z - hi) (one-sided when lo or hi is None)."""
    if lo is None and hi is None:
        return z
    if hi is None:
        return lo + sp(z - lo, beta)
    if lo is None:
        return hi - sp(hi - z, beta)
    smooth = lo + sp(z - lo, beta) - sp(z - hi, beta)
    if isinstance(lo, Tensor) or isinstance(hi, Tensor):
        high = torch.as_tensor(hi).to(smooth)
        return torch.where(torch.as_tensor(lo < hi, device=smooth.device), smooth, high)
    return smooth if lo < hi else torch.full_like(z, float(hi))


def leaky(z: Tensor, slope: Any, beta: float) -> Tensor:
    """a z + (1 - a) sp(z) for the slope a (a number or a tensor broadcast against z)."""
    return slope * z + (1 - slope) * sp(z, beta)


def smooth_max(z: Tensor, dims: Sequence[int], keepdim: bool, beta: float) -> Tensor:
    """logsumexp(beta z) / beta over ``dims`` (every dim when empty)."""
    if z.dim() == 0:
        return z
    dims = tuple(dims) if len(dims) else tuple(range(z.dim()))
    return torch.logsumexp(beta * z, dim=dims, keepdim=keepdim) / beta


def gate(a: Any, b: Any, greater: bool, beta: float) -> Tensor:
    """The soft mask of a > b: sigmoid(beta (a - b)); of a < b (``greater`` False):
    sigmoid(beta (b - a))."""
    return torch.sigmoid(beta * torch.as_tensor((a - b) if greater else (b - a)))


def _ntuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(u) for u in v)
    return v * n if len(v) == 1 else v


def max_pool(
    z: Tensor,
    n: int,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    *,
    beta: float,
) -> Tensor:
    """The smooth maximum over each window of max_pool{n}d, in torch's output shape."""
    k = _ntuple(kernel_size, n)
    s = k if stride is None or (isinstance(stride, Sequence) and not stride) else _ntuple(stride, n)
    p, d = _ntuple(padding, n), _ntuple(dilation, n)
    first = z.dim() - n
    pads: list[int] = []
    outs: list[int] = []
    for i in range(n):
        length, span = z.shape[first + i], d[i] * (k[i] - 1) + 1
        room = length + 2 * p[i] - span
        out = (-(-room // s[i]) if ceil_mode else room // s[i]) + 1
        if ceil_mode and (out - 1) * s[i] >= length + p[i]:
            out -= 1  # torch drops a last window that would start in the right padding
        outs.append(out)
        pads = [p[i], max((out - 1) * s[i] + span - length - p[i], p[i]), *pads]
    y = F.pad(z, pads, value=-math.inf)  # F.pad lists the last dim first
    for i in range(n):  # window entries by strided slices (each has a batching rule for vmap)
        cut = [slice(None)] * y.dim()
        parts = []
        for offset in range(k[i]):
            start = offset * d[i]
            cut[first + i] = slice(start, start + (outs[i] - 1) * s[i] + 1, s[i])
            parts.append(y[tuple(cut)])
        y = torch.stack(parts, dim=-1)
    return smooth_max(y, tuple(range(-n, 0)), False, beta)


def adaptive_max_pool(z: Tensor, n: int, output_size: Any, *, beta: float) -> Tensor:
    """The smooth maximum over each window of adaptive_max_pool{n}d."""
    sizes = tuple(output_size) if isinstance(output_size, Sequence) else (output_size,)
    sizes = sizes * n if len(sizes) == 1 else sizes
    first = z.dim() - n
    y = z
    for i in range(n):
        dim, length = first + i, z.shape[first + i]
        out = length if sizes[i] is None else int(sizes[i])
        bounds = [((j * length) // out, -(-((j + 1) * length) // out)) for j in range(out)]
        width = max(e - b for b, e in bounds)
        index = torch.tensor([[min(b + m, e - 1) for m in range(width)] for b, e in bounds],
                             device=z.device)
        valid = torch.tensor([[b + m < e for m in range(width)] for b, e in bounds],
                             device=z.device)
        y = y.index_select(dim, index.flatten()).unflatten(dim, (out, width)).movedim(dim + 1, -1)
        valid = valid.reshape(out, *([1] * (y.dim() - dim - 2)), width)
        y = torch.where(valid, y, -math.inf)
    return smooth_max(y, tuple(range(-n, 0)), False, beta)


# elementwise replacements: fn(z, *the op's parameters, beta=beta)


def relu(z: Tensor, *, beta: float) -> Tensor:
    return sp(z, beta)


def relu6(z: Tensor, *, beta: float) -> Tensor:
    return clamp(z, 0.0, 6.0, beta)


def hardtanh(z: Tensor, min_val: Number = -1.0, max_val: Number = 1.0, *, beta: float) -> Tensor:
    return clamp(z, min_val, max_val, beta)


def clamp_op(z: Tensor, min: Any = None, max: Any = None, *, beta: float) -> Tensor:
    return clamp(z, min, max, beta)


def clamp_min(z: Tensor, min: Any, *, beta: float) -> Tensor:
    return clamp(z, min, None, beta)


def clamp_max(z: Tensor, max: Any, *, beta: float) -> Tensor:
    return clamp(z, None, max, beta)


def leaky_relu(z: Tensor, negative_slope: Number = 0.01, *, beta: float) -> Tensor:
    return leaky(z, negative_slope, beta)


def rrelu(
    z: Tensor,
    lower: Number = 1 / 8,
    upper: Number = 1 / 3,
    training: bool = False,
    generator: Any = None,
    *,
    beta: float,
) -> Tensor:
    if training:
        raise NotImplementedError("rrelu in training mode (its slope is random)")
    return leaky(z, (lower + upper) / 2, beta)


def prelu(z: Tensor, weight: Tensor, *, beta: float) -> Tensor:
    if weight.numel() > 1 and z.dim() >= 2:
        weight = weight.reshape(1, -1, *([1] * (z.dim() - 2)))
    elif weight.numel() == 1:
        weight = weight.reshape(())
    return leaky(z, weight, beta)


def threshold(z: Tensor, threshold: Number, value: Number, *, beta: float) -> Tensor:
    if value == threshold:
        return threshold + sp(z - threshold, beta)
    return value + (z - value) * torch.sigmoid(beta * (z - threshold))


def hardsigmoid(z: Tensor, *, beta: float) -> Tensor:
    return clamp(z + 3.0, 0.0, 6.0, beta) / 6.0


def hardswish(z: Tensor, *, beta: float) -> Tensor:
    return z * hardsigmoid(z, beta=beta)


def absolute(z: Tensor, *, beta: float) -> Tensor:
    return 2.0 * sp(z, beta) - z


def softshrink(z: Tensor, lambd: Number = 0.5, *, beta: float) -> Tensor:
    return sp(z - lambd, beta) - sp(-z - lambd, beta)


# ops with their own argument forms: handler(beta, *the op's arguments)


def maximum(beta: float, input: Tensor, other: Any) -> Tensor:
    if not isinstance(other, Tensor):
        other = torch.as_tensor(other, dtype=input.dtype, device=input.device)
    return torch.logaddexp(beta * input, beta * other) / beta


def minimum(beta: float, input: Tensor, other: Any) -> Tensor:
    return -maximum(beta, -input, -other)


def hidden(func: Any, *args: Any, **kwargs: Any) -> Any:
    """func(*args, **kwargs) unseen by any TorchFunctionMode: the real op's indices (or mask)
    that a smooth replacement returns alongside its values are not operations of the
    surrogate's function, so an inspection of the surrogate must not report them."""
    with torch._C.DisableTorchFunction():
        return func(*args, **kwargs)


_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _pool(n: int, with_indices: Any, indices: bool | None) -> Callable[..., Any]:
    """max_pool{n}d. ``indices``: True for the forms that always return (values, indices)
    (``*_with_indices``), False for those that never do (torch's, aten's), None for the
    functional form (its ``return_indices`` flag)."""

    def handler(beta: float, input: Tensor, *args: Any, **kw: Any) -> Any:
        named = dict(zip(_POOL_ARGS, args, strict=False), **kw)
        flag = bool(named.pop("return_indices", False))
        values = max_pool(input, n, beta=beta, **named)
        if not (indices or (indices is None and flag)):
            return values
        return values, hidden(with_indices, input, **named)[1]

    return handler


def _adaptive(n: int, with_indices: Any, indices: bool | None) -> Callable[..., Any]:
    """adaptive_max_pool{n}d, with ``indices`` as for :func:`_pool`."""

    def handler(beta: float, input: Tensor, output_size: Any, return_indices: bool = False):
        values = adaptive_max_pool(input, n, output_size, beta=beta)
        if not (indices or (indices is None and return_indices)):
            return values
        return values, hidden(with_indices, input, output_size)[1]

    return handler


# ----------------------------------------------------------------------------------------
# handlers: handler(beta, *args, **kwargs) takes the original op's arguments and returns what
# it returns; OPS maps each op (a function, a Tensor method or an aten op packet) to its name
# and handler
# ----------------------------------------------------------------------------------------

Handler = Callable[..., Any]


class Op(NamedTuple):
    """An op's name, its handler, and when given, whether a call is the piecewise-linear form
    (``applies(args, kwargs)``: torch.max(a, b) is, torch.max(a, dim) is not)."""

    name: str
    handler: Handler
    applies: Callable[[tuple[Any, ...], dict[str, Any]], bool] | None = None


OPS: dict[Any, Op] = {}
T = torch.Tensor


def write_back(z: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """The in-place form: fn of a copy of z, written into z; returns z."""
    z.copy_(fn(z.clone()))
    return z


def _aten(*names: str) -> list[Any]:
    return [p for n in names if (p := getattr(torch.ops.aten, n, None)) is not None]


def _register(name: str, handler: Handler, *ops: Any, applies: Any = None) -> None:
    for op in ops:
        if op is not None:
            OPS[op] = Op(name, handler, applies)


def _binary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """torch.max / min against another tensor (not a reduction)."""
    return isinstance(kwargs.get("other", args[1] if len(args) > 1 else None), Tensor)


def _elementwise(fn: Callable[..., Tensor], nparams: int, inplace: bool = False) -> Handler:
    """The handler of op(input, *params[:nparams], [inplace]) smoothed as fn(z, *params, beta):
    ``inplace`` True for the trailing-underscore forms, else read from the op's own flag."""

    def handler(beta: float, input: Tensor, *args: Any, **kw: Any) -> Tensor:
        flag = inplace or bool(kw.pop("inplace", args[nparams] if len(args) > nparams else False))
        params = args[:nparams]

        def smooth(z: Tensor) -> Tensor:
            return fn(z, *params, beta=beta, **kw)

        return write_back(input, smooth) if flag else smooth(input)

    return handler


def _both(name: str, fn: Callable[..., Tensor], nparams: int, out: list[Any], inp: list[Any]):
    _register(name, _elementwise(fn, nparams), *out)
    _register(name, _elementwise(fn, nparams, inplace=True), *inp)


_both("relu", relu, 0, [F.relu, torch.relu, T.relu, *_aten("relu")],
      [torch.relu_, T.relu_, *_aten("relu_")])
_both("relu6", relu6, 0, [F.relu6, *_aten("relu6")], _aten("relu6_"))
_both("hardtanh", hardtanh, 2, [F.hardtanh, *_aten("hardtanh")], [F.hardtanh_, *_aten("hardtanh_")])
_both("leaky_relu", leaky_relu, 1, [F.leaky_relu, *_aten("leaky_relu")],
      [F.leaky_relu_, *_aten("leaky_relu_")])
_both("prelu", prelu, 1, [torch.prelu, T.prelu, *_aten("prelu", "_prelu_kernel")], [])
_both("rrelu", rrelu, 3, [F.rrelu], [])
_both("rrelu", rrelu, 4, [torch.rrelu, *_aten("rrelu")], [torch.rrelu_, *_aten("rrelu_")])
_both("threshold", threshold, 2, [F.threshold, torch.threshold, *_aten("threshold")],
      [torch.threshold_, *_aten("threshold_")])
_both("hardsigmoid", hardsigmoid, 0, [F.hardsigmoid, *_aten("hardsigmoid")], _aten("hardsigmoid_"))
_both("hardswish", hardswish, 0, [F.hardswish, *_aten("hardswish")], _aten("hardswish_"))
_both("abs", absolute, 0, [torch.abs, torch.absolute, T.abs, T.absolute, *_aten("abs", "absolute")],
      [torch.abs_, T.abs_, T.absolute_, *_aten("abs_", "absolute_")])
_both("clamp", clamp_op, 2,
      [torch.clamp, torch.clip, T.clamp, T.clip, *_aten("clamp", "clip")],
      [torch.clamp_, torch.clip_, T.clamp_, T.clip_, *_aten("clamp_", "clip_")])
_both("clamp", clamp_min, 1, [torch.clamp_min, T.clamp_min, *_aten("clamp_min")],
      [torch.clamp_min_, T.clamp_min_, *_aten("clamp_min_")])
_both("clamp", clamp_max, 1, [torch.clamp_max, T.clamp_max, *_aten("clamp_max")],
      [torch.clamp_max_, T.clamp_max_, *_aten("clamp_max_")])
_both("softshrink", softshrink, 1, [F.softshrink, *_aten("softshrink")], [])
_register("maximum", maximum, torch.maximum, T.maximum, torch.fmax, T.fmax,
          *_aten("maximum", "fmax"))
_register("minimum", minimum, torch.minimum, T.minimum, torch.fmin, T.fmin,
          *_aten("minimum", "fmin"))
_register("maximum", maximum, torch.max, T.max, *_aten("max"), applies=_binary)
_register("minimum", minimum, torch.min, T.min, *_aten("min"), applies=_binary)
for _n in (1, 2, 3):
    _with = getattr(F, f"max_pool{_n}d_with_indices")
    _register(f"max_pool{_n}d", _pool(_n, _with, None), getattr(F, f"max_pool{_n}d"))
    _register(f"max_pool{_n}d", _pool(_n, _with, False), getattr(torch, f"max_pool{_n}d", None),
              *_aten(f"max_pool{_n}d"))
    _register(f"max_pool{_n}d", _pool(_n, _with, True), _with,
              *_aten(f"max_pool{_n}d_with_indices"))
    _awith = getattr(F, f"adaptive_max_pool{_n}d_with_indices")
    _register(f"adaptive_max_pool{_n}d", _adaptive(_n, _awith, None),
              getattr(F, f"adaptive_max_pool{_n}d"))
    _register(f"adaptive_max_pool{_n}d", _adaptive(_n, _awith, True), _awith,
              getattr(torch, f"adaptive_max_pool{_n}d", None), *_aten(f"adaptive_max_pool{_n}d"))
