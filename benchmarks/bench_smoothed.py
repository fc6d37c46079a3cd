"""Certified bounds for smoothed attributions (method="smoothed"), CPU.

For a Gaussian-smoothed normalised saliency map h(x) = E[u(x + sigma xi)], per model and
sigma in {0.12, 0.25, 0.5}: the certified euclidean bound (deterministic) and cosine bound
(probability >= 1 - alpha, alpha = 1e-3, 1,000 samples) against eps for l2 and l-inf, the
best attack beside them at a few eps, and the time per input; then one ResNet-18-sized
224x224 row (time per input at 100 and 1,000 samples).

Models: the bundled MNIST CNN (models.cnn((1, 28, 28)), softplus; the demo checkpoint when
present, else trained 1 epoch here as bench_attacks.py does) and a CIFAR-size ResNet
(tests/helpers/models.py ResNet, channels 16/32/64, ReLU, BatchNorm, RANDOM weights and
BatchNorm statistics) on bundled CIFAR-10 test images; ResNet-18 (bench_scale.py, random
weights) on random 3x224x224 inputs.

Attack beside the certificate (one eps per norm), re-measured on h with the certificate's
own 1,000 draws (independent of x_adv; the same draws at x and x_adv), so the figure is an
ESTIMATE of the true deviation of h:
- MNIST CNN (smooth): attrbound.attack(method="pgd", 10 steps) on the ``smoothed``
  attribution (32 fixed samples, seed 1);
- CIFAR ResNet (ReLU): 10 steps of PGD on the real model's smoothed map, differentiated
  through the smoothing identity with 64 fresh samples per step (attrbound.attack would
  require a softplus surrogate for a ReLU model).

The 224x224 row runs with 100 samples unless SCALE_SAMPLES=100,1000 is set;
SCALE_ONLY=1 SCALE_SAMPLES=1000 adds that row to an existing results file.

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/bench_smoothed.py

Writes benchmarks/results/smoothed.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import attrbound
from attrbound import data, models
from attrbound import smoothing as sm
from attrbound.attributions import Smoothed
from attrbound.bounds.smoothed import estimate
from attrbound.results import cosine_from_euclidean
from attrbound.training import accuracy, train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_scale import network as resnet18  # noqa: E402
from helpers.models import ResNet, ready  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "smoothed.md"
CHECKPOINT = ROOT / "runs" / "models" / "mnist-cnn-softplus.safetensors"
SIGMAS = (0.12, 0.25, 0.5)
EPS = {"2": (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
       "inf": (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)}
ATTACK_EPS = {"2": (0.1,), "inf": (0.002,)}
N_INPUTS, SAMPLES, ALPHA = 4, 1000, 1e-3
N_RESNET = 2  # inputs of the CIFAR ResNet (its attacks take minutes on 2 cores)
SCALE_SAMPLES = tuple(int(v) for v in os.environ.get("SCALE_SAMPLES", "100").split(","))


def mnist_cnn() -> tuple[nn.Module, Tensor, str]:
    x, _ = data.load("mnist", "test")
    if CHECKPOINT.is_file():
        return models.load(CHECKPOINT), x[:N_INPUTS], f"checkpoint {CHECKPOINT.name}"
    torch.manual_seed(0)
    model = models.cnn((1, 28, 28))
    xt, yt = data.load("mnist", "train")
    train(model, xt, yt, epochs=1, batch_size=64, seed=0, progress=False)
    acc = accuracy(model, *data.load("mnist", "test"))
    return models.freeze(model), x[:N_INPUTS], f"trained 1 epoch here, accuracy {acc:.3f}"


def cifar_resnet() -> tuple[nn.Module, Tensor, str]:
    torch.manual_seed(0)
    model = ready(ResNet(3, (16, 32, 64), 10))
    for p in model.parameters():
        p.requires_grad_(False)
    x, _ = data.load("cifar10", "test")
    return model, x[:N_RESNET], "random weights and BatchNorm statistics"


def measure(model: nn.Module, z: Tensor, target: Tensor, sigma: float) -> Tensor:
    """h_n(z) with the certificate's own 1,000 draws (seed 0, batch_size 256): float64."""
    base = attrbound.attribution("saliency", model)
    with torch.no_grad():
        return estimate(base, z, target, smoothing="gaussian", sigma=sigma, samples=SAMPLES,
                        seed=0, batch_size=256)


