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
