"""Regenerate src/attrbound/bundled/ from the full dataset files (run by hand, once).

    python benchmarks/make_bundled_data.py ../shared/data

MNIST and Fashion-MNIST: the first 10,000 training and first 2,000 test images (and labels),
written as IDX files with `gzip -9` and mtime 0, so the output is byte-for-byte reproducible.
CIFAR-10: the 20 sample PNGs (label = the number after the last '_' in the file name), in
CIFAR-10's binary record format (1 label byte + 3072 bytes R, G, B planes), sorted by the
sample index in the file names.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import numpy as np

from attrbound.data import BUNDLED, read_idx

COUNTS = {"train": 10_000, "t10k": 2_000}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=9,
                                               mtime=0, filename="") as gz:
        gz.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main(source: Path) -> None:
    for name in ("mnist", "fashion-mnist"):
        out = BUNDLED / name
        out.mkdir(parents=True, exist_ok=True)
        for prefix, n in COUNTS.items():
            for kind in ("images-idx3", "labels-idx1"):
                stem = f"{prefix}-{kind}-ubyte"
                write_idx(out / f"{stem}.gz", read_idx(source / name / f"{stem}.gz")[:n])
    shutil.copy(source / "fashion-mnist" / "COPYRIGHT", BUNDLED / "fashion-mnist" / "COPYRIGHT")

    from PIL import Image

    pngs = sorted((source / "cifar10-samples").glob("*.png"),
                  key=lambda p: int(p.stem.split("_")[1]))
    records = []
    for p in pngs:
        label = int(p.stem.rsplit("_", 1)[1])
        pixels = np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8)  # [32, 32, 3]
        records.append(bytes([label]) + pixels.transpose(2, 0, 1).tobytes())
    (BUNDLED / "cifar10").mkdir(parents=True, exist_ok=True)
    (BUNDLED / "cifar10" / "test_batch.bin").write_bytes(b"".join(records))
    print(f"wrote {BUNDLED}: {len(pngs)} CIFAR-10 images")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
