"""Attack throughput: attacks per second on the MNIST CNN, CPU.

One attack = one input x one restart of one method. Configuration measured: PGD, 20 steps,
l-inf, eps = 0.1, euclidean objective, one restart, on ``models.cnn((1, 28, 28))`` (softplus,
channels (16, 32), hidden 128), for saliency and integrated gradients (32 Riemann-midpoint
steps), at batch 1 and 256 inputs per ``attack()`` call; plus ifia_topk and random (n = 21,
the same 21 evaluations as PGD-20) at batch 256 with saliency.

The model is the trained demo checkpoint (``runs/models/mnist-cnn-softplus.safetensors``) when
it exists, else the same architecture trained here for 1 epoch on the bundled MNIST training
images, else (no data) random weights; inputs are bundled MNIST test images when available,
else uniform noise. The table says which. Throughput hardly depends on the weights.

Run from the repository root (a few minutes on a CPU):

    PYTHONPATH=src .venv/bin/python benchmarks/bench_attacks.py

Writes benchmarks/results/attacks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from attrbound import data, models
from attrbound.attacks import attack
from attrbound.training import accuracy, train

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "runs" / "models" / "mnist-cnn-softplus.safetensors"
OUT = ROOT / "benchmarks" / "results" / "attacks.md"


def load_model() -> tuple[torch.nn.Module, str]:
    """The demo checkpoint if present; else train 1 epoch on bundled MNIST; else random."""
    if CHECKPOINT.is_file():
        try:
            return models.load(CHECKPOINT), f"trained checkpoint {CHECKPOINT.relative_to(ROOT)}"
        except Exception as exc:  # noqa: BLE001 - fall back, and say so in the table
            print(f"cannot load {CHECKPOINT}: {exc}", file=sys.stderr)
    torch.manual_seed(0)
    model = models.cnn((1, 28, 28))
    try:
        x, y = data.load("mnist", "train")
        xt, yt = data.load("mnist", "test")
        start = time.perf_counter()
        train(model, x, y, epochs=1, batch_size=64, seed=0, progress=False)
        secs = time.perf_counter() - start
        acc = accuracy(model, xt, yt)
        return models.freeze(model), (
            f"models.cnn((1,28,28)) softplus, trained here: 1 epoch on the {len(x)} bundled "
            f"MNIST training images ({secs:.0f} s), test accuracy {100 * acc:.1f}% on "
            f"{len(xt)} bundled test images"
        )
    except Exception as exc:  # noqa: BLE001 - no data files: random weights
        print(f"cannot train ({exc}); using random weights", file=sys.stderr)
    return models.freeze(model), "UNTRAINED models.cnn((1,28,28)) softplus (seed 0)"


def load_inputs(n: int) -> tuple[torch.Tensor, str]:
    try:
        images, _ = data.load("mnist", "test")
        return images[:n].clone(), f"first {n} bundled MNIST test images"
    except Exception:  # noqa: BLE001 - no data files: noise
        g = torch.Generator().manual_seed(0)
        return torch.rand(n, 1, 28, 28, generator=g), f"{n} uniform-noise images"


def timed(model, x, reps: int, **kw) -> tuple[int, list[float]]:
    """(attack runs per call, seconds of each of ``reps`` calls)."""
    times, runs = [], 0
    for r in range(reps):
        res = attack(model, x, seed=r, **kw)
        times.append(res.seconds)
        runs = res.runs
    return runs, times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip integrated gradients at 256")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, torch.get_num_threads())))
    model, model_desc = load_model()
    x, input_desc = load_inputs(256)
    common = dict(eps=0.1, norm="inf", steps=20, restarts=1)
    # warm-up (allocator, thread pool)
    attack(model, x[:8], **common)
    attack(model, x[:2], attribution="integrated_gradients", **common)

    cases = [
        ("pgd", "saliency", 1, 30, {}),
        ("pgd", "saliency", 256, 3, {}),
        ("pgd", "integrated_gradients", 1, 5, {}),
        ("pgd", "integrated_gradients", 256, 1, {}),
        ("ifia_topk", "saliency", 256, 3, {}),
        ("random", "saliency", 256, 3, {"n": 21}),
    ]
    if args.quick:
        cases = [c for c in cases if not (c[1] == "integrated_gradients" and c[2] == 256)]
    rows = []
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    for method, attr, batch, reps, extra in cases:
        kw = dict(common, method=method, attribution=attr, **extra)
        if batch == 1:  # different inputs on different calls
            runs, times = 1, []
            for r in range(reps):
                times.append(attack(model, x[r : r + 1], seed=r, **kw).seconds)
        else:
            runs, times = timed(model, x[:batch], reps, **kw)
        # the fastest call estimates the machine's rate (other jobs share these cores);
        # the median shows how much they slowed it down
        best, med = min(times), statistics.median(times)
        rate = runs / best
        ten_m = 1e7 / rate / 3600
        rows.append((method, attr, batch, reps, best, med, rate, runs / med, ten_m))
        print(f"{method:<10} {attr:<22} batch {batch:>3}: {rate:8.2f} attacks/s "
              f"(best {best:.3f} s, median {med:.3f} s per call of {reps}); "
              f"10M attacks: {ten_m:,.0f} h", flush=True)
    total = time.perf_counter() - started

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    lines = [
        "# Attack throughput (CPU)",
        "",
        "Command: `PYTHONPATH=src .venv/bin/python benchmarks/bench_attacks.py`",
        "",
        f"- Machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
        f"{platform.system()}; load average during the run {load_before:.2f} -> "
        f"{os.getloadavg()[0]:.2f} (other jobs share these cores)",
        f"- Model: {model_desc}",
        f"- Inputs: {input_desc}",
        "- Attack: l-inf, eps 0.1, 20 steps (21 scored iterates), 1 restart, euclidean "
        "objective; ifia_topk k = 100; random n = 21 (the same number of evaluations); "
        "integrated gradients with 32 Riemann-midpoint steps; default batch_size (512 "
        "model evaluations per pass: 16 inputs per pass for integrated gradients).",
        "- One attack = one input x one restart. Rate = inputs / wall time of the fastest "
        "`attack()` call of those made (including the clean maps, the final re-evaluation at "
        "x_adv and all five metrics); the median call's rate is shown beside it, "
        "since other jobs share these 2 cores. 10M attacks = hours for ten million attacks "
        "at the best rate, on this machine.",
        "",
        "| method | attribution | batch | calls | best s/call | median s/call | attacks/s "
        "(best) | attacks/s (median) | 10M attacks (h) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, attr, batch, reps, best, med, rate, rate_med, ten_m in rows:
        lines.append(f"| {method} | {attr} | {batch} | {reps} | {best:.3f} | {med:.3f} | "
                     f"{rate:.2f} | {rate_med:.2f} | {ten_m:,.0f} |")
    lines += ["", f"Total benchmark time: {total:.0f} s.", ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
