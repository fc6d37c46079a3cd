"""Executors: who runs a campaign's units, where and in which order.

An executor takes the units still to do and their shared :class:`UnitContext` and yields one
:class:`UnitResult` per unit as each completes, in any order: every unit is deterministic
given its :class:`Unit` value (its inputs and seed), and the runner stores each result on
its own, so the rows do not depend on the order. :class:`SerialExecutor` runs them one
after the other in this process; :class:`~attrbound.campaign.ray_executor.RayExecutor`
implements the same :class:`Executor` protocol on Ray, shipping the context once and the
small unit values per task.

A unit an executor could not evaluate (its worker died more often than the executor retries)
is still yielded, as :func:`failed_result`: its rows carry ``failed`` (the reason) and
``{"error": reason}`` for every method, so it is counted in the summaries, never silently
skipped. Such rows are final like any method error: a rerun of the same command keeps them;
rerun with a new ``out`` (or ``overwrite``) to evaluate them again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch

from attrbound.campaign.rows import make_row
from attrbound.campaign.unit import Unit, UnitContext, UnitResult, evaluate_unit


class Executor(Protocol):
    """Evaluates units, yielding each unit's result as it completes (in any order)."""

    def run(self, units: Sequence[Unit], context: UnitContext) -> Iterator[UnitResult]: ...


class SerialExecutor:
    """Runs the units in this process, one after the other, in the order given."""

    def run(self, units: Sequence[Unit], context: UnitContext) -> Iterator[UnitResult]:
        for unit in units:
            yield evaluate_unit(unit, context)


def failed_result(unit: Unit, context: UnitContext, reason: str) -> UnitResult:
    """The result of a unit that could not be evaluated: one row per input with ``failed``:
    ``reason`` and ``{"error": reason}`` for every bound and attack of the grid (the
    prediction is computed here, on the context's model), no x_adv, one warning."""
    grid = context.grid
    x = context.images[unit.start:unit.stop].to(grid.device)
    with torch.no_grad():
        preds = context.model(x).argmax(dim=1).cpu().tolist()
    labels = context.labels[unit.start:unit.stop].tolist()
    error = {"error": reason}
    rows = []
    for i, (label, pred) in enumerate(zip(labels, preds, strict=True)):
        row = make_row(
            index=unit.start + i, label=label, pred=pred, attribution=unit.attribution,
            norm=unit.norm, eps=unit.eps, bounds={m: dict(error) for m in grid.bounds},
            attacks={m: dict(error) for m in grid.attacks}, attr_norm=None,
            seconds={"total": 0.0}, config=context.config, seed=unit.seed, map=context.map,
        )
        row["failed"] = reason
        rows.append(row)
    warning = (f"unit {unit.start}-{unit.stop} ({unit.attribution}, l{unit.norm}, "
               f"eps {unit.eps:g}) failed: {reason}")
    return UnitResult(unit, rows, None, [warning])
