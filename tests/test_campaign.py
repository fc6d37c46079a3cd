"""The validation campaign: violation flags, best attacks, summaries, rows file, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.processes import kill_after_rows

from attrbound import campaign, models
from attrbound.campaign import Grid
from attrbound.errors import AttrboundError
from attrbound.results import AttackResult, BoundResult, cosine_from_euclidean

SRC = Path(__file__).resolve().parents[1] / "src"


# ----------------------------------------------------------------------------------------
# fixtures: a tiny saved model and fake bound / attack functions
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained softplus MLP saved as a checkpoint naming mnist."""
    torch.manual_seed(0)
    model = models.mlp((1, 28, 28), 10, hidden=(8,))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    models.save(model, path, {"arch": "mlp", "input_shape": [1, 28, 28], "hidden": [8],
                              "dataset": "mnist"})
    return path


class FakeAttack:
    """A deterministic stand-in for attrbound.attack (an AttackFunction) whose figures depend
    on the whole batch and the seed (as the real ones do, through the random start)."""

    def __init__(self, fail_after: int | None = None, kept: bool = True) -> None:
        self.calls = 0
        self.fail_after = fail_after
        self.kept = kept

    def __call__(self, model, x, *, eps, norm, attribution, method="pgd", seed=0, restarts=1,
                 **options):
        self.calls += 1
        restarts = 1 if restarts is None else restarts  # None: the library's default
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt  # an interruption in the middle of the campaign
        b = x.shape[0]
        gen = torch.Generator().manual_seed(seed + 7 * len(method))
        noise = torch.rand(b, generator=gen)
        euc = eps * (1 + noise + x.flatten(1).mean(1))
        x_adv = (x + eps * noise.view(-1, 1, 1, 1)).clamp(0, 1)
        return AttackResult(
            method=method, objective="euclidean", attribution=attribution.name, norm=norm,
            eps=eps, x_adv=x_adv, euclidean=euc, cosine=1 - euc / 10,
            topk_intersection=1 - noise / 2, kendall=1 - noise, spearman=1 - noise / 3,
            label_kept=torch.full((b,), self.kept), found=torch.ones(b, dtype=torch.bool),
            attr_norm=torch.ones(b), points=x_adv.unsqueeze(1).repeat(1, restarts, 1, 1, 1),
            runs=b * restarts, seconds=0.01, k=10, steps=3, restarts=restarts,
            step_size=0.1, samples=None, seed=seed,
        )


class FakeBound:
    """A stand-in for attrbound.bound (a BoundFunction): U = factor * eps (region: 1.5x
    taylor's); records the points handed to it."""

    def __init__(self, factor: float = 4.0) -> None:
        self.factor = factor
        self.points: list[torch.Tensor | None] = []

    def __call__(self, model, x, *, eps, norm, attribution, method="region", points=None,
                 **options):
        self.points.append(points)
        b = x.shape[0]
        e = torch.full((b,), self.factor * eps * (1.5 if method == "region" else 1.0))
        an = torch.ones(b)
        return BoundResult(method=method, attribution=attribution.name, norm=norm, eps=eps,
                           euclidean=e, cosine=cosine_from_euclidean(e, an), attr_norm=an,
                           operator_norm=e / eps, iterations=torch.zeros(b, dtype=torch.long),
                           converged=torch.ones(b, dtype=torch.bool), seconds=0.001)


def small_grid(model: Path, **kw) -> Grid:
    opts = dict(model=str(model), n=10, batch_size=4, attributions=("saliency",),
                norms=("2", "inf"), eps=(0.05, 0.1), bounds=("taylor", "region"),
                attacks=("pgd", "random"), steps=2, samples=4)
    opts.update(kw)
    return Grid(**opts)


def stripped(rows):
    return sorted((campaign.without_timings(r) for r in rows),
                  key=lambda r: campaign.row_key(r))


# ----------------------------------------------------------------------------------------
# violation flags, best attack, tightness: hand-made figures
# ----------------------------------------------------------------------------------------


