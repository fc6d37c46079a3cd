"""Model ranking: do the region bound and the attacks rank robustly trained models alike?

For each dataset (MNIST, Fashion-MNIST; bundled 10,000 training / 2,000 test images) this
trains one model per training mode (natural, pgd_at, trades, ig_norm, grad_norm, curvature;
:mod:`attrbound.training.objectives` with its default options), then on the first ``--n``
test inputs, for saliency and integrated gradients, l2 and l-inf, two radii each, computes

- the region bound U(x) (:func:`attrbound.bound`, ``method="region"``, with the two attacks'
  end points passed in as extra ``points``), and
- the best of two attacks L(x) = max(pgd, ifia_topk) (:func:`attrbound.attack`),

and reports per model the test accuracy, mean U, mean L, their ratio and the number of
violations (L > U (1 + 1e-6)); then, across the six models of a dataset, the Spearman
correlation between mean U and mean L, both of the raw deviation ||A(x') - A(x)||_2 and of the
relative one (divided by ||A(x)||_2, which removes the trivial effect of a model's gradient
scale), and which models the two rank differently.

Cheap settings, so that the whole run fits a shared 2-core CPU (all options below): a small
CNN (channels 8, 16, hidden 64: the test fixture's), 2 epochs per mode at Adam lr 5e-3,
integrated gradients with 4 Riemann-midpoint steps, attacks with 10 steps and 1 restart, the
region bound with 2 random points, 4 ascent steps, Lanczos to a relative residual of 1e-2 (at
most 20 steps) and 2 dual steps for l-inf. A second table measures each mode's training time
with the CLI defaults (the default CNN, ``attrbound train --mode M``): the time of
``--time-steps`` steps, extrapolated to the mode's default epochs on 10,000 images.

Run from the repository root (about 1-2 hours on 2 shared cores; resumable: trained models
and finished configurations are kept under runs/model_ranking/):

    PYTHONPATH=src .venv/bin/python benchmarks/model_ranking.py
    PYTHONPATH=src .venv/bin/python benchmarks/model_ranking.py --datasets mnist   # half

Writes benchmarks/results/model_ranking.md (from every finished row, also after a partial run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from attrbound import data, metrics, models
from attrbound.attacks import attack
from attrbound.bounds import bound
from attrbound.training import DEFAULT_EPOCHS, accuracy, objectives, train

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "model_ranking"
OUT = ROOT / "benchmarks" / "results" / "model_ranking.md"
ATTRIBUTIONS = ("saliency", "integrated_gradients")
ARCH = {"arch": "cnn", "channels": [8, 16], "hidden": 64, "activation": "softplus", "beta": 10.0}
REGION = {
    "random": 2, "ascent_steps": 4, "screen_iter": 3, "max_iter": 20, "tol": 1e-2,
    "dual_steps": 2, "inner_iter": 5, "sign_steps": 10,
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="mnist,fashion-mnist")
    p.add_argument("--modes", default=",".join(objectives.MODES))
    p.add_argument("--epochs", type=float, default=2.0, help="per mode (default 2)")
    p.add_argument("--lr", type=float, default=5e-3,
                   help="Adam learning rate (default 5e-3: the small softplus CNN reaches "
                   "86%% MNIST test accuracy after 2 epochs at 1e-3, 94%% at 5e-3)")
    p.add_argument("--n", type=int, default=200, help="test inputs (default 200)")
    p.add_argument("--eps-inf", default="0.05,0.1", help="l-inf radii (default 0.05,0.1)")
    p.add_argument("--eps-2", default="0.5,1.0", help="l2 radii (default 0.5,1.0)")
    p.add_argument("--ig-steps", type=int, default=4)
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a CPU shared with other jobs, 2 threads "
                   "ran 2-5x slower than 1 here)")
    p.add_argument("--time-steps", type=int, default=20,
                   help="steps timed per mode for the CLI-default training table (0: skip)")
    p.add_argument("--report-only", action="store_true", help="rewrite the table from rows")
    p.add_argument("--runs", default=str(RUNS), help=f"work folder (default {RUNS})")
    p.add_argument("--out", default=str(OUT), help=f"markdown file (default {OUT})")
    return p.parse_args()


def floats(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


# ------------------------------------------------------------------------------- models


def zoo_model(
    runs: Path, dataset: str, mode: str, epochs: float, lr: float
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The small CNN trained with ``mode`` on ``dataset``; reused from ``runs`` if it matches."""
    path = runs / f"{dataset}-{mode}.safetensors"
    want = {**ARCH, "mode": mode, "mode_options": objectives.resolve(mode), "epochs": epochs,
            "lr": lr}
    if path.is_file():
        model = models.load(path)
        if all(model.config.get(k) == v for k, v in want.items()):
            return model, model.config
    x, y = data.load(dataset, "train")
    xt, yt = data.load(dataset, "test")
    config = {**ARCH, "input_shape": list(x.shape[1:]), "classes": 10, "dataset": dataset}
    torch.manual_seed(0)
    model = models.build(config)
    wall, cpu = time.perf_counter(), time.process_time()
    train(model, x, y, epochs=epochs, lr=lr, seed=0, mode=mode, progress=True)
    config.update({
        "mode": mode, "mode_options": objectives.resolve(mode), "epochs": epochs, "lr": lr,
        "train_seconds": round(time.perf_counter() - wall, 1),
        "train_cpu_seconds": round(time.process_time() - cpu, 1),
        "test_accuracy": accuracy(model, xt, yt), "test_size": len(xt),
        "train_size": len(x), "data": "bundled subset",
    })
    models.save(model, path, config)
    model.config = config  # type: ignore[assignment]
    return model, config


