"""Certified interval bounds (method "interval") on naturally trained MNIST models, CPU.

For MNIST MLP and CNN classifiers (ReLU and softplus), trained here with
attrbound.training.train on the bundled MNIST training images and cached under
runs/bench_interval/, and the first bundled test images:

1. eps*: the largest eps of a grid at which the certified cosine lower bound of the MEDIAN input
   stays above 0.5, for the plain bound (tightening="none": interval arithmetic + the exact l2
   first-layer radius) and the default CROWN-tightened one (tightening="crown");
2. tightness at a small eps: certified euclidean / best attack euclidean per input (attack: the
   larger of attrbound.attacks.attack "pgd" with 2 restarts and "random" with 100 samples; ReLU
   models steered by the softplus surrogate, beta 10), and how much CROWN shrinks the plain
   bound;
3. seconds per input of each bound.

Saliency and integrated gradients for all models (Riemann-midpoint, 8 steps for the MLPs, 4 for
the CNNs, whose bounds cost more per step).

Run from the repository root (about 6-10 minutes on 2 quiet cores; training adds ~1 min the
first time):

    PYTHONPATH=src .venv/bin/python benchmarks/bench_interval.py

Writes benchmarks/results/interval.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from attrbound import data, models
from attrbound.attacks import attack
from attrbound.errors import AttrboundError
from attrbound.interval import interval_bound
from attrbound.training import accuracy, train

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "bench_interval"
OUT = ROOT / "benchmarks" / "results" / "interval.md"

MODELS: dict[str, dict[str, Any]] = {
    "mlp-relu": {"arch": "mlp", "activation": "relu", "hidden": [128, 64]},
    "mlp-softplus": {"arch": "mlp", "activation": "softplus", "hidden": [128, 64]},
    "cnn-relu": {"arch": "cnn", "activation": "relu", "channels": [8, 16], "hidden": 64},
    "cnn-softplus": {"arch": "cnn", "activation": "softplus", "channels": [8, 16], "hidden": 64},
}
GRIDS = {
    "inf": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1],
    "2": [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0],
}
SMALL = {"inf": 1e-3, "2": 1e-2}
EPOCHS = 2


def get_model(name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The cached checkpoint, or train EPOCHS epochs on the bundled MNIST and cache it."""
    path = CACHE / f"mnist-{name}.safetensors"
    if path.is_file():
        try:
            model = models.load(path)
            return model, model.config  # type: ignore[return-value]
        except AttrboundError as exc:
            print(f"retraining {name}: {exc}", file=sys.stderr)
    config = dict(MODELS[name], input_shape=[1, 28, 28], classes=10, beta=10.0, dataset="mnist")
    torch.manual_seed(0)
    model = models.build(config)
    x, y = data.load("mnist", "train")
    xt, yt = data.load("mnist", "test")
    start = time.perf_counter()
    train(model, x, y, epochs=EPOCHS, batch_size=64, seed=0, progress=False)
    config.update({"epochs": EPOCHS, "train_size": len(x),
                   "train_seconds": round(time.perf_counter() - start, 1),
                   "test_accuracy": accuracy(model, xt, yt), "test_size": len(xt),
                   "training_command": "benchmarks/bench_interval.py"})
    models.save(model, path, config)
    model.config = config  # type: ignore[assignment]
    return models.freeze(model), config


def median(t: torch.Tensor) -> float:
    return statistics.median(t.double().tolist())


def bound(model, x, eps, norm, attr, opts, tightening) -> tuple[Any, float]:
    start = time.perf_counter()
    res = interval_bound(model, x, eps=eps, norm=norm, attribution=attr, tightening=tightening,
                         **opts)
    return res, time.perf_counter() - start


def search(model, x, norm, attr, opts, tightening, log) -> tuple[float | None, list[str]]:
    """Largest grid eps with median certified cosine > 0.5 (ascending; stops at the first
    failure: the bound grows with eps)."""
    best, trail = None, []
    for eps in GRIDS[norm]:
        res, secs = bound(model, x, eps, norm, attr, opts, tightening)
        cos = median(res.cosine)
        trail.append(f"{eps:g}:{cos:.2f}")
        log(f"  {tightening:5s} eps {eps:g}: median cos {cos:.3f} ({secs:.1f}s)")
        if cos > 0.5:
            best = eps
        else:
            break
    return best, trail