def test_violation_thresholds():
    u, c = 2.0, 0.5
    edge = u * (1 + 1e-6) + 1e-9
    assert campaign.violation(edge, u, c, c)["euclidean"] is False
    assert campaign.violation(np.nextafter(edge, 10) + 1e-12, u)["euclidean"] is True
    assert campaign.violation(u * (1 + 2e-6), u)["euclidean"] is True
    assert campaign.violation(1.9, u)["euclidean"] is False
    # absolute tolerance only matters near zero bounds
    assert campaign.violation(5e-10, 0.0)["euclidean"] is False
    assert campaign.violation(2e-9, 0.0)["euclidean"] is True
    # cosine: the attack's similarity must not fall below the lower bound (minus 1e-6)
    assert campaign.violation(1.0, u, c - 0.5e-6, c)["cosine"] is False
    assert campaign.violation(1.0, u, c - 2e-6, c)["cosine"] is True
    assert campaign.violation(1.0, u, 0.9, c)["cosine"] is False
    assert campaign.violation(1.0, u, -0.99, -1.0)["cosine"] is False  # vacuous bound
    # missing figures give no verdict
    assert campaign.violation(None, u, None, c) == {"euclidean": None, "cosine": None}
    assert campaign.violation(1.0, float("nan"))["euclidean"] is None


def test_best_attack_and_row_flags():
    attacks = {
        "pgd": {"euclidean": 1.0, "cosine": 0.8, "topk_intersection": 0.5, "kendall": 0.3,
                "spearman": 0.4, "label_kept": True, "runs": 2},
        "ifia_topk": {"euclidean": 0.7, "cosine": 0.9, "topk_intersection": 0.2,
                      "kendall": 0.5, "spearman": 0.1, "label_kept": True, "runs": 1},
        # a stronger attack whose label flipped does not count
        "random": {"euclidean": 9.0, "cosine": -1.0, "topk_intersection": 0.0,
                   "kendall": -1.0, "spearman": -1.0, "label_kept": False, "runs": 5},
        "ifia_center": {"error": "not supported"},
    }
    bounds = {"taylor": {"euclidean": 0.9, "cosine": 0.85},   # beaten on both metrics
              "region": {"euclidean": 1.0, "cosine": 0.5},    # tight, not beaten
              "interval": {"error": "unsupported"}}
    row = campaign.make_row(index=3, label=1, pred=1, attribution="saliency", norm="2",
                            eps=0.1, bounds=bounds, attacks=attacks, attr_norm=2.0,
                            seconds={"total": 1.0}, config={}, seed=0)
    best = row["best"]
    assert best["euclidean"] == {"value": 1.0, "attack": "pgd"}
    assert best["cosine"] == {"value": 0.8, "attack": "pgd"}
    assert best["topk_intersection"] == {"value": 0.2, "attack": "ifia_topk"}
    assert best["kendall"] == {"value": 0.3, "attack": "pgd"}
    assert best["spearman"] == {"value": 0.1, "attack": "ifia_topk"}
    assert row["violated"]["taylor"] == {"euclidean": True, "cosine": True}
    assert row["violated"]["region"] == {"euclidean": False, "cosine": False}
    assert row["violated"]["interval"] == {"euclidean": None, "cosine": None}
    assert row["tightness"]["taylor"] == pytest.approx(1 / 0.9)
    assert row["tightness"]["region"] == 1.0
    assert row["attack_runs"] == 8
    json.dumps(row, allow_nan=False)  # strict JSON


def test_row_sanitizes_non_finite():
    row = campaign.make_row(index=0, label=0, pred=0, attribution="saliency", norm="inf",
                            eps=0.1, bounds={"interval": {"euclidean": math.inf,
                                                          "operator_norm": math.nan}},
                            attacks={}, attr_norm=float("nan"), seconds={}, config={}, seed=0)
    assert row["bounds"]["interval"] == {"euclidean": None, "operator_norm": None}
    assert row["attr_norm"] is None
    assert row["best"]["euclidean"] == {"value": None, "attack": None}
    json.dumps(row, allow_nan=False)


# ----------------------------------------------------------------------------------------
# summary figures recomputed from rows
# ----------------------------------------------------------------------------------------


