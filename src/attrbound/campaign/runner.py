"""Running a campaign: load its inputs, plan its units, run them, store the rows.

Work is split into UNITS (:class:`~attrbound.campaign.unit.Unit`): one batch of inputs
(``batch_size`` consecutive indices, batches aligned on ``start``) under one configuration.
Batches are the outer loop and configurations the inner one, so that an interrupted run has
covered all configurations of its first inputs. A unit's rows are appended in one write.
Rerunning the same command on the same ``out`` file

1. reads the file, cutting off a truncated last line (:func:`~attrbound.campaign.store.read_rows`);
2. refuses, with one clear sentence, a file whose rows were written by a different
   configuration (model weights, grid, budgets, seeds, package version: every field of
   :meth:`Grid.identity`); pass a new ``out`` or ``overwrite=True``;
3. skips the keys (index, attribution, norm, eps) already present, and runs the units with
   missing keys in full (random draws depend on the whole batch, so a unit is always rerun
   with the same inputs and seed), appending only the missing rows.

Every unit is deterministic for a given device, so an interrupted and resumed run yields the
same set of rows as an uninterrupted one (except ``seconds``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attrbound import data, intake
from attrbound._validate import require_smooth_or_surrogate
from attrbound.attacks import attack as library_attack
from attrbound.attributions import attribution
from attrbound.bounds import bound as library_bound
from attrbound.campaign.executor import Executor, SerialExecutor
from attrbound.campaign.grid import Grid, config_id, paths_of
from attrbound.campaign.rows import map_name, row_key
from attrbound.campaign.store import (
    adv_dir,
    append_rows,
    check_config,
    clear_adv,
    file_sha256,
    locked_append,
    read_rows,
    save_adv,
)
from attrbound.campaign.unit import Unit, UnitContext, UnitResult
from attrbound.errors import AttrboundError
from attrbound.results import AttackFunction, BoundFunction


def grid_inputs(grid: Grid, model: nn.Module, images: Tensor | None = None,
                labels: Tensor | None = None) -> tuple[Tensor, Tensor, str | None]:
    """(images [N, *S], labels [N], dataset name) of the grid's split or its ``data`` file or
    folder, unless given."""
    dataset = grid.dataset or (getattr(model, "config", {}) or {}).get("dataset")
    if grid.data is not None:
        dataset = Path(grid.data).name
    if images is None or labels is None:
        if grid.data is not None:
            images, labels, _ = intake.load_data(grid.data, size=grid.size, domain=grid.domain)
        elif not dataset:
            raise AttrboundError("the model names no dataset; pass --dataset or --data "
                                 "(the grid's dataset or data).")
        else:
            dataset = data.canonical_name(dataset)
            images, labels = data.load(dataset, split=grid.split, root=grid.root)
    if grid.start >= len(images):
        raise AttrboundError(f"start {grid.start} is past the {len(images)} inputs of the split.")
    return images, labels, dataset


def _bounded_map(grid: Grid, model: nn.Module, example: Tensor) -> str:
    """The map the practical bounds and the attacks measure, the model's operations looked
    up on ``example`` [1, *S]; raises (naming --surrogate-beta) when derivative-based
    methods meet a piecewise-linear model without a surrogate. Attacks on maps whose
    derivative needs no derivative of the model (``smoothed``) need none."""
    attacked_maps_need_it = any(
        attribution(a, model, **grid.attribution_options.get(a, {})).needs_model_derivative
        for a in grid.attributions)
    derivative = ([m for m in grid.bounds if m not in ("interval", "smoothed")]
                  + [m for m in grid.attacks if m != "random" and attacked_maps_need_it])
    surrogate = require_smooth_or_surrogate(model, grid.surrogate_beta, derivative,
                                            flag="--surrogate-beta", example=example)
    return map_name(grid.surrogate_beta if surrogate else None)


def prepare(
    grid: Grid,
    *,
    bound_fn: BoundFunction | None = None,
    attack_fn: AttackFunction | None = None,
    model: nn.Module | None = None,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    raise_errors: bool = False,
) -> UnitContext:
    """The context every unit of ``grid`` shares: the model (loaded from ``grid.model``
    unless given), the split's ``images`` [N, *S] and ``labels`` [N] (loaded unless given),
    the row ``config`` (the grid's identity, its ``config_id``, the model path and torch
    version), the bounded map, and the bound / attack functions (default
    :func:`attrbound.bound` and :func:`attrbound.attack`). Checks the checkpoint exists, the
    attribution options and the surrogate before any unit runs."""
    digest_of = Path(grid.weights) if grid.weights is not None else Path(grid.model)
    if model is None:  # one clear sentence for a missing or unsafe file
        model = intake.load_model(grid.model, weights=grid.weights, device=grid.device,
                                  mean=grid.mean, std=grid.std)
    if not digest_of.is_file():
        raise AttrboundError(f"no model file at {digest_of}.")
    sha = file_sha256(digest_of)
    images, labels, dataset = grid_inputs(grid, model, images, labels)
    bounded = _bounded_map(grid, model, images[grid.start:grid.start + 1].to(grid.device))
    for name in grid.attributions:  # bad options fail here, not in every unit
        attribution(name, model, **grid.attribution_options.get(name, {}))
    ident = grid.identity(sha, None if grid.data is None else file_sha256(grid.data))
    ident["dataset"] = dataset
    config = {**ident, "config_id": config_id(ident), "model": str(grid.model),
              "torch": torch.__version__, **paths_of(grid)}
    return UnitContext(
        grid=grid, model=model, images=images, labels=labels, config=config, map=bounded,
        bound_fn=(bound_fn or library_bound) if grid.bounds else None,
        attack_fn=(attack_fn or library_attack) if grid.attacks else None,
        raise_errors=raise_errors,
    )


def plan_units(grid: Grid, available: int) -> list[Unit]:
    """Every unit of the grid, batches (outer) x configurations (inner), over the inputs
    start <= i < min(start + n, available)."""
    stop = min(available, grid.start + grid.n)
    return [Unit(lo, min(lo + grid.batch_size, stop), a, p, e, grid.seed + lo)
            for lo in range(grid.start, stop, grid.batch_size) for a, p, e in grid.configs]


def run_units(
    context: UnitContext,
    units: Sequence[Unit],
    *,
    executor: Executor | None = None,
    progress: bool = True,
    desc: str = "evaluate",
    total: int | None = None,
) -> Iterator[UnitResult]:
    """Run ``units`` on ``executor`` (default :class:`SerialExecutor`), yielding each result;
    a tqdm bar over ``total`` units (default: these) shows the ETA, the rows of this run
    with a violation (of any bound, either metric) and the failed units, when ``progress``;
    each distinct warning is printed once."""
    total = len(units) if total is None else total
    warned: set[str] = set()
    violations = failed = 0
    with tqdm(total=total, initial=total - len(units), unit="unit", desc=desc,
              disable=not progress, dynamic_ncols=True) as bar:
        for result in (executor or SerialExecutor()).run(units, context):
            for msg in result.warnings:
                if msg not in warned:
                    warned.add(msg)
                    bar.write(f"warning: {msg}")
            violations += sum(_violated(r) for r in result.rows)
            failed += any("failed" in r for r in result.rows)
            yield result
            bar.set_postfix(violations=violations, failed=failed, refresh=False)
            bar.update(1)


def _violated(row: dict[str, Any]) -> bool:
    """Whether any bound of the row is violated, on either metric."""
    return any(bool(v) for flags in row.get("violated", {}).values() for v in flags.values())


def _store(result: UnitResult, out: Path, fh: BinaryIO, done: set[Any],
           save: bool) -> list[dict[str, Any]]:
    """Write the unit's x_adv sidecar file (first) and its rows not yet in ``done``;
    returns the rows appended."""
    unit, rows = result.unit, result.rows
    if save and result.x_best is not None:
        save_adv(adv_dir(out), unit.adv_name, result.x_best, torch.arange(unit.start, unit.stop))
        for i, r in enumerate(rows):
            r["adv"] = {"file": unit.adv_name, "row": i,
                        "attack": r["best"]["euclidean"]["attack"]}
    new = [r for r in rows if row_key(r) not in done]
    append_rows(fh, new)
    done.update(row_key(r) for r in new)
    return new


def run_campaign(
    grid: Grid,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    overwrite: bool = False,
    bound_fn: BoundFunction | None = None,
    attack_fn: AttackFunction | None = None,
    model: nn.Module | None = None,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the campaign ``grid``, appending rows to the JSON-lines file ``out``.

    See the module docstring for resuming (a file of another configuration is refused unless
    ``overwrite``), :mod:`attrbound.campaign.rows` for the row fields and
    :mod:`attrbound.campaign.store` for the x_adv sidecar. ``bound_fn`` / ``attack_fn``
    follow :class:`~attrbound.results.BoundFunction` / ``AttackFunction`` (default
    :func:`attrbound.bound` / :func:`attrbound.attack`); ``model``, ``images`` [N, *S] and
    ``labels`` [N] (the whole split, indexed by dataset index) default to loading
    ``grid.model`` and the dataset; ``executor`` defaults to :class:`SerialExecutor`.

    Returns all rows of this configuration in ``out`` (previous and new), in file order.
    """
    out = Path(out)
    context = prepare(grid, bound_fn=bound_fn, attack_fn=attack_fn, model=model,
                      images=images, labels=labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked_append(out) as fh:
        if overwrite:
            fh.truncate(0)
            clear_adv(out)
        rows = read_rows(out, repair=True)
        check_config(rows, context.config, out)
        done = {row_key(r) for r in rows}
        units = plan_units(grid, len(context.images))
        todo = [u for u in units if not all(k in done for k in u.keys())]
        for result in run_units(context, todo, executor=executor, progress=progress,
                                total=len(units)):
            rows.extend(_store(result, out, fh, done, grid.save_adv))
    return rows
