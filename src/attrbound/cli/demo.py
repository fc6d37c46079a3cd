"""`attrbound demo`: the end-to-end run behind `make demo`, on bundled data only.

1. reuse (or train) the default softplus CNN on the bundled MNIST subset;
2. save attribution heatmaps of a few test images;
3. a small validation campaign (``attrbound evaluate``): ``--n`` test inputs (default 100),
   saliency and integrated gradients (4 steps), l2 and l-inf, eps 0.05, 0.1, 0.2, the taylor
   and region bounds against pgd, ifia_topk and random attacks, with budgets cut down so
   that the demo runs on a laptop's CPU (see :data:`DEMO_GRID`; its time is in the README);
4. the summary table, and the HTML report (``attrbound report``).

Rerunning reuses the model and resumes (or reuses) the rows file; rows of another model or
``--n`` are replaced.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attrbound import data
from attrbound.campaign import ConfigMismatch, Grid, format_summary, run_campaign, summarize
from attrbound.cli.common import check_device
from attrbound.report import explain_grid, write_report
from attrbound.training import DEFAULT_MODEL, default_model

#: the demo's campaign: the grid of the README's evaluate example at demo budgets
DEMO_GRID: dict[str, Any] = {
    "attributions": ["saliency", "integrated_gradients"],
    "attribution_options": {"integrated_gradients": {"steps": 4}},
    "norms": ["2", "inf"],
    "eps": [0.05, 0.1, 0.2],
    "bounds": ["taylor", "region"],
    "attacks": ["pgd", "ifia_topk", "random"],
    "steps": 10,
    "samples": 50,
    # the l-inf solver at its defaults (about one 50-step attack's products); a smaller
    # sketch or fewer Burer-Monteiro steps give poorer weights, which send more inputs to the
    # gate's refinement and cost more (benchmarks/RESULTS.md, the "budget" rows)
    "bound_options": {
        "region": {"random": 2, "ascent_steps": 4, "screen_iter": 2},
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help=f"checkpoint to reuse, trained there if absent (default {DEFAULT_MODEL})")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--n", type=int, default=100,
                   help="test inputs in the validation campaign (default 100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", default="cpu",
                   help="torch device of the heatmaps and the campaign (default cpu; the "
                        "model, if trained here, is trained on the CPU)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_device(args.device)
    model, path = default_model(args.model, progress=not args.no_progress)
    model = model.to(args.device)
    cfg = model.config
    print(f"model {path}: {cfg['arch']}/{cfg['activation']} trained on {cfg['dataset']} "
          f"({cfg.get('data', '?')}), test accuracy {100 * cfg['test_accuracy']:.2f}% "
          f"on {cfg.get('test_size', '?')} images")
    images, labels = data.load(cfg["dataset"], "test")
    grid_png = explain_grid(model, images[:6].to(args.device), labels[:6],
                            out / "heatmaps.png")
    print(f"attribution heatmaps: {grid_png}")

    grid = Grid.from_dict({"model": str(path), "n": args.n, "device": args.device,
                           **DEMO_GRID})
    rows_path = out / "rows.jsonl"
    print(f"validation campaign: {args.n} inputs x {len(grid.configs)} settings "
          f"(attribution, norm, eps) -> {rows_path}")
    run = {"progress": not args.no_progress, "model": model, "images": images,
           "labels": labels}
    try:
        rows = run_campaign(grid, rows_path, overwrite=False, **run)
    except ConfigMismatch:  # an earlier demo with another model or --n: the demo owns the file
        print(f"{rows_path} holds another demo's rows; starting it afresh")
        rows = run_campaign(grid, rows_path, overwrite=True, **run)
    print(format_summary(summarize(rows)))
    page = write_report(rows_path, out / "report")
    print(f"report: {page} (open it in a browser; it works offline)")
    return 0
