"""Models: an attrbound checkpoint, a torch.export archive or a factory with weights.

:func:`load_model` dispatches on the spec; :func:`load_factory` builds ``factory()`` and
loads its safetensors state dict strictly; :class:`Normalized` puts the input normalisation
inside the model. Pickles and ``torch.save`` files are refused, since unpickling can run code.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from attrbound import models
from attrbound.errors import AttrboundError
from attrbound.intake.files import (
    HOW_TO_SAVE,
    check_safetensors_file,
    safetensors_metadata,
    some,
)
from attrbound.intake.pt2 import load_exported

#: ``package.module:factory`` (the factory may be a dotted attribute path)
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class Normalized(nn.Module):
    """``model((x - mean) / std)`` with per-channel mean and std (channel = dim 1).

    mean, std: sequences of C floats (or one float, used for every channel), std > 0. They
    broadcast over [B, C, H, W] as [1, C, 1, 1] and over [B, d] as [1, d]. The buffers move
    with ``.to()``; they are cast to the input's dtype. The wrapped model's ``config`` (if
    any) is exposed unchanged, so the input domain stays the pixel box of the data.
    """

    def __init__(
        self, model: nn.Module, mean: Sequence[float] | float, std: Sequence[float] | float
    ):
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).flatten()
        s = torch.as_tensor(std, dtype=torch.float32).flatten()
        if m.numel() == 0 or s.numel() == 0:
            raise AttrboundError("mean and std need at least one value each.")
        if m.numel() != s.numel() and 1 not in (m.numel(), s.numel()):
            raise AttrboundError(
                f"mean has {m.numel()} values but std has {s.numel()}; give one per channel."
            )
        if not (torch.isfinite(m).all() and torch.isfinite(s).all() and (s > 0).all()):
            raise AttrboundError("mean must be finite and std finite and > 0.")
        c = max(m.numel(), s.numel())
        self.model = model
        self.register_buffer("mean", m.expand(c).clone())
        self.register_buffer("std", s.expand(c).clone())
        if hasattr(model, "config"):
            self.config = model.config

    def forward(self, x: Tensor) -> Tensor:
        c = self.mean.numel()
        if c > 1 and (x.dim() < 2 or x.shape[1] != c):
            raise AttrboundError(
                f"mean/std have {c} channels but the inputs are shaped {tuple(x.shape)} "
                "(channels are dim 1)."
            )
        shape = (1, c) + (1,) * max(x.dim() - 2, 0)
        mean = self.mean.to(x.dtype).view(shape)
        std = self.std.to(x.dtype).view(shape)
        return self.model((x - mean) / std)


def load_model(
    spec: str,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """The model ``spec`` names, in eval mode, frozen, on ``device``.

    spec: ``FILE.safetensors`` (an attrbound checkpoint), ``FILE.pt2`` (a
    ``torch.export.save`` archive, see :func:`load_exported`) or ``package.module:factory``
    together with ``weights=FILE.safetensors`` (see :func:`load_factory`). Any other file,
    pickles and ``torch.save`` files included, is refused. mean/std: wrap the model in
    :class:`Normalized` (either may be omitted: mean 0, std 1).
    """
    spec = str(spec)
    if _FACTORY.fullmatch(spec) and not Path(spec).exists():
        if weights is None:
            raise AttrboundError(
                f"{spec} names a factory, which needs its weights: pass weights=FILE."
                "safetensors (--weights on the command line)."
            )
        model = load_factory(spec, weights)
    else:
        if weights is not None:
            raise AttrboundError(
                "weights= (--weights) goes with a package.module:factory model, not with "
                f"the file {spec}."
            )
        path = Path(spec)
        if not path.is_file():
            raise AttrboundError(
                f"no model file at {path}; a model is an attrbound .safetensors checkpoint, "
                "a torch.export .pt2 archive or package.module:factory with weights."
            )
        suffix = path.suffix.lower()
        if suffix == ".pt2":
            model = load_exported(path, device=device)
        elif suffix == ".safetensors":
            check_safetensors_file(path, "model checkpoint")
            if models.CONFIG_KEY not in safetensors_metadata(path):
                raise AttrboundError(
                    f"{path} holds weights without an attrbound config; for your own "
                    "architecture pass package.module:factory with weights="
                    f"{path} (--weights on the command line)."
                )
            model = models.load(path, device=device)
        else:
            raise AttrboundError(
                f"{path} is refused: attrbound does not load {suffix or 'extension-less'} "
                "files, since pickle / torch.save files can run code when loaded; "
                f"{HOW_TO_SAVE}."
            )
    if mean is not None or std is not None:
        model = Normalized(model, 0.0 if mean is None else mean, 1.0 if std is None else std)
    return models.freeze(model.to(device))


def load_factory(spec: str, weights: str | os.PathLike) -> nn.Module:
    """``factory()`` from ``package.module:factory`` with the state dict of ``weights``.

    The module is imported with the current directory on ``sys.path`` (as ``python -m``
    does); the factory is called with no arguments and must return an ``nn.Module``. The
    safetensors state dict must match its keys and shapes exactly (strict). Returns the
    module frozen, in eval mode, on the CPU; ``model.config`` is the module's own dict
    ``config`` if it has one, else ``{}``.
    """
    if not _FACTORY.fullmatch(spec):
        raise AttrboundError(f"{spec!r} is not of the form package.module:factory.")
    module_name, attr = spec.split(":")
    path = Path(weights)
    if not path.is_file():
        raise AttrboundError(f"no weights file at {path}.")
    check_safetensors_file(path, "weights file")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AttrboundError(f"cannot import {module_name} for {spec} ({exc}).") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    factory: Any = module
    for name in attr.split("."):
        if not hasattr(factory, name):
            raise AttrboundError(f"{module_name} has no attribute {attr!r} (from {spec}).")
        factory = getattr(factory, name)
    if not callable(factory):
        raise AttrboundError(f"{spec} is not callable; it must be a function returning the model.")
    model = factory()
    if not isinstance(model, nn.Module):
        raise AttrboundError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise AttrboundError(f"{path} is not a readable safetensors file ({exc}).") from None
    _check_state_dict(model, tensors, f"{path} does not fit the model {spec}() builds")
    model.load_state_dict(tensors, strict=True)
    if not isinstance(getattr(model, "config", None), dict):
        model.config = {}
    return models.freeze(model)


def _check_state_dict(model: nn.Module, tensors: dict[str, Tensor], what: str) -> None:
    """One sentence naming the missing / unexpected keys and the shape mismatches."""
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [
        f"{k} is {list(tensors[k].shape)} in the file but {list(v.shape)} in the model"
        for k, v in own.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing:
        problems.append(f"missing {some(missing)}")
    if unexpected:
        problems.append(f"unexpected {some(unexpected)}")
    if shapes:
        problems.append(some(shapes))
    if problems:
        raise AttrboundError(f"{what}: {'; '.join(problems)}.")
