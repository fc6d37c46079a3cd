"""The results of bounds and attacks: typed, per-input values that every other layer reads.

:class:`BoundResult` is what :func:`attrbound.bound` returns (upper bounds, one per input),
:class:`AttackResult` what :func:`attrbound.attack` returns (concrete perturbations and the
deviations they reach, lower bounds on the same worst case). Both turn into plain
JSON-serialisable dicts with ``to_rows()``; the campaign's rows are built from them.
:func:`cosine_from_euclidean` turns a Euclidean bound into the matching cosine bound
(docs/design.md section 3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from attrbound.attributions import Attribution


def cosine_from_euclidean(euclidean: Tensor, attr_norm: Tensor) -> Tensor:
    """Lower bound on cos(a, a') for every a' with ||a' - a||_2 <= U, given ||a||_2.

    cos >= sqrt(1 - (U / ||a||)^2) when U < ||a|| (the ball of radius U around a is seen from
    the origin under the half-angle asin(U / ||a||)); otherwise -1 (no guarantee).
    Shapes: euclidean U [B], attr_norm [B] -> [B].
    """
    ratio = euclidean / attr_norm.clamp_min(torch.finfo(attr_norm.dtype).tiny)
    inside = ratio < 1
    bound = torch.sqrt(torch.clamp(1 - ratio.clamp(max=1.0) ** 2, min=0.0))
    return torch.where(inside, bound, torch.full_like(bound, -1.0))


@dataclass
class BoundResult:
    """Per-input upper bounds for one (attribution, norm, eps, method); tensors are [B].

    - ``euclidean``: U >= ||A(x + delta) - A(x)||_2 over the perturbation set.
    - ``cosine``: lower bound on cos(A(x), A(x + delta)); -1 when vacuous.
    - ``attr_norm``: ||A(x)||_2.
    - ``operator_norm``: the p->2 operator-norm value used (taylor/region); NaN for interval.
    - ``iterations`` (int [B]), ``converged`` (bool [B]): solver diagnostics.
    - ``lower``: l-inf only, the sign-iteration (feasible) value of ||J||_{inf->2}, [B].
    - ``argmax``: region only, the point z where the largest operator norm was found [B, *S];
      ``source``: per input, which kind of point it was ("x", "random", "points", "ascent").
    - ``intervals``: interval only, (lower [B, *S], upper [B, *S]) containing A(z) for every z.
    - ``surrogate_beta``: set when the bound was computed on the smooth surrogate of a ReLU model.
    - ``at_x``: region only, the taylor bound at x that region solved first (same solver,
      options and seed as ``method="taylor"``), as its own BoundResult; see
      :func:`attrbound.bounds.taylor_from_region`.
    - ``operator_norm_ritz``: taylor / region, the Ritz estimate of the same operator-norm
      value (l2: sigma_max from the Ritz value; l-inf: the weighted dual at the Ritz value),
      never above the exact value in exact arithmetic; ``operator_norm`` is the certified one.
    - ``guarantee``: the kind of guarantee of ``euclidean`` in words (docs/design.md
      section 3.3), e.g. "probability >= 1 - 0.001 over attrbound's random start,
      linearisation at x"; None when the method does not say.
    - ``delta``: the failure probability of a probabilistic guarantee (default option 1e-3),
      None for deterministic bounds and estimates without one.
    """

    method: str
    attribution: str
    norm: str
    eps: float
    euclidean: Tensor
    cosine: Tensor
    attr_norm: Tensor
    operator_norm: Tensor
    iterations: Tensor
    converged: Tensor
    lower: Tensor | None = None
    argmax: Tensor | None = None
    source: list[str] | None = None
    intervals: tuple[Tensor, Tensor] | None = None
    surrogate_beta: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    at_x: BoundResult | None = None
    operator_norm_ritz: Tensor | None = None
    guarantee: str | None = None
    delta: float | None = None

    def to_rows(self) -> list[dict[str, Any]]:
        """One plain dict (strict JSON: a diagnostic in ``extra`` that was not computed, NaN,
        becomes None) per input."""
        n = self.euclidean.shape[0]
        cols: dict[str, Any] = {
            "euclidean": self.euclidean,
            "cosine": self.cosine,
            "attr_norm": self.attr_norm,
            "operator_norm": self.operator_norm,
            "iterations": self.iterations,
            "converged": self.converged,
        }
        if self.lower is not None:
            cols["operator_norm_lower"] = self.lower
        if self.operator_norm_ritz is not None:
            cols["operator_norm_ritz"] = self.operator_norm_ritz
        rows = []
        for i in range(n):
            row: dict[str, Any] = {
                "method": self.method,
                "attribution": self.attribution,
                "norm": self.norm,
                "eps": self.eps,
                "surrogate_beta": self.surrogate_beta,
                "seconds": self.seconds / n,
            }
            if self.guarantee is not None:
                row["guarantee"] = self.guarantee
                row["delta"] = self.delta
            for k, v in cols.items():
                row[k] = v[i].item()
            if self.source is not None:
                row["source"] = self.source[i]
            for k, v in self.extra.items():  # per-input diagnostics, e.g. operator_norm_v0
                if isinstance(v, Tensor) and v.dim() == 1 and v.shape[0] == n:
                    item = v[i].item()  # NaN (not computed) -> None: rows are strict JSON
                    row[k] = None if isinstance(item, float) and math.isnan(item) else item
            if self.intervals is not None:
                lo, hi = self.intervals
                row["certified_stable_fraction"] = (
                    ((lo[i] > 0) | (hi[i] < 0)).double().mean().item()
                )
            rows.append(row)
        return rows


@dataclass
class AttackResult:
    """Per-input result of one attack configuration; tensors are [B] unless stated.

    - ``x_adv`` [B, *S]: the best valid point (x itself where none beat x; see ``found``).
    - ``euclidean`` ||A(x_adv) - A(x)||_2, ``cosine`` cos(A(x), A(x_adv)),
      ``topk_intersection`` (k as given, features = all entries of |A|), ``kendall`` (tau-b),
      ``spearman``: recomputed at x_adv on the attacked map A named by ``map``: the model's
      own (``"model"``), or its softplus surrogate's A_beta (``"surrogate(beta=...)"``, a
      piecewise-linear model given ``surrogate_beta``), the map the practical bounds bound.
    - ``raw_euclidean``, ``raw_cosine``: the same two on the real model's own map at x_adv;
      equal to ``euclidean`` / ``cosine`` when ``map`` is ``"model"`` (None at construction
      means exactly that). Never to be compared with a practical bound on A_beta.
    - ``label_kept`` (bool): argmax f(x_adv) = argmax f(x) on the REAL model (always true by
      construction).
    - ``found`` (bool): a valid iterate beat x itself.
    - ``attr_norm``: ||A(x)||_2.
    - ``points`` [B, P, *S]: points worth checking for the region bound: per run (restart),
      its highest-scoring iterate, ignoring the label constraint (which the bounds drop);
      for ``random`` its highest-scoring sample (P = 1).
    - ``runs``: number of attack runs (inputs x restarts; inputs for ``random``).
    - ``objective``: ``euclidean`` / ``cosine`` (pgd, random), ``topk_mass`` (ifia_topk),
      ``center_of_mass`` (ifia_center).
    """

    method: str
    objective: str
    attribution: str
    norm: str
    eps: float
    x_adv: Tensor
    euclidean: Tensor
    cosine: Tensor
    topk_intersection: Tensor
    kendall: Tensor
    spearman: Tensor
    label_kept: Tensor
    found: Tensor
    attr_norm: Tensor
    points: Tensor
    runs: int
    seconds: float
    k: int
    steps: int
    restarts: int
    step_size: float | None
    samples: int | None
    seed: int
    surrogate_beta: float | None = None
    attribution_options: dict[str, Any] = field(default_factory=dict)
    raw_euclidean: Tensor | None = None
    raw_cosine: Tensor | None = None
    map: str = "model"

    def __post_init__(self) -> None:
        if self.raw_euclidean is None:
            self.raw_euclidean = self.euclidean
        if self.raw_cosine is None:
            self.raw_cosine = self.cosine

    def to_rows(self) -> list[dict[str, Any]]:
        """One plain JSON-serialisable dict per input (no x_adv / points; NaN -> None)."""
        n = self.euclidean.shape[0]
        cols = {
            "euclidean": self.euclidean,
            "cosine": self.cosine,
            "raw_euclidean": self.raw_euclidean,
            "raw_cosine": self.raw_cosine,
            "topk_intersection": self.topk_intersection,
            "kendall": self.kendall,
            "spearman": self.spearman,
            "label_kept": self.label_kept,
            "found": self.found,
            "attr_norm": self.attr_norm,
        }
        values = {k: v.detach().cpu().tolist() for k, v in cols.items()}
        rows = []
        for i in range(n):
            row: dict[str, Any] = {
                "method": self.method,
                "objective": self.objective,
                "attribution": self.attribution,
                "attribution_options": dict(self.attribution_options),
                "norm": self.norm,
                "eps": self.eps,
                "k": self.k,
                "steps": self.steps,
                "restarts": self.restarts,
                "step_size": self.step_size,
                "samples": self.samples,
                "seed": self.seed,
                "surrogate_beta": self.surrogate_beta,
                "map": self.map,
                "runs": self.runs // n,
                "seconds": self.seconds / n,
            }
            for key, vals in values.items():
                v = vals[i]
                row[key] = None if isinstance(v, float) and not math.isfinite(v) else v
            rows.append(row)
        return rows


class BoundFunction(Protocol):
    """What the campaign calls to bound: :func:`attrbound.bound` or a stand-in (test fakes).

    Called as ``fn(model, x, eps=..., norm=..., attribution=<Attribution>, method=...,
    **options)`` with x [B, *S]; the campaign passes ``seed``, ``surrogate_beta`` (None for
    ``interval``, which bounds the real model), ``points`` (region: attack iterates
    [B, P, *S]) and the grid's options of that method. Returns per-input bounds [B].
    """

    def __call__(self, model: nn.Module, x: Tensor, *, eps: float, norm: str,
                 attribution: Attribution, method: str, **options: Any) -> BoundResult: ...


class AttackFunction(Protocol):
    """What the campaign calls to attack: :func:`attrbound.attack` or a stand-in.

    Called as ``fn(model, x, eps=..., norm=..., attribution=<Attribution>, method=...,
    objective=..., steps=..., restarts=..., k=..., n=..., seed=..., surrogate_beta=...)``.
    """

    def __call__(self, model: nn.Module, x: Tensor, *, eps: float, norm: str,
                 attribution: Attribution, method: str, **options: Any) -> AttackResult: ...