def time_cli_defaults(steps: int) -> list[dict[str, Any]]:
    """Seconds per step of each mode on the default CNN (``attrbound train`` defaults),
    extrapolated to DEFAULT_EPOCHS[mode] passes over 10,000 images in batches of 64."""
    x, y = data.load("mnist", "train")
    per_epoch = math.ceil(len(x) / 64)
    rows = []
    for mode in objectives.MODES:
        torch.manual_seed(0)
        model = models.build({"arch": "cnn", "input_shape": [1, 28, 28], "classes": 10})
        train(model, x[:64], y[:64], epochs=1, mode=mode, progress=False)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        train(model, x[: 64 * steps], y[: 64 * steps], epochs=1, mode=mode, progress=False)
        s_wall = (time.perf_counter() - wall) / steps
        s_cpu = (time.process_time() - cpu) / steps
        total = DEFAULT_EPOCHS[mode] * per_epoch
        rows.append({"mode": mode, "epochs": DEFAULT_EPOCHS[mode], "steps": total,
                     "ms_step": 1000 * s_wall, "ms_step_cpu": 1000 * s_cpu,
                     "minutes": s_wall * total / 60, "minutes_cpu": s_cpu * total / 60})
        print(f"time {mode}: {1000 * s_wall:.0f} ms/step -> {s_wall * total / 60:.1f} min",
              flush=True)
    return rows


# ------------------------------------------------------------------------------- evaluation


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"n": args.n, "ig_steps": args.ig_steps, "attack_steps": args.attack_steps,
            "region": REGION, "epochs": args.epochs, "lr": args.lr, "arch": ARCH}


