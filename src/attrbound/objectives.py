"""Deprecated alias of :mod:`attrbound.training.objectives` (the training objectives)."""

import sys
import warnings

from attrbound.training import objectives

warnings.warn("attrbound.objectives is deprecated; use attrbound.training.objectives",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = objectives