def random_rows(seed: int = 0, n: int = 40):
    rng = np.random.default_rng(seed)
    rows = []
    for attribution in ("saliency", "integrated_gradients"):
        for norm in ("2", "inf"):
            for eps in (0.05, 0.1):
                for i in range(n):
                    attacks = {m: {"euclidean": float(rng.uniform(0, 2)),
                                   "cosine": float(rng.uniform(-1, 1)),
                                   "topk_intersection": 0.5, "kendall": 0.1, "spearman": 0.2,
                                   "label_kept": bool(rng.uniform() < 0.9),
                                   "runs": int(rng.integers(1, 4))} for m in ("pgd", "random")}
                    bounds = {m: {"euclidean": float(rng.uniform(0.5, 3)),
                                  "cosine": float(rng.uniform(-1, 1))}
                              for m in ("taylor", "region")}
                    rows.append(campaign.make_row(
                        index=i, label=0, pred=0, attribution=attribution, norm=norm, eps=eps,
                        bounds=bounds, attacks=attacks, attr_norm=1.0,
                        seconds={"total": float(rng.uniform())}, config={}, seed=0))
    return rows


def test_summary_recomputed_from_rows():
    rows = random_rows()
    summary = campaign.summarize(rows)
    assert len(summary) == 8
    assert [(s["attribution"], s["norm"], s["eps"]) for s in summary][:3] == [
        ("saliency", "2", 0.05), ("saliency", "2", 0.1), ("saliency", "inf", 0.05)]
    for s in summary:
        grp = [r for r in rows if (r["attribution"], r["norm"], r["eps"])
               == (s["attribution"], s["norm"], s["eps"])]
        assert s["n"] == len(grp) == 40
        # the best attack, recomputed from the raw attack figures (label kept only)
        best_e, best_c = [], []
        for r in grp:
            kept = [a for a in r["attacks"].values() if a["label_kept"]]
            if kept:
                best_e.append(max(a["euclidean"] for a in kept))
                best_c.append(min(a["cosine"] for a in kept))
        assert s["attack"]["euclidean_mean"] == pytest.approx(np.mean(best_e))
        assert s["attack"]["euclidean_max"] == pytest.approx(np.max(best_e))
        assert s["attack"]["euclidean_median"] == pytest.approx(np.median(best_e))
        assert s["attack"]["cosine_min"] == pytest.approx(np.min(best_c))
        assert s["attack_runs"] == sum(a["runs"] for r in grp for a in r["attacks"].values())
        assert s["seconds"] == pytest.approx(sum(r["seconds"]["total"] for r in grp))
        for m in ("taylor", "region"):
            b = s["bounds"][m]
            u = np.array([r["bounds"][m]["euclidean"] for r in grp])
            c = np.array([r["bounds"][m]["cosine"] for r in grp])
            assert b["euclidean_mean"] == pytest.approx(u.mean())
            assert b["euclidean_max"] == pytest.approx(u.max())
            assert b["euclidean_median"] == pytest.approx(np.median(u))
            assert b["cosine_min"] == pytest.approx(c.min())
            tight, ve, vc, either = [], 0, 0, 0
            for r, ui, ci in zip(grp, u, c, strict=True):
                kept = [a for a in r["attacks"].values() if a["label_kept"]]
                if not kept:
                    continue
                le = max(a["euclidean"] for a in kept)
                lc = min(a["cosine"] for a in kept)
                tight.append(le / ui)
                e_bad, c_bad = le > ui * (1 + 1e-6) + 1e-9, lc < ci - 1e-6
                ve, vc, either = ve + e_bad, vc + c_bad, either + (e_bad or c_bad)
            assert b["tightness_median"] == pytest.approx(np.median(tight))
            assert (b["violations_euclidean"], b["violations_cosine"], b["violations"]) == (
                ve, vc, either)
            assert 0 < ve < len(grp)  # the random figures exercise both outcomes
    text = campaign.format_summary(summary)
    assert "integrated_gradients" in text and "region" in text
    assert len(text.splitlines()) == 2 + 8 * 2 + 2


# ----------------------------------------------------------------------------------------
# the rows file
# ----------------------------------------------------------------------------------------


