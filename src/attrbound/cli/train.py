"""`attrbound train`: train a zoo model (natural or robust objective), save a safetensors file.

Modes (``--mode``; objectives and their sources in :mod:`attrbound.training.objectives`):
natural, pgd_at (Madry et al. 2018), trades (Zhang et al. 2019), ig_norm (Chen et al. 2019),
grad_norm (double backprop, Ross & Doshi-Velez 2018), curvature (CURE, Moosavi-Dezfooli et
al. 2019). Mode options left unset take the mode's defaults; one the mode does not use is an
error.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from attrbound import models
from attrbound.cli.common import check_device
from attrbound.training import train_and_save
from attrbound.training.objectives import MODES

#: CLI flag dest -> objective option name
MODE_OPTIONS = {
    "eps": "eps",
    "norm": "norm",
    "steps": "steps",
    "step_size": "step_size",
    "lam": "lam",
    "trades_beta": "beta",
    "ig_steps": "ig_steps",
    "h": "h",
    "direction": "direction",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", help="mnist | fashion-mnist | cifar10")
    p.add_argument("--root", default=None,
                   help="folder with the full standard files (default: bundled subset)")
    p.add_argument("--arch", default="cnn", choices=models.ARCHS)
    p.add_argument("--activation", default="softplus", choices=models.ACTIVATIONS)
    p.add_argument("--beta", type=float, default=10.0, help="softplus beta (default 10)")
    p.add_argument("--mode", default="natural", choices=MODES,
                   help="training objective (default natural)")
    p.add_argument("--epochs", type=float, default=None,
                   help="passes over the data (default 3; 1 for ig_norm)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--device", default="cpu", help="torch device to train on (default cpu)")
    g = p.add_argument_group("mode options (default: the mode's own defaults)")
    g.add_argument("--eps", type=float, default=None,
                   help="radius of the inner maximisation: pgd_at, trades, ig_norm (default 0.1)")
    g.add_argument("--norm", default=None, choices=["2", "inf"],
                   help="norm of that ball: pgd_at, trades, ig_norm (default inf)")
    g.add_argument("--steps", type=int, default=None,
                   help="inner PGD steps (default 10 for pgd_at and trades, 3 for ig_norm)")
    g.add_argument("--step-size", type=float, default=None,
                   help="inner PGD step size (default 2.5 eps / steps)")
    g.add_argument("--lam", type=float, default=None,
                   help="penalty weight: ig_norm 1, grad_norm 1, curvature 4 (defaults)")
    g.add_argument("--trades-beta", type=float, default=None,
                   help="TRADES' KL weight beta (default 1)")
    g.add_argument("--ig-steps", type=int, default=None,
                   help="ig_norm: integration nodes of the loss IG (default 4)")
    g.add_argument("--h", type=float, default=None,
                   help="curvature: finite-difference step h, l2 (default 1.0)")
    g.add_argument("--direction", default=None, choices=["sign", "random"],
                   help="curvature: direction z (default sign, as CURE)")


def run(args: argparse.Namespace) -> int:
    command = "attrbound " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    options = {opt: getattr(args, dest) for dest, opt in MODE_OPTIONS.items()
               if getattr(args, dest, None) is not None}
    check_device(args.device)
    _, config = train_and_save(
        args.out, dataset=args.dataset, arch=args.arch, activation=args.activation,
        beta=args.beta, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, root=args.root, command=command, mode=args.mode, options=options,
        device=args.device,
    )
    opts = ", ".join(f"{k}={v}" for k, v in config["mode_options"].items())
    print(
        f"{config['arch']}/{config['activation']} on {config['dataset']}, mode {config['mode']}"
        f"{f' ({opts})' if opts else ''} ({config['data']}, {config['train_size']} images, "
        f"{config['epochs']} epochs, {config['train_seconds']} s): test accuracy "
        f"{100 * config['test_accuracy']:.2f}% on {config['test_size']} images; saved {args.out}"
    )
    return 0
