"""`attrbound evaluate`: bounds and attacks over a grid of settings, one JSON line per
(input, attribution, norm, eps), resumable, with a summary table at the end.

Example::

    attrbound evaluate --model runs/models/mnist-cnn-softplus.safetensors --dataset mnist \\
        --n 500 --attribution saliency,integrated_gradients --norm 2,inf \\
        --eps 0.05,0.1,0.2 --bound taylor,region --attack pgd,ifia_topk,random \\
        --out runs/rows.jsonl

or the same grid from a TOML file (keys as the long options, lists as TOML arrays or
comma-separated strings; options given on the command line win)::

    attrbound evaluate --config grid.toml

    # grid.toml
    model = "runs/models/mnist-cnn-softplus.safetensors"
    n = 500
    attribution = ["saliency", "integrated_gradients"]
    norm = ["2", "inf"]
    eps = [0.05, 0.1, 0.2]
    bound = ["taylor", "region"]
    attack = ["pgd", "ifia_topk", "random"]
    out = "runs/rows.jsonl"
    [attribution_options.integrated_gradients]
    steps = 16

Interrupted (Ctrl-C, kill -9, a crash), the same command continues where it stopped: rows
already in --out are kept and skipped, a truncated last line is cut off. A --out written with
a different configuration is refused (use another --out, or --overwrite to discard it).

On several cores or a cluster (``pip install 'attrbound[ray]'``; the rows are the same as
the serial ones)::

    attrbound evaluate --config grid.toml --executor ray --workers 8      # local Ray instance
    attrbound evaluate --config grid.toml --executor ray --address HOST:6379  # join a cluster

Every worker loads the model and data files itself (the same paths must hold the same bytes
on every node: the SHA-256 is checked); this process alone writes --out. A unit whose worker
dies is retried twice, then written with ``failed`` (its reason) and counted below.
"""

from __future__ import annotations

import argparse
from typing import Any

from attrbound import intake
from attrbound.campaign import Grid, format_summary, load_toml, run_campaign, summarize
from attrbound.campaign.executor import Executor, SerialExecutor
from attrbound.cli.common import (
    add_data_options,
    add_model_options,
    check_device,
    float_list,
    json_object,
    name_list,
)
from attrbound.errors import AttrboundError

#: command-line destination -> Grid field
_FIELDS = {
    "model": "model", "weights": "weights", "mean": "mean", "std": "std", "data": "data",
    "size": "size", "domain": "domain", "dataset": "dataset", "root": "root", "split": "split",
    "n": "n",
    "start": "start", "attribution": "attributions", "attribution_options":
    "attribution_options", "norm": "norms", "eps": "eps", "bound": "bounds",
    "attack": "attacks", "steps": "steps", "step_size": "step_size", "restarts": "restarts",
    "samples": "samples",
    "k": "k", "objective": "objective", "bound_options": "bound_options",
    "surrogate_beta": "surrogate_beta", "seed": "seed", "batch_size": "batch_size",
    "device": "device",
}


