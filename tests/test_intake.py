"""attrbound.intake: user models and data, loaded without ever running a pickle's payload.

Every malicious file below carries a payload that would create a marker file when
unpickled or evaluated; each test asserts that attrbound refuses the file with one
AttrboundError sentence and that the marker never appears. The ``*_live`` test shows the
same archives do run their payload under a plain ``torch.export.load``.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.factory_models import calibrated_residual_net, residual_net
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.export.pt2_archive._package import PT2ArchiveWriter
from torch.func import grad, jvp

from attrbound.errors import AttrboundError
from attrbound.intake import (
    Normalized,
    check_pt2,
    load_data,
    load_exported,
    load_model,
    parse_domain,
    parse_floats,
    parse_size,
)

FACTORY = "helpers.factory_models:residual_net"


class Payload:
    """Unpickling this creates the file ``marker`` (the stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_save_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def one_sentence(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg.endswith(".") and "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------------------
# A real exported residual network
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(eval-mode model, path of its .pt2 with a dynamic batch dimension)."""
    model = calibrated_residual_net().eval()
    path = tmp_path_factory.mktemp("export") / "model.pt2"
    # the example batch must be >= 2: with Dim("batch"), a batch of 1 is specialised (0/1
    # specialisation) and export fails; Dim.AUTO would silently fix the batch at 1
    ep = torch.export.export(
        model, (torch.rand(2, 3, 8, 8),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(ep, str(path))
    return model, path


def test_exported_round_trip_batches(exported):
    model, path = exported
    loaded = load_model(str(path))
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    for b in (1, 5):
        x = torch.rand(b, 3, 8, 8)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    loaded.eval()  # a no-op on an exported graph, which attrbound's freeze relies on
    with pytest.raises(AttrboundError):
        loaded.train()


def test_exported_supports_torch_func_double_differentiation(exported):
    model, path = exported
    loaded = load_model(str(path))
    x, v = torch.rand(3, 8, 8), torch.randn(3, 8, 8)

    def saliency(m):
        return grad(lambda z: m(z.unsqueeze(0))[0, 1])

    def objective(m):
        return lambda z: (saliency(m)(z) ** 2).sum()

    torch.testing.assert_close(grad(objective(loaded))(x), grad(objective(model))(x))
    _, t_loaded = jvp(saliency(loaded), (x,), (v,))
    _, t_model = jvp(saliency(model), (x,), (v,))
    torch.testing.assert_close(t_loaded, t_model)
    assert t_loaded.abs().max() > 0


def test_exported_with_normalisation_and_float64(exported):
    model, path = exported
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loaded = load_model(str(path), mean=mean, std=std)
    assert isinstance(loaded, Normalized) and not loaded.training
    x = torch.rand(4, 3, 8, 8)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(loaded(x), model((x - m) / s), rtol=0, atol=1e-5)
    assert loaded.double()(x.double()).dtype == torch.float64


class TinyViT(nn.Module):
    """Patch embedding, one attention block (scaled dot-product attention), LayerNorm, GELU."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = nn.LayerNorm(8)
        self.attention = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        h = self.norm(t)
        t = t + self.attention(h, h, h, need_weights=False)[0]
        return self.head((t + self.mlp(self.norm(t))).mean(1))


def test_exported_attention_model(tmp_path):
    """Attention in eval mode (dropout_p 0) and dynamic-batch shape expressions load."""
    torch.manual_seed(0)
    model = TinyViT().eval()
    ep = torch.export.export(
        model, (torch.rand(2, 3, 8, 8),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(ep, str(tmp_path / "vit.pt2"))
    loaded = load_model(str(tmp_path / "vit.pt2"))
    assert loaded.config == {"input_shape": [3, 8, 8]}
    x = torch.rand(5, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


def test_exported_in_training_mode_is_refused(tmp_path):
    model = calibrated_residual_net().train()
    ep = torch.export.export(model, (torch.rand(2, 3, 8, 8),))
    torch.export.save(ep, str(tmp_path / "train.pt2"))
    with pytest.raises(AttrboundError, match="training mode") as exc:
        load_model(str(tmp_path / "train.pt2"))
    one_sentence(exc)


def test_exported_with_two_inputs_is_refused(tmp_path):
    class Two(nn.Module):
        def forward(self, x, y):
            return x + y

    x = torch.rand(2, 3)
    torch.export.save(torch.export.export(Two(), (x, x)), str(tmp_path / "two.pt2"))
    with pytest.raises(AttrboundError, match="one tensor in"):
        load_model(str(tmp_path / "two.pt2"))


# ----------------------------------------------------------------------------------------
# Malicious checkpoints: the payload never runs
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".ckpt", ".bin"])
def test_torch_save_and_pickle_files_are_refused(tmp_path, suffix):
    marker = tmp_path / "ran"
    path = tmp_path / f"model{suffix}"
    torch.save({"weights": Payload(marker)}, path)
    with pytest.raises(AttrboundError, match="unpickl|pickle") as exc:
        load_model(str(path))
    one_sentence(exc)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_pickle_renamed_pt2_is_refused(tmp_path, how):
    marker, path = tmp_path / "ran", tmp_path / "model.pt2"
    if how == "torch.save":
        torch.save(Payload(marker), path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(AttrboundError, match="torch.export") as exc:
        load_model(str(path))
    one_sentence(exc)
    assert not marker.exists()


def test_pickle_renamed_safetensors_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.safetensors"
    for payload in (torch_save_bytes(Payload(marker)), pickle.dumps(Payload(marker))):
        path.write_bytes(payload)
        for call in (
            lambda: load_model(str(path)),
            lambda: load_model(FACTORY, weights=str(path)),
            lambda: load_data(str(path)),
        ):
            with pytest.raises(AttrboundError, match="pickle") as exc:
                call()
            one_sentence(exc)
    assert not marker.exists()


def _records(path: Path) -> dict[str, bytes]:
    reader = torch._C.PyTorchFileReader(str(path))
    return {name: reader.get_record(name) for name in reader.get_all_records()}


def _write(path: Path, records: dict[str, bytes]) -> Path:
    written_by_writer = {"archive_format", "archive_version", ".data/version"}
    with PT2ArchiveWriter(str(path)) as writer:
        for name, data in records.items():
            if name not in written_by_writer and name != ".data/serialization_id":
                writer.write_bytes(name, data)
    return path


def _tamper(kind: str, records: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    """The archive's records with one entry turned into a payload that creates ``marker``."""
    r = dict(records)
    weights_config = "data/weights/model_weights_config.json"
    if kind == "sample_inputs":  # present in every archive; torch.load falls back to pickle
        r["data/sample_inputs/model.pt"] = torch_save_bytes(Payload(marker))
    elif kind == "pickled_weight":
        config = json.loads(r[weights_config])
        name = next(iter(config["config"]))
        config["config"][name]["use_pickle"] = True
        r[weights_config] = json.dumps(config).encode()
        r["data/weights/" + config["config"][name]["path_name"]] = torch_save_bytes(Payload(marker))
    elif kind == "opaque_constant":  # pickle.loads
        meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}
        r["data/constants/model_constants_config.json"] = json.dumps(
            {"config": {"c": {**meta, "tensor_meta": None}}}
        ).encode()
        r["data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))
    elif kind == "legacy_weights":  # data/weights/model.pt replaces the config
        del r[weights_config]
        r["data/weights/model.pt"] = torch_save_bytes(Payload(marker))
    elif kind == "sympy_expression":  # sympy.sympify evaluates the string
        text = r["models/model.json"].decode()
        evil = f"__import__('builtins').open('{marker}', 'w') and Symbol("
        assert '"expr_str": "Symbol(' in text
        r["models/model.json"] = text.replace('"expr_str": "Symbol(', f'"expr_str": "{evil}', 1)
        r["models/model.json"] = r["models/model.json"].encode()
    elif kind == "operator_target":  # a node that would call os.system
        program = json.loads(r["models/model.json"])
        node = {
            "target": "torch.serialization.os.system",
            "inputs": [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}],
            "outputs": [],
            "metadata": {},
            "name": "evil",
        }
        program["graph_module"]["graph"]["nodes"].insert(0, node)
        r["models/model.json"] = json.dumps(program).encode()
    elif kind == "aotinductor":  # native code, loaded with dlopen
        r["data/aotinductor/model/model.so"] = b"\x7fELF not really"
    elif kind == "torch_save_inside":  # the data.pkl of a torch.save file
        r["data.pkl"] = pickle.dumps(Payload(marker))
    return r


TAMPERED = [
    "sample_inputs",
    "pickled_weight",
    "opaque_constant",
    "legacy_weights",
    "sympy_expression",
    "operator_target",
    "aotinductor",
    "torch_save_inside",
]
#: the tampered archives whose payload a plain torch.export.load runs (torch 2.13)
LIVE = ["sample_inputs", "pickled_weight", "opaque_constant", "legacy_weights", "sympy_expression"]


@pytest.mark.parametrize("kind", TAMPERED)
def test_tampered_pt2_is_refused(exported, tmp_path, kind):
    marker = tmp_path / "ran"
    path = _write(tmp_path / "evil.pt2", _tamper(kind, _records(exported[1]), marker))
    with pytest.raises(AttrboundError) as exc:
        load_model(str(path))
    one_sentence(exc)
    with pytest.raises(AttrboundError):
        check_pt2(path.read_bytes(), str(path))
    assert not marker.exists()


@pytest.mark.parametrize("kind", LIVE)
def test_tampered_pt2_payloads_are_live(exported, tmp_path, kind):
    """Without attrbound's check the same files run their payload: if this fails, torch
    changed what torch.export.load deserialises, and check_pt2 must be re-audited."""
    marker = tmp_path / "ran"
    path = _write(tmp_path / "evil.pt2", _tamper(kind, _records(exported[1]), marker))
    try:
        torch.export.load(str(path))
    except Exception:  # the payload runs before the deserialiser notices the bad object
        pass
    assert marker.exists()


def test_guards_code_is_never_compiled(exported, tmp_path):
    """``ExportedProgram.module()`` execs the archive's guards_code at each call; attrbound
    builds the module with check_guards=False, so such code is loaded but never run."""
    model, src = exported
    marker = tmp_path / "ran"
    records = _records(src)
    program = json.loads(records["models/model.json"])
    program["guards_code"] = [f"__import__('builtins').open('{marker}', 'w') is not None"]
    records["models/model.json"] = json.dumps(program).encode()
    path = _write(tmp_path / "guards.pt2", records)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(load_model(str(path))(x), model(x), rtol=0, atol=1e-6)
    assert not marker.exists()
    torch.export.load(str(path)).module()(x)  # the default path runs it
    assert marker.exists()


def test_not_an_archive(tmp_path):
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(AttrboundError, match="not a readable"):
        load_exported(path)


# ----------------------------------------------------------------------------------------
# Factories with safetensors weights, other specs
# ----------------------------------------------------------------------------------------


def _weights(tmp_path: Path, state: dict[str, torch.Tensor], name="w.safetensors") -> str:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def test_factory_with_weights(tmp_path):
    model = calibrated_residual_net()
    weights = _weights(tmp_path, model.state_dict())
    loaded = load_model(FACTORY, weights=weights)
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    x = torch.rand(5, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    # eval mode: BatchNorm uses running statistics, so an example does not depend on the batch
    torch.testing.assert_close(loaded(x[:1]), loaded(x)[:1])


def test_factory_weight_mismatches(tmp_path):
    state = calibrated_residual_net().state_dict()
    missing = {k: v for k, v in state.items() if k != "fc.bias"}
    extra = {**state, "head.weight": torch.zeros(2)}
    shaped = {**state, "fc.weight": torch.zeros(3, 5)}
    for bad, pattern in [
        (missing, "missing fc.bias"),
        (extra, "unexpected head.weight"),
        (shaped, r"fc.weight is \[3, 5\] in the file but \[3, 4\] in the model"),
    ]:
        with pytest.raises(AttrboundError, match=pattern) as exc:
            load_model(FACTORY, weights=_weights(tmp_path, bad))
        one_sentence(exc)
    with pytest.raises(AttrboundError, match="does not fit"):
        load_model("helpers.factory_models:wider_net", weights=_weights(tmp_path, state))


def test_factory_errors(tmp_path):
    weights = _weights(tmp_path, residual_net().state_dict())
    cases = [
        (FACTORY, None, "needs its weights"),
        ("helpers.no_such_module:f", weights, "cannot import"),
        ("helpers.factory_models:nothing", weights, "has no attribute"),
        ("helpers.factory_models:NOT_CALLABLE", weights, "not callable"),
        ("helpers.factory_models:not_a_module", weights, "not a torch.nn.Module"),
        (FACTORY, str(tmp_path / "missing.safetensors"), "no weights file"),
    ]
    for spec, w, pattern in cases:
        with pytest.raises(AttrboundError, match=pattern) as exc:
            load_model(spec, weights=w)
        one_sentence(exc)


def test_other_specs(tmp_path):
    with pytest.raises(AttrboundError, match="no model file") as exc:
        load_model(str(tmp_path / "absent.pt2"))
    one_sentence(exc)
    with pytest.raises(AttrboundError, match="goes with a package.module:factory"):
        load_model(str(tmp_path / "absent.pt2"), weights="w.safetensors")
    plain = _weights(tmp_path, residual_net().state_dict(), "plain.safetensors")
    with pytest.raises(AttrboundError, match="without an attrbound config"):
        load_model(plain)


def test_attrbound_checkpoint_is_delegated(tmp_path):
    from attrbound import models

    model = models.mlp((1, 4, 4), 3, hidden=(8,))
    config = {"arch": "mlp", "input_shape": [1, 4, 4], "classes": 3, "hidden": [8]}
    path = models.save(model, tmp_path / "m.safetensors", config)
    loaded = load_model(str(path), mean=[0.5], std=[0.25])
    x = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(loaded(x), model((x - 0.5) / 0.25))
    assert loaded.config["input_shape"] == [1, 4, 4]


def test_normalized_flat_inputs_and_errors():
    lin = nn.Linear(3, 2)
    norm = Normalized(lin, [1.0, 2.0, 3.0], 2.0)
    x = torch.rand(4, 3)
    torch.testing.assert_close(norm(x), lin((x - torch.tensor([1.0, 2.0, 3.0])) / 2.0))
    for mean, std in [([0.0, 0.0], [1.0, 1.0, 1.0]), ([0.0], [0.0]), ([], [1.0])]:
        with pytest.raises(AttrboundError):
            Normalized(lin, mean, std)
    with pytest.raises(AttrboundError, match="channels"):
        norm(torch.rand(4, 5))


# ----------------------------------------------------------------------------------------
# Data: a safetensors file
# ----------------------------------------------------------------------------------------


def test_data_from_safetensors(tmp_path):
    path = tmp_path / "d.safetensors"
    images = torch.rand(6, 3, 4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)
    save_file(
        {"images": images, "labels": labels}, str(path), metadata={"classes": '["a","b","c"]'}
    )
    x, y, classes = load_data(str(path))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and classes == ["a", "b", "c"]
    torch.testing.assert_close(x, images.float())
    assert y.tolist() == labels.tolist()
    save_file({"images": images.float(), "labels": labels.long()}, str(path))
    assert load_data(str(path))[2] is None


def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int64)


@pytest.mark.parametrize(
    ("tensors", "pattern"),
    [
        ({"x": torch.rand(2, 3), "labels": _zeros(2)}, "no tensor 'images'"),
        ({"images": torch.rand(2, 3)}, "no tensor 'labels'"),
        ({"images": torch.zeros(2, 3, dtype=torch.uint8), "labels": torch.zeros(2)}, "floating"),
        ({"images": torch.rand(2, 3), "labels": torch.zeros(2)}, "must be integers"),
        ({"images": torch.rand(2, 3), "labels": _zeros(3)}, "2 images but 3"),
        ({"images": torch.rand(0, 3), "labels": _zeros(0)}, "no images"),
        ({"images": torch.full((2, 3), float("nan")), "labels": _zeros(2)}, "NaN"),
        ({"images": torch.rand(2, 3) + 1.5, "labels": _zeros(2)}, "outside the domain"),
        ({"images": torch.rand(2, 3), "labels": -1 - _zeros(2)}, ">= 0"),
        ({"images": torch.rand(2), "labels": _zeros(2)}, r"\[N, \*S\]"),
    ],
)
def test_data_safetensors_errors(tmp_path, tensors, pattern):
    path = tmp_path / "d.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(AttrboundError, match=pattern) as exc:
        load_data(str(path))
    one_sentence(exc)


def test_data_domain_and_paths(tmp_path):
    path = tmp_path / "d.safetensors"
    labels = torch.zeros(2, dtype=torch.int64)
    save_file({"images": torch.rand(2, 3) * 2 - 1, "labels": labels}, str(path))
    assert load_data(str(path), domain=(-1.0, 1.0))[0].shape == (2, 3)
    assert load_data(str(path), domain=None)[0].shape == (2, 3)
    with pytest.raises(AttrboundError, match="--domain"):
        load_data(str(path))
    with pytest.raises(AttrboundError, match="no data file"):
        load_data(str(tmp_path / "nothing.safetensors"))
    torch.save({"images": torch.rand(2, 3)}, tmp_path / "d.pt")
    with pytest.raises(AttrboundError, match="never from pickles"):
        load_data(str(tmp_path / "d.pt"))
    with pytest.raises(AttrboundError, match="image folders only"):
        load_data(str(path), size=(4, 4), domain=None)


# ----------------------------------------------------------------------------------------
# Data: an image folder
# ----------------------------------------------------------------------------------------


def _image(path: Path, mode: str, size: tuple[int, int], value: int = 128) -> np.ndarray:
    """Write a PNG/JPEG of ``size`` (H, W); returns its pixels as written (uint8/uint16)."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    h, w = size
    if mode == "RGB":
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif mode == "L":
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    else:  # 16-bit grayscale
        a = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return a


def test_folder_rgb(tmp_path):
    a = _image(tmp_path / "cat" / "1.png", "RGB", (4, 5))
    _image(tmp_path / "cat" / "2.PNG", "RGB", (4, 5))
    _image(tmp_path / "dog" / "1.jpg", "RGB", (4, 5))
    (tmp_path / "dog" / "notes.txt").write_text("skipped")
    (tmp_path / ".hidden").mkdir()
    x, y, classes = load_data(str(tmp_path))
    assert classes == ["cat", "dog"] and y.tolist() == [0, 0, 1]
    assert x.shape == (3, 3, 4, 5) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy(a).permute(2, 0, 1).float() / 255)
    assert 0 <= x.min() and x.max() <= 1


def test_folder_grayscale_mixed_and_16_bit(tmp_path):
    gray = tmp_path / "gray"
    a = _image(gray / "a" / "1.png", "L", (3, 3))
    b = _image(gray / "b" / "1.png", "I;16", (3, 3))
    x, y, _ = load_data(str(gray))
    assert x.shape == (2, 1, 3, 3)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(a).float() / 255)
    torch.testing.assert_close(x[1, 0], torch.from_numpy(b.astype(np.float32)) / 65535)
    mixed = tmp_path / "mixed"
    _image(mixed / "a" / "1.png", "L", (3, 3))
    _image(mixed / "b" / "1.png", "RGB", (3, 3))
    x, _, _ = load_data(str(mixed))
    assert x.shape == (2, 3, 3, 3)
    torch.testing.assert_close(x[0, 0], x[0, 2])  # grayscale repeated over the channels


def test_folder_sizes(tmp_path):
    _image(tmp_path / "a" / "1.png", "RGB", (4, 4))
    _image(tmp_path / "b" / "1.png", "RGB", (6, 8))
    with pytest.raises(AttrboundError, match=r"differ in size .*--size H,W") as exc:
        load_data(str(tmp_path))
    one_sentence(exc)
    x, _, _ = load_data(str(tmp_path), size=(5, 7))
    assert x.shape == (2, 3, 5, 7)


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    loose = tmp_path / "loose"
    _image(loose / "1.png", "RGB", (2, 2))
    hollow = tmp_path / "hollow"
    _image(hollow / "a" / "1.png", "RGB", (2, 2))
    (hollow / "b").mkdir()
    (hollow / "b" / "x.txt").write_text("no images")
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "a" / "1.png").write_bytes(b"not a png")
    for folder, pattern in [
        (empty, "no class subfolders and no images"),
        (loose, "one subfolder per class"),
        (hollow, re.escape(str(hollow / "b")) + " has no PNG or JPEG"),
        (broken, "cannot read the image"),
    ]:
        with pytest.raises(AttrboundError, match=pattern) as exc:
            load_data(str(folder))
        one_sentence(exc)


# ----------------------------------------------------------------------------------------
# Command-line values
# ----------------------------------------------------------------------------------------


def test_parsers():
    assert parse_domain("0,1") == (0.0, 1.0) and parse_domain("-1, 1") == (-1.0, 1.0)
    assert parse_size("32,24") == (32, 24) and parse_size("28") == (28, 28)
    assert parse_floats("0.5,0.25,1") == (0.5, 0.25, 1.0)
    assert parse_domain(None) is None and parse_size(None) is None and parse_floats(None) is None
    for call, text in [
        (parse_domain, "1,0"),
        (parse_domain, "0"),
        (parse_domain, "a,b"),
        (parse_size, "0,3"),
        (parse_size, "3.5,2"),
        (parse_size, "1,2,3"),
        (parse_floats, "0.5,,1"),
        (parse_floats, "nan"),
    ]:
        with pytest.raises(AttrboundError) as exc:
            call(text)
        one_sentence(exc)
