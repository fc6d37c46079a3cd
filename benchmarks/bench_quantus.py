"""Quantus' MaxSensitivity beside attrbound's attack and region bound, on the demo model.

MaxSensitivity (Quantus) estimates max ||A(x') - A(x)|| / ||A(x)|| from ``nr_samples``
uniform samples of the l-inf ball of radius ``lower_bound``; attrbound's
:class:`~attrbound.interop.WorstCaseSensitivity` gives, with the same normalisation, the
best of its pgd and ifia_topk attacks (a lower bound on the worst case) and the region bound
(an estimate of the supremum). Saliency (signed), l-inf eps 0.05, the first 100 bundled MNIST
test images, the demo's softplus CNN (``runs/models/mnist-cnn-softplus.safetensors``, trained
by ``attrbound.training.default_model`` when absent). Needs Quantus (``pip install quantus``,
the ``interop`` extra).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_quantus.py

Writes benchmarks/results/quantus.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from attrbound import attribution, data
from attrbound.interop import WorstCaseSensitivity
from attrbound.training import default_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "quantus.md"
EPS, N = 0.05, 100


def main() -> int:
    try:
        import quantus
    except ImportError:
        print("skipped: Quantus is not installed (pip install quantus, the interop extra).")
        return 0
    model, _ = default_model(progress=False)
    x, y = data.load("mnist", "test")
    x = x[:N]
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    saliency = attribution("saliency", model)

    def explain(model, inputs, targets, **_):  # Quantus' explain_func signature
        z = torch.as_tensor(inputs, dtype=torch.float32)
        return saliency(z, torch.as_tensor(targets, dtype=torch.long)).detach().numpy()

    figures: dict[str, tuple[float, float, float]] = {}
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.MaxSensitivity(nr_samples=200, lower_bound=EPS, disable_warnings=True,
                                        display_progressbar=False)
        scores = metric(model=model, x_batch=x.numpy(), y_batch=pred.numpy(), a_batch=None,
                        explain_func=explain, device="cpu")
    figures["Quantus MaxSensitivity (200 uniform samples)"] = (
        float(np.mean(scores)), float(np.median(scores)), time.perf_counter() - started)
    for score, label in (("attack", "attrbound best of pgd, ifia_topk (lower bound)"),
                         ("bound", "attrbound region bound (estimate of the sup)")):
        started = time.perf_counter()
        vals = WorstCaseSensitivity(eps=EPS, norm="inf", score=score)(model, x, pred)
        figures[label] = (float(np.mean(vals)), float(np.median(vals)),
                          time.perf_counter() - started)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    lines = [
        "## Quantus MaxSensitivity beside attrbound (benchmarks/bench_quantus.py)",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} PYTHONPATH=src "
        f".venv/bin/python benchmarks/bench_quantus.py`; commit {commit}; Quantus "
        f"{quantus.__version__}; {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads.",
        "",
        f"Demo softplus CNN, saliency, l-inf eps {EPS}, {N} bundled MNIST test images, "
        "deviation relative to ||A(x)||_2 (Quantus' normalisation).",
        "",
        "| figure | mean | median | seconds |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {m:.3f} | {med:.3f} | {s:.1f} |" for k, (m, med, s) in figures.items()]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
