"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attrbound.errors import AttrboundError


def add_model_data(p: argparse.ArgumentParser, *, n: int = 100) -> None:
    """--model FILE, --dataset NAME, --root PATH, --split, --n N, --start I, --device."""
    p.add_argument("--model", required=True, help="safetensors checkpoint (attrbound train)")
    p.add_argument("--dataset", default=None, help="mnist | fashion-mnist | cifar10 "
                   "(default: the dataset stored in the checkpoint)")
    p.add_argument("--root", default=None, help="folder with the full standard dataset files "
                   "(default: the compact copy bundled with attrbound)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=int, default=n, help=f"number of inputs (default {n})")
    p.add_argument("--start", type=int, default=0, help="index of the first input (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def load_model_data(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model, images [n,...], labels [n], config) from --model/--dataset/--root/--n/--start."""
    from attrbound import data, models

    model = models.load(args.model, device=args.device)
    config = model.config
    name = args.dataset or config.get("dataset")
    if not name:
        raise AttrboundError("the checkpoint names no dataset; pass --dataset.")
    images, labels = data.load(name, split=args.split, root=args.root)
    if args.n < 1 or args.start < 0 or args.start >= len(images):
        raise AttrboundError(
            f"--start {args.start} / --n {args.n} select no inputs of {len(images)}."
        )
    sl = slice(args.start, args.start + args.n)
    return model, images[sl].to(args.device), labels[sl].to(args.device), config


def predicted_classes(model: Any, images: Any, chunk: int = 256) -> Any:
    """argmax_c f(x)_c for every image [N, ...] -> int64 [N], in chunks of ``chunk``."""
    import torch

    with torch.no_grad():
        return torch.cat([model(images[i : i + chunk]).argmax(1)
                          for i in range(0, len(images), chunk)])


def input_fields(args: argparse.Namespace, config: dict[str, Any], labels: Any, preds: Any,
                 index: int, seed: int | None) -> dict[str, Any]:
    """The per-input fields of a bound / attack row: the input at position ``index`` of the
    selection made by --start/--n, its label and predicted class, model, dataset, split, seed."""
    return {
        "index": args.start + index,
        "label": int(labels[index]),
        "pred": int(preds[index]),
        "model": str(args.model),
        "dataset": args.dataset or config.get("dataset"),
        "split": args.split,
        "seed": seed,
    }


def float_list(text: str) -> list[float]:
    """'0.05,0.1' -> [0.05, 0.1]."""
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def name_list(text: str) -> list[str]:
    """'a,b' -> ['a', 'b']."""
    return [s.strip() for s in text.split(",") if s.strip()]


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows, one JSON object per line, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
