"""attrbound: upper bounds and attacks for worst-case attribution deviations.

Main entry points (imported lazily, so ``import attrbound`` stays cheap):

- :func:`attribution` -- a differentiable attribution map A(x) (attrbound.attributions)
- :func:`bound` -- an upper bound on max ||A(x + delta) - A(x)|| over a norm ball (attrbound.bounds)
- :func:`attack` -- an attribution attack, a lower bound on the same maximum (attrbound.attacks)
- :mod:`attrbound.data`, :mod:`attrbound.models` -- bundled datasets and the model zoo
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "attribution": "attrbound.attributions",
    "Attribution": "attrbound.attributions",
    "bound": "attrbound.bounds",
    "BoundResult": "attrbound.bounds",
    "attack": "attrbound.attacks",
    "AttackResult": "attrbound.attacks",
    "AttrboundError": "attrbound.errors",
    "smooth_surrogate": "attrbound.models",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in {"data", "models", "metrics", "campaign", "report", "interval"}:
        return importlib.import_module(f"attrbound.{name}")
    raise AttributeError(f"module 'attrbound' has no attribute {name!r}")