def test_read_rows_truncated_and_corrupt(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = [{"a": 1}, {"a": 2}]
    text = "".join(json.dumps(r) + "\n" for r in good)
    path.write_text(text + '{"a": 3, "b"')
    assert campaign.read_rows(path) == good
    assert path.read_text().endswith('"b"')  # untouched without repair
    assert campaign.read_rows(path, repair=True) == good
    assert path.read_text() == text
    # a complete last line that is not JSON (e.g. zero bytes after a power cut) is dropped
    path.write_bytes(text.encode() + b"\0\0\0\n")
    assert campaign.read_rows(path, repair=True) == good
    assert path.read_text() == text
    # damage before the last line is corruption, refused
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(AttrboundError, match="line 2"):
        campaign.read_rows(path)
    assert campaign.read_rows(tmp_path / "missing.jsonl") == []


# ----------------------------------------------------------------------------------------
# the campaign with fake bounds and attacks
# ----------------------------------------------------------------------------------------


def test_campaign_rows_and_points(tiny, tmp_path):
    bound = FakeBound()
    grid = small_grid(tiny, restarts=2)
    rows = campaign.run_campaign(grid, tmp_path / "rows.jsonl", progress=False,
                                 bound_fn=bound, attack_fn=FakeAttack())
    assert len(rows) == 10 * 2 * 2
    assert len({campaign.row_key(r) for r in rows}) == len(rows)
    assert rows == campaign.read_rows(tmp_path / "rows.jsonl")
    # region got each attack's x_adv and its points: [b, 2 attacks x (1 + 2 restarts), *S]
    region_points = bound.points[1::2]
    assert all(p is not None and p.shape[1:] == (6, 1, 28, 28) for p in region_points)
    assert all(p is None for p in bound.points[0::2])  # taylor gets none
    r = rows[0]
    assert r["config"]["model_sha256"] == campaign.file_sha256(tiny)
    assert r["config"]["version"] == __import__("attrbound").__version__
    assert r["seed"] == 0 and rows[-1]["seed"] == 8  # seed + first index of the batch
    assert set(r["seconds"]) == {"attack:pgd", "attack:random", "bound:taylor", "bound:region",
                                 "total"}
    # fake bounds are 4 eps (taylor) and 6 eps (region); fake attacks reach up to ~3 eps
    assert all(not any(v.values()) for row in rows for v in row["violated"].values())
    # the sidecar holds the best euclidean attack's point of each row
    for row in rows[:8]:
        x_adv = campaign.load_adv(tmp_path / "rows.jsonl", row["adv"])
        assert x_adv.shape == (1, 28, 28)
        assert row["adv"]["attack"] == row["best"]["euclidean"]["attack"]


def test_violations_are_flagged(tiny, tmp_path):
    rows = campaign.run_campaign(small_grid(tiny), tmp_path / "rows.jsonl", progress=False,
                                 bound_fn=FakeBound(factor=1.2), attack_fn=FakeAttack())
    for r in rows:
        le = r["best"]["euclidean"]["value"]
        for m in ("taylor", "region"):
            u = r["bounds"][m]["euclidean"]
            assert r["violated"][m]["euclidean"] == (le > u * (1 + 1e-6) + 1e-9)
    assert any(r["violated"]["taylor"]["euclidean"] for r in rows)


def test_resume_after_interruption_and_truncation(tiny, tmp_path):
    grid = small_grid(tiny)
    ref = campaign.run_campaign(grid, tmp_path / "ref.jsonl", progress=False,
                                bound_fn=FakeBound(), attack_fn=FakeAttack())
    out = tmp_path / "rows.jsonl"
    with pytest.raises(KeyboardInterrupt):  # stops in the 4th unit (2 attacks per unit)
        campaign.run_campaign(grid, out, progress=False, bound_fn=FakeBound(),
                              attack_fn=FakeAttack(fail_after=7))
    partial = campaign.read_rows(out)
    assert len(partial) == 3 * 4  # 3 complete units of 4 inputs
    # a crash in the middle of the next unit's write: 2 of its rows and half of a third
    unit = ref[12:16]
    with open(out, "a") as fh:
        fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in unit[:2]))
        fh.write(json.dumps(unit[2], sort_keys=True)[:50])
    attack = FakeAttack()
    rows = campaign.run_campaign(grid, out, progress=False, bound_fn=FakeBound(),
                                 attack_fn=attack)
    assert attack.calls == 2 * (12 - 3)  # the partial unit and the 8 untouched ones
    assert stripped(rows) == stripped(ref)
    assert stripped(campaign.read_rows(out)) == stripped(ref)  # no duplicates, no debris
    # a third run has nothing left to do
    attack = FakeAttack()
    again = campaign.run_campaign(grid, out, progress=False, bound_fn=FakeBound(),
                                  attack_fn=attack)
    assert attack.calls == 0 and len(again) == len(ref)


