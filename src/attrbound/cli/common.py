"""Argument helpers shared by the sub-commands, and the per-method rows of bound / attack."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attrbound import data, intake
from attrbound.campaign import Grid, method_rows, plan_units, prepare, run_units
from attrbound.errors import AttrboundError

MODEL_HELP = ("attrbound .safetensors checkpoint, torch.export .pt2 archive, or "
              "package.module:factory (with --weights)")


def add_model_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--model, --weights, --mean, --std: the forms of :func:`attrbound.intake.load_model`."""
    p.add_argument("--model", required=required, default=None, help=MODEL_HELP)
    p.add_argument("--weights", default=None, metavar="FILE.safetensors",
                   help="the state dict for --model package.module:factory")
    p.add_argument("--mean", default=None, metavar="M1,M2,..",
                   help="per-channel mean: the model runs on (x - mean) / std, so the input "
                        "domain stays the pixel box")
    p.add_argument("--std", default=None, metavar="S1,S2,..", help="per-channel std")


def add_data_options(p: argparse.ArgumentParser) -> None:
    """--data, --size, --domain: the forms of :func:`attrbound.intake.load_data`."""
    p.add_argument("--data", default=None, metavar="FILE|DIR",
                   help="FILE.safetensors with tensors images [N,*S] and labels [N], or an "
                        "image folder with one subfolder per class; instead of --dataset")
    p.add_argument("--size", default=None, metavar="H,W", help="resize the --data folder's images")
    p.add_argument("--domain", default=None, metavar="LO,HI",
                   help="the input box (default 0,1)")


def add_model_data(p: argparse.ArgumentParser, *, n: int = 100) -> None:
    """The model and data options, --dataset NAME, --root PATH, --split, --n, --start, --device."""
    add_model_options(p)
    p.add_argument("--dataset", default=None, help="mnist | fashion-mnist | cifar10 "
                   "(default: the dataset stored in the checkpoint)")
    p.add_argument("--root", default=None, help="folder with the full standard dataset files "
                   "(default: the compact copy bundled with attrbound)")
    add_data_options(p)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=int, default=n, help=f"number of inputs (default {n})")
    p.add_argument("--start", type=int, default=0, help="index of the first input (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def check_device(device: str) -> torch.device:
    """The torch device named by --device; raises AttrboundError, in one sentence, for a
    name torch does not know or a CUDA device this machine cannot use."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AttrboundError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, "
                             "cuda:1).") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise AttrboundError(f"--device {device}: CUDA is not available ({why}, torch "
                                 f"{torch.__version__}); use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AttrboundError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                                 "device(s) visible.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise AttrboundError(f"--device {device}: MPS is not available on this machine.")
    return dev


def load_model_data(args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor, dict[str, Any]]:
    """(model, images [n,...], labels [n], config) from the model, data, --n and --start
    options."""
    check_device(args.device)
    model = intake.load_model(args.model, weights=args.weights, device=args.device,
                              mean=intake.parse_floats(args.mean, "--mean"),
                              std=intake.parse_floats(args.std, "--std"))
    config = getattr(model, "config", None) or {}
    if args.data is not None:
        images, labels, _ = intake.load_data(
            args.data, size=intake.parse_size(args.size),
            domain=intake.parse_domain(args.domain or "0,1"))
    else:
        name = args.dataset or config.get("dataset")
        if not name:
            raise AttrboundError("the model names no dataset; pass --dataset or --data.")
        images, labels = data.load(name, split=args.split, root=args.root)
    if args.n < 1 or args.start < 0 or args.start >= len(images):
        raise AttrboundError(
            f"--start {args.start} / --n {args.n} select no inputs of {len(images)}."
        )
    sl = slice(args.start, args.start + args.n)
    return model, images[sl].to(args.device), labels[sl].to(args.device), config


def grid_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~attrbound.campaign.Grid` fields set by :func:`add_model_data`'s options."""
    fields = {"model": args.model, "weights": args.weights,
              "mean": intake.parse_floats(args.mean, "--mean"),
              "std": intake.parse_floats(args.std, "--std"), "dataset": args.dataset,
              "root": args.root, "data": args.data, "size": intake.parse_size(args.size),
              "split": args.split, "n": args.n, "start": args.start, "device": args.device}
    if args.domain is not None:
        fields["domain"] = intake.parse_domain(args.domain)
    return fields


def evaluate_methods(grid: Grid, kind: str, *, progress: bool, desc: str) -> list[dict[str, Any]]:
    """Evaluate ``grid`` unit by unit as the campaign does and return its rows split per
    method (:func:`attrbound.campaign.method_rows`; ``kind`` "bounds" or "attacks"), ordered
    by method, eps and input. A method that fails raises its AttrboundError."""
    check_device(grid.device)
    context = prepare(grid, raise_errors=True)
    units = plan_units(grid, len(context.images))
    rows = [flat for result in run_units(context, units, progress=progress, desc=desc)
            for row in result.rows for flat in method_rows(row, kind)]
    methods = list(grid.bounds if kind == "bounds" else grid.attacks)
    rows.sort(key=lambda r: (methods.index(r["method"]), grid.eps.index(r["eps"]), r["index"]))
    return rows


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """The JSON object given to ``option`` (None when not given)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise AttrboundError(f"{option} is not valid JSON: {text!r}.") from None
    if not isinstance(value, dict):
        raise AttrboundError(f"{option} must be a JSON object.")
    return value


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
