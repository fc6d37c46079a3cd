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

Writes benchmarks/results/interval.md. ``--tightness``: only the tightness table of a LeNet-sized
ReLU CNN (MNIST) and a ResNet-style model (BasicBlocks with BatchNorm, CIFAR-10 3x32x32, traced
into a graph), certified / best attack per eps and attribution with seconds per input; it
replaces that section of the file.
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
from torch import nn

from attrbound import data, models
from attrbound.attacks import attack
from attrbound.errors import AttrboundError
from attrbound.interval import interval_bound
from attrbound.training import accuracy, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.models import ready  # noqa: E402

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


#: softplus surrogates that steer PGD on ReLU models: the sharper, the closer the steering map
#: is to the real one at small eps (beta 10 blurs over |q| < ~0.3, far more than eps moves q)
STEER_BETAS = (10.0, 100.0, 1000.0)


def best_attack(model, x, eps, norm, attr, opts, relu: bool) -> torch.Tensor:
    """The largest deviation of the REAL map (the one the interval bound certifies) reached per
    input: PGD with 2 restarts (on ReLU models steered by each surrogate of STEER_BETAS and
    scored by the real map at its point, ``raw_euclidean``) and 100 random points."""
    best = attack(model, x, eps=eps, norm=norm, attribution=attr, attribution_options=opts,
                  method="random", n=100, seed=0).raw_euclidean
    for beta in STEER_BETAS if relu else (None,):
        pgd = attack(model, x, eps=eps, norm=norm, attribution=attr, attribution_options=opts,
                     method="pgd", restarts=2, surrogate_beta=beta, seed=0)
        best = torch.maximum(best, pgd.raw_euclidean)
    return best.double()


class LeNet(nn.Sequential):
    """5x5 convolutions with 16 and 32 channels (ReLU, 2x2 average pooling), 128 hidden, 10."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(),
            nn.Linear(128, 10),
        )


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, identity or 1x1-conv-BN shortcut, out += identity, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Stem conv(3 -> 8, stride 2)-BN-ReLU, BasicBlocks 8 and 16 (stride 2), global average
    pooling, Linear; inputs 3x32x32."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


#: (name, builder, dataset, epochs, saliency eps per norm, integrated-gradients eps, IG steps)
TIGHT_MODELS = [
    ("lenet-relu", LeNet, "mnist", 2, {"inf": [0.002, 0.01], "2": [0.05]},
     {"inf": [0.002], "2": [0.05]}, 4),
    ("resnet-bn", ResNet, "cifar10", 1, {"inf": [0.001, 0.004], "2": [0.02]},
     {"inf": [0.001], "2": [0.02]}, 4),
]


def train_tight(name: str, build: Any, dataset: str, epochs: int) -> tuple[nn.Module, str]:
    """Train (or load the cached state of) one tightness-table model; returns it (float32,
    eval, frozen) and a line describing its data and accuracy. MNIST: the 10,000 bundled
    training images and test images 100..1999 (11,900); CIFAR-10 has no bundled training
    split, so random weights and BatchNorm statistics (seed 0). Evaluation inputs are the
    first test images (never trained on)."""
    path = CACHE / f"{name}.pt"
    torch.manual_seed(0)
    model = build()
    xt, yt = data.load(dataset, "test")
    if dataset == "cifar10":  # no bundled training split: random weights and statistics
        model = ready(model, seed=0)  # the tests' random BatchNorm statistics, eval mode
        for p in model.parameters():
            p.requires_grad_(False)
        return model, (f"| {name} | {dataset} | 0 (untrained: random weights and BatchNorm "
                       f"statistics) | 0 | - | - |")
    x, y = data.load(dataset, "train")
    if dataset == "mnist":
        x, y = torch.cat([x, xt[100:]]), torch.cat([y, yt[100:]])
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        secs = "cached"
    else:
        start = time.perf_counter()
        train(model, x, y, epochs=epochs, batch_size=64, seed=0, progress=False)
        secs = f"{time.perf_counter() - start:.0f} s"
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    acc = accuracy(model, xt[:100], yt[:100])
    return model, (f"| {name} | {dataset} | {len(x)} | {epochs} | {secs} | "
                   f"{100 * acc:.0f}% (first 100 test) |")


def tightness(args: argparse.Namespace, log: Any) -> str:
    """The tightness table: certified euclidean / best attack per eps, model, attribution."""
    rows, model_rows = [], []
    ig32 = "not run"
    for name, build, dataset, epochs, grid, ig_grid, ig_steps in TIGHT_MODELS:
        model, line = train_tight(name, build, dataset, epochs)
        model_rows.append(line)
        x = data.load(dataset, "test")[0][: args.images].clone()
        # warm-up: the first call pays one-off costs (torch.func's first use imports
        # torch._dynamo, about 1.5 s), which would otherwise land on the first row
        bound(model, x[:1], 0.001, "inf", "saliency", {}, "crown")
        attrs = [("saliency", {}, grid), ("integrated_gradients", {"steps": ig_steps}, ig_grid)]
        for attr, opts, eps_grid in attrs:
            for norm, epss in eps_grid.items():
                for eps in epss:
                    res, secs = bound(model, x, eps, norm, attr, opts, "crown")
                    att = best_attack(model, x, eps, norm, attr, opts, True)
                    cert = res.euclidean.double()
                    assert bool((cert >= att).all()), "an attack beat the certified bound"
                    ok = att > 0
                    ratios = (cert[ok] / att[ok]).tolist()
                    ratio = (f"{statistics.median(ratios):.3g} [{min(ratios):.3g}, "
                             f"{max(ratios):.3g}]" if ratios else "n/a")
                    rows.append(f"| {name} | {attr} {opts.get('steps', '')} | l{norm} {eps:g} | "
                                f"{median(cert):.3g} | {median(att):.3g} | {ratio} | "
                                f"{median(res.cosine):.3f} | {secs / len(x):.2f} |")
                    log(rows[-1])
        if name == "lenet-relu" and args.ig32:
            # issue 15's integrated-gradients target: 32 steps, l-inf 0.002, on the LeNet
            # and on attrbound's own ReLU CNN (the small-eps table's cnn-relu)
            lines = []
            for label, net in [("LeNet", model), ("cnn-relu", get_model("cnn-relu")[0])]:
                res, secs = bound(net, x, 0.002, "inf", "integrated_gradients",
                                  {"steps": 32}, "crown")
                lines.append(f"{label} {secs / len(x):.1f} s per input (certified euclidean "
                             f"median {median(res.euclidean):.3g})")
            ig32 = "; ".join(lines)
            log(f"IG 32: {ig32}")
    ig32_flag = " --ig32" if args.ig32 else ""
    return f"""## Tightness table (issue 15 models, CROWN, graph path for the ResNet)