def test_changed_configuration_is_refused(tiny, tmp_path):
    out = tmp_path / "rows.jsonl"
    campaign.run_campaign(small_grid(tiny, n=4), out, progress=False, bound_fn=FakeBound(),
                          attack_fn=FakeAttack())
    with pytest.raises(AttrboundError, match=r"different configuration \(changed: eps, steps\)"):
        campaign.run_campaign(small_grid(tiny, n=4, eps=(0.3,), steps=3), out, progress=False,
                              bound_fn=FakeBound(), attack_fn=FakeAttack())
    # the device is not part of the configuration: resuming elsewhere is allowed
    rows = campaign.run_campaign(small_grid(tiny, n=4, device="cpu:0"), out, progress=False,
                                 bound_fn=FakeBound(), attack_fn=FakeAttack())
    assert len(rows) == 16
    rows = campaign.run_campaign(small_grid(tiny, n=4, eps=(0.3,)), out, progress=False,
                                 overwrite=True, bound_fn=FakeBound(), attack_fn=FakeAttack())
    assert len(rows) == 8 and {r["eps"] for r in campaign.read_rows(out)} == {0.3}


def test_errors_recorded_per_method(tiny, tmp_path):
    def picky_bound(model, x, *, method, **kw):
        if method == "region":
            raise AttrboundError("region is not supported here.")
        return FakeBound()(model, x, method=method, **kw)

    rows = campaign.run_campaign(small_grid(tiny, n=4), tmp_path / "r.jsonl", progress=False,
                                 bound_fn=picky_bound, attack_fn=FakeAttack())
    assert all(r["bounds"]["region"] == {"error": "region is not supported here."}
               for r in rows)
    assert all(r["violated"]["region"] == {"euclidean": None, "cosine": None} for r in rows)
    s = campaign.summarize(rows)[0]["bounds"]["region"]
    assert s["errors"] == 4 and s["euclidean_mean"] is None and s["violations"] == 0


def test_grid_validation(tiny):
    with pytest.raises(AttrboundError, match="unknown bound method"):
        Grid(model=str(tiny), bounds=("taylor", "exact"))
    with pytest.raises(AttrboundError, match="eps must be"):
        Grid(model=str(tiny), eps=(0.1, -1))
    with pytest.raises(AttrboundError, match="unknown attribution"):
        Grid(model=str(tiny), attributions="saliency,lime")
    with pytest.raises(AttrboundError, match="at least one bound method or attack"):
        Grid(model=str(tiny), bounds=(), attacks=())
    with pytest.raises(AttrboundError, match="repeats"):
        Grid(model=str(tiny), norms="2,l2")
    with pytest.raises(AttrboundError, match="bound_options names unknown bound methods"):
        Grid(model=str(tiny), bound_options={"exact": {}})
    with pytest.raises(AttrboundError, match="attribution_options must map"):
        Grid(model=str(tiny), attribution_options={"saliency": 3})
    with pytest.raises(AttrboundError, match="unknown grid setting"):
        Grid.from_dict({"model": str(tiny), "epsilon": 0.1})
    # every keyword of interval_bound's own options is a valid interval bound option
    Grid(model=str(tiny), bounds=("interval",), bound_options={"interval": {
        "tightening": "none", "evaluation": "exact", "max_elements": 2**20,
        "gradient_relaxation": "interval", "branches": 8}})
    with pytest.raises(AttrboundError, match="does not take: \\['width'\\]"):
        Grid(model=str(tiny), bounds=("interval",), bound_options={"interval": {"width": 1}})
    g = Grid.from_dict({"model": str(tiny), "attribution": "saliency,smoothgrad",
                        "norm": ["linf"], "eps": 0.1, "batch-size": 8})
    assert (g.attributions, g.norms, g.eps, g.batch_size) == (
        ("saliency", "smoothgrad"), ("inf",), (0.1,), 8)