def _methods(text: str) -> list[str]:
    """'a,b' -> ['a', 'b']; 'none' or '' -> []."""
    return [] if text.strip().lower() in ("", "none") else name_list(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="TOML",
                   help="grid file (TOML); options given here override it")
    add_model_options(p, required=False)
    p.add_argument("--dataset", default=None,
                   help="mnist | fashion-mnist | cifar10 (default: the checkpoint's)")
    p.add_argument("--root", default=None, help="folder with the full dataset files "
                   "(default: the bundled subset)")
    add_data_options(p)
    p.add_argument("--split", default=None, choices=["train", "test"], help="default test")
    p.add_argument("--n", type=int, default=None, help="number of inputs (default 100)")
    p.add_argument("--start", type=int, default=None, help="first input index (default 0)")
    p.add_argument("--attribution", type=name_list, default=None,
                   help="comma-separated attribution methods (default saliency)")
    p.add_argument("--attribution-options", default=None, metavar="JSON",
                   help='per-method options, e.g. \'{"integrated_gradients": {"steps": 16}}\'')
    p.add_argument("--norm", type=name_list, default=None, help="2,inf (default both)")
    p.add_argument("--eps", type=float_list, default=None,
                   help="comma-separated radii (default 0.05,0.1,0.2)")
    p.add_argument("--bound", type=_methods, default=None,
                   help="bound methods among taylor,region,interval or none "
                        "(default taylor,region)")
    p.add_argument("--attack", type=_methods, default=None,
                   help="attacks among pgd,ifia_topk,ifia_center,random or none "
                        "(default pgd,ifia_topk,random)")
    p.add_argument("--steps", type=int, default=None,
                   help="attack steps per run (default: APGD's 25)")
    p.add_argument("--step-size", type=float, default=None,
                   help="attack step size (default 2.5 eps / steps)")
    p.add_argument("--restarts", type=int, default=None,
                   help="attack runs per input (default: APGD's 2)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples of the random attack (default 200)")
    p.add_argument("--k", type=int, default=None, help="top-k size (default 100 on 28x28)")
    p.add_argument("--objective", default=None, choices=["euclidean", "cosine"],
                   help="distance that pgd and random maximise (default euclidean)")
    p.add_argument("--bound-options", default=None, metavar="JSON",
                   help="per bound method, extra keyword arguments of attrbound.bound, e.g. "
                        '\'{"region": {"ascent_steps": 5}}\'')
    p.add_argument("--smoothing", default=None, choices=["gaussian", "uniform"],
                   help="bound smoothed: the noise (default gaussian)")
    p.add_argument("--sigma", type=float, default=None,
                   help="bound smoothed: the noise's standard deviation or ball radius")
    p.add_argument("--smoothed-samples", type=int, default=None,
                   help="bound smoothed: Monte-Carlo samples per input (default 1000; "
                        "--samples is the random attack's)")
    p.add_argument("--alpha", type=float, default=None,
                   help="bound smoothed: failure probability of its cosine bound (default 1e-3)")
    p.add_argument("--surrogate-beta", type=float, default=None,
                   help="softplus surrogate beta for ReLU / max-pool models (e.g. 10)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed; the batch starting at input i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=int, default=None, help="inputs per call (default 50)")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--no-adv", action="store_true",
                   help="do not keep the attacks' x_adv for the report's gallery")
    p.add_argument("--out", default=None, help="JSON-lines rows file (appended to, resumable)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard the rows already in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("executor (where the units run; the rows do not depend on it)")
    g.add_argument("--executor", default="serial", choices=["serial", "ray"],
                   help="serial: this process (default); ray: Ray tasks (attrbound[ray])")
    g.add_argument("--workers", type=int, default=None,
                   help="ray: concurrent workers (default: the CPU count); a local Ray "
                        "instance gets this many CPUs")
    g.add_argument("--address", default=None,
                   help="ray: join this cluster (default $RAY_ADDRESS, else a local instance "
                        "started and stopped by this command)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="ray: GPUs each worker reserves, e.g. 0.25 (default 0); use with "
                        "--device cuda")
    g.add_argument("--threads-per-worker", type=int, default=None,
                   help="ray: torch threads per worker (default cores / workers)")


def grid_from_args(args: argparse.Namespace) -> tuple[Grid, str]:
    """(Grid, out path) from the TOML file (if any) overridden by the given options."""
    values: dict[str, Any] = dict(load_toml(args.config)) if args.config else {}
    out = values.pop("out", None)
    if "no_adv" in values or "no-adv" in values:
        values["save_adv"] = not values.pop("no_adv", values.pop("no-adv", False))
    given = dict(vars(args))
    given["attribution_options"] = json_object(args.attribution_options,
                                                "--attribution-options")
    given["bound_options"] = json_object(args.bound_options, "--bound-options")
    smoothed = {k: v for k, v in (("smoothing", args.smoothing), ("sigma", args.sigma),
                                  ("samples", args.smoothed_samples), ("alpha", args.alpha))
                if v is not None}
    if smoothed:  # the smoothed bound's flags, merged into its bound options
        options = dict(given["bound_options"] or values.get("bound_options") or {})
        options["smoothed"] = {**options.get("smoothed", {}), **smoothed}
        given["bound_options"] = options
    given["mean"] = intake.parse_floats(args.mean, "--mean")
    given["std"] = intake.parse_floats(args.std, "--std")
    given["size"] = intake.parse_size(args.size)
    given["domain"] = intake.parse_domain(args.domain)
    for dest, name in _FIELDS.items():
        if given.get(dest) is not None:
            values.pop(dest, None)
            values[name] = given[dest]
    if args.no_adv:
        values["save_adv"] = False
    if args.out is not None:
        out = args.out
    if not values.get("model"):
        raise AttrboundError("pass --model (or set model in the --config file).")
    if not out:
        raise AttrboundError("pass --out (or set out in the --config file).")
    return Grid.from_dict(values), str(out)


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The executor the --executor options choose."""
    if args.executor == "serial":
        given = [f"--{n.replace('_', '-')}" for n in ("workers", "address", "threads_per_worker")
                 if getattr(args, n) is not None]
        if args.gpus_per_worker:
            given.append("--gpus-per-worker")
        if given:
            raise AttrboundError(f"{', '.join(given)} need --executor ray.")
        return SerialExecutor()
    from attrbound.campaign.ray_executor import RayExecutor

    return RayExecutor(args.workers, address=args.address, gpus_per_worker=args.gpus_per_worker,
                       threads_per_worker=args.threads_per_worker)


def run(args: argparse.Namespace) -> int:
    grid, out = grid_from_args(args)
    check_device(grid.device)
    executor = executor_from_args(args)
    rows = run_campaign(grid, out, progress=not args.no_progress, overwrite=args.overwrite,
                        executor=executor)
    print(format_summary(summarize(rows)))
    failed = sum("failed" in r for r in rows)
    if failed:
        print(f"{failed} rows FAILED (their worker died; see their 'failed' field): rerun them "
              "with a new --out")
    print(f"{len(rows)} rows in {out}")
    return 0
