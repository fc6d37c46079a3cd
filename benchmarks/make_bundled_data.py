"""Regenerate src/attrbound/bundled/ from the full dataset files (run by hand, rarely).

    python benchmarks/make_bundled_data.py [SOURCE] [--out FOLDER]

SOURCE (default: ../shared/data next to the repository) holds mnist/ and fashion-mnist/ with
the four standard gzipped IDX files each, fashion-mnist/COPYRIGHT, and cifar10-samples/ with
the 20 foolbox CIFAR-10 sample PNGs. FOLDER defaults to the package's bundled/ folder.

MNIST and Fashion-MNIST: the first 10,000 training and first 2,000 test images (and labels),
written as IDX files with `gzip -9` and mtime 0, so the output is byte-for-byte reproducible.
CIFAR-10: the 20 sample PNGs (label = the number after the last '_' in the file name), in
CIFAR-10's binary record format (1 label byte + 3072 bytes R, G, B planes), sorted by the
sample index in the file names. bundled/README.md is written by hand and left alone.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np

from attrbound.data import BUNDLED, read_idx

COUNTS = {"train": 10_000, "t10k": 2_000}
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data"
MAX_BYTES = 15_000_000


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (gzip -9, mtime 0, no file name: reproducible)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with (
        open(path, "wb") as fh,
        gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=9, mtime=0, filename="") as gz,
    ):
        gz.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def cifar_records(sample_dir: Path) -> bytes:
    """The sample PNGs as CIFAR-10 binary records, sorted by the index in their file names."""
    from PIL import Image

    pngs = sorted(sample_dir.glob("*.png"), key=lambda p: int(p.stem.rsplit("_", 2)[1]))
    if not pngs:
        raise SystemExit(f"no PNG files in {sample_dir}")
    records = []
    for p in pngs:
        label = int(p.stem.rsplit("_", 1)[1])
        pixels = np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8)  # [32, 32, 3]
        if pixels.shape != (32, 32, 3) or not 0 <= label <= 9:
            raise SystemExit(f"{p}: expected a 32x32 RGB image with a label 0..9")
        records.append(bytes([label]) + pixels.transpose(2, 0, 1).tobytes())  # R, G, B planes
    return b"".join(records)


def main(source: Path, out: Path = BUNDLED) -> int:
    """Write the bundle from ``source`` into ``out``; returns its size in bytes."""
    for name in ("mnist", "fashion-mnist"):
        (out / name).mkdir(parents=True, exist_ok=True)
        for prefix, n in COUNTS.items():
            for kind in ("images-idx3", "labels-idx1"):
                stem = f"{prefix}-{kind}-ubyte"
                write_idx(out / name / f"{stem}.gz", read_idx(source / name / f"{stem}.gz")[:n])
    shutil.copyfile(source / "fashion-mnist" / "COPYRIGHT", out / "fashion-mnist" / "COPYRIGHT")
    (out / "cifar10").mkdir(parents=True, exist_ok=True)
    (out / "cifar10" / "test_batch.bin").write_bytes(cifar_records(source / "cifar10-samples"))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if size > MAX_BYTES:
        raise SystemExit(f"the bundle in {out} is {size} bytes, over the {MAX_BYTES} limit")
    return size


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=BUNDLED)
    args = parser.parse_args()
    print(f"wrote {args.out}: {main(args.source, args.out) / 1e6:.1f} MB")
