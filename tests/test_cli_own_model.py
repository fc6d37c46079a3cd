"""The command line on a user's model and data: a torch.export archive of a residual ReLU
network with BatchNorm, a factory + safetensors weights, inputs from a safetensors file and
from an image folder; every figure compared with the same map."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from helpers.models import ResNet, ready
from PIL import Image
from safetensors.torch import save_file

from attrbound.campaign import read_rows
from attrbound.cli import main

EPS = (0.02, 0.05)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """(folder, model.pt2, data.safetensors): a residual ReLU net exported with a dynamic
    batch dimension, and 6 inputs of it labelled by its own predictions."""
    torch.manual_seed(0)
    model = ready(ResNet(cin=3, channels=(4, 6), classes=3))
    folder = tmp_path_factory.mktemp("own")
    ep = torch.export.export(model, (torch.rand(2, 3, 8, 8),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(folder / "model.pt2"))
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    save_file({"images": images, "labels": labels}, str(folder / "data.safetensors"))
    return folder, folder / "model.pt2", folder / "data.safetensors"


def test_evaluate_exported_residual_net_on_a_tensor_file(user_files, capsys):
    folder, model, data = user_files
    out = folder / "rows.jsonl"
    argv = ["evaluate", "--model", str(model), "--data", str(data), "--n", "6",
            "--attribution", "saliency", "--norm", "2,inf", "--eps", ",".join(map(str, EPS)),
            "--bound", "taylor,region", "--attack", "pgd,random", "--steps", "5",
            "--samples", "8", "--surrogate-beta", "10", "--batch-size", "3",
            "--bound-options", json.dumps({"region": {"random": 2, "ascent_steps": 2}}),
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    rows = read_rows(out)
    assert len(rows) == 6 * 2 * len(EPS)
    for r in rows:
        # the surrogate's map was bounded and attacked; the real map's deviation beside it
        assert r["map"] == "surrogate(beta=10)"
        for m in ("pgd", "random"):
            assert {"raw_euclidean", "raw_cosine", "map"} <= set(r["attacks"][m])
        assert r["bounds"]["region"]["euclidean"] > 0
        assert r["config"]["data_sha256"] and r["config"]["model_sha256"]
    # rerunning the same command resumes: nothing new, nothing duplicated
    assert main(argv) == 0
    assert len(read_rows(out)) == len(rows)


def test_relu_model_without_surrogate_is_one_sentence(user_files, capsys):
    folder, model, data = user_files
    status = main(["evaluate", "--model", str(model), "--data", str(data), "--n", "2",
                   "--bound", "taylor", "--attack", "none", "--eps", "0.1", "--no-progress",
                   "--out", str(folder / "none.jsonl")])
    err = capsys.readouterr().err
    assert status == 2 and "--surrogate-beta" in err and err.count("\n") == 1


def test_factory_weights_image_folder_and_normalisation(tmp_path, capsys):
    torch.manual_seed(0)
    net = ready(ResNet(cin=3, channels=(4,), classes=2))
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    (tmp_path / "factory.py").write_text(
        "from helpers.models import ResNet\n\n"
        "def make():\n    return ResNet(cin=3, channels=(4,), classes=2)\n")
    pics = tmp_path / "pics"
    gen = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (pics / cls).mkdir(parents=True)
        for i in range(2):
            arr = gen.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).save(pics / cls / f"{i}.png")
    out = tmp_path / "rows.jsonl"
    sys.path.insert(0, str(tmp_path))
    try:
        status = main(["attack", "--model", "factory:make", "--weights", str(weights),
                       "--data", str(pics), "--size", "8,8", "--mean", "0.5,0.5,0.5",
                       "--std", "0.25,0.25,0.25", "--n", "4", "--attribution", "saliency",
                       "--norm", "inf", "--eps", "0.03", "--method", "random", "--samples", "4",
                       "--no-progress", "--out", str(out)])
    finally:
        sys.path.remove(str(tmp_path))
    assert status == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and {r["label"] for r in rows} == {0, 1}


def test_report_gallery_rebuilds_an_exported_model_and_a_data_file(user_files, capsys):
    """The report's gallery recomputes x, A(x) and A(x_adv) from the rows of a .pt2 model on
    a --data file: x equals the file's images, x_adv lies in the ball, and A(x) equals an
    autograd saliency of the surrogate written in the helpers."""
    from helpers.references import autograd_saliency

    from attrbound import intake, models
    from attrbound.report.gallery import gallery_tensors, worst_rows

    folder, model, data = user_files
    out = folder / "gallery_rows.jsonl"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--n", "3",
                 "--attribution", "saliency", "--norm", "inf", "--eps", "0.05",
                 "--bound", "none", "--attack", "pgd", "--steps", "3",
                 "--surrogate-beta", "10", "--no-progress", "--out", str(out)]) == 0
    assert main(["report", str(out), "--out", str(folder / "report"), "--worst", "2",
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    page = (folder / "report" / "report.html").read_text()
    assert "gallery.png" in page and "No gallery" not in page
    rows = read_rows(out)
    chosen = worst_rows(rows, 2)
    x, x_adv, before, _ = gallery_tensors(out, chosen)
    images = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(data))
    idx = torch.tensor([r["index"] for r in chosen])
    assert torch.equal(x, images["images"][idx])
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6
    smooth = models.smooth_surrogate(intake.load_model(str(model)), 10.0)
    pred = torch.tensor([r["pred"] for r in chosen])
    assert torch.allclose(before, autograd_saliency(smooth, pred)(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("command", ["train", "explain", "bound", "attack", "evaluate",
                                     "report", "demo"])
def test_every_command_takes_device_and_refuses_an_unknown_one(command, tmp_path, capsys):
    model = ["--model", str(tmp_path / "m.safetensors")]  # never read: the device is first
    eps = [*model, "--eps", "0.1"]
    needs = {"train": ["--out", str(tmp_path / "m.safetensors")],
             "report": [str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "r")],
             "explain": [*model, "--out", str(tmp_path / "e.png")], "bound": eps,
             "attack": eps, "evaluate": [*model, "--out", str(tmp_path / "rows.jsonl")],
             "demo": ["--out", str(tmp_path / "demo")]}
    status = main([command, *needs.get(command, []), "--device", "tpu9"])
    err = capsys.readouterr().err
    assert status == 2 and "--device 'tpu9'" in err and err.count("\n") == 1, err


def test_interval_on_an_exported_net_with_normalisation(user_files, capsys):
    """`bound --method interval` on the .pt2 with --mean / --std: the certified rows are the
    library's interval_bound of the same wrapped graph, and a pgd attack on the same inputs
    (same map: interval bounds the real ReLU model) stays below them."""
    from attrbound import attack, interval
    from attrbound.intake import Normalized, load_exported

    folder, model, data = user_files
    out = folder / "interval.jsonl"
    norm_args = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    status = main(["bound", "--model", str(model), "--data", str(data), "--n", "4",
                   "--norm", "inf", "--eps", "0.005", "--method", "interval", *norm_args,
                   "--no-progress", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and {r["method"] for r in rows} == {"interval"}
    assert all(r["guarantee"].startswith("deterministic") for r in rows)
    from safetensors.torch import load_file

    x = load_file(str(data))["images"][:4]
    net = Normalized(load_exported(model), [0.5] * 3, [0.25] * 3).eval()
    ref = interval.interval_bound(net, x, eps=0.005, norm="inf")
    assert [r["euclidean"] for r in rows] == ref.euclidean.tolist()
    pgd = attack(net, x, eps=0.005, norm="inf", method="pgd", steps=10, surrogate_beta=10.0)
    assert (pgd.raw_euclidean <= ref.euclidean).all()
