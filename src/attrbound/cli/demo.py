"""`attrbound demo`: the end-to-end run behind `make demo`, on bundled data only."""

from __future__ import annotations

import argparse
from pathlib import Path

from attrbound.training import DEFAULT_MODEL


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help=f"checkpoint to reuse, trained there if absent (default {DEFAULT_MODEL})")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")


def run(args: argparse.Namespace) -> int:
    from attrbound import data
    from attrbound.plots import explain_grid
    from attrbound.training import default_model

    out = Path(args.out)
    model, path = default_model(args.model)
    cfg = model.config
    print(f"model {path}: {cfg['arch']}/{cfg['activation']} trained on {cfg['dataset']} "
          f"({cfg.get('data', '?')}), test accuracy {100 * cfg['test_accuracy']:.2f}% "
          f"on {cfg.get('test_size', '?')} images")
    images, labels = data.load(cfg["dataset"], "test")
    grid = explain_grid(model, images[:6], labels[:6], out / "heatmaps.png")
    print(f"attribution heatmaps: {grid}")
    return 0
