"""The options of the bound methods: their defaults, the keywords each method takes, the checks.

taylor takes the solver options (:data:`SOLVER_OPTIONS`), region those plus its search options
(:data:`REGION_OPTIONS`); :data:`OPTIONS` names, for every method of :func:`attrbound.bound`,
the keywords it accepts in ``**options`` (the campaign checks its grids against it). What each
option does is documented in :func:`attrbound.bound`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from attrbound.attributions import Attribution
from attrbound.errors import AttrboundError


@dataclass(frozen=True)
class Option:
    """One keyword of taylor / region: its default and the values it accepts.

    ``minimum`` set: an integer >= minimum (bool excluded); ``positive``: a finite number > 0;
    ``nonnegative``: a number >= 0, inf included; ``probability``: a number in (0, 1); none
    of them: not checked here. None is accepted when it is the default or ``none_ok`` is set.
    """

    default: Any
    minimum: int | None = None
    positive: bool = False
    nonnegative: bool = False
    none_ok: bool = False
    probability: bool = False

    def check(self, name: str, value: Any) -> None:
        """Raise one sentence when ``value`` is not a valid value of option ``name``."""
        if value is None and (self.default is None or self.none_ok):
            return
        if self.minimum is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < self.minimum
        ):
            raise AttrboundError(
                f"option {name} must be an integer >= {self.minimum}, got {value!r}."
            )
        if self.positive and not (
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0
        ):
            raise AttrboundError(f"option {name} must be a finite number > 0, got {value!r}.")
        if self.nonnegative and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        ):
            raise AttrboundError(f"option {name} must be a number >= 0, got {value!r}.")
        if self.probability and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
        ):
            raise AttrboundError(f"option {name} must be a number in (0, 1), got {value!r}.")


#: the eigen-solves' options, shared by taylor and region
SOLVER_SPECS: dict[str, Option] = {
    "tol": Option(None, positive=True),
    "max_iter": Option(100, minimum=1),
    "dual_steps": Option(25, minimum=0),
    "inner_iter": Option(12, minimum=1),
    "sign_steps": Option(50, minimum=0),
    "refine_steps": Option(8, minimum=0),
    "refine_above": Option(1.10, nonnegative=True),  # 0: refine every input, inf: none
    "delta": Option(1e-3, probability=True),
    "seed": Option(0),
    "batch_size": Option(None, minimum=1),
    "weights_ig_steps": Option(8, minimum=1, none_ok=True),  # None: never coarsen
}
#: region's search options (``points`` is checked against the inputs, in region)
REGION_SPECS: dict[str, Option] = {
    "random": Option(8, minimum=0),
    "points": Option(None),
    "ascent_steps": Option(10, minimum=0),
    "restarts": Option(1, minimum=1),
    "step_size": Option(None, positive=True),
    "screen_iter": Option(1, minimum=1),
    "points_iter": Option(4, minimum=1),
    "coarse_ig_steps": Option(8, minimum=1, none_ok=True),  # None: never coarsen
    "attack_steps": Option(0, minimum=0),  # 0: search only the caller's points
}

#: options of taylor and region, with their defaults (see :func:`attrbound.bound`)
SOLVER_OPTIONS: dict[str, Any] = {k: o.default for k, o in SOLVER_SPECS.items()}
#: options of region only, with their defaults
REGION_OPTIONS: dict[str, Any] = {k: o.default for k, o in REGION_SPECS.items()}
#: options of method="interval" (:func:`attrbound.interval.interval_bound`); keywords that
#: name attribution options are passed on to the attribution there, not listed here
INTERVAL_OPTIONS: frozenset[str] = frozenset({"tightening", "evaluation", "max_elements",
                                               "gradient_relaxation", "branches"})

#: for every bound method, the keywords it accepts in ``**options``
OPTIONS: dict[str, frozenset[str]] = {
    "taylor": frozenset(SOLVER_OPTIONS),
    "region": frozenset(SOLVER_OPTIONS) | frozenset(REGION_OPTIONS),
    "interval": INTERVAL_OPTIONS,
    "smoothed": frozenset({"smoothing", "sigma", "samples", "alpha", "seed", "batch_size"}),
}


def _check_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options of taylor or region with their defaults filled in, each checked.

    An unknown keyword, a region option passed to taylor, or an invalid value raises one
    :class:`AttrboundError` sentence.
    """
    specs = dict(SOLVER_SPECS)
    if method == "region":
        specs.update(REGION_SPECS)
    for name in options:
        if name not in specs:
            if name in REGION_SPECS:
                raise AttrboundError(f"option {name!r} applies to method='region' only.")
            raise AttrboundError(
                f"unknown option {name!r} for method={method!r}; valid options: "
                f"{', '.join(sorted(specs))}."
            )
    opts = {**{k: o.default for k, o in specs.items()}, **options}
    for name, spec in specs.items():
        spec.check(name, opts[name])
    return opts


def plain_options(opts: dict[str, Any], attr: Attribution) -> dict[str, Any]:
    """The options as recorded in a result's ``extra["options"]``: plain values (``points``
    as its number of points per input, or None) plus the attribution's options."""
    plain = {k: v for k, v in opts.items() if k != "points"}
    plain["points"] = None if opts.get("points") is None else int(opts["points"].shape[1])
    plain["attribution_options"] = attr.options()
    return plain
