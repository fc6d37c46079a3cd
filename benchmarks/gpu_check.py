"""One-shot GPU check for a maintainer with a CUDA GPU (a few minutes on one GPU).

    python benchmarks/gpu_check.py            # prints one table; exits 0 without a GPU

Rows of the table:

- ``agree``: the bound on the GPU against the same bound on the CPU (same inputs, same seed:
  noise is drawn on the CPU from a seeded generator and moved to the device, docs/design.md
  section 6), for taylor and region, l2 and l-inf, saliency and integrated gradients; the
  figure is max over inputs of |U_gpu - U_cpu| / U_cpu (an estimate of the device's rounding
  spread: the certificates themselves are per device).
- ``interval``: soundness of the interval bound computed on the GPU: for each input, points z
  drawn uniformly in the ball and the domain, A(z) evaluated in float32 on the GPU with TF32
  matmuls off, then on; the figure is the number of coordinates of A(z) outside [lo, hi] and
  the largest excess relative to the interval width. TF32 rounds float32 products to a
  10-bit mantissa, so an evaluation with it on may leave an interval that contains the exact
  A(z): a count > 0 with TF32 on measures that evaluation's error, not the interval's.
- ``attacks/s`` and ``bounds/s``: throughput at batch 256 and 1024 (pgd, 20 steps, l-inf
  0.1; taylor l2 and region l-inf bounds), wall time around one call after one warm-up call,
  with torch.cuda.synchronize.

The model is runs/models/mnist-cnn-softplus.safetensors when present (``make demo`` trains
it), else an untrained softplus CNN of the same architecture (seed 0), on bundled MNIST.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attrbound import data, models
from attrbound.attacks import attack
from attrbound.attributions import attribution as make_attribution
from attrbound.bounds import bound
from attrbound.geometry import sample_ball
from attrbound.interval import attribution_intervals
from attrbound.training import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
#: integrated gradients nodes used throughout (the attribution's cost grows with them)
IG = {"steps": 8}


def _model(device: str) -> tuple[torch.nn.Module, str]:
    path = ROOT / DEFAULT_MODEL
    if path.is_file():
        model, name = models.load(path), str(DEFAULT_MODEL)
    else:
        torch.manual_seed(0)
        model = models.build({"arch": "cnn", "activation": "softplus", "beta": 10.0,
                              "input_shape": [1, 28, 28], "classes": 10, "dataset": "mnist"})
        name = "untrained softplus CNN (seed 0)"
    return models.freeze(model.eval()).to(device), name


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str) -> float:
    fn()  # warm-up: kernels, caches
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def _options(attribution: str) -> dict:
    return {"attribution_options": IG} if attribution == "integrated_gradients" else {}


def main(argv: list[str]) -> int:
    # --device cpu: a dry run of the script on the CPU (the table then compares cpu with cpu)
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cuda"
    small = "--small" in argv  # dry run: 4 inputs, batches 16 and 32
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch "
              f"({torch.__version__}, CUDA {torch.version.cuda}); nothing to check.")
        return 0
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu, gpu = _model("cpu")[0], _model(device)[0]
    name = _model("cpu")[1]
    images, _ = data.load("mnist", "test")
    x = images[:4] if small else images[:32]
    table: list[tuple[str, str, str]] = []

    for method in ("taylor", "region"):
        for norm, eps in (("2", 0.5), ("inf", 0.05)):
            for attr in ("saliency", "integrated_gradients"):
                kw = dict(eps=eps, norm=norm, attribution=attr, method=method, seed=0,
                          **_options(attr))
                u_cpu = bound(cpu, x, **kw).euclidean
                u_gpu = bound(gpu, x.to(device), **kw).euclidean.cpu()
                rel = ((u_gpu - u_cpu).abs() / u_cpu.clamp_min(1e-30)).max().item()
                table.append(("agree", f"{method} l{norm} {attr}", f"max rel diff {rel:.2e}"))

    x8 = x[:2 if small else 8].to(device)
    for norm, eps in (("2", 0.5), ("inf", 0.05)):
        for attr in ("saliency", "integrated_gradients"):
            opts = IG if attr == "integrated_gradients" else {}
            lo, hi, _, _ = attribution_intervals(gpu, x8, eps=eps, norm=norm, attribution=attr,
                                                 **opts)
            gen = torch.Generator().manual_seed(0)
            z = sample_ball(x8, eps, norm, 64, generator=gen)  # [64, b, *S]
            a = make_attribution(attr, gpu, **opts)
            with torch.no_grad():
                target = gpu(x8).argmax(1)
            for tf32 in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.allow_tf32 = tf32
                maps = a.attribute(z.flatten(0, 1), target.repeat(64)).detach()
                maps = maps.view(64, *x8.shape).double()
                width = (hi - lo).clamp_min(1e-300)
                excess = torch.maximum(lo - maps, maps - hi)
                outside = int((excess > 0).sum())
                worst = float((excess.clamp_min(0) / width).max())
                table.append(("interval", f"l{norm} {attr} TF32 {'on' if tf32 else 'off'}",
                              f"{outside} of {maps.numel()} outside, max excess/width "
                              f"{worst:.1e}"))
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    for batch in (16, 32) if small else (256, 1024):
        xb = images[:batch].to(device)
        for attr in ("saliency", "integrated_gradients"):
            secs = _timed(lambda xb=xb, attr=attr: attack(
                gpu, xb, eps=0.1, norm="inf", attribution=attr, method="pgd", steps=20,
                seed=0, **_options(attr)), device)
            table.append(("attacks/s", f"pgd {attr} batch {batch}", f"{batch / secs:,.0f}"))
        for method, norm, eps in (("taylor", "2", 0.5), ("region", "inf", 0.05)):
            secs = _timed(lambda xb=xb, method=method, norm=norm, eps=eps: bound(
                gpu, xb, eps=eps, norm=norm, method=method, seed=0), device)
            table.append(("bounds/s", f"{method} l{norm} saliency batch {batch}",
                          f"{batch / secs:,.1f}"))

    where = torch.cuda.get_device_name() if device.startswith("cuda") else "none (dry run)"
    print(f"GPU: {where}, device {device}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; model: {name}")
    width = max(len(r[1]) for r in table)
    print(f"{'check':<10} {'case':<{width}}  result")
    for kind, case, result in table:
        print(f"{kind:<10} {case:<{width}}  {result}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
