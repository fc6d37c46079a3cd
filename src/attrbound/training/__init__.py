"""Training the model zoo: the objectives (natural and robust) and the loop that runs them.

- :mod:`attrbound.training.objectives`: one loss per mode (``natural``, ``pgd_at``,
  ``trades``, ``ig_norm``, ``grad_norm``, ``curvature``), the registry ``OBJECTIVES`` and
  each mode's options (``defaults``, ``resolve``, ``objective``);
- :mod:`attrbound.training.loop`: :func:`train`, :func:`accuracy`, :func:`train_and_save`
  and the demo's :func:`default_model`.
"""

from __future__ import annotations

from attrbound.training import objectives
from attrbound.training.loop import (
    DEFAULT_EPOCHS,
    DEFAULT_MODEL,
    accuracy,
    default_model,
    train,
    train_and_save,
)
from attrbound.training.objectives import (
    DOMAIN,
    MODES,
    OBJECTIVES,
    Loss,
    curvature,
    defaults,
    grad_norm,
    ig_norm,
    kl_divergence,
    loss_gradient,
    loss_integrated_gradients,
    natural,
    objective,
    per_example_ce,
    perturb,
    pgd_at,
    resolve,
    trades,
)

__all__ = [
    "DEFAULT_EPOCHS", "DEFAULT_MODEL", "DOMAIN", "MODES", "OBJECTIVES", "Loss", "accuracy",
    "curvature", "default_model", "defaults", "grad_norm", "ig_norm", "kl_divergence",
    "loss_gradient", "loss_integrated_gradients", "natural", "objective", "objectives",
    "per_example_ce", "perturb", "pgd_at", "resolve", "trades", "train", "train_and_save",
]
