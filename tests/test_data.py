"""Datasets: the bundled subset, the full files and the errors a user can cause."""

from __future__ import annotations

import gzip
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
    assert torch.equal(y, torch.arange(5)) and torch.allclose(x[:, 0] * 255, torch.tensor(imgs,
                                                                               dtype=torch.float32))
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
