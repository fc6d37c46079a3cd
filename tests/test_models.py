"""Model zoo, safe checkpoints and the smooth surrogate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrbound import models
from attrbound.errors import AttrboundError
from attrbound.surrogate import SmoothSurrogate, inspect_model


@pytest.mark.parametrize("arch", models.ARCHS)
@pytest.mark.parametrize("act", models.ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2, 9, 13)])
def test_architectures_take_any_input_shape(arch, act, shape):
    m = models.build({"arch": arch, "activation": act, "input_shape": list(shape), "classes": 7})
    assert m(torch.rand(3, *shape)).shape == (3, 7)


def _config():
    return {"arch": "cnn", "activation": "softplus", "beta": 5.0, "input_shape": [1, 10, 10],
            "classes": 4, "dataset": "mnist", "test_accuracy": 0.5,
            "training_command": "attrbound train"}


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = _config()
    m = models.build(cfg)
    path = models.save(m, tmp_path / "m.safetensors", cfg)
    back = models.load(path)
    x = torch.rand(5, 1, 10, 10)
    assert torch.equal(m(x), back(x))
    assert back.config == cfg and models.read_config(path) == cfg
    assert not back.training
    assert not any(p.requires_grad for p in back.parameters())


def test_tampered_weights_are_refused(tmp_path):
    cfg = _config()
    path = models.save(models.build(cfg), tmp_path / "m.safetensors", cfg)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40  # flip one bit of the last tensor's data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(AttrboundError, match="do not match the digest"):
        models.load(bad)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(AttrboundError, match="not a readable safetensors"):
        models.load(cut)


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(models.build(_config()).state_dict(), path)
    with pytest.raises(AttrboundError, match="pickle"):
        models.load(path)
    legacy = tmp_path / "legacy.pkl"
    import pickle

    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(AttrboundError, match="pickle"):
        models.load(legacy)
    with pytest.raises(AttrboundError, match="no model checkpoint"):
        models.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("first", [b"\x80", b"P"])
def test_header_length_that_looks_like_a_pickle_still_loads(tmp_path, first):
    """A safetensors header length whose low byte is 0x80 (pickle's opcode) or 'P' (zip's
    "PK") is still a safetensors file: the config padding is grown until the file starts so."""
    m = models.build(_config())
    path = tmp_path / "m.safetensors"
    for pad in range(300):
        cfg = dict(_config(), note="x" * pad)
        models.save(m, path, cfg)
        if path.read_bytes()[:1] == first:
            break
    else:
        pytest.fail("no padding gave the wanted first byte")
    assert models.load(path).config["note"] == cfg["note"]


def test_smooth_surrogate_replaces_relu_and_approaches_it():
    torch.manual_seed(0)
    m = models.freeze(models.cnn((1, 12, 12), 3, channels=(4,), activation_name="relu"))
    assert models.is_piecewise_linear(m)
    s = models.smooth_surrogate(m, beta=1000.0)
    assert not models.is_piecewise_linear(s)
    assert sum(isinstance(k, nn.Softplus) for k in s.modules()) == 2
    assert sum(isinstance(k, nn.ReLU) for k in m.modules()) == 2  # original untouched
    x = torch.rand(4, 1, 12, 12)
    # softplus(b z)/b - relu(z) lies in (0, log(2)/b]: outputs differ by at most a few 1e-3
    assert (s(x) - m(x)).abs().max() < 5e-3
    with pytest.raises(AttrboundError):
        models.smooth_surrogate(m, beta=0)


def test_op_level_relu_equals_the_module_swap_on_zoo_models():
    torch.manual_seed(0)
    m = models.freeze(models.cnn((1, 12, 12), 3, channels=(4,), activation_name="relu"))
    x = torch.rand(4, 1, 12, 12)
    swapped = models.smooth_surrogate(m, 10.0)
    assert isinstance(swapped, nn.Sequential)  # a plain stack: no run-time replacement
    op_level = SmoothSurrogate(models.freeze(models.cnn((1, 12, 12), 3, channels=(4,),
                                                        activation_name="relu")), 10.0)
    op_level.model.load_state_dict(m.state_dict())
    assert torch.equal(swapped(x), op_level(x))
    pooled = models.freeze(models.cnn((1, 12, 12), 3, channels=(4,), activation_name="relu",
                                      pool="max"))
    s = models.smooth_surrogate(pooled, 10.0)
    assert isinstance(s, SmoothSurrogate) and not models.is_piecewise_linear(s)
    assert not models.is_piecewise_linear(s, x)


def test_piecewise_linear_zoo_models_are_found_by_their_modules():
    relu = models.build({"arch": "mlp", "activation": "relu", "input_shape": [5]})
    pooled = models.build({"arch": "cnn", "activation": "gelu", "input_shape": [1, 8, 8],
                           "pool": "max"})
    assert models.is_piecewise_linear(relu) and models.is_piecewise_linear(pooled)
    assert not models.is_piecewise_linear(models.build({"arch": "mlp", "input_shape": [5]}))
    assert models.is_piecewise_linear(relu, torch.rand(2, 5))
    # the module scan names operations as a forward pass does
    scan = inspect_model(pooled)
    assert not scan.probed
    assert scan.smoothed == inspect_model(pooled, torch.rand(2, 1, 8, 8)).smoothed
    assert scan.smoothed == ("max_pool2d",)
    shrink = inspect_model(nn.Sequential(nn.Linear(3, 3), nn.Hardshrink()))
    assert shrink.unsupported == ("hardshrink",) and shrink.piecewise_linear
    assert models.PIECEWISE_LINEAR  # still importable from here


def test_unknown_names_are_clear_errors():
    with pytest.raises(AttrboundError, match="unknown activation"):
        models.build({"arch": "mlp", "activation": "swish", "input_shape": [4]})
    with pytest.raises(AttrboundError, match="unknown architecture"):
        models.build({"arch": "resnet", "input_shape": [1, 4, 4]})