def test_taylor_rows_come_from_the_region_solve(tiny, tmp_path, monkeypatch):
    # with the real bound and both methods, taylor's rows are region's solve at x: the
    # same figures as a run of taylor alone (one pass per batch, same seeds)
    kw = dict(n=4, attacks=("random",), samples=2, bound_options={"region": {"random": 2,
              "ascent_steps": 2}})
    import attrbound.bounds.taylor

    taylor_solve = attrbound.bounds.taylor.taylor_pass
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return taylor_solve(*args, **kwargs)

    monkeypatch.setattr(attrbound.bounds.taylor, "taylor_pass", counted)
    both = campaign.run_campaign(small_grid(tiny, **kw), tmp_path / "both.jsonl",
                                 progress=False)
    assert not calls  # no separate taylor solve
    for r in both:  # taylor's time is the part of region's spent at x, counted once
        sec = r["seconds"]
        assert sec["bound:taylor"] <= sec["bound:region"]
        assert sec["total"] == pytest.approx(sec["attack:random"] + sec["bound:region"])
    alone = campaign.run_campaign(small_grid(tiny, bounds=("taylor",), **kw),
                                  tmp_path / "alone.jsonl", progress=False)
    assert [list(r["bounds"]) for r in both] == [["taylor", "region"]] * len(both)
    for r, a in zip(both, alone, strict=True):
        t, ta = r["bounds"]["taylor"], a["bounds"]["taylor"]
        for key in ("euclidean", "cosine", "operator_norm", "iterations", "converged"):
            assert t[key] == ta[key], key
        assert r["bounds"]["region"]["euclidean"] >= t["euclidean"]
    assert calls
    # a taylor with its own solver options is run on its own
    calls.clear()
    campaign.run_campaign(
        small_grid(tiny, **{**kw, "bound_options": {"taylor": {"tol": 1e-3}}}),
        tmp_path / "own.jsonl", progress=False)
    assert calls


def test_relu_model_needs_surrogate(tmp_path):
    model = models.mlp((1, 28, 28), 10, hidden=(8,), activation_name="relu")
    path = models.save(model, tmp_path / "relu.safetensors",
                       {"arch": "mlp", "input_shape": [1, 28, 28], "hidden": [8],
                        "activation": "relu", "dataset": "mnist"})
    with pytest.raises(AttrboundError, match="surrogate-beta"):
        campaign.run_campaign(small_grid(path), tmp_path / "r.jsonl", progress=False,
                              bound_fn=FakeBound(), attack_fn=FakeAttack())
    seen = {}

    def attack(model, x, *, surrogate_beta=None, **kw):
        seen["beta"] = surrogate_beta
        return FakeAttack()(model, x, **kw)

    rows = campaign.run_campaign(small_grid(path, n=4, surrogate_beta=10.0), tmp_path / "s",
                                 progress=False, bound_fn=FakeBound(), attack_fn=attack)
    assert seen["beta"] == 10.0 and len(rows) == 16


class SurrogateAttack:
    """An attack on the surrogate's map: plain figures 3 eps / cosine 0.2 on A_beta, the real
    model's raw figures 0.5 eps / cosine 0.95 at the same x_adv."""

    def __call__(self, model, x, *, eps, surrogate_beta=None, **options):
        res = FakeAttack()(model, x, eps=eps, **options)
        b = x.shape[0]
        res.euclidean, res.cosine = torch.full((b,), 3 * eps), torch.full((b,), 0.2)
        res.surrogate_beta = surrogate_beta
        raw = {"raw_euclidean": 0.5 * eps, "raw_cosine": 0.95,
               "map": campaign.map_name(surrogate_beta)}

        class Result:  # the fields the campaign reads, the raw figures in its rows
            x_adv, points, attr_norm = res.x_adv, res.points, res.attr_norm
            surrogate_beta = res.surrogate_beta

            @staticmethod
            def to_rows():
                return [{**r, **raw} for r in res.to_rows()]

        return Result()