def evaluate(model, x, attr: str, norm: str, eps: float, args) -> dict[str, Any]:
    """Two attacks and the region bound on x [n, *S]; per-input arrays and timings."""
    ao = {"steps": args.ig_steps} if attr == "integrated_gradients" else {}
    wall, cpu = time.perf_counter(), time.process_time()
    res = {m: attack(model, x, eps=eps, norm=norm, attribution=attr, attribution_options=ao,
                     method=m, steps=args.attack_steps, seed=0) for m in ("pgd", "ifia_topk")}
    t_attack = time.perf_counter() - wall
    points = torch.stack([res["pgd"].x_adv, res["ifia_topk"].x_adv], dim=1)
    b = bound(model, x, eps=eps, norm=norm, attribution=attr, attribution_options=ao,
              method="region", points=points, seed=0, **REGION)
    best = torch.maximum(res["pgd"].euclidean, res["ifia_topk"].euclidean)
    return {
        "bound": b.euclidean.tolist(),
        "pgd": res["pgd"].euclidean.tolist(),
        "ifia_topk": res["ifia_topk"].euclidean.tolist(),
        "best": best.tolist(),
        "attr_norm": b.attr_norm.tolist(),
        "source": b.source,
        "seconds_attacks": round(t_attack, 2),
        "seconds": round(time.perf_counter() - wall, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
    }


def load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return rows


# ------------------------------------------------------------------------------- report


def mean(v: list[float]) -> float:
    return sum(v) / len(v)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho of two lists (average ranks), via attrbound.metrics.spearman."""
    ta = torch.tensor(a, dtype=torch.float64)[None]
    tb = torch.tensor(b, dtype=torch.float64)[None]
    return float(metrics.spearman(ta, tb)[0])


def ranks(v: list[float]) -> list[int]:
    """1 = smallest (the most robust model)."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0] * len(v)
    for pos, i in enumerate(order):
        r[i] = pos + 1
    return r


def violation_count(row: dict[str, Any]) -> int:
    """Inputs whose best attack exceeds the bound by more than 1e-6 relative."""
    return sum(a > b * (1 + 1e-6) for a, b in zip(row["best"], row["bound"], strict=True))


def fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def report(args, rows, configs, cli_times, started_load, wall_total) -> str:
    by = {(r["dataset"], r["mode"], r["attribution"], r["norm"], r["eps"]): r for r in rows}
    modes = args.modes.split(",")
    lines = [
        "# Model ranking: region bound vs attacks across robustly trained models",
        "",
        "Command: `PYTHONPATH=src .venv/bin/python benchmarks/model_ranking.py`",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
        f"CPUs, torch {torch.__version__} ({args.threads} thread), Python "
        f"{platform.python_version()}; load average {started_load} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end (other jobs shared the cores: wall times are "
        "inflated, CPU times are this process's own).",
        f"- Models: small softplus CNN (channels 8, 16; hidden 64; avg-pool), Adam lr {args.lr:g}, "
        f"batch 64, {args.epochs:g} epoch(s) on the bundled 10,000 training images, seed 0; "
        "each mode with its default options (`attrbound.training.objectives.defaults`): "
        "pgd_at, trades and ig_norm at eps 0.1 l-inf.",
        f"- Inputs: the first {args.n} bundled test images of each dataset; the attribution "
        "explains the predicted class.",
        f"- Attacks: pgd and ifia_topk (k = 100), {args.attack_steps} steps, 1 restart, seed 0; "
        "best = max of the two per input. Integrated gradients: "
        f"{args.ig_steps} Riemann-midpoint steps, zero baseline.",
        f"- Bound: region with {json.dumps(REGION)}, plus the two attacks' end points.",
        "- Deviation: ||A(x') - A(x)||_2; 'rel.' divides each input's figure by ||A(x)||_2.",
        "- Violations: inputs whose best attack exceeds the bound by more than 1e-6 relative.",
        "",
    ]
    # accuracy / training table
    lines += ["## Models", "",
              "Mean ||A(x)||_2 over the inputs: the scale of each model's maps.", "",
              "| dataset | mode | test accuracy | train time (s) | CPU (s) | mean norm saliency "
              "| mean norm IG |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for (ds, mode), cfg in configs.items():
        norms = []
        for attr in ATTRIBUTIONS:
            r = next((r for k, r in by.items() if k[:3] == (ds, mode, attr)), None)
            norms.append(fmt(mean(r["attr_norm"])) if r else "-")
        lines.append(f"| {ds} | {mode} | {100 * cfg['test_accuracy']:.2f}% | "
                     f"{cfg.get('train_seconds', float('nan')):.0f} | "
                     f"{cfg.get('train_cpu_seconds', float('nan')):.0f} | {norms[0]} | "
                     f"{norms[1]} |")
    lines.append("")
    if cli_times:
        lines += [
            "## Training time with the CLI defaults",
            "",
            "`attrbound train --mode M` (default CNN: channels 16, 32, hidden 128; bundled "
            "10,000 MNIST images, batch 64, the mode's default epochs): measured time per step "
            f"over {args.time_steps} steps, times the run's steps.",
            "",
            "| mode | epochs | steps | ms/step (wall) | ms/step (CPU) | run (min, wall) | "
            "run (min, CPU) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in cli_times:
            lines.append(f"| {r['mode']} | {r['epochs']:g} | {r['steps']} | {r['ms_step']:.0f} "
                         f"| {r['ms_step_cpu']:.0f} | {r['minutes']:.1f} | "
                         f"{r['minutes_cpu']:.1f} |")
        lines.append("")

    summary: list[dict[str, Any]] = []
    for ds in [d for d in args.datasets.split(",") if any(k[0] == d for k in by)]:
        lines += [f"## {ds}", "",
                  "| attribution | norm | eps | mode | bound | pgd | ifia_topk | best | "
                  "best/bound | rel. bound | rel. best | violations | s |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for attr in ATTRIBUTIONS:
            for norm in ("2", "inf"):
                for eps in sorted({k[4] for k in by if k[0] == ds and k[3] == norm}):
                    present = [m for m in modes if (ds, m, attr, norm, eps) in by]
                    if not present:
                        continue
                    mb, ma, rb, ra = [], [], [], []
                    for m in present:
                        r = by[(ds, m, attr, norm, eps)]
                        nrm = [max(v, 1e-30) for v in r["attr_norm"]]
                        b, a = mean(r["bound"]), mean(r["best"])
                        rel_b = mean([u / n for u, n in zip(r["bound"], nrm, strict=True)])
                        rel_a = mean([u / n for u, n in zip(r["best"], nrm, strict=True)])
                        viol = violation_count(r)
                        mb.append(b)
                        ma.append(a)
                        rb.append(rel_b)
                        ra.append(rel_a)
                        lines.append(
                            f"| {attr} | {norm} | {eps:g} | {m} | {fmt(b)} | "
                            f"{fmt(mean(r['pgd']))} | {fmt(mean(r['ifia_topk']))} | {fmt(a)} | "
                            f"{a / b:.2f} | {fmt(rel_b)} | {fmt(rel_a)} | {viol} | "
                            f"{r['seconds']:.0f} |")
                    if len(present) >= 3:
                        summary.append({
                            "dataset": ds, "attribution": attr, "norm": norm, "eps": eps,
                            "modes": present, "rho": spearman(mb, ma),
                            "rho_rel": spearman(rb, ra), "rank_bound": ranks(mb),
                            "rank_attack": ranks(ma), "rank_bound_rel": ranks(rb),
                            "rank_attack_rel": ranks(ra),
                        })
        lines.append("")

    if summary:
        lines += [
            "## Spearman correlation across models: mean bound vs mean best attack",
            "",
            "Ranks: 1 = smallest mean deviation (most robust) ... 6 = largest; listed in the "
            "order " + ", ".join(modes) + ". 'differs' names the models whose rank by the "
            "bound is not their rank by the attacks.",
            "",
            "| dataset | attribution | norm | eps | rho | ranks bound / attack | differs | "
            "rho rel. | ranks rel. bound / attack | differs rel. |",
            "|---|---|---|---:|---:|---|---|---:|---|---|",
        ]
        for s in summary:
            diff = [m for m, x, y in zip(s["modes"], s["rank_bound"], s["rank_attack"],
                                         strict=True) if x != y]
            diff_rel = [m for m, x, y in zip(s["modes"], s["rank_bound_rel"],
                                             s["rank_attack_rel"], strict=True) if x != y]
            lines.append(
                f"| {s['dataset']} | {s['attribution']} | {s['norm']} | {s['eps']:g} | "
                f"{s['rho']:.2f} | {''.join(map(str, s['rank_bound']))} / "
                f"{''.join(map(str, s['rank_attack']))} | {', '.join(diff) or '-'} | "
                f"{s['rho_rel']:.2f} | {''.join(map(str, s['rank_bound_rel']))} / "
                f"{''.join(map(str, s['rank_attack_rel']))} | {', '.join(diff_rel) or '-'} |")
        rhos = [s["rho"] for s in summary]
        rels = [s["rho_rel"] for s in summary]
        same = sum(s["rank_bound"].index(1) == s["rank_attack"].index(1) for s in summary)
        same_rel = sum(s["rank_bound_rel"].index(1) == s["rank_attack_rel"].index(1)
                       for s in summary)
        violations = sum(violation_count(r) for r in rows)
        lines += [
            "",
            f"Over {len(summary)} configurations: Spearman rho of the raw deviation, mean "
            f"{mean(rhos):.2f} (min {min(rhos):.2f}, max {max(rhos):.2f}); of the relative "
            f"deviation, mean {mean(rels):.2f} (min {min(rels):.2f}, max {max(rels):.2f}). "
            f"Same most robust model (rank 1) by bound and attack: {same} of {len(summary)} "
            f"(raw), {same_rel} of {len(summary)} (relative). Total violations: {violations} of "
            f"{sum(len(r['best']) for r in rows)} (input, configuration) pairs.",
            "",
        ]
    cpu = sum(r["cpu_seconds"] for r in rows)
    lines.append(f"Evaluation time: {sum(r['seconds'] for r in rows) / 60:.1f} min wall, "
                 f"{cpu / 60:.1f} min CPU over {len(rows)} configurations; this run "
                 f"{wall_total / 60:.1f} min wall in total.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- main


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load0 = f"{os.getloadavg()[0]:.2f}"
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_path = runs / "rows.jsonl"
    tag = hashlib.sha256(json.dumps(settings(args), sort_keys=True).encode()).hexdigest()[:12]
    rows = [r for r in load_rows(rows_path) if r.get("settings") == tag]
    done = {(r["dataset"], r["mode"], r["attribution"], r["norm"], r["eps"]) for r in rows}
    grid = [(n, e) for n, es in (("2", floats(args.eps_2)), ("inf", floats(args.eps_inf)))
            for e in es]
    configs: dict[tuple[str, str], dict[str, Any]] = {}
    cli_path = runs / "cli_times.json"
    cli_times = json.loads(cli_path.read_text()) if cli_path.is_file() else None
    for ds in args.datasets.split(","):
        xt, _ = data.load(ds, "test")
        x = xt[: args.n]
        for mode in args.modes.split(","):
            model, cfg = zoo_model(runs, ds, mode, args.epochs, args.lr)
            configs[(ds, mode)] = cfg
            print(f"{ds} {mode}: accuracy {100 * cfg['test_accuracy']:.2f}%", flush=True)
            if args.report_only:
                continue
            for attr in ATTRIBUTIONS:
                for norm, eps in grid:
                    key = (ds, mode, attr, norm, eps)
                    if key in done:
                        continue
                    row = {"dataset": ds, "mode": mode, "attribution": attr, "norm": norm,
                           "eps": eps, "settings": tag,
                           **evaluate(model, x, attr, norm, eps, args)}
                    with open(rows_path, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    rows.append(row)
                    done.add(key)
                    print(f"  {attr} {norm} {eps:g}: bound {mean(row['bound']):.4g} best "
                          f"{mean(row['best']):.4g} ({row['seconds']:.0f} s, "
                          f"{row['cpu_seconds']:.0f} s CPU)", flush=True)
                    out.write_text(report(args, rows, configs, cli_times, load0,
                                          time.perf_counter() - started))
    if args.time_steps > 0 and not args.report_only and cli_times is None:
        cli_times = time_cli_defaults(args.time_steps)
        cli_path.write_text(json.dumps(cli_times))
    out.write_text(report(args, rows, configs, cli_times, load0, time.perf_counter() - started))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