Command: `PYTHONPATH=src .venv/bin/python benchmarks/bench_interval.py --tightness \
--images {args.images} --threads {args.threads}{ig32_flag}`; commit {_commit()}; load average
{os.getloadavg()[0]:.2f} at the end (on this 2-core machine, above about 2 means other jobs
shared the cores and the timings are inflated).

Integrated gradients with 32 steps, l-inf 0.002, the first {args.images} test images: {ig32}.

| model | data | training images | epochs | train time | accuracy |
|---|---|---:|---:|---|---:|
{chr(10).join(model_rows)}

Certified euclidean (deterministic bound, sound for the float32 model as evaluated) vs the best
attack on the same real map (pgd 2 restarts steered by softplus surrogates beta 10, 100 and
1000, each scored by the real map at its point, and random 100; an estimate
from below): medians over the first {args.images} test images, ratio certified / attack per
input as median [min, max]; certified cosine median; seconds per input of the bound.

| model | attribution | eps | certified | attack | ratio | certified cosine | s / input |
|---|---|---|---:|---:|---|---:|---:|
{chr(10).join(rows)}
"""


def _commit() -> str:
    try:
        import subprocess

        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT, check=False).stdout.strip() or "?"
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="inputs per configuration")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ig32", action="store_true",
                        help="with --tightness: also time integrated gradients at 32 steps")
    parser.add_argument("--tightness", action="store_true",
                        help="only the tightness table (LeNet, ResNet); replaces that section")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tightness:
        section = tightness(args, lambda msg: print(msg, flush=True))
        old = OUT.read_text() if OUT.is_file() else "# Certified interval bounds (CPU)\n"
        head = old.split("## Tightness table (issue 15", 1)[0].rstrip() + "\n\n"
        OUT.write_text(head + section)
        print(f"wrote {OUT}")
        return 0
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

Certified euclidean (CROWN) vs the best attack on the real map (pgd 2 restarts, on ReLU models
steered by softplus surrogates beta 10, 100, 1000 and scored by the real map; random 100) per
input: median of each, and the ratio certified / attack per input as median [min, max] over
inputs where the attack moved the map (count in "attack > 0"); "CROWN / plain": median over
inputs of the CROWN bound over the plain one (< 1: tighter). Seconds per input of each bound.

{header}
{chr(10).join(tight_rows)}
"""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
