"""How much of the sup region estimates: its own search against the attacks' points.

region is eps x sup_{z in P(x)} ||J(z)||_{p->2}, the sup estimated by a search (docs/design.md
section 3.2). This benchmark measures, on the demo's model and settings, how far the search
region runs on its own (``bound(..., method="region")``: x, 8 random points, 10 ascent
steps) gets, against the same search given the points of three attacks
(``points=``: each attack's result and every run's best iterate, the segments from x to
them searched), as ``attrbound evaluate`` does, and with its own short attack
(``attack_steps=5``: pgd, 5 steps x 2 runs):

- ``with points / own``: ratio of the two region values per input (both are lower
  estimates of the same sup: the larger is the better estimate);
- ``attack / own``, ``attack / with points``: the best deviation of the three attacks
  (pgd 50 steps x 2 runs, ifia_topk 50 steps, random 200 samples) over each;
  ``beaten``: inputs where the attack exceeds the region value (a violation);
- ``attack_steps=5``: the same for region with its own attack, and its time / region's.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_region_search.py   # about 20 min

Writes benchmarks/results/region_search.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from attrbound import data
from attrbound.attacks import attack
from attrbound.bounds import bound
from attrbound.training import default_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "region_search.md"
#: the demo's attributions and their options
ATTRIBUTIONS = (("saliency", {}), ("integrated_gradients", {"steps": 4}))
SETTINGS = (("inf", 0.05), ("inf", 0.1), ("inf", 0.2), ("2", 0.1), ("2", 0.2))
ATTACKS = (("pgd", {"steps": 50, "restarts": 2}), ("ifia_topk", {"steps": 50}),
           ("random", {"n": 200}))


def q(t: torch.Tensor, p: float) -> float:
    return float(torch.quantile(t.double(), p))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="test inputs (default 32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be >= 1")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, path = default_model(progress=False)
    x = data.load("mnist", "test")[0][:args.n]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip() or "unknown"
    lines = [
        "# region's own search against the attacks' points",
        "",
        "Command: `PYTHONPATH=src .venv/bin/python benchmarks/bench_region_search.py"
        + (f" --n {args.n}" if args.n != 32 else "") + f"`; commit {commit}.",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch "
        f"{torch.__version__} ({torch.get_num_threads()} thread(s)), Python "
        f"{platform.python_version()}",
        f"- Model: the demo's ({path.name}); the first {args.n} bundled MNIST test images; "
        "domain (0, 1); region at its defaults; attacks: "
        + ", ".join(f"{m} {o}" for m, o in ATTACKS) + ".",
        "- Ratios are medians over the inputs (max in brackets); 'beaten' counts inputs "
        "where the best attack exceeds the region value.",
        "",
        "| attribution | norm | eps | with points / own | attack / own | beaten (own) "
        "| attack / with points | beaten (with points) | attack / attack_steps=5 "
        "| beaten (attack_steps=5) | time attack_steps=5 / own |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, opts in ATTRIBUTIONS:
        for norm, eps in SETTINGS:
            kw = dict(eps=eps, norm=norm, attribution=name, attribution_options=opts,
                      domain=(0.0, 1.0))
            best, points = None, []
            for method, o in ATTACKS:
                r = attack(model, x, method=method, seed=1, **kw, **o)
                best = r.euclidean if best is None else torch.maximum(best, r.euclidean)
                points += [r.x_adv.unsqueeze(1), r.points]
            t0 = time.perf_counter()
            own = bound(model, x, method="region", **kw).euclidean
            t1 = time.perf_counter()
            short = bound(model, x, method="region", attack_steps=5, **kw).euclidean
            t2 = time.perf_counter()
            full = bound(model, x, method="region", points=torch.cat(points, 1),
                         **kw).euclidean
            gain, a_own, a_full, a_short = full / own, best / own, best / full, best / short
            lines.append(
                f"| {name} | {norm} | {eps} | {q(gain, .5):.3f} ({gain.max():.2f}) "
                f"| {q(a_own, .5):.3f} ({a_own.max():.3f}) | {int((a_own > 1).sum())} "
                f"| {q(a_full, .5):.3f} ({a_full.max():.3f}) | {int((a_full > 1).sum())} "
                f"| {q(a_short, .5):.3f} ({a_short.max():.3f}) | {int((a_short > 1).sum())} "
                f"| {(t2 - t1) / (t1 - t0):.2f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"Total time: {time.perf_counter() - started:.0f} s.", ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