def fresh_pgd(model: nn.Module, x: Tensor, target: Tensor, eps: float, norm: str,
              sigma: float, steps: int = 10) -> Tensor:
    """PGD on ||h(z) - h(x)|| with 64 fresh samples per step (seed = step), domain [0, 1]."""
    a0 = Smoothed(model, sigma=sigma, samples=256, seed=999).attribute(x, target).detach()
    delta = torch.zeros_like(x)
    alpha = 2.5 * eps / steps
    for k in range(steps):
        attr = Smoothed(model, sigma=sigma, samples=64, seed=k)
        delta = delta.detach().requires_grad_(True)
        dev = (attr.attribute(x + delta, target) - a0).flatten(1).norm(dim=1)
        (g,) = torch.autograd.grad(dev.sum(), delta)
        if norm == "inf":
            delta = (delta + alpha * g.sign()).clamp(-eps, eps)
        else:
            gn = g.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
            delta = delta + alpha * g / gn
            dn = delta.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
            delta = delta * (eps / dn).clamp(max=1.0)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def best_attack(model: nn.Module, x: Tensor, h_x: Tensor, target: Tensor, eps: float,
                norm: str, sigma: float, relu: bool) -> float:
    """Median over inputs of ||h_n(x_adv) - h_n(x)||, x_adv from ``pgd (library)`` (smooth
    models) or ``pgd (fresh)`` (ReLU models), h_n with the certificate's draws."""
    if relu:
        z = fresh_pgd(model, x, target, eps, norm, sigma)
    else:
        attr = attrbound.attribution("smoothed", model, sigma=sigma, samples=32, seed=1)
        z = attrbound.attack(model, x, eps=eps, norm=norm, attribution=attr, method="pgd",
                             steps=10, target=target).x_adv
    return float((measure(model, z, target, sigma) - h_x).flatten(1).norm(dim=1).median())


def certified(x: Tensor, eps: float, norm: str, sigma: float) -> Tensor:
    """E [B]: the deterministic bound method="smoothed" returns (the same functions)."""
    rho = sm.l2_radius(x, eps, norm, (0.0, 1.0))
    d = x[0].numel()
    return torch.tensor([sm.deviation_bound("gaussian", r, sigma, d) for r in rho.tolist()],
                        dtype=torch.float64)


def model_rows(name: str, model: nn.Module, x: Tensor, relu: bool) -> list[str]:
    lines = []
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    for sigma in SIGMAS:
        started = time.perf_counter()
        res = attrbound.bound(model, x, eps=1.0, norm=2, method="smoothed", sigma=sigma,
                              samples=SAMPLES, alpha=ALPHA, target=target, batch_size=256)
        per_input = (time.perf_counter() - started) / x.shape[0]
        h_norm = float(res.attr_norm.median())
        lower = float(res.extra["attr_norm_lower"].median())
        for norm in ("2", "inf"):
            trail, star = [], None
            for eps in EPS[norm]:
                dev = certified(x, eps, norm, sigma)
                e_med = float(dev.median())
                c_med = float(cosine_from_euclidean(dev, res.extra["attr_norm_lower"]).median())
                star = eps if c_med > 0.5 else star
                trail.append(f"{eps:g}:{e_med:.3f}/{c_med:.2f}")
            attacks = []
            for eps in ATTACK_EPS[norm]:
                dev = best_attack(model, x, res.extra["estimate"], target, eps, norm, sigma,
                                  relu)
                e_med = float(certified(x, eps, norm, sigma).median())
                attacks.append(f"{eps:g}: {dev:.3f} (E {e_med:.3f})")
            lines.append(f"| {name} | {sigma:g} | {norm} | {per_input:.2f} | {h_norm:.3f} | "
                         f"{lower:.3f} | {star if star is not None else '< grid'} | "
                         f"{' '.join(trail)} | {'; '.join(attacks)} |")
            print(lines[-1], flush=True)
    return lines


