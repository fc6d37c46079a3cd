"""Checks of what a caller passes in, one function each, each failing with one sentence.

Every entry point (bounds, attacks, certified intervals, the campaign, the CLI) validates its
arguments through these, so a mistake reads the same wherever it is made. Each raises
:class:`~attrbound.errors.AttrboundError` (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attrbound.errors import AttrboundError
from attrbound.surrogate import inspect_model


def check_batch(x: Any, model: nn.Module | None = None) -> Tensor:
    """x itself if it is a non-empty, finite, floating-point batch [B, *S] whose example shape
    matches the model's declared ``config["input_shape"]`` (when it has one)."""
    if not isinstance(x, Tensor):
        raise AttrboundError(f"inputs must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise AttrboundError(f"inputs must be a floating-point tensor, got {x.dtype}.")
    if x.dim() < 2 or x.shape[0] == 0:
        raise AttrboundError(
            f"inputs must be a non-empty batch shaped [B, ...], got shape {tuple(x.shape)}."
        )
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "input_shape" in config:
        want = tuple(int(s) for s in config["input_shape"])
        if tuple(x.shape[1:]) != want:
            raise AttrboundError(
                f"the model expects inputs shaped [B, {', '.join(map(str, want))}], "
                f"got {tuple(x.shape)}."
            )
    if not torch.isfinite(x).all():
        raise AttrboundError("inputs contain NaN or infinite values.")
    return x


def check_eps(eps: Any) -> float:
    """eps as a float, or one clear error if it is not a finite number > 0."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise AttrboundError(f"eps must be a number, got {eps!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise AttrboundError(f"eps must be a finite number > 0, got {eps}.")
    return value


def check_domain(domain: Sequence[float] | None) -> tuple[float, float] | None:
    """The input box (lo, hi) with lo < hi, or None for an unbounded domain."""
    if domain is None:
        return None
    lo, hi = (float(v) for v in domain)
    if not lo < hi:
        raise AttrboundError(f"domain must be (lo, hi) with lo < hi, got {domain}.")
    return lo, hi


def check_in_domain(x: Tensor, domain: tuple[float, float] | None) -> None:
    """Every entry of x lies in the box [lo, hi] (nothing to check for domain=None)."""
    if domain is not None and ((x < domain[0]).any() or (x > domain[1]).any()):
        raise AttrboundError(
            f"inputs lie outside the domain [{domain[0]}, {domain[1]}]; pass the right "
            "domain=(lo, hi), or domain=None for an unbounded one."
        )


def check_positive_int(name: str, value: Any) -> int:
    """int(value) if it is >= 1."""
    v = int(value)
    if v < 1:
        raise AttrboundError(f"{name} must be >= 1, got {value}.")
    return v


def require_smooth_or_surrogate(
    model: nn.Module,
    surrogate_beta: float | None,
    methods: Sequence[str],
    *,
    flag: str = "surrogate_beta",
    example: Tensor | None = None,
) -> bool:
    """Whether ``methods`` (derivative-based bounds or attacks) must use the smooth surrogate.

    A model that applies piecewise-linear operations (ReLU, max-pool, ...) to its input has a
    piecewise-constant gradient, so the derivative of its attribution is zero almost
    everywhere and a derivative-based method sees nothing. The operations are found by
    :func:`attrbound.surrogate.inspect_model` on ``example`` (the input batch [B, *S]; without
    it, by the modules or a zero input of ``config["input_shape"]``, and an error when that
    cannot tell). Returns True when the model is piecewise linear and ``surrogate_beta`` is
    given; raises one sentence naming ``flag`` (the keyword, or the CLI's
    ``--surrogate-beta``) when it is and no beta is given, and one when it applies piecewise
    operations that have no smooth counterpart; False for a smooth model, or when ``methods``
    is empty.
    """
    if not methods:
        return False
    found = inspect_model(model, example)
    if found.unsupported:
        raise AttrboundError(
            "the model applies piecewise operations with no smooth counterpart "
            f"({', '.join(found.unsupported)}) to its input, so {', '.join(methods)} cannot "
            "use its derivative and attrbound cannot smooth it; use a method that needs no "
            "derivative (bound method 'interval', attack method 'random')."
        )
    if not found.smoothed:
        return False
    if surrogate_beta is None:
        raise AttrboundError(
            f"the model has piecewise-linear operations ({', '.join(found.smoothed)}), so the "
            "derivative of its attribution is zero almost everywhere and "
            f"{', '.join(methods)} see(s) nothing; pass {flag} (e.g. 10) to use its smooth "
            "surrogate, or use a method that needs no derivative (bound method 'interval', "
            "attack method 'random')."
        )
    return True
