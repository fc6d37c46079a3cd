"""`attrbound train`: natural training of a zoo model, saved as a safetensors checkpoint."""

from __future__ import annotations

import argparse
import shlex
import sys

from attrbound import models


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", help="mnist | fashion-mnist | cifar10")
    p.add_argument("--root", default=None,
                   help="folder with the full standard files (default: bundled subset)")
    p.add_argument("--arch", default="cnn", choices=models.ARCHS)
    p.add_argument("--activation", default="softplus", choices=models.ACTIVATIONS)
    p.add_argument("--beta", type=float, default=10.0, help="softplus beta (default 10)")
    p.add_argument("--mode", default="natural", choices=["natural"],
                   help="training objective (default natural)")
    p.add_argument("--epochs", type=float, default=3, help="passes over the data (default 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")


def run(args: argparse.Namespace) -> int:
    from attrbound.training import train_and_save

    command = "attrbound " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _, config = train_and_save(
        args.out, dataset=args.dataset, arch=args.arch, activation=args.activation,
        beta=args.beta, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, root=args.root, command=command,
    )
    print(
        f"{config['arch']}/{config['activation']} on {config['dataset']} "
        f"({config['data']}, {config['train_size']} images, {config['epochs']} epochs, "
        f"{config['train_seconds']} s): test accuracy {100 * config['test_accuracy']:.2f}% "
        f"on {config['test_size']} images; saved {args.out}"
    )
    return 0
