"""Datasets: MNIST, Fashion-MNIST and CIFAR-10, bundled subsets or the full standard files.

``load(name, split, root=None) -> (images, labels)``: images float32 [N, C, H, W] in [0, 1]
(uint8 / 255), labels int64 [N].

- ``root=None``: the compact copy bundled in the package (``attrbound/bundled``): the first
  10,000 training and first 2,000 test images of MNIST and of Fashion-MNIST, as gzipped IDX
  files, and the 20 CIFAR-10 test images of foolbox 3.3.4 in CIFAR-10's binary format
  (test split only). See ``attrbound/bundled/README.md`` for provenance and licenses.
- ``root=PATH``: the full standard files. MNIST / Fashion-MNIST: the four IDX files
  (gzipped or not) in PATH or PATH/<name>. CIFAR-10: the binary version (``data_batch_1.bin``
  ... ``test_batch.bin``, optionally in ``cifar-10-batches-bin/``) or the python version
  (``data_batch_1`` ... ``test_batch``, optionally in ``cifar-10-batches-py/``), read with a
  restricted unpickler that admits only the numpy types those files contain.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attrbound.errors import AttrboundError

NAMES = ("mnist", "fashion-mnist", "cifar10")
SPLITS = ("train", "test")
BUNDLED = Path(__file__).resolve().parent / "bundled"
_ALIASES = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}
_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_BIN = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
_CIFAR_PY = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
# Sub-folders searched below root= (besides root itself), e.g. torchvision's layout.
_SUBDIRS = {
    "mnist": ("mnist", "MNIST/raw", "MNIST"),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
    "cifar10": (
        "cifar-10-batches-bin",
        "cifar-10-batches-py",
        "cifar10",
        "cifar10/cifar-10-batches-bin",
        "cifar10/cifar-10-batches-py",
    ),
}

#: What the bundled copy holds (counts per split) and where it comes from.
INFO: dict[str, dict[str, Any]] = {
    "mnist": {
        "train": 10_000,
        "test": 2_000,
        "shape": (1, 28, 28),
        "classes": 10,
        "subset": "the first 10,000 training and first 2,000 test images",
        "license": "CC BY-SA 3.0",
        "source": "MNIST (LeCun, Cortes, Burges)",
    },
    "fashion-mnist": {
        "train": 10_000,
        "test": 2_000,
        "shape": (1, 28, 28),
        "classes": 10,
        "subset": "the first 10,000 training and first 2,000 test images",
        "license": "MIT",
        "source": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017)",
    },
    "cifar10": {
        "train": 0,
        "test": 20,
        "shape": (3, 32, 32),
        "classes": 10,
        "subset": "20 CIFAR-10 test images (the samples shipped with foolbox 3.3.4)",
        "license": "MIT (foolbox); CIFAR-10 terms apply",
        "source": "CIFAR-10 (Krizhevsky 2009)",
    },
}


def canonical_name(name: str) -> str:
    """'MNIST', 'fmnist', 'cifar-10', ... -> one of :data:`NAMES` (or a clear error)."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise AttrboundError(f"unknown dataset {name!r}; choose one of: {', '.join(NAMES)}.")
    return _ALIASES[key]


def describe(name: str) -> str:
    """One paragraph on the bundled copy of dataset ``name``: counts, source and license."""
    info = INFO[canonical_name(name)]
    c, h, w = info["shape"]
    return (
        f"{info['source']}: bundled {info['subset']} ({info['train']} train / {info['test']} "
        f"test, {c}x{h}x{w} uint8 scaled to [0, 1], {info['classes']} classes); license: "
        f"{info['license']}. Pass root= with the full files for the complete dataset."
    )


def load(
    name: str, split: str = "test", root: str | os.PathLike | None = None
) -> tuple[Tensor, Tensor]:
    """Images float32 [N, C, H, W] in [0, 1] and labels int64 [N] of one dataset split.

    ``name``: "mnist", "fashion-mnist" or "cifar10"; ``split``: "train" or "test" (default);
    ``root``: None for the bundled subset (:data:`INFO`), or a folder with the full files.
    """
    name = canonical_name(name)
    if str(split).strip().lower() not in SPLITS:
        raise AttrboundError(f"unknown split {split!r}; use 'train' or 'test'.")
    split = str(split).strip().lower()
    if root is None:
        if name == "cifar10" and split == "train":
            raise AttrboundError(
                "the bundled CIFAR-10 copy has only 20 test images; pass root= with the full "
                "CIFAR-10 files for the training split."
            )
        folder = BUNDLED / name
    else:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise AttrboundError(
                f"dataset folder {folder} does not exist; expected a folder with the {name} files."
            )
    if name == "cifar10":
        images, labels = _load_cifar(folder, split)
    else:
        images, labels = _load_idx_pair(folder, name, split)
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0))
    return x, torch.from_numpy(labels.astype(np.int64))


