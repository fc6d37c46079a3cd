"""`attrbound explain`: a PNG grid of attribution heatmaps for a few inputs."""

from __future__ import annotations

import argparse

from attrbound.attributions import NAMES
from attrbound.cli.common import add_model_data, load_model_data, name_list
from attrbound.report import explain_grid


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_data(p, n=8)
    p.add_argument("--methods", type=name_list, default=list(NAMES),
                   help=f"comma-separated attribution methods (default {','.join(NAMES)})")
    p.add_argument("--out", required=True, help="PNG file to write")


def run(args: argparse.Namespace) -> int:
    model, images, labels, _ = load_model_data(args)
    path = explain_grid(model, images, labels, args.out, methods=args.methods)
    print(f"wrote {path} ({len(images)} inputs x {len(args.methods)} methods)")
    return 0