def map_bound(model, x, *, eps, norm, attribution, method, surrogate_beta=None, **options):
    """U = 2 eps, C = 0.5 on the map named by surrogate_beta (None for interval)."""
    b = x.shape[0]
    return BoundResult(method=method, attribution=attribution.name, norm=norm, eps=eps,
                       euclidean=torch.full((b,), 2 * eps), cosine=torch.full((b,), 0.5),
                       attr_norm=torch.ones(b), operator_norm=torch.full((b,), 2.0),
                       iterations=torch.zeros(b, dtype=torch.long),
                       converged=torch.ones(b, dtype=torch.bool), surrogate_beta=surrogate_beta)


def test_violations_compare_the_same_map(tmp_path):
    # with a surrogate, taylor / region (on A_beta) are compared with the attacks' plain
    # figures on A_beta, interval (on the real map) with their raw figures
    model = models.mlp((1, 28, 28), 10, hidden=(8,), activation_name="relu")
    path = models.save(model, tmp_path / "relu.safetensors",
                       {"arch": "mlp", "input_shape": [1, 28, 28], "hidden": [8],
                        "activation": "relu", "dataset": "mnist"})
    grid = small_grid(path, n=4, surrogate_beta=10.0, bounds=("taylor", "region", "interval"))
    rows = campaign.run_campaign(grid, tmp_path / "r.jsonl", progress=False,
                                 bound_fn=map_bound, attack_fn=SurrogateAttack())
    assert len(rows) == 16
    for r in rows:
        eps = r["eps"]
        assert r["map"] == "surrogate(beta=10)"
        assert {m: b["map"] for m, b in r["bounds"].items()} == {
            "taylor": "surrogate(beta=10)", "region": "surrogate(beta=10)", "interval": "model"}
        assert r["best"]["euclidean"]["value"] == pytest.approx(3 * eps)
        assert r["best"]["raw_euclidean"]["value"] == pytest.approx(0.5 * eps)
        for m in ("taylor", "region"):  # 3 eps > 2 eps and 0.2 < 0.5 on A_beta
            assert r["against"][m] == {"euclidean": "euclidean", "cosine": "cosine"}
            assert r["violated"][m] == {"euclidean": True, "cosine": True}
            assert r["tightness"][m] == pytest.approx(1.5)
        # the real map: 0.5 eps < 2 eps and 0.95 > 0.5, although 3 eps on A_beta is larger
        assert r["against"]["interval"] == {"euclidean": "raw_euclidean", "cosine": "raw_cosine"}
        assert r["violated"]["interval"] == {"euclidean": False, "cosine": False}
        assert r["tightness"]["interval"] == pytest.approx(0.25)
        assert campaign.attack_value(r, "interval") == pytest.approx(0.5 * eps)
    summary = campaign.summarize(rows)
    assert all(s["bounds"]["interval"]["violations"] == 0 for s in summary)
    assert all(s["bounds"]["taylor"]["violations"] == s["n"] for s in summary)
    assert campaign.bounded_maps(summary) == {
        "taylor": "surrogate(beta=10)", "region": "surrogate(beta=10)", "interval": "model"}
    assert "interval model" in campaign.format_summary(summary)


