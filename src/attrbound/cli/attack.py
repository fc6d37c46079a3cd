"""`attrbound attack`: attribution attacks (lower bounds on the worst case), one JSON line per
(input, method, eps), and a summary table.

The attacks run as the campaign's units (:func:`attrbound.campaign.evaluate_unit`) of a grid
with one attribution and norm and no bounds; each line is a campaign row split per method
(:func:`attrbound.campaign.method_rows`): the input's fields (``index``, ``label``, ``pred``,
``attribution``, ``norm``, ``eps``, ``map``, ``seed``, ``config``), ``method`` and the
attack's figures (``euclidean``, ``cosine``, ``raw_euclidean``, ``raw_cosine``,
``topk_intersection``, ``kendall``, ``spearman``, ``label_kept``, ``found``, ``runs``, ...).

Example::

    attrbound attack --model runs/models/mnist-cnn-softplus.safetensors --dataset mnist \\
        --n 100 --attribution integrated_gradients --norm inf --eps 0.02,0.05 \\
        --method pgd,ifia_topk,random --restarts 2 --out runs/attack-rows.jsonl
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from attrbound.attacks import DEFAULT_SAMPLES, DEFAULT_STEPS, METHODS, OBJECTIVES
from attrbound.attributions import NAMES
from attrbound.campaign import Grid
from attrbound.cli.common import (
    add_model_data,
    evaluate_methods,
    float_list,
    grid_fields,
    json_object,
    name_list,
    write_jsonl,
)
from attrbound.errors import AttrboundError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_data(p, n=100)
    p.add_argument("--attribution", default="saliency", choices=list(NAMES),
                   help="attribution method (default saliency)")
    p.add_argument("--attribution-options", default=None, metavar="JSON",
                   help='options of the attribution method as JSON, e.g. \'{"steps": 16}\'')
    p.add_argument("--norm", default="inf", choices=["2", "inf"], help="norm (default inf)")
    p.add_argument("--eps", type=float_list, required=True,
                   help="radius, or comma-separated radii (e.g. 0.02,0.05)")
    p.add_argument("--method", type=name_list, default=["pgd"],
                   help=f"comma-separated attacks among {','.join(METHODS)} (default pgd)")
    p.add_argument("--objective", default="euclidean", choices=list(OBJECTIVES),
                   help="distance for pgd and random (default euclidean)")
    p.add_argument("--steps", type=int, default=None,
                   help="gradient steps per run (default: APGD's 25, or "
                        f"{DEFAULT_STEPS} with the fixed schedule)")
    p.add_argument("--step-size", type=float, default=None,
                   help="step size alpha (default 2.5 eps / steps)")
    p.add_argument("--restarts", type=int, default=None,
                   help="runs per input (default: APGD's 2, or 1 with the fixed schedule)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"samples of the random attack (default {DEFAULT_SAMPLES})")
    p.add_argument("--k", type=int, default=None,
                   help="top-k size (default 100 for 28x28 inputs)")
    p.add_argument("--surrogate-beta", type=float, default=None,
                   help="attack the softplus surrogate (this beta) of a ReLU / max-pool model; "
                   "raw_euclidean / raw_cosine are the model's own")
    p.add_argument("--seed", type=int, default=0,
                   help="seed; the batch starting at input i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per call (default 64)")
    p.add_argument("--out", default=None, help="JSON-lines file of per-input rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def grid_from_args(args: argparse.Namespace) -> Grid:
    """The one-attribution, one-norm grid of attacks (no bounds) the options describe."""
    if not args.eps:
        raise AttrboundError("--eps needs at least one radius.")
    opts = json_object(args.attribution_options, "--attribution-options") or {}
    return Grid(
        **grid_fields(args), attributions=(args.attribution,),
        attribution_options={args.attribution: opts}, norms=(args.norm,),
        eps=tuple(args.eps), bounds=(), attacks=tuple(args.method), steps=args.steps,
        step_size=args.step_size, restarts=args.restarts, samples=args.samples, k=args.k,
        objective=args.objective, surrogate_beta=args.surrogate_beta, seed=args.seed,
        batch_size=args.batch_size, save_adv=False,
    )


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else math.nan


def summary(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: one line per (method, eps) with the mean of each figure."""
    head = (f"{'method':<12}{'eps':>8}{'n':>6}{'found':>7}{'euclid':>11}{'max':>11}"
            f"{'cosine':>8}{'top-k':>7}{'kendall':>8}{'spear':>7}{'att/s':>9}")
    lines = [head, "-" * len(head)]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["eps"]), []).append(r)
    for (method, eps), grp in groups.items():
        secs = sum(r["seconds"] or 0.0 for r in grp)
        runs = sum(r["runs"] for r in grp)
        top = max((r["euclidean"] for r in grp if r["euclidean"] is not None), default=math.nan)
        lines.append(
            f"{method:<12}{eps:>8.4g}{len(grp):>6}{_mean(grp, 'found'):>7.2f}"
            f"{_mean(grp, 'euclidean'):>11.4g}{top:>11.4g}"
            f"{_mean(grp, 'cosine'):>8.4f}{_mean(grp, 'topk_intersection'):>7.3f}"
            f"{_mean(grp, 'kendall'):>8.3f}{_mean(grp, 'spearman'):>7.3f}"
            f"{runs / secs if secs > 0 else math.inf:>9.1f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = evaluate_methods(grid_from_args(args), "attacks", progress=not args.no_progress,
                            desc="attack")
    print(summary(rows))
    if args.out:
        path = write_jsonl(args.out, rows)
        print(f"wrote {len(rows)} rows to {path}")
    return 0
