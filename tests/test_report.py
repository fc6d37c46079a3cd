"""The HTML report: it renders, references only files that exist, and shows the right data."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import torch
from test_campaign import (
    FakeAttack,
    FakeBound,
    SurrogateAttack,
    _env,
    map_bound,
    random_rows,
    small_grid,
)

from attrbound import campaign, models, report
from attrbound.attributions import attribution
from attrbound.errors import AttrboundError


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    """Rows of a small fake campaign with its x_adv sidecar, and the checkpoint used."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("campaign")
    model = models.mlp((1, 28, 28), 10, hidden=(8,))
    path = models.save(model, folder / "tiny.safetensors",
                       {"arch": "mlp", "input_shape": [1, 28, 28], "hidden": [8],
                        "dataset": "mnist"})
    grid = small_grid(path, attributions=("saliency", "input_x_gradient"))
    out = folder / "rows.jsonl"
    campaign.run_campaign(grid, out, progress=False, bound_fn=FakeBound(factor=2.0),
                          attack_fn=FakeAttack())
    return out, path


def referenced_files(page):
    text = page.read_text()
    return re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", text), text


def test_report_renders(rows_file, tmp_path):
    out, _ = rows_file
    page = report.write_report(out, tmp_path / "rep", worst=5)
    refs, text = referenced_files(page)
    assert page.name == "report.html"
    assert sorted(refs) == sorted(["deviation_vs_eps.png", "bound_vs_attack.png",
                                   "tightness.png", "gallery.png"])
    for ref in refs:  # only local files that exist, and valid PNGs
        assert "/" not in ref and ":" not in ref
        data = (page.parent / ref).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert "<script" not in text and "http" not in text.replace("<!DOCTYPE html>", "")
    # the summary table: one line per (attribution, norm, eps) and bound method
    summary = campaign.summarize(campaign.read_rows(out))
    table = text[text.index("<h2>Summary</h2>"):text.index("<h2>Deviation")]
    assert table.count("<tr>") == 1 + len(summary) * 2
    for s in summary:
        assert format(s["bounds"]["region"]["euclidean_mean"], ".4g") in table
    # fake bounds of 2 eps (taylor) are beaten by the fake attacks on some inputs
    assert "class=\"bad\"" in table


def test_gallery_tensors_match_the_rows(rows_file):
    out, path = rows_file
    rows = campaign.read_rows(out)
    chosen = report.worst_rows(rows, 6)
    x, x_adv, before, after = report.gallery_tensors(out, chosen)
    from attrbound import data

    images, _ = data.load("mnist", "test")
    model = models.load(path)
    for i, r in enumerate(chosen):  # an independent recomputation, one input at a time
        assert torch.equal(x[i], images[r["index"]])
        assert torch.equal(x_adv[i], campaign.load_adv(out, r["adv"]))
        attr = attribution(r["attribution"], model)
        a0 = attr(images[r["index"]][None], target=r["pred"])[0]
        a1 = attr(x_adv[i][None], target=r["pred"])[0]
        torch.testing.assert_close(before[i], a0)
        torch.testing.assert_close(after[i], a1)
    assert {r["attribution"] for r in chosen} <= {"saliency", "input_x_gradient"}


def test_worst_rows_order():
    rows = random_rows(n=10)
    for i, r in enumerate(rows):
        r["adv"] = {"file": "f", "row": i}
    worst = report.worst_rows(rows, 200)
    flags = [any(v for f in r["violated"].values() for v in f.values()) for r in worst]
    k = flags.count(True)
    assert 0 < k < len(flags) and all(flags[:k]) and not any(flags[k:])
    rel = [r["best"]["euclidean"]["value"] or -1 for r in worst[k:]]
    assert rel == sorted(rel, reverse=True)
    assert len(report.worst_rows(rows, 3)) == 3


def test_report_without_model_or_sidecar(rows_file, tmp_path):
    out, path = rows_file
    moved = tmp_path / "copy"
    moved.mkdir()
    shutil.copy(out, moved / "rows.jsonl")  # the rows without their sidecar
    page = report.write_report(moved / "rows.jsonl", tmp_path / "rep")
    refs, text = referenced_files(page)
    assert "gallery.png" not in refs and "No gallery" in text and "sidecar" in text
    assert all((page.parent / ref).is_file() for ref in refs)
    with pytest.raises(AttrboundError, match="no rows"):
        (tmp_path / "empty.jsonl").write_text("")
        report.write_report(tmp_path / "empty.jsonl", tmp_path / "rep2")


def test_report_cli(rows_file, tmp_path):
    out, _ = rows_file
    cmd = [sys.executable, "-c", "import sys; from attrbound.cli import main; sys.exit(main())",
           "report", str(out), "--out", str(tmp_path / "r"), "--worst", "0"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=True)
    assert "report.html" in res.stdout
    refs, _ = referenced_files(tmp_path / "r" / "report.html")
    assert "gallery.png" not in refs and all((tmp_path / "r" / f).is_file() for f in refs)


def test_report_names_the_bounded_maps(tmp_path):
    # a ReLU model with a surrogate: the page says which map each bound bounded, and the
    # gallery shows the surrogate's maps, the ones the attacks measured
    torch.manual_seed(0)
    model = models.mlp((1, 28, 28), 10, hidden=(8,), activation_name="relu")
    path = models.save(model, tmp_path / "relu.safetensors",
                       {"arch": "mlp", "input_shape": [1, 28, 28], "hidden": [8],
                        "activation": "relu", "dataset": "mnist"})
    grid = small_grid(path, n=4, surrogate_beta=10.0, bounds=("taylor", "region", "interval"))
    out = tmp_path / "rows.jsonl"
    campaign.run_campaign(grid, out, progress=False, bound_fn=map_bound,
                          attack_fn=SurrogateAttack())
    page = report.write_report(out, tmp_path / "rep", worst=3)
    refs, text = referenced_files(page)
    assert "gallery.png" in refs
    assert "interval: model" in text and "region, taylor: surrogate(beta=10)" in text
    table = text[text.index("<h2>Summary</h2>"):text.index("<h2>Deviation")]
    assert table.count("<td>surrogate(beta=10)</td>") == 2 * 4 and table.count(
        "<td>model</td>") == 4
    chosen = report.worst_rows(campaign.read_rows(out), 3)
    x, _, before, _ = report.gallery_tensors(out, chosen)
    smooth = models.smooth_surrogate(models.load(path), 10.0)
    for i, r in enumerate(chosen):
        a0 = attribution(r["attribution"], smooth)(x[i][None], target=r["pred"])[0]
        torch.testing.assert_close(before[i], a0)
