"""Campaign throughput: the serial executor against the Ray executor, same grid, one run each.

    python benchmarks/bench_campaign.py [--n 64] [--workers 2]

Grid: the trained default checkpoint (runs/models/mnist-cnn-softplus.safetensors, trained
when absent), ``--n`` bundled MNIST test inputs, saliency, l2 and l-inf at eps 0.1, attacks
pgd, ifia_topk and random (20 steps, 20 random samples), no bounds, batches of 16. Serial: this
process with torch's default threads (all cores), then with 1 thread; Ray: a local
instance with ``--workers`` workers of cores / workers threads each, its start (ray.init)
and the workers' first imports included in the wall time. The rows of the serial 1-thread
run and the Ray run are compared (timings aside). Writes
benchmarks/results/campaign.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from attrbound.campaign import Grid, row_key, run_campaign, without_timings
from attrbound.campaign.executor import SerialExecutor
from attrbound.campaign.ray_executor import RayExecutor
from attrbound.training import DEFAULT_MODEL, default_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "campaign.md"


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    model_path = ROOT / DEFAULT_MODEL
    default_model(model_path, progress=False)
    grid = Grid(model=str(model_path), n=args.n, batch_size=16, attributions=("saliency",),
                norms=("2", "inf"), eps=(0.1,), bounds=(), attacks=("pgd", "ifia_topk",
                                                                    "random"),
                steps=20, samples=20, save_adv=False)
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.workers)
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: imports, the dataset and the model's first calls, outside the timings
        run_campaign(Grid(**{**vars(grid), "n": 2}), Path(tmp) / "warm.jsonl", progress=False)
        started = time.perf_counter()
        serial = run_campaign(grid, Path(tmp) / "serial.jsonl", progress=False,
                              executor=SerialExecutor())
        t_serial = time.perf_counter() - started
        default_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        started = time.perf_counter()
        serial1 = run_campaign(grid, Path(tmp) / "serial1.jsonl", progress=False,
                               executor=SerialExecutor())
        t_serial1 = time.perf_counter() - started
        torch.set_num_threads(default_threads)
        load_mid = _load()
        started = time.perf_counter()
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        t_init = time.perf_counter() - started
        try:
            rows = run_campaign(grid, Path(tmp) / "ray.jsonl", progress=False,
                                executor=RayExecutor(args.workers, threads_per_worker=threads))
        finally:
            ray.shutdown()
        t_ray = time.perf_counter() - started
    same = (sorted(map(without_timings, serial1), key=row_key)
            == sorted(map(without_timings, rows), key=row_key))
    runs = sum(r["attack_runs"] for r in serial)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        "# Campaign executors: serial against Ray (CPU)", "",
        f"Command: `python benchmarks/bench_campaign.py --n {args.n} --workers {args.workers}` "
        f"(commit {commit})", "",
        f"- Machine: {platform.processor() or platform.machine()}, {cores} logical CPUs, "
        f"torch {torch.__version__}, Ray {ray.__version__}, Python "
        f"{platform.python_version()}; load average (1/5/15 min) {load_before} before, "
        f"{load_mid} between the runs, {_load()} after. Other jobs share these cores: with a "
        "load above the core count the speed-up is NOT meaningful.",
        f"- Grid: {args.n} MNIST test inputs x saliency x l2, l-inf x eps 0.1; pgd, ifia_topk "
        "(20 steps), random (20 samples); no bounds; batches of 16 "
        f"({len(serial)} rows, {runs} attack runs).",
        f"- Serial: one process, {default_threads} torch threads, then 1 thread (after a "
        "warm-up run of 2 inputs). Ray: "
        f"{args.workers} workers x {threads} threads; the Ray wall time includes ray.init "
        f"({t_init:.1f} s) and each worker's first import and model load.",
        f"- Rows of the serial 1-thread run and the Ray run (1 thread per worker) equal "
        f"(timings aside): {same}.", "",
        "| executor | wall s | attack runs/s | speed-up over serial, all threads |",
        "|---|---:|---:|---:|",
        f"| serial, {default_threads} threads | {t_serial:.1f} | {runs / t_serial:.1f} | 1.00 |",
        f"| serial, 1 thread | {t_serial1:.1f} | {runs / t_serial1:.1f} | "
        f"{t_serial / t_serial1:.2f} |",
        f"| ray ({args.workers} workers) | {t_ray:.1f} | {runs / t_ray:.1f} | "
        f"{t_serial / t_ray:.2f} |",
        f"| ray, without ray.init | {t_ray - t_init:.1f} | {runs / (t_ray - t_init):.1f} | "
        f"{t_serial / (t_ray - t_init):.2f} |",
        "",
        f"Issue 16's target (2 Ray workers >= 1.5x faster than serial, one run): Ray against "
        f"the faster serial run, {min(t_serial, t_serial1) / t_ray:.2f}x with ray.init, "
        f"{min(t_serial, t_serial1) / (t_ray - t_init):.2f}x without. "
        + ("The load average exceeded the core count, so these ratios say how this shared "
           "machine behaved (e.g. torch's 2 threads slowed by other jobs on the cores), not "
           "what 2 workers give on an idle 2-core machine: the target is not demonstrated."
           if max(os.getloadavg()[0], float(load_before.split(" / ")[0])) > cores
           else "The machine was not overloaded during the runs."),
        "",
    ])
    OUT.write_text(text)
    print(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
