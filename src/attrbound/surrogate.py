"""Piecewise-linear operations: found over one forward pass, smoothed at the operation level.

A network whose forward applies piecewise-linear operations (ReLU, max-pool, clamp, abs, ...)
to its input has a piecewise-constant input gradient, so the derivative of its attribution map
is zero almost everywhere and derivative-based bounds and attacks see nothing (docs/design.md
section 2). Both halves of this module watch the operations a forward pass calls, not the
modules a model holds, so functional calls (``F.relu``, ``torch.relu``, ``x.relu_()``,
``F.max_pool2d``), module calls (``nn.ReLU(inplace=True)``, which call the same functions) and
exported graphs (``torch.export``'s ``module()``, which calls ``torch.ops.aten.*``) are all seen:

- :func:`inspect_model` runs the model once, on one example, under a
  :class:`torch.overrides.TorchFunctionMode` (:class:`attrbound.tracing.Tracer`) that records
  every operation and follows which tensors depend on the input.
- :func:`smooth_surrogate` returns a module whose forward runs the model under the same mode,
  each piecewise-linear operation on input-dependent values replaced by its smooth counterpart
  at inverse temperature beta (the formulas and their distance to the originals are in
  :mod:`attrbound.smooth_ops`). The mode works inside ``torch.func`` transforms (grad, jvp,
  vjp, vmap), which act below it, at the dispatcher.

The rule for "input-dependent": the input is, and so is every tensor an operation computes
from an input-dependent tensor, or writes into in place. An operation on parameters, buffers
and constants only (``self.scale.clamp(min=1e-3)``, ``F.relu(self.weight)``) is smooth in the
input, so it is neither reported nor replaced. A comparison of input-dependent values (a > b)
is a mask; one used as values (``torch.where``, ``masked_fill``, ``x * (x > 0)``, a cast, an
assignment x[m] = v) is piecewise and gets the gate sigmoid(beta (a - b)); a mask used only in
control flow (``if (x < 0).any()``) is not. Reductions (max / min / amax over dims) are not
reported: they pick among values, which leaves the derivative nonzero unless those values are
piecewise linear already. Operations that are piecewise but have no smooth counterpart here
(sort, topk, median, rounding, sign, fmod, hardshrink, a mask from ==) are reported as
unsupported: the surrogate refuses them with an error.

Not seen: operations inside TorchScript modules (refused), integer tensors derived from the
input (argmax, pooling indices) used to index, control flow on input values, and an in-place
write into a view of a tensor made in forward that is then read through another view made
before the write.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attrbound.errors import AttrboundError
from attrbound.tracing import Tracer, tensors

__all__ = [
    "MODULE_OPS", "PIECEWISE_LINEAR", "Inspection", "SmoothSurrogate", "inspect_model",
    "is_piecewise_linear", "smooth_surrogate",
]

#: Modules whose output is piecewise linear in their input (the scan used without an
#: example), with the operation each calls; hardshrink and fractional max-pool have no smooth
#: counterpart.
MODULE_OPS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu",
    nn.RReLU: "rrelu", nn.Hardtanh: "hardtanh", nn.Threshold: "threshold",
    nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Softshrink: "softshrink",
    nn.MaxPool1d: "max_pool1d", nn.MaxPool2d: "max_pool2d", nn.MaxPool3d: "max_pool3d",
    nn.AdaptiveMaxPool1d: "adaptive_max_pool1d", nn.AdaptiveMaxPool2d: "adaptive_max_pool2d",
    nn.AdaptiveMaxPool3d: "adaptive_max_pool3d",
    nn.Hardshrink: "hardshrink", nn.FractionalMaxPool2d: "fractional_max_pool2d",
    nn.FractionalMaxPool3d: "fractional_max_pool3d",
}
_NO_COUNTERPART = (nn.Hardshrink, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)
PIECEWISE_LINEAR = tuple(MODULE_OPS)

#: Modules whose forward is known to be smooth in the input: a plain stack of these (and of
#: PIECEWISE_LINEAR) in nn.Sequential is judged by its modules alone.
SMOOTH_MODULES = (
    nn.Sequential, nn.Identity, nn.Flatten, nn.Unflatten, nn.Linear, nn.Bilinear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Softplus, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Softmax, nn.LogSoftmax, nn.Softmin,
    nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.Upsample,
)

# ----------------------------------------------------------------------------------------
# inspection
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inspection:
    """What one look at a model found.

    ``smoothed``: the piecewise-linear operations it applies to input-dependent values that
    the surrogate replaces (torch names: "relu", "max_pool2d", "clamp", "gt (as a mask)");
    ``unsupported``: piecewise operations on them with no smooth counterpart; ``probed``:
    True when found by a forward pass, False by the module scan.
    """

    smoothed: tuple[str, ...]
    unsupported: tuple[str, ...]
    probed: bool

    @property
    def piecewise_linear(self) -> bool:
        return bool(self.smoothed or self.unsupported)


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Any, Inspection]] = (
    weakref.WeakKeyDictionary()
)


def _module_scan(model: nn.Module) -> tuple[Inspection, bool]:
    """What the modules of ``model`` say, and whether that is conclusive: every module is of
    a known type (exactly: a subclass may override forward) and has no hooks."""
    if isinstance(model, SmoothSurrogate):
        return Inspection((), (), probed=False), True
    smoothed: dict[str, None] = {}
    unsupported: dict[str, None] = {}
    for m in model.modules():
        if isinstance(m, PIECEWISE_LINEAR):
            name = next(op for kind, op in MODULE_OPS.items() if isinstance(m, kind))
            (unsupported if isinstance(m, _NO_COUNTERPART) else smoothed)[name] = None
    known = (*PIECEWISE_LINEAR, *SMOOTH_MODULES)
    conclusive = all(
        type(m) in known and not (m._forward_hooks or m._forward_pre_hooks)
        for m in model.modules()
    )
    return Inspection(tuple(smoothed), tuple(unsupported), probed=False), conclusive


def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
    """What the cache keys on: each module's identity and type, its plain attributes (flags,
    slopes), an instance-level forward, and its hooks."""
    plain = (bool, int, float, str, type(None))
    return tuple(
        (name, id(m), type(m), m.__dict__.get("forward"), tuple(m._forward_hooks),
         tuple(m._forward_pre_hooks),
         tuple(sorted((k, v) for k, v in vars(m).items() if isinstance(v, plain))))
        for name, m in model.named_modules(remove_duplicate=False)
    )


def _probe_input(model: nn.Module) -> Tensor | None:
    config = getattr(model, "config", None)
    if not (isinstance(config, dict) and "input_shape" in config):
        return None
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()
    device = p.device if p is not None else "cpu"
    return torch.zeros(1, *(int(s) for s in config["input_shape"]), dtype=dtype, device=device)


def _probe(model: nn.Module, x: Tensor) -> Inspection:
    scripted = [n for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    if scripted:
        raise AttrboundError(
            f"the model holds TorchScript modules ({', '.join(scripted) or 'itself'}), whose "
            "operations attrbound cannot see; pass the eager (un-scripted) module."
        )
    modes = [(m, m.training) for m in model.modules()]
    _eval(model)  # a look must not update BatchNorm statistics
    try:
        with torch.no_grad(), Tracer([x], beta=None) as tracer:
            out = model(x)
    except AttrboundError:
        raise
    except Exception as exc:
        raise AttrboundError(
            f"could not run the model on an example input shaped {tuple(x.shape)} to find its "
            f"piecewise-linear operations ({type(exc).__name__}: {exc}); pass example= with an "
            "input batch it accepts."
        ) from None
    finally:
        for m, mode in modes:
            m.training = mode
    if not tracer.outputs_live(out):
        raise AttrboundError(
            "could not follow the input through the model's forward pass (its output does not "
            "depend on the input through any operation attrbound can see), so it cannot tell "
            "whether the model is piecewise linear."
        )
    return Inspection(tuple(tracer.smoothed), tuple(tracer.unsupported), probed=True)


def inspect_model(
    model: nn.Module, example: Tensor | None = None, *, cache: bool = True
) -> Inspection:
    """The piecewise-linear operations ``model`` applies to its input.

    With ``example`` (a batch [B, *S], or [1, *S]; its first row, or the whole batch when the
    model refuses one row, e.g. a graph exported with a fixed batch size), one forward
    pass under no_grad and eval mode records every operation (module training flags are
    restored after). Without it: the module scan when it finds piecewise-linear modules or is
    conclusive (a plain nn.Sequential of standard layers); else a zero input shaped
    ``model.config["input_shape"]`` when the model declares one; else AttrboundError, as for
    a model that fails on the example or whose output the look cannot follow.

    Results are cached per model object, keyed by the module tree (each module's identity,
    type, plain attributes, instance-level forward and hooks) and the example's shape, dtype
    and device. A change the key does not cover (editing a class's forward, global flags the
    forward reads) needs ``cache=False``.
    """
    if example is None:
        found, conclusive = _module_scan(model)
        if found.piecewise_linear or conclusive:
            return found
        example = _probe_input(model)
        if example is None:
            raise AttrboundError(
                "cannot tell whether the model has piecewise-linear operations (ReLU, max-pool, "
                "...) without running it: pass example= (an input batch) or give the model a "
                "config['input_shape']."
            )
    if not isinstance(example, Tensor) or example.dim() < 1 or example.shape[0] == 0:
        raise AttrboundError("example must be a non-empty input batch shaped [B, ...].")
    key = (_fingerprint(model), tuple(example.shape[1:]), example.dtype, example.device)
    if cache:
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
    # one row suffices (and is cheapest), a graph exported with a fixed batch size needs the
    # whole batch; both are copies, as the forward may write into its input
    try:
        result = _probe(model, example[:1].detach().clone())
    except AttrboundError:
        if example.shape[0] == 1:
            raise
        result = _probe(model, example.detach().clone())
    if cache:
        _CACHE[model] = (key, result)
    return result


def is_piecewise_linear(model: nn.Module, example: Tensor | None = None) -> bool:
    """True if ``model`` applies a piecewise-linear operation to its input
    (:func:`inspect_model`)."""
    return inspect_model(model, example).piecewise_linear


# ----------------------------------------------------------------------------------------
# the surrogate
# ----------------------------------------------------------------------------------------


def _eval(model: nn.Module) -> None:
    """Eval mode; a graph from torch.export refuses eval() (its mode is fixed when exported),
    so its flags are set directly."""
    try:
        model.eval()
    except NotImplementedError:
        for m in model.modules():
            m.training = False


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``. Copying a torch.export graph copies its pytree specs, and
    torch itself then warns that ``LeafSpec`` is deprecated, on every copy: a detail of
    torch's internals the user can do nothing about, so that one FutureWarning is silenced
    here (every other warning passes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        return copy.deepcopy(model)


def _freeze(model: nn.Module) -> nn.Module:
    _eval(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class SmoothSurrogate(nn.Module):
    """``model`` run with each piecewise-linear operation on input-dependent values replaced
    by its smooth counterpart at inverse temperature ``beta`` (:mod:`attrbound.smooth_ops`).

    Takes and returns what ``model`` does. In-place operations (``relu_``,
    ``nn.ReLU(inplace=True)``) write their smooth value in place. An operation with no smooth
    counterpart raises AttrboundError when reached.
    """

    def __init__(self, model: nn.Module, beta: float) -> None:
        super().__init__()
        self.model = model
        self.beta = float(beta)
        if hasattr(model, "config"):
            self.config = model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with Tracer(tensors((args, kwargs)), beta=self.beta):
            return self.model(*args, **kwargs)


def smooth_surrogate(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A frozen copy of ``model`` whose piecewise-linear operations are smoothed at ``beta``.

    The weights are copied (deep copy; ``model`` is untouched). Larger beta is closer to the
    model: each replaced operation is within a few log(2)/beta of the original
    (:mod:`attrbound.smooth_ops`). A plain nn.Sequential of standard layers gets its ReLU
    modules swapped for ``nn.Softplus(beta)`` (the same function as the operation-level
    replacement, softplus(beta z)/beta) and is returned as is when nothing piecewise linear
    is left; otherwise the copy is wrapped in :class:`SmoothSurrogate`.
    """
    if not beta > 0:
        raise AttrboundError(f"surrogate beta must be > 0, got {beta}.")
    try:
        surrogate = copy_model(model)
    except Exception as exc:
        raise AttrboundError(f"cannot copy the model to build its surrogate ({exc}).") from None
    if _module_scan(surrogate)[1]:
        _swap_relu(surrogate, beta)
        if not _module_scan(surrogate)[0].piecewise_linear:
            return _freeze(surrogate)
    return _freeze(SmoothSurrogate(surrogate, beta))


def _swap_relu(module: nn.Module, beta: float) -> None:
    for name, child in module.named_children():
        if type(child) is nn.ReLU:
            setattr(module, name, nn.Softplus(beta=beta))
        else:
            _swap_relu(child, beta)
