"""Datasets: the bundled subset, the full files and the errors a user can cause."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from attrbound import data
from attrbound.errors import AttrboundError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize(("split", "n"), [("train", 10_000), ("test", 2_000)])
def test_bundled_grey_datasets(name, split, n):
    x, y = data.load(name, split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1 and x.mean() > 0.05
    assert set(y.tolist()) == set(range(10))
    assert data.INFO[name][split] == n


def test_bundled_cifar_matches_the_png_samples():
    x, y = data.load("CIFAR-10")
    assert x.shape == (20, 3, 32, 32) and len(set(y.tolist())) >= 5
    if SHARED.is_dir():
        from PIL import Image

        for p in (SHARED / "cifar10-samples").glob("*.png"):
            i, label = (int(s) for s in p.stem.split("_")[1:])
            png = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255
            assert y[i] == label
            assert np.array_equal(x[i].permute(1, 2, 0).numpy(), png)
    with pytest.raises(AttrboundError, match="only 20 test images"):
        data.load("cifar10", "train")


@needs_shared
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_bundle_is_the_first_images_of_the_full_files(name):
    full_x, full_y = data.load(name, "test", root=SHARED)
    assert full_x.shape == (10_000, 1, 28, 28)
    x, y = data.load(name, "test")
    assert torch.equal(x, full_x[:2000]) and torch.equal(y, full_y[:2000])
    full_x, full_y = data.load(name, "train", root=SHARED / name)  # the folder itself works too
    assert len(full_x) == 60_000
    x, y = data.load(name, "train")
    assert torch.equal(x, full_x[:10_000]) and torch.equal(y, full_y[:10_000])


def _write_idx(path, array, magic=0x08, gz=True):
    raw = bytes([0, 0, magic, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def test_uncompressed_idx_and_bad_files(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs, gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5), gz=False)
    x, y = data.load("mnist", root=tmp_path)
    assert torch.equal(y, torch.arange(5)) and torch.allclose(
        x[:, 0] * 255, torch.tensor(imgs, dtype=torch.float32)
    )
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(4), gz=False)
    with pytest.raises(AttrboundError, match="5 images but .* 4 labels"):
        data.load("mnist", root=tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5), magic=0x0D, gz=False)
    with pytest.raises(AttrboundError, match="bad magic"):
        data.load("mnist", root=tmp_path)
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-10])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5), gz=False)
    with pytest.raises(AttrboundError, match="truncated"):
        data.load("mnist", root=tmp_path)
    with pytest.raises(AttrboundError, match="no train images"):
        data.load("mnist", "train", root=tmp_path)
    with pytest.raises(AttrboundError, match="does not exist"):
        data.load("mnist", root=tmp_path / "nowhere")
    with pytest.raises(AttrboundError, match="unknown dataset"):
        data.load("imagenet")
    with pytest.raises(AttrboundError, match="unknown split"):
        data.load("mnist", "valid")


def test_cifar_python_batches_use_a_restricted_unpickler(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3072)).astype(np.uint8)
    batch = {b"data": pixels, b"labels": [1, 7, 9], b"batch_label": b"testing batch 1 of 1"}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    x, y = data.load("cifar10", root=tmp_path)
    assert y.tolist() == [1, 7, 9] and x.shape == (3, 3, 32, 32)
    assert torch.allclose(x.reshape(3, -1) * 255, torch.tensor(pixels, dtype=torch.float32))

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(AttrboundError, match="not a CIFAR-10 python batch"):
        data.load("cifar10", root=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_binary_batches(tmp_path):
    rec = np.zeros((4, 3073), np.uint8)
    rec[:, 0] = [0, 3, 5, 9]
    rec[:, 1:] = 255
    (tmp_path / "test_batch.bin").write_bytes(rec.tobytes())
    x, y = data.load("cifar10", root=tmp_path)
    assert y.tolist() == [0, 3, 5, 9] and bool((x == 1).all())
    (tmp_path / "test_batch.bin").write_bytes(rec.tobytes()[:-1])
    with pytest.raises(AttrboundError, match="multiple of 3073"):
        data.load("cifar10", root=tmp_path)


# --- names, splits, describe ----------------------------------------------------------------


def test_names_aliases_and_describe():
    assert data.NAMES == ("mnist", "fashion-mnist", "cifar10")
    for alias in ("MNIST", " mnist "):
        assert data.canonical_name(alias) == "mnist"
    for alias in ("fashion_mnist", "FMNIST", "Fashion-MNIST"):
        assert data.canonical_name(alias) == "fashion-mnist"
    x, y = data.load("FMNIST", "Test")
    assert x.shape == (2000, 1, 28, 28)
    assert torch.equal(y, data.load("fashion-mnist")[1])
    text = data.describe("fashion_mnist")
    assert "10000 train" in text and "2000 test" in text and "MIT" in text
    assert "CC BY-SA 3.0" in data.describe("mnist") and "20 test" in data.describe("cifar10")
    with pytest.raises(AttrboundError, match="mnist, fashion-mnist, cifar10"):
        data.describe("svhn")


def test_bundle_is_small_and_documented():
    files = [f for f in data.BUNDLED.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 15_000_000
    assert (data.BUNDLED / "README.md").is_file()
    assert "Zalando" in (data.BUNDLED / "fashion-mnist" / "COPYRIGHT").read_text()
    # bundled arrays are writable copies (no read-only numpy buffer behind the tensor)
    x, y = data.load("mnist")
    x[0, 0, 0, 0] = 0.5
    y[0] = 1


# --- the bundle is exactly what benchmarks/make_bundled_data.py writes -----------------------


def _make_script():
    spec = importlib.util.spec_from_file_location(
        "make_bundled_data",
        Path(__file__).resolve().parents[1] / "benchmarks" / "make_bundled_data.py",
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_shared
def test_bundle_bytes_are_reproducible(tmp_path):
    pytest.importorskip("PIL")
    script = _make_script()
    for name in ("mnist", "fashion-mnist"):
        for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"):
            n = 2000 if stem.startswith("t10k") else 10_000
            script.write_idx(tmp_path / stem, data.read_idx(SHARED / name / f"{stem}.gz")[:n])
            bundled = (data.BUNDLED / name / f"{stem}.gz").read_bytes()
            assert (tmp_path / stem).read_bytes() == bundled, (name, stem)
    records = script.cifar_records(SHARED / "cifar10-samples")
    assert records == (data.BUNDLED / "cifar10" / "test_batch.bin").read_bytes()


@needs_shared
@pytest.mark.slow
def test_whole_bundle_regenerates_identically(tmp_path):
    pytest.importorskip("PIL")
    _make_script().main(SHARED, tmp_path)
    for f in data.BUNDLED.rglob("*"):
        if f.is_file() and f.name != "README.md":
            assert (tmp_path / f.relative_to(data.BUNDLED)).read_bytes() == f.read_bytes(), f


# --- full files: layouts and naming variants --------------------------------------------------


def test_idx_layouts_and_names(tmp_path):
    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    for layout, dotted in (("", True), ("mnist", False), ("MNIST/raw", True)):
        folder = tmp_path / layout.replace("/", "_") / layout if layout else tmp_path / "flat"
        folder.mkdir(parents=True)
        sep = "." if dotted else "-"
        _write_idx(folder / f"train-images{sep}idx3-ubyte.gz", imgs)
        _write_idx(folder / f"train-labels{sep}idx1-ubyte.gz", np.array([4, 0, 9]))
        root = folder if not layout else tmp_path / layout.replace("/", "_")
        x, y = data.load("mnist", "train", root=str(root))
        assert y.tolist() == [4, 0, 9] and x.shape == (3, 1, 28, 28)
        assert torch.equal((x[:, 0] * 255).round().to(torch.int64), torch.tensor(imgs))


def test_idx_bad_labels_and_corrupt_gzip(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    with pytest.raises(AttrboundError, match="no test labels"):
        data.load("mnist", root=tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 12]))
    with pytest.raises(AttrboundError, match="labels up to 12; expected 0..9"):
        data.load("mnist", root=tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((2, 2)))
    with pytest.raises(AttrboundError, match=r"expected images \[N, H, W\] and labels \[N\]"):
        data.load("mnist", root=tmp_path)
    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2]))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(good[:12] + b"\xff" * 8 + good[20:])
    with pytest.raises(AttrboundError, match="t10k-labels-idx1-ubyte.gz"):
        data.load("mnist", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(good[:-6])  # cut inside the gzip
    with pytest.raises(AttrboundError, match="cannot read"):
        data.load("mnist", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0])))
    with pytest.raises(AttrboundError, match="truncated inside its IDX header"):
        data.load("mnist", root=tmp_path)
    with pytest.raises(AttrboundError, match="bad magic"):
        data.read_idx(_write_raw(tmp_path / "x", b"PK\x03\x04 not idx"))


def _write_raw(path, raw):
    path.write_bytes(raw)
    return path


# --- CIFAR-10 readers -------------------------------------------------------------------------


def test_cifar_binary_train_batches_in_subfolder(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 6):
        rec = np.full((2, 3073), i, np.uint8)
        rec[:, 0] = [i, 9 - i]
        (folder / f"data_batch_{i}.bin").write_bytes(rec.tobytes())
    x, y = data.load("cifar10", "train", root=tmp_path)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]
    assert torch.allclose(x[2], torch.full((3, 32, 32), 2 / 255))
    with pytest.raises(AttrboundError, match="no CIFAR-10 test batches"):
        data.load("cifar10", "test", root=tmp_path)
    rec = np.zeros((1, 3073), np.uint8)
    rec[0, 0] = 10
    (folder / "data_batch_3.bin").write_bytes(rec.tobytes())
    with pytest.raises(AttrboundError, match="expected 0..9"):
        data.load("cifar10", "train", root=tmp_path)


def test_cifar_binary_channel_order(tmp_path):
    rec = np.zeros(3073, np.uint8)
    rec[0] = 2
    rec[1 : 1 + 1024] = 10  # R plane
    rec[1 + 1024 + 5] = 20  # G plane, row 0, column 5
    rec[1 + 2048 + 32 * 3 + 1] = 30  # B plane, row 3, column 1
    (tmp_path / "test_batch.bin").write_bytes(rec.tobytes())
    x, y = data.load("cifar10", root=tmp_path)
    u8 = (x[0] * 255).round().to(torch.int64)
    assert y.tolist() == [2] and bool((u8[0] == 10).all())
    assert u8[1, 0, 5] == 20 and u8[1].sum() == 20 and u8[2, 3, 1] == 30 and u8[2].sum() == 30


def test_cifar_python_numpy1_pickle_and_bad_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = np.arange(2 * 3072).reshape(2, 3072).astype(np.uint8)
    raw = pickle.dumps({b"data": pixels, b"labels": [0, 5]}, protocol=2)
    # as written by numpy 1.x (and in the published CIFAR-10 python batches)
    (folder / "test_batch").write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
    x, y = data.load("cifar10", root=tmp_path)
    assert y.tolist() == [0, 5] and torch.equal(
        (x.reshape(2, -1) * 255).round().to(torch.uint8), torch.from_numpy(pixels)
    )
    bad = [
        ({b"data": pixels, b"labels": [0, 5, 1]}, "labels of shape"),
        ({b"data": pixels.astype(np.int64), b"labels": [0, 5]}, "expected uint8 data"),
        ({b"data": pixels[:, :100], b"labels": [0, 5]}, "expected uint8 data"),
        ({b"labels": [0, 5]}, "expected a dict"),
        ([pixels], "expected a dict"),
        ({b"data": pixels, b"labels": [0, 11]}, "expected 0..9"),
    ]
    for obj, msg in bad:
        (folder / "test_batch").write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(AttrboundError, match=msg):
            data.load("cifar10", root=tmp_path)


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",  # protocol 0: builtins.eval("1+1")
        b"cposix\nsystem\n(S'true'\ntR.",
        b"c__builtin__\nexec\n(S'x=1'\ntR.",
        b"cnumpy\nload\n(S'x'\ntR.",  # a numpy function outside the allowed list
        b"not a pickle at all",
    ],
)
def test_cifar_python_refuses_foreign_pickles(tmp_path, payload):
    (tmp_path / "test_batch").write_bytes(payload)
    with pytest.raises(AttrboundError, match="not a CIFAR-10 python batch"):
        data.load("cifar10", root=tmp_path)