def scale_rows() -> list[str]:
    model = resnet18(224)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    lines = []
    for n in SCALE_SAMPLES:
        started = time.perf_counter()
        res = attrbound.bound(model, x, eps=0.5, norm=2, method="smoothed", sigma=0.25,
                              samples=n, batch_size=32)
        secs = time.perf_counter() - started
        lines.append(f"| ResNet-18, 3x224x224 | 0.25 | {n} | {secs:.1f} | "
                     f"{float(res.attr_norm[0]):.3f} | {float(res.extra['attr_norm_lower'][0]):.3f}"
                     f" | {float(res.euclidean[0]):.3f} | {float(res.cosine[0]):.3f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> int:
    if os.environ.get("SCALE_ONLY"):  # add the 224x224 rows of SCALE_SAMPLES to the file
        text, rows = OUT.read_text(), scale_rows()
        last = text.rindex("| ResNet-18, 3x224x224 |")
        end = text.index("\n", last)
        OUT.write_text(text[:end + 1] + "\n".join(rows) + text[end:])
        return 0
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    cnn, xm, cnn_note = mnist_cnn()
    res, xc, res_note = cifar_resnet()
    rows = model_rows("MNIST CNN (softplus)", cnn, xm, relu=False)
    rows += model_rows("CIFAR ResNet (ReLU)", res, xc, relu=True)
    scale = scale_rows()
    total = time.perf_counter() - started
    text = f"""# Certified bounds for smoothed attributions (CPU)

Command: `OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/bench_smoothed.py`
(commit {commit})

- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch
  {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()};
  load average {load0:.2f} -> {os.getloadavg()[0]:.2f} (other jobs shared these cores, so
  the timings are upper figures).
- Map: h(x) = E[u(x + sigma xi)], u = saliency / ||saliency||, Gaussian smoothing, the
  predicted class. Certificate: `attrbound.bound(..., method="smoothed", samples={SAMPLES},
  alpha={ALPHA:g})`; E (euclidean) is deterministic, the cosine holds with probability
  >= 1 - {ALPHA:g} over attrbound's own samples (||h|| >= ||h_n|| - t, t = 0.149 at n = 1,000).
- MNIST CNN: {cnn_note}; {N_INPUTS} bundled MNIST test images. CIFAR ResNet: {res_note};
  {N_RESNET} bundled CIFAR-10 test images.
- Columns: s/input = the certificate at {SAMPLES} samples; ||h_n|| and its lower bound L
  (medians); eps* = the largest eps of the grid with median certified cosine > 0.5; trail
  eps:E/cosine (medians); attack = PGD on the smoothed map (module docstring), median over
  inputs of its deviation re-measured on h with {SAMPLES} samples (an ESTIMATE), beside the
  certified E.

| model | sigma | norm | s/input | h_n norm | L | eps* | trail eps:E/cos | attack eps: dev (E) |
|---|---:|---|---:|---:|---:|---:|---|---|
""" + "\n".join(rows) + """

## ResNet-18 at 3x224x224 (random weights, one random input, l2 eps 0.5, sigma 0.25)

| model | sigma | samples | s/input | h_n norm | L | E | certified cosine |
|---|---:|---:|---:|---:|---:|---:|---:|
""" + "\n".join(scale) + f"""

Total benchmark time: {total:.0f} s.
"""
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
