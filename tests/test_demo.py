"""`attrbound demo` end to end on a small model: campaign rows, summary and report."""

from __future__ import annotations

import json

from attrbound import models
from attrbound.cli import main
from attrbound.cli.demo import DEMO_GRID


def test_demo_runs_the_grid_and_writes_the_report(tmp_path, mnist_cnn, capsys):
    model, _, _ = mnist_cnn
    path = tmp_path / "m.safetensors"
    models.save(model, path, {"arch": "cnn", "activation": "softplus", "beta": 10.0,
                              "input_shape": [1, 28, 28], "classes": 10, "channels": [8, 16],
                              "hidden": 64, "dataset": "mnist", "test_accuracy": 0.9})
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(path), "--n", "2", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    grid = {(r["attribution"], r["norm"], r["eps"]) for r in rows}
    assert len(rows) == 2 * len(grid)
    assert grid == {(a, n, e) for a in DEMO_GRID["attributions"] for n in DEMO_GRID["norms"]
                    for e in DEMO_GRID["eps"]}
    for r in rows:
        assert set(r["bounds"]) == {"taylor", "region"}
        assert set(r["attacks"]) == {"pgd", "ifia_topk", "random"}
        assert r["bounds"]["region"]["euclidean"] >= r["bounds"]["taylor"]["euclidean"]
    assert (out / "heatmaps.png").is_file() and (out / "report" / "report.html").is_file()
    assert "attack runs:" in text and "report.html" in text
    # a rerun with another --n replaces the rows instead of failing on the old file
    assert main(["demo", "--model", str(path), "--n", "1", "--out", str(out),
                 "--no-progress"]) == 0
    assert len((out / "rows.jsonl").read_text().splitlines()) == len(grid)
