"""`attrbound bound`: upper bounds on the worst-case attribution deviation, one JSON line per
(input, method, eps), and a summary table (mean / median / min / max per figure).

Example::

    attrbound bound --model runs/models/mnist-cnn-softplus.safetensors --dataset mnist \\
        --n 100 --attribution integrated_gradients --norm inf --eps 0.02 --method region \\
        --out rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from attrbound.attributions import NAMES
from attrbound.bounds import METHODS
from attrbound.cli.common import (
    add_model_data,
    float_list,
    input_fields,
    load_model_data,
    name_list,
    predicted_classes,
    write_jsonl,
)
from attrbound.errors import AttrboundError, check_choice


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
                   help="bound the softplus surrogate (this beta) of a ReLU / max-pool model")
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
    p.add_argument("--seed", type=int, default=0,
                   help="seed; the batch starting at input i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per call (default 64)")
    p.add_argument("--out", default=None, help="JSON-lines file of per-input rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _attribution_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args.attribution_options:
        try:
            opts = json.loads(args.attribution_options)
        except json.JSONDecodeError:
            raise AttrboundError(
                f"--attribution-options is not valid JSON: {args.attribution_options!r}."
            ) from None
        if not isinstance(opts, dict):
            raise AttrboundError("--attribution-options must be a JSON object.")
    if args.steps is not None:
        if args.attribution != "integrated_gradients":
            raise AttrboundError("--steps applies to --attribution integrated_gradients only.")
        opts["steps"] = args.steps
    return opts


def _solver_options(args: argparse.Namespace, method: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if method == "interval":
        return opts
    for name in ("tol", "max_iter"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    region = {k: getattr(args, k) for k in ("random", "ascent_steps", "restarts")}
    if method == "region":
        opts.update({k: v for k, v in region.items() if v is not None})
    return opts


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
    from tqdm.auto import tqdm

    from attrbound.bounds import bound

    for m in args.method:
        check_choice("bound method", m, METHODS)
    if args.batch_size < 1:
        raise AttrboundError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if not args.eps:
        raise AttrboundError("--eps needs at least one radius.")
    attr_opts = _attribution_options(args)
    model, images, labels, config = load_model_data(args)
    preds = predicted_classes(model, images)
    starts = list(range(0, len(images), args.batch_size))
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(args.method) * len(args.eps) * len(starts), unit="batch",
               desc="bound", disable=args.no_progress)
    for method in args.method:
        opts = _solver_options(args, method)
        if method != "interval":
            opts["seed"] = args.seed
        for eps in args.eps:
            for lo in starts:
                xs = images[lo : lo + args.batch_size]
                if "seed" in opts:
                    opts["seed"] = args.seed + lo
                res = bound(
                    model, xs, eps=eps, norm=args.norm, attribution=args.attribution,
                    attribution_options=attr_opts, method=method,
                    surrogate_beta=args.surrogate_beta, **opts,
                )
                for i, row in enumerate(res.to_rows()):
                    row.update(input_fields(args, config, labels, preds, lo + i, opts.get("seed")))
                    row["attribution_options"] = attr_opts
                    rows.append(row)
                bar.update(1)
    bar.close()
    print(summary(rows))
    if args.out:
        path = write_jsonl(args.out, rows)
        print(f"wrote {len(rows)} rows to {path}")
    return 0
