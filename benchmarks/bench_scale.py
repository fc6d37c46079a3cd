"""Scale: a ResNet-18-sized network, matrix-free bounds and attacks at 3x224x224, CPU.

The network is written here as users write it (torchvision's ResNet-18 layout: a 7x7 stem,
max-pool, four stages of two BasicBlocks with 64/128/256/512 channels, BatchNorm,
``nn.ReLU(inplace=True)``, global average pooling; about 11.7M parameters), with random
weights and BatchNorm statistics calibrated on random inputs in train mode, then eval().
It is piecewise linear (ReLU, max-pool), so derivative-based methods run on its softplus
surrogate (``surrogate_beta=10``).

Measured, each in its own subprocess so that the peak resident memory (ru_maxrss) belongs to
one measurement: one taylor l2 saliency bound (Lanczos on J^T J, J = the Hessian of the
logit, never formed: d = 150,528 so J alone would take 90 GB in float32), and one PGD-20
attack (l2, saliency); then at 3x32x32 the inputs per second of both at batch 16.

Run from the repository root (several minutes on 2 cores):

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/bench_scale.py

Writes benchmarks/results/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import attrbound

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.models import BasicBlock  # noqa: E402  (the tests' torchvision-style block)

OUT = ROOT / "benchmarks" / "results" / "scale.md"
BETA = 10.0


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def network(size: int) -> nn.Module:
    """Random weights; BatchNorm statistics from 4 batches of random inputs; frozen, eval."""
    torch.manual_seed(0)
    model = ResNet18()
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(8, 3, size, size))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def measure(what: str, size: int, batch: int) -> dict[str, float]:
    model = network(size)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if what == "taylor":
        res = attrbound.bound(model, x, eps=0.1, norm=2, attribution="saliency",
                              method="taylor", surrogate_beta=BETA)
        extra = {"iterations": float(res.iterations.float().mean()),
                 "value": float(res.euclidean.mean())}
    else:
        res = attrbound.attack(model, x, eps=0.1, norm=2, attribution="saliency",
                               method="pgd", steps=20, schedule="fixed", surrogate_beta=BETA)
        extra = {"value": float(res.euclidean.mean())}
    secs = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": secs, "peak_mb": peak, "model_mb": base, "params": params, **extra}


def run(what: str, size: int, batch: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--one", what, str(size), str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", nargs=3, metavar=("WHAT", "SIZE", "BATCH"))
    args = parser.parse_args()
    if args.one:
        what, size, batch = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(measure(what, size, batch)))
        return
    rows = []
    for what, size, batch in (("taylor", 224, 1), ("pgd", 224, 1),
                              ("taylor", 32, 16), ("pgd", 32, 16)):
        r = run(what, size, batch)
        print(what, size, batch, r, flush=True)
        rows.append((what, size, batch, r))
    lines = [
        "## Scale: ResNet-18-sized network (benchmarks/bench_scale.py)",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} PYTHONPATH=src "
        ".venv/bin/python benchmarks/bench_scale.py`; machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads.",
        "",
        "ResNet-18 layout, random weights, BatchNorm calibrated on random data, softplus "
        f"surrogate beta {BETA:g}; saliency, l2 eps 0.1. Peak = the subprocess's maximum "
        "resident memory; 'model' = the same before the measured call.",
        "",
        "| what | input | batch | seconds | inputs/s | peak MB | model MB | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for what, size, batch, r in rows:
        name = "taylor l2 bound" if what == "taylor" else "PGD-20 attack"
        note = f"{r['params'] / 1e6:.1f}M parameters"
        if "iterations" in r:
            note += f", {r['iterations']:.0f} Lanczos steps"
        lines.append(f"| {name} | 3x{size}x{size} | {batch} | {r['seconds']:.1f} | "
                     f"{batch / r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['model_mb']:.0f} | "
                     f"{note} |")
    lines.append("")
    lines.append("At d = 150,528 a dense Jacobian would need 150,528^2 x 4 bytes = 90.6 GB; "
                 "the peak memory above shows that none is formed.")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
