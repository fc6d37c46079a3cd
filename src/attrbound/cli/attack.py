"""`attrbound attack`: attribution attacks (lower bounds on the worst case), one JSON line per
(input, method, eps), and a summary table.

Example::

    attrbound attack --model runs/models/mnist-cnn-softplus.safetensors --dataset mnist \\
        --n 100 --attribution integrated_gradients --norm inf --eps 0.02,0.05 \\
        --method pgd,ifia_topk,random --restarts 2 --out runs/attack-rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from attrbound.attacks import DEFAULT_SAMPLES, DEFAULT_STEPS, METHODS, OBJECTIVES
from attrbound.attributions import NAMES
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
                   help='options of the attribution method as JSON, e.g. \'{"steps": 16}\'')
    p.add_argument("--norm", default="inf", choices=["2", "inf"], help="norm (default inf)")
    p.add_argument("--eps", type=float_list, required=True,
                   help="radius, or comma-separated radii (e.g. 0.02,0.05)")
    p.add_argument("--method", type=name_list, default=["pgd"],
                   help=f"comma-separated attacks among {','.join(METHODS)} (default pgd)")
    p.add_argument("--objective", default="euclidean", choices=list(OBJECTIVES),
                   help="distance for pgd and random (default euclidean)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"gradient steps per run (default {DEFAULT_STEPS})")
    p.add_argument("--step-size", type=float, default=None,
                   help="step size alpha (default 2.5 eps / steps)")
    p.add_argument("--restarts", type=int, default=1, help="runs per input (default 1)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"samples of the random attack (default {DEFAULT_SAMPLES})")
    p.add_argument("--k", type=int, default=None,
                   help="top-k size (default 100 for 28x28 inputs)")
    p.add_argument("--surrogate-beta", type=float, default=None,
                   help="softplus surrogate beta for gradients of ReLU / max-pool models")
    p.add_argument("--seed", type=int, default=0,
                   help="seed; the batch starting at input i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per call (default 64)")
    p.add_argument("--out", default=None, help="JSON-lines file of per-input rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _options(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        opts = json.loads(text)
    except json.JSONDecodeError:
        raise AttrboundError(f"--attribution-options is not valid JSON: {text!r}.") from None
    if not isinstance(opts, dict):
        raise AttrboundError("--attribution-options must be a JSON object, e.g. '{\"steps\": 16}'.")
    return opts


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if r[key] is not None]
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
        secs = sum(r["seconds"] for r in grp)
        runs = sum(r["runs"] for r in grp)
        lines.append(
            f"{method:<12}{eps:>8.4g}{len(grp):>6}{_mean(grp, 'found'):>7.2f}"
            f"{_mean(grp, 'euclidean'):>11.4g}{max(r['euclidean'] for r in grp):>11.4g}"
            f"{_mean(grp, 'cosine'):>8.4f}{_mean(grp, 'topk_intersection'):>7.3f}"
            f"{_mean(grp, 'kendall'):>8.3f}{_mean(grp, 'spearman'):>7.3f}"
            f"{runs / secs if secs > 0 else math.inf:>9.1f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from attrbound.attacks import attack

    for m in args.method:
        check_choice("attack method", m, METHODS)
    if args.batch_size < 1:
        raise AttrboundError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if not args.eps:
        raise AttrboundError("--eps needs at least one radius.")
    opts = _options(args.attribution_options)
    model, images, labels, config = load_model_data(args)
    preds = predicted_classes(model, images)
    starts = list(range(0, len(images), args.batch_size))
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(args.method) * len(args.eps) * len(starts), unit="batch",
               desc="attack", disable=args.no_progress)
    for method in args.method:
        for eps in args.eps:
            for lo in starts:
                xs = images[lo : lo + args.batch_size]
                res = attack(
                    model, xs, eps=eps, norm=args.norm, attribution=args.attribution,
                    attribution_options=opts, method=method, objective=args.objective,
                    steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                    k=args.k, n=args.samples, seed=args.seed + lo,
                    surrogate_beta=args.surrogate_beta,
                )
                for i, row in enumerate(res.to_rows()):
                    row.update(input_fields(args, config, labels, preds, lo + i, args.seed + lo))
                    rows.append(row)
                bar.update(1)
    bar.close()
    print(summary(rows))
    if args.out:
        path = write_jsonl(args.out, rows)
        print(f"wrote {len(rows)} rows to {path}")
    return 0