def best_attack(model, x, eps, norm, attr, opts, relu: bool) -> torch.Tensor:
    beta = 10.0 if relu else None
    pgd = attack(model, x, eps=eps, norm=norm, attribution=attr, attribution_options=opts,
                 method="pgd", restarts=2, surrogate_beta=beta, seed=0)
    rnd = attack(model, x, eps=eps, norm=norm, attribution=attr, attribution_options=opts,
                 method="random", n=100, seed=0)
    return torch.maximum(pgd.euclidean, rnd.euclidean).double()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="inputs per configuration")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    images, labels = data.load("mnist", "test")
    x = images[: args.images].clone()

    def log(msg: str) -> None:
        print(msg, flush=True)

    model_rows, eps_rows, tight_rows = [], [], []
    for name in MODELS:
        model, cfg = get_model(name)
        acc = cfg.get("test_accuracy", float("nan"))
        correct = int((model(x).argmax(1) == labels[: args.images]).sum())
        model_rows.append(
            f"| {name} | {cfg['arch']} {cfg.get('hidden')} {cfg.get('channels', '')} | "
            f"{100 * acc:.1f}% | {cfg.get('train_seconds', '?')} | {correct}/{args.images} |"
        )
        attrs = [("saliency", {}),
                 ("integrated_gradients", {"steps": 8 if cfg["arch"] == "mlp" else 4})]
        for attr, opts in attrs:
            for norm in ("inf", "2"):
                log(f"{name} {attr} l{norm}")
                star = {}
                for tightening in ("none", "crown"):
                    star[tightening], trail = search(model, x, norm, attr, opts, tightening, log)
                eps = SMALL[norm]
                plain, t_plain = bound(model, x, eps, norm, attr, opts, "none")
                crown, t_crown = bound(model, x, eps, norm, attr, opts, "crown")
                att = best_attack(model, x, eps, norm, attr, opts, cfg["activation"] == "relu")
                cert = crown.euclidean.double()
                ok = att > 0
                ratios = (cert[ok] / att[ok]).tolist()
                assert bool((cert >= att).all()), "an attack beat the certified bound"
                shrink = median(crown.euclidean.double() / plain.euclidean.double())
                fmt = lambda e: "< grid" if e is None else f"{e:g}"  # noqa: E731
                eps_rows.append(
                    f"| {name} | {attr} | l{norm} | {fmt(star['none'])} | {fmt(star['crown'])} "
                    f"| {' '.join(trail)} |"
                )
                ratio_txt = (f"{statistics.median(ratios):.3g} [{min(ratios):.3g}, "
                             f"{max(ratios):.3g}]" if ratios else "n/a (attack 0)")
                tight_rows.append(
                    f"| {name} | {attr} | l{norm} {eps:g} | {median(cert):.3g} | "
                    f"{median(att):.3g} | {ratio_txt} | {sum(ok)}/{len(ok)} | {shrink:.3f} | "
                    f"{t_plain / len(x):.3f} | {t_crown / len(x):.2f} |"
                )
                log(tight_rows[-1])
    total = time.perf_counter() - started
    load1 = os.getloadavg()[0]
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    grid_inf = ", ".join(f"{e:g}" for e in GRIDS["inf"])
    grid_2 = ", ".join(f"{e:g}" for e in GRIDS["2"])
    header = ("| model | attribution | eps | certified | attack | ratio | attack > 0 | "
              "CROWN / plain | s plain | s CROWN |\n"
              "|---|---|---|---:|---:|---|---:|---:|---:|---:|")
    text = f"""# Certified interval bounds (CPU)

Command: `PYTHONPATH=src .venv/bin/python benchmarks/bench_interval.py --images {args.images} \
--threads {args.threads}`

- Machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({args.threads}
  threads), Python {platform.python_version()}; load average {load0:.2f} -> {load1:.2f} (other
  jobs share these cores: timings are inflated by that factor or so)
- Models: trained here, {EPOCHS} epochs of natural training (Adam, attrbound.training.train) on
  the 10,000 bundled MNIST training images; cached in runs/bench_interval/. Softplus: beta 10.
- Inputs: the first {args.images} bundled MNIST test images, domain [0, 1]; target = predicted
  class. Bounds sound for the float32 models as evaluated (default evaluation="float").
- Integrated gradients: zero baseline, Riemann-midpoint nodes, 8 steps (MLPs), 4 (CNNs).
- Total benchmark time: {total:.0f} s.

| model | architecture (hidden, channels) | test accuracy | train s | inputs correct |
|---|---|---:|---:|---:|
{chr(10).join(model_rows)}

## Largest eps with certified median cosine > 0.5

Grid l-inf: {grid_inf}; l2: {grid_2}.
"< grid": not even at the smallest. Trail: eps:median certified cosine, CROWN.

| model | attribution | norm | eps* plain | eps* CROWN | CROWN trail |
|---|---|---|---:|---:|---|
{chr(10).join(eps_rows)}

## Tightness at a small eps

Certified euclidean (CROWN) vs the best attack (pgd 2 restarts, random 100) per input: median
of each, and the ratio certified / attack per input as median [min, max] over inputs where the
attack moved the map (count in "attack > 0"); "CROWN / plain": median over inputs of the CROWN
bound over the plain one (< 1: tighter). Seconds per input of each bound.

{header}
{chr(10).join(tight_rows)}
"""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
