"""`attrbound bound`: upper bounds on the worst-case attribution deviation, one JSON line per
(input, method, eps), and a summary table (mean / median / min / max per figure).

The bounds run as the campaign's units (:func:`attrbound.campaign.evaluate_unit`) of a grid
with one attribution and norm and no attacks; each line is a campaign row split per method
(:func:`attrbound.campaign.method_rows`): the input's fields (``index``, ``label``, ``pred``,
``attribution``, ``norm``, ``eps``, ``map``, ``seed``, ``config``), ``method`` and the
bound's figures (``euclidean``, ``cosine``, ``operator_norm``, ...).

Example::

    attrbound bound --model runs/models/mnist-cnn-softplus.safetensors --dataset mnist \\
        --n 100 --attribution integrated_gradients --norm inf --eps 0.02 --method region \\
        --out rows.jsonl
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from attrbound.attributions import NAMES
from attrbound.bounds import METHODS
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

#: flag dest -> the bound methods it is an option of
_SOLVER_FLAGS = {"tol": ("taylor", "region"), "max_iter": ("taylor", "region"),
                 "random": ("region",), "ascent_steps": ("region",), "restarts": ("region",),
                 "attack_steps": ("region",),
                 "smoothing": ("smoothed",), "sigma": ("smoothed",), "samples": ("smoothed",),
                 "alpha": ("smoothed",)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_data(p, n=100)
    p.add_argument("--attribution", default="saliency", choices=list(NAMES),
                   help="attribution method (default saliency)")
    p.add_argument("--attribution-options", default=None, metavar="JSON",
                   help='options of the attribution method as JSON, e.g. \'{"nodes": '
                   '"gausslegendre"}\'')
    p.add_argument("--steps", type=int, default=None,
                   help="integration steps of integrated_gradients (default 32)")
    p.add_argument("--norm", default="inf", choices=["2", "inf"], help="norm (default inf)")
    p.add_argument("--eps", type=float_list, required=True,
                   help="radius, or comma-separated radii (e.g. 0.02,0.05)")
    p.add_argument("--method", type=name_list, default=["region"],
                   help=f"comma-separated bound methods among {','.join(METHODS)} "
                   "(default region)")
    p.add_argument("--surrogate-beta", type=float, default=None,
                   help="taylor / region: bound the softplus surrogate (this beta) of a ReLU / "
                   "max-pool model (interval bounds the model itself)")
    p.add_argument("--tol", type=float, default=None,
                   help="relative residual tolerance of the eigen-solves "
                   "(default 1e-4 in float32)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="most Lanczos steps per eigen-solve (default 100)")
    p.add_argument("--random", type=int, default=None,
                   help="region: random points screened per input (default 8)")
    p.add_argument("--ascent-steps", type=int, default=None,
                   help="region: gradient-ascent steps on the operator norm (default 10)")
    p.add_argument("--restarts", type=int, default=None,
                   help="region: ascent runs per input (default 1)")
    p.add_argument("--attack-steps", type=int, default=None,
                   help="region: steps of its own pgd attack (2 runs) whose points it "
                   "searches (default 0: none; a stronger estimate at l-inf, see "
                   "docs/design.md 3.2)")
    p.add_argument("--smoothing", default=None, choices=["gaussian", "uniform"],
                   help="smoothed: the noise (default gaussian)")
    p.add_argument("--sigma", type=float, default=None,
                   help="smoothed: the noise's standard deviation or ball radius (default 0.25)")
    p.add_argument("--samples", type=int, default=None,
                   help="smoothed: Monte-Carlo samples per input (default 1000)")
    p.add_argument("--alpha", type=float, default=None,
                   help="smoothed: failure probability of the cosine bound (default 1e-3)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed; the batch starting at input i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per call (default 64)")
    p.add_argument("--out", default=None, help="JSON-lines file of per-input rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _attribution_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = json_object(args.attribution_options, "--attribution-options") or {}
    if args.steps is not None:
        if args.attribution != "integrated_gradients":
            raise AttrboundError("--steps applies to --attribution integrated_gradients only.")
        opts["steps"] = args.steps
    return opts


def _bound_options(args: argparse.Namespace, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per bound method, the solver options given on the command line."""
    opts: dict[str, dict[str, Any]] = {}
    for dest, applies in _SOLVER_FLAGS.items():
        value = getattr(args, dest)
        for m in applies:
            if value is not None and m in methods:
                opts.setdefault(m, {})[dest] = value
    return opts


def grid_from_args(args: argparse.Namespace) -> Grid:
    """The one-attribution, one-norm grid of bounds (no attacks) the options describe."""
    if not args.eps:
        raise AttrboundError("--eps needs at least one radius.")
    return Grid(
        **grid_fields(args), attributions=(args.attribution,),
        attribution_options={args.attribution: _attribution_options(args)},
        norms=(args.norm,), eps=tuple(args.eps), bounds=tuple(args.method), attacks=(),
        bound_options=_bound_options(args, args.method), surrogate_beta=args.surrogate_beta,
        seed=args.seed, batch_size=args.batch_size, save_adv=False,
    )


def summary(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: per (method, eps), mean / median / min / max of each figure."""
    head = f"{'method':<9}{'eps':>8}{'n':>6}  {'figure':<14}{'mean':>11}{'median':>11}" \
        f"{'min':>11}{'max':>11}"
    lines = [head, "-" * len(head)]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["eps"]), []).append(r)
    for (method, eps), grp in groups.items():
        for i, key in enumerate(("euclidean", "cosine", "operator_norm", "seconds")):
            vals = [r[key] for r in grp if r.get(key) is not None and r[key] == r[key]]
            lead = f"{method:<9}{eps:>8.4g}{len(grp):>6}" if i == 0 else " " * 23
            if not vals:
                lines.append(f"{lead}  {key:<14}{'-':>11}{'-':>11}{'-':>11}{'-':>11}")
                continue
            lines.append(
                f"{lead}  {key:<14}{statistics.fmean(vals):>11.4g}"
                f"{statistics.median(vals):>11.4g}{min(vals):>11.4g}{max(vals):>11.4g}"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = evaluate_methods(grid_from_args(args), "bounds", progress=not args.no_progress,
                            desc="bound")
    print(summary(rows))
    if args.out:
        path = write_jsonl(args.out, rows)
        print(f"wrote {len(rows)} rows to {path}")
    return 0
