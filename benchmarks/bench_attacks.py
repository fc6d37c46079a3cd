"""Attack throughput on the MNIST CNN (CPU), and the default attack against fixed-step PGD.

One attack = one input x one restart of one method. Configuration measured: PGD, 20 steps,
l-inf, eps = 0.1, euclidean objective, one restart, on ``models.cnn((1, 28, 28))`` (softplus,
channels (16, 32), hidden 128), for saliency and integrated gradients (32 Riemann-midpoint
steps), at batch 1 and 256 inputs per ``attack()`` call; plus ifia_topk and random (n = 21,
the same 21 evaluations as PGD-20) at batch 256 with saliency.

The model is the trained demo checkpoint (``runs/models/mnist-cnn-softplus.safetensors``) when
it exists, else the same architecture trained here for 1 epoch on the bundled MNIST training
images, else (no data) random weights; inputs are bundled MNIST test images when available,
else uniform noise. The table says which. Throughput hardly depends on the weights.

Strength (section 2): on the same inputs, fixed-step PGD (``schedule="fixed"``: PGD-20,
PGD-50, PGD-100 with 4 restarts) against the default attack (``attack()`` with its default
schedule, steps and restarts), for saliency and integrated gradients (4 steps, as the demo),
l-inf eps 0.05 and 0.1 and l2 eps 0.1 and 0.2 (values of the demo's grid): mean and median
euclidean deviation, their ratio to PGD-100x4, the share of inputs where the default reaches
PGD-100x4, gradient evaluations per input and seconds.

Run from the repository root (about 15 minutes on 2 shared CPU cores):

    PYTHONPATH=src .venv/bin/python benchmarks/bench_attacks.py

Writes benchmarks/results/attacks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from attrbound import data, models
from attrbound.attacks import DEFAULT_APGD_RESTARTS, DEFAULT_APGD_STEPS, attack
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


def commit() -> str:
    """The checked-out commit (short hash), with '+ uncommitted changes' when the tree differs."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + (" + uncommitted changes under src/" if dirty else "")


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


#: fixed-step references of the strength section: (label, steps, restarts)
FIXED = (("PGD-20", 20, 1), ("PGD-50", 50, 1), ("PGD-100x4", 100, 4))
#: (attribution, its options, norm, eps) of the strength section
SETTINGS = [(attr, opts, norm, eps)
            for attr, opts in (("saliency", {}), ("integrated_gradients", {"steps": 4}))
            for norm, eps in (("inf", 0.05), ("inf", 0.1), ("2", 0.1), ("2", 0.2))]


def strength(model, x: torch.Tensor, n_ig: int) -> list[str]:
    """Section 2: the default attack against fixed-step PGD on the same inputs (markdown)."""
    default = (f"default (apgd {DEFAULT_APGD_STEPS} x {DEFAULT_APGD_RESTARTS})", None, None)
    lines = [
        "| attribution | norm | eps | inputs | attack | gradient evaluations / input | "
        "mean | median | mean / PGD-100x4 | median / PGD-100x4 | inputs >= PGD-100x4 | "
        "seconds |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for attr, opts, norm, eps in SETTINGS:
        xs = x if attr == "saliency" else x[:n_ig]
        runs = {}
        for label, steps, restarts in (*FIXED, default):
            kw = {} if steps is None else dict(schedule="fixed", steps=steps, restarts=restarts)
            res = attack(model, xs, eps=eps, norm=norm, attribution=attr,
                         attribution_options=opts, **kw)
            runs[label] = (res.euclidean, res.steps * res.restarts, res.seconds)
        ref = runs["PGD-100x4"][0]
        for label, (dev, evals, secs) in runs.items():
            reach = (dev >= ref * (1 - 1e-6)).float().mean().item()
            lines.append(
                f"| {attr} | {norm} | {eps:g} | {len(xs)} | {label} | {evals} | "
                f"{dev.mean():.4f} | {dev.median():.4f} | {dev.mean() / ref.mean():.3f} | "
                f"{dev.median() / ref.median():.3f} | {100 * reach:.0f}% | {secs:.1f} |")
            print(lines[-1], flush=True)
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip integrated gradients at 256")
    p.add_argument("--skip-throughput", action="store_true",
                   help="only the strength section (section 1 then points to its last run)")
    p.add_argument("--n", type=int, default=64, help="inputs of the strength section (64)")
    p.add_argument("--n-ig", type=int, default=32,
                   help="of which integrated gradients attacks the first (32)")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, torch.get_num_threads())))
    model, model_desc = load_model()
    x, input_desc = load_inputs(256)
    common = dict(eps=0.1, norm="inf", steps=20, restarts=1, schedule="fixed")
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
    if args.skip_throughput:
        cases = []
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
    load_strength = os.getloadavg()[0]
    started = time.perf_counter()
    table = strength(model, x[: args.n], args.n_ig)
    total_strength = time.perf_counter() - started

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    lines = [
        "# Attacks on the MNIST CNN (CPU): throughput, and the default attack's strength",
        "",
        "Command: `PYTHONPATH=src .venv/bin/python benchmarks/bench_attacks.py"
        + "".join(f" {arg}" for arg in sys.argv[1:]) + "`",
        "",
        f"- Commit: {commit()}",
        "",
        f"- Machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
        f"{platform.system()}; load average during the run {load_before:.2f} -> "
        f"{os.getloadavg()[0]:.2f} (other jobs share these cores)",
        f"- Model: {model_desc}",
        f"- Inputs: {input_desc}",
        "",
        "## 1. Throughput",
        "",
        "- Attack: l-inf, eps 0.1, fixed-step schedule, 20 steps (21 scored iterates), 1 "
        "restart, euclidean objective (the APGD schedule costs the same per step); "
        "ifia_topk k = 100; random n = 21 (the same number of evaluations); "
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
    if not rows:
        lines.append("| not measured in this run (`--skip-throughput`): see this file at commit "
                     "1dca4a4 for the last measurement (fixed-step PGD-20) | | | | | | | | |")
    lines += ["", f"Section time: {total:.0f} s.", "",
              "## 2. The default attack against fixed-step PGD", "",
              "Same inputs (the first of those above) for every attack of a row group; "
              "deviation = ||A(x_adv) - A(x)||_2 (euclidean objective) on the model's map; "
              "PGD-k(xR) = `attack(..., schedule='fixed', steps=k, restarts=R)` (step 2.5 eps "
              "/ k, the attack of earlier versions); default = `attack(...)` with no budget "
              "given. Integrated gradients with 4 steps (the demo's). Cost in gradient "
              "evaluations (steps x restarts per input; each run also scores its last "
              "iterate; the default's spectral start adds at most 10 products with J^T J "
              "per input); seconds are one call each, while other jobs shared the 2 cores "
              f"(load average {load_strength:.2f} -> {os.getloadavg()[0]:.2f}), so compare "
              "the evaluations. Every deviation is a lower bound on the worst case: higher is "
              "stronger.", "", *table, "", f"Section time: {total_strength:.0f} s.", ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