def _find(folders: list[Path], stems: list[str], what: str) -> Path:
    """The first existing file ``folder/stem[.gz]``, trying folders in order, then stems."""
    for folder in folders:
        for stem in stems:
            for cand in (stem, stem + ".gz"):
                if (folder / cand).is_file():
                    return folder / cand
    raise AttrboundError(
        f"{folders[0]} has no {what} file (looked for {stems[0]} or {stems[0]}.gz there and in "
        f"{', '.join(str(f.relative_to(folders[0])) for f in folders[1:]) or 'no sub-folder'})."
    )


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        msg = f"cannot read {path} (missing, unreadable or corrupt gzip: {exc})."
        raise AttrboundError(msg) from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzipped or not) of unsigned bytes into a read-only uint8 array.

    Format: two zero bytes, dtype byte 0x08 (uint8), ndim byte, ndim big-endian uint32 sizes,
    then the data in row-major order. Returns an array of shape ``sizes`` (e.g. [N, 28, 28] for
    images, [N] for labels); raises :class:`AttrboundError` on a bad magic number or a size that
    does not match the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise AttrboundError(f"{path} is not an IDX file of unsigned bytes (bad magic number).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise AttrboundError(f"{path} is truncated inside its IDX header.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise AttrboundError(
            f"{path} holds {len(raw) - header} data bytes, but its header {dims} needs {size} "
            "(truncated or corrupt)."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_pair(folder: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    folders = [folder] + [folder / sub for sub in _SUBDIRS[name]]
    img_stem, lab_stem = _IDX[split]
    img_path = _find(folders, [img_stem, img_stem.replace("-idx", ".idx")], f"{split} images")
    # Labels from the folder that held the images, so a pair never mixes two copies.
    lab_path = _find(
        [img_path.parent], [lab_stem, lab_stem.replace("-idx", ".idx")], f"{split} labels"
    )
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise AttrboundError(
            f"{img_path} and {lab_path} have shapes {images.shape} and {labels.shape}; expected "
            "images [N, H, W] and labels [N]."
        )
    if len(images) != len(labels):
        raise AttrboundError(
            f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels."
        )
    if labels.size and labels.max() > 9:
        raise AttrboundError(f"{lab_path} has labels up to {labels.max()}; expected 0..9.")
    return images[:, None], labels


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR-10 python batch needs (numpy array rebuilding).

    Any other global (``os.system``, ``builtins.eval``, ...) raises ``UnpicklingError``, so a
    crafted file cannot run code. Plain ``pickle.load`` is never used on dataset files.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy.core."):  # files pickled by numpy 1.x; numpy 2 moved it
            try:
                return super().find_class(module.replace("numpy.core.", "numpy._core.", 1), name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any failure inside a foreign pickle is the file's fault
        raise AttrboundError(
            f"{path} is not a CIFAR-10 python batch that can be read safely ({exc})."
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise AttrboundError(
            f"{path} is not a CIFAR-10 python batch (expected a dict with b'data' and b'labels')."
        )
    data, labels = batch[b"data"], batch[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)):
        raise AttrboundError(
            f"{path} is not a CIFAR-10 python batch (expected uint8 data of shape [N, 3072])."
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise AttrboundError(f"{path} has labels that are not integers.") from None
    if labels.shape != (len(data),):
        raise AttrboundError(f"{path} has {len(data)} images but labels of shape {labels.shape}.")
    return data, labels


def _cifar_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise AttrboundError(
            f"{path} is not a CIFAR-10 binary batch (size {raw.size} is not a multiple of 3073; "
            "truncated or corrupt)."
        )
    rec = raw.reshape(-1, 3073)
    return rec[:, 1:], rec[:, 0].astype(np.int64)


def _load_cifar(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    for sub in [folder] + [folder / s for s in _SUBDIRS["cifar10"]]:
        if all((sub / f).is_file() for f in _CIFAR_BIN[split]):
            parts = [_cifar_binary_batch(sub / f) for f in _CIFAR_BIN[split]]
            break
        if all((sub / f).is_file() for f in _CIFAR_PY[split]):
            parts = [_cifar_python_batch(sub / f) for f in _CIFAR_PY[split]]
            break
    else:
        raise AttrboundError(
            f"{folder} has no CIFAR-10 {split} batches ({', '.join(_CIFAR_BIN[split])} or "
            f"{', '.join(_CIFAR_PY[split])}, directly or in cifar-10-batches-bin/ or "
            "cifar-10-batches-py/)."
        )
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise AttrboundError(
            f"the CIFAR-10 {split} labels in {sub} range over {labels.min()}..{labels.max()}; "
            "expected 0..9."
        )
    return data.reshape(-1, 3, 32, 32), labels
