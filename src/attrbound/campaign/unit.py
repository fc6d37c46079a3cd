"""One unit of work: a batch of inputs under one configuration, and its evaluation.

A :class:`Unit` is a small picklable value (the batch's index range, the configuration
(attribution, norm, eps) and its seed); everything units share (the grid, model, data, the
bound and attack functions) is one :class:`UnitContext`. :func:`evaluate_unit` turns the two
into the unit's rows (:mod:`attrbound.campaign.rows`), so that an executor
(:mod:`attrbound.campaign.executor`) may run units anywhere, in any order.

Every attack runs first, with the unit's seed; then every bound method, the region bound
getting the attacks' points (each attack's ``x_adv`` and ``points``), so that it is never
evaluated without the attacks' knowledge of the ball. The campaign builds the
:class:`~attrbound.attributions.Attribution` itself and calls the functions as the
:class:`~attrbound.results.AttackFunction` / :class:`~attrbound.results.BoundFunction`
protocols say.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attrbound.attributions import Attribution, attribution
from attrbound.bounds import SOLVER_OPTIONS, taylor_from_region
from attrbound.bounds import bound as library_bound
from attrbound.campaign.grid import Grid
from attrbound.campaign.rows import Key, make_row, map_name
from attrbound.errors import AttrboundError
from attrbound.results import AttackFunction, AttackResult, BoundFunction, BoundResult

#: result fields the rows keep elsewhere (the row's own fields, ``config``, ``seconds``);
#: ``surrogate_beta`` becomes the method's ``map``
_BOUND_DROP = ("method", "attribution", "norm", "eps", "seconds", "attr_norm", "surrogate_beta")
_ATTACK_DROP = ("method", "attribution", "attribution_options", "norm", "eps", "seconds",
                "attr_norm", "k", "steps", "restarts", "step_size", "samples", "seed",
                "surrogate_beta")


@dataclass(frozen=True)
class Unit:
    """Inputs ``start`` <= i < ``stop`` (dataset indices) under the configuration
    (``attribution``, ``norm``, ``eps``), with seed ``seed`` (the grid's seed + start)."""

    start: int
    stop: int
    attribution: str
    norm: str
    eps: float
    seed: int

    def keys(self) -> list[Key]:
        """The row keys (index, attribution, norm, eps) the unit writes."""
        return [(i, self.attribution, self.norm, self.eps) for i in range(self.start, self.stop)]

    @property
    def adv_name(self) -> str:
        """The unit's file name in the x_adv sidecar."""
        return f"{self.start:07d}-{self.attribution}-l{self.norm}-eps{self.eps!r}.safetensors"


@dataclass
class UnitContext:
    """What every unit of one campaign shares.

    ``images`` [N, *S] and ``labels`` [N]: the whole split, indexed by dataset index;
    ``config``: the identity stamped on every row; ``map``: the map the practical bounds and
    the attacks measure (:func:`~attrbound.campaign.rows.map_name`); ``bound_fn`` /
    ``attack_fn``: None when the grid has no such method; ``raise_errors``: a method's
    AttrboundError propagates instead of being recorded in the rows.
    """

    grid: Grid
    model: nn.Module
    images: Tensor
    labels: Tensor
    config: dict[str, Any]
    map: str
    bound_fn: BoundFunction | None
    attack_fn: AttackFunction | None
    raise_errors: bool = False


@dataclass
class UnitResult:
    """The rows of one unit [b], the x_adv of each row's best euclidean attack [b, *S] (None
    without attacks), and the warnings of methods that failed on it."""

    unit: Unit
    rows: list[dict[str, Any]]
    x_best: Tensor | None
    warnings: list[str] = field(default_factory=list)


def taylor_in_region(grid: Grid, bound_fn: BoundFunction | None) -> bool:
    """True when the taylor rows can be taken from the region bound's own solve at x
    (:func:`attrbound.bounds.taylor_from_region`): both methods in the grid, the library's
    bound function, and the same solver options for both."""
    if bound_fn is not library_bound or not {"taylor", "region"} <= set(grid.bounds):
        return False
    t, r = grid.bound_options.get("taylor", {}), grid.bound_options.get("region", {})
    return set(t) <= set(SOLVER_OPTIONS) and all(
        t.get(k, v) == r.get(k, v) for k, v in SOLVER_OPTIONS.items()
    )


def _records(res: BoundResult | AttackResult, drop: Sequence[str]) -> list[dict[str, Any]]:
    """The result's per-input rows without ``drop``, each with the ``map`` it measured (the
    result's own, else named from its ``surrogate_beta``)."""
    name = map_name(res.surrogate_beta)
    return [{"map": name, **{k: v for k, v in r.items() if k not in drop}}
            for r in res.to_rows()]


@dataclass
class _Figures:
    """Per-method records [b] and timings collected while a unit runs."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    attr_norm: list[float] | None = None
    warnings: list[str] = field(default_factory=list)

    def failed(self, kind: str, method: str, unit: Unit, b: int, exc: AttrboundError) -> None:
        """Record ``{"error": message}`` for every input and one warning."""
        self.warnings.append(f"{kind} {method} ({unit.attribution}, l{unit.norm}, "
                             f"eps {unit.eps:g}): {exc}")
        self.records[method] = [{"error": str(exc)}] * b

    def keep_attr_norm(self, attr_norm: Tensor) -> None:
        if self.attr_norm is None:
            self.attr_norm = attr_norm.detach().cpu().tolist()


def _run_attacks(unit: Unit, ctx: UnitContext, x: Tensor, attr: Attribution,
                 figs: _Figures) -> tuple[dict[str, Tensor], Tensor | None]:
    """Every attack of the grid on x [b, *S]: (x_adv per attack [b, *S], the points for the
    region bound [b, P, *S] or None)."""
    grid, b = ctx.grid, x.shape[0]
    x_advs: dict[str, Tensor] = {}
    points: list[Tensor] = []
    for method in grid.attacks:
        started = time.perf_counter()
        try:
            res = ctx.attack_fn(  # type: ignore[misc]
                ctx.model, x, eps=unit.eps, norm=unit.norm, attribution=attr, method=method,
                objective=grid.objective, steps=grid.steps, step_size=grid.step_size,
                restarts=grid.restarts, k=grid.k, n=grid.samples, seed=unit.seed,
                surrogate_beta=grid.surrogate_beta, domain=grid.domain,
            )
        except AttrboundError as exc:
            if ctx.raise_errors:
                raise
            figs.failed("attack", method, unit, b, exc)
            continue
        figs.seconds[f"attack:{method}"] = (time.perf_counter() - started) / b
        figs.records[method] = _records(res, _ATTACK_DROP)
        x_advs[method] = res.x_adv
        points += [res.x_adv.unsqueeze(1), res.points]
        figs.keep_attr_norm(res.attr_norm)
    return x_advs, (torch.cat(points, dim=1) if points else None)


def _run_bounds(unit: Unit, ctx: UnitContext, x: Tensor, attr: Attribution,
                points: Tensor | None, figs: _Figures) -> set[str]:
    """Every bound method of the grid on x [b, *S]; returns the timing keys already counted
    inside another method's (taylor taken from region's solve)."""
    grid, b = ctx.grid, x.shape[0]
    reuse = taylor_in_region(grid, ctx.bound_fn)
    region_res: BoundResult | None = None
    shared: set[str] = set()
    for method in sorted(grid.bounds, key=lambda m: reuse and m == "taylor"):  # taylor last
        if method == "taylor" and region_res is not None:
            res = taylor_from_region(region_res)
            figs.seconds["bound:taylor"] = res.seconds / b  # part of region's time
            shared.add("bound:taylor")
            figs.records[method] = _records(res, _BOUND_DROP)
            continue
        # interval is certified on the real model (ReLU exactly) and draws nothing at random
        per_unit: dict[str, Any] = {} if method == "interval" else {
            "surrogate_beta": grid.surrogate_beta, "seed": unit.seed}
        if method == "region" and points is not None:
            per_unit["points"] = points
        started = time.perf_counter()
        try:
            res = ctx.bound_fn(  # type: ignore[misc]
                ctx.model, x, eps=unit.eps, norm=unit.norm, attribution=attr, method=method,
                domain=grid.domain, **per_unit, **grid.bound_options.get(method, {}),
            )
        except AttrboundError as exc:
            if ctx.raise_errors:
                raise
            figs.failed("bound", method, unit, b, exc)
            continue
        figs.seconds[f"bound:{method}"] = (time.perf_counter() - started) / b
        figs.records[method] = _records(res, _BOUND_DROP)
        if method == "region" and reuse:
            region_res = res
        figs.keep_attr_norm(res.attr_norm)
    return shared


def evaluate_unit(unit: Unit, ctx: UnitContext) -> UnitResult:
    """Run every attack, then every bound method, on the unit's inputs; one row per input.

    A method that raises :class:`AttrboundError` (e.g. a bound that does not support this
    attribution) gets ``{"error": message}`` in the rows and one warning in the result,
    unless ``ctx.raise_errors``. The explained class is the model's prediction at x.
    """
    grid = ctx.grid
    x = ctx.images[unit.start:unit.stop].to(grid.device)
    b = x.shape[0]
    with torch.no_grad():
        preds = ctx.model(x).argmax(dim=1).cpu().tolist()
    labels = ctx.labels[unit.start:unit.stop].tolist()
    attr = attribution(unit.attribution, ctx.model,
                       **grid.attribution_options.get(unit.attribution, {}))
    figs = _Figures()
    x_advs, points = _run_attacks(unit, ctx, x, attr, figs)
    shared = _run_bounds(unit, ctx, x, attr, points, figs)
    order = [*grid.attacks, *grid.bounds]
    attacks = {m: figs.records[m] for m in grid.attacks if m in figs.records}
    bounds = {m: figs.records[m] for m in grid.bounds if m in figs.records}
    seconds = {k: figs.seconds[k] for m in order
               for k in (f"attack:{m}", f"bound:{m}") if k in figs.seconds}
    total = sum(v for k, v in seconds.items() if k not in shared)
    rows = [
        make_row(
            index=unit.start + i, label=labels[i], pred=preds[i], attribution=unit.attribution,
            norm=unit.norm, eps=unit.eps, bounds={m: dict(r[i]) for m, r in bounds.items()},
            attacks={m: dict(r[i]) for m, r in attacks.items()},
            attr_norm=None if figs.attr_norm is None else figs.attr_norm[i],
            seconds={**seconds, "total": total}, config=ctx.config, seed=unit.seed,
            map=ctx.map,
        )
        for i in range(b)
    ]
    return UnitResult(unit, rows, _best_points(x_advs, rows), figs.warnings)


def _best_points(x_advs: dict[str, Tensor], rows: list[dict[str, Any]]) -> Tensor | None:
    """Per row, the x_adv [*S] of its best euclidean attack (the first attack's where none
    counts): [b, *S], or None without attacks."""
    if not x_advs:
        return None
    names = list(x_advs)
    stacked = torch.stack([x_advs[m] for m in names])  # [M, b, *S]
    best = [r["best"]["euclidean"]["attack"] for r in rows]
    pick = torch.tensor([names.index(m) if m in x_advs else 0 for m in best],
                        device=stacked.device)
    return stacked[pick, torch.arange(len(rows), device=stacked.device)]