def test_compared_figures_without_raw_or_surrogate():
    attacks = {"pgd": {"euclidean": 3.0, "cosine": 0.2, "label_kept": True, "map": "model"}}
    bounds = {"taylor": {"euclidean": 2.0, "cosine": 0.5, "map": "model"},
              "interval": {"euclidean": 2.0, "cosine": 0.5, "map": "model"}}
    # one map (no surrogate): every bound against the plain figures
    row = campaign.make_row(index=0, label=0, pred=0, attribution="saliency", norm="2",
                            eps=0.1, bounds=bounds, attacks=attacks, attr_norm=1.0,
                            seconds={}, config={}, seed=0)
    assert row["map"] == "model"
    assert all(a == {"euclidean": "euclidean", "cosine": "cosine"}
               for a in row["against"].values())
    assert row["violated"]["interval"] == {"euclidean": True, "cosine": True}
    # a surrogate row whose attacks report no raw figures: interval falls back to the plain
    row = campaign.make_row(index=0, label=0, pred=0, attribution="saliency", norm="2",
                            eps=0.1, bounds=bounds, attacks=attacks, attr_norm=1.0,
                            seconds={}, config={}, seed=0, map="surrogate(beta=10)")
    assert row["against"]["interval"] == {"euclidean": "euclidean", "cosine": "cosine"}
    assert row["violated"]["interval"] == {"euclidean": True, "cosine": True}
    # and with raw figures, interval is compared with them, taylor on A_beta with the plain
    attacks["pgd"].update(raw_euclidean=1.0, raw_cosine=0.9)
    bounds["taylor"]["map"] = "surrogate(beta=10)"
    row = campaign.make_row(index=0, label=0, pred=0, attribution="saliency", norm="2",
                            eps=0.1, bounds=bounds, attacks=attacks, attr_norm=1.0,
                            seconds={}, config={}, seed=0, map="surrogate(beta=10)")
    assert row["violated"]["interval"] == {"euclidean": False, "cosine": False}
    assert row["violated"]["taylor"] == {"euclidean": True, "cosine": True}


# ----------------------------------------------------------------------------------------
# the command line: TOML grid, and resuming after kill -9
# ----------------------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from attrbound.cli import main; sys.exit(main())",
            *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_toml_grid_and_overrides(tiny, tmp_path):
    from attrbound.cli import parser
    from attrbound.cli.evaluate import grid_from_args

    toml = tmp_path / "grid.toml"
    toml.write_text(f'model = "{tiny}"\nn = 7\nattribution = ["saliency", '
                    '"integrated_gradients"]\nnorm = "2,inf"\neps = [0.1, 0.2]\n'
                    'bound = ["region"]\nout = "rows.jsonl"\nbatch-size = 3\n'
                    "[attribution_options.integrated_gradients]\nsteps = 4\n")
    args = parser("evaluate").parse_args(["evaluate", "--config", str(toml), "--eps", "0.3",
                                          "--no-adv"])
    grid, out = grid_from_args(args)
    assert out == "rows.jsonl"
    assert grid.attributions == ("saliency", "integrated_gradients")
    assert grid.norms == ("2", "inf") and grid.eps == (0.3,) and grid.n == 7
    assert grid.bounds == ("region",) and grid.batch_size == 3 and not grid.save_adv
    assert grid.attribution_options == {"integrated_gradients": {"steps": 4}}
    assert grid.attacks == ("pgd", "ifia_topk", "random")  # the default
    toml.write_text("model = [")
    args = parser("evaluate").parse_args(["evaluate", "--config", str(toml)])
    with pytest.raises(AttrboundError, match="not valid TOML"):
        grid_from_args(args)


def test_cli_resume_after_sigkill(tiny, tmp_path):
    """Kill the CLI with SIGKILL after some rows, rerun: the same rows as a run never killed."""
    bounds = "taylor,region" if hasattr(__import__("attrbound.bounds").bounds, "bound") \
        else "none"
    common = ["evaluate", "--model", str(tiny), "--n", "40", "--batch-size", "4",
              "--norm", "2,inf", "--eps", "0.1", "--bound", bounds, "--attack", "pgd,random",
              "--steps", "30", "--samples", "30", "--no-progress"]
    ref = tmp_path / "ref.jsonl"
    out = tmp_path / "rows.jsonl"
    proc = kill_after_rows(_cli(*common, "--out", str(out)), _env(), out, rows=8, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed = campaign.read_rows(out)
    assert 8 <= len(killed) < 80, "the run was not interrupted part way"
    subprocess.run(_cli(*common, "--out", str(out)), env=_env(), check=True,
                   capture_output=True)
    subprocess.run(_cli(*common, "--out", str(ref)), env=_env(), check=True,
                   capture_output=True)
    rows, expected = campaign.read_rows(out), campaign.read_rows(ref)
    assert len(rows) == len(expected) == 80
    assert stripped(rows) == stripped(expected)
    assert out.read_bytes().endswith(b"\n")
