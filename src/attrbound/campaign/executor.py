"""Executors: who runs a campaign's units, where and in which order.

An executor takes the units still to do and their shared :class:`UnitContext` and yields one
:class:`UnitResult` per unit as each completes, in any order: every unit is deterministic
given its :class:`Unit` value (its inputs and seed), and the runner stores each result on
its own, so the rows do not depend on the order. :class:`SerialExecutor` runs them one
after the other in this process; a distributed executor (e.g. on Ray) implements the same
:class:`Executor` protocol, shipping the context once and the small unit values per task.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from attrbound.campaign.unit import Unit, UnitContext, UnitResult, evaluate_unit


class Executor(Protocol):
    """Evaluates units, yielding each unit's result as it completes (in any order)."""

    def run(self, units: Sequence[Unit], context: UnitContext) -> Iterator[UnitResult]: ...


class SerialExecutor:
    """Runs the units in this process, one after the other, in the order given."""

    def run(self, units: Sequence[Unit], context: UnitContext) -> Iterator[UnitResult]:
        for unit in units:
            yield evaluate_unit(unit, context)
