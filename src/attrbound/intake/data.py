"""Data: a safetensors file of images and labels, or an image folder, plus CLI parsers.

:func:`load_data` returns (images float32 [N, *S], labels int64 [N], class names or None);
:func:`parse_domain`, :func:`parse_size` and :func:`parse_floats` parse the command line's
comma-separated values, each failing with one sentence.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from attrbound.errors import AttrboundError
from attrbound.intake.files import check_safetensors_file, some

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")


def load_data(
    path: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[Tensor, Tensor, list[str] | None]:
    """(images float32 [N, *S], labels int64 [N], class names or None) from ``path``.

    - ``FILE.safetensors``: tensors ``images`` [N, *S] (floating; cast to float32) and
      ``labels`` [N] (integer; cast to int64); other tensors are ignored. Class names are
      read from the metadata key ``classes`` (a JSON list of strings) when present.
    - a folder with one subfolder per class (classes in sorted order, hidden folders
      skipped), each holding PNG/JPEG files (other files are skipped), read with Pillow: all
      grayscale -> [N, 1, H, W], otherwise RGB [N, 3, H, W] (alpha dropped), scaled to
      [0, 1] (8-bit / 255, 16-bit / 65535); ``size=(H, W)`` resizes (bilinear), without it all
      images must have one size.

    Images must be finite and inside ``domain`` (None: no box). ``size`` applies to folders.
    """
    path = Path(path)
    lo_hi = None if domain is None else _check_domain(domain)
    if path.is_dir():
        images, labels, classes = _load_folder(path, size)
    elif path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise AttrboundError(
                f"{path} is not a .safetensors file or an image folder; attrbound reads "
                "data only from those (never from pickles)."
            )
        images, labels, classes = _load_tensors(path)
        if size is not None and tuple(images.shape[-2:]) != tuple(size):
            raise AttrboundError(
                f"size= (--size) resizes image folders only; {path} holds images shaped "
                f"{list(images.shape[1:])}."
            )
    else:
        raise AttrboundError(f"no data file or folder at {path}.")
    if lo_hi is not None and ((images < lo_hi[0]).any() or (images > lo_hi[1]).any()):
        raise AttrboundError(
            f"the images in {path} range over [{images.min().item():.4g}, "
            f"{images.max().item():.4g}], outside the domain [{lo_hi[0]:g}, {lo_hi[1]:g}]; "
            "pass the box they live in as domain= (--domain LO,HI)."
        )
    return images, labels, classes


def _load_tensors(path: Path) -> tuple[Tensor, Tensor, list[str] | None]:
    check_safetensors_file(path, "data file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys, meta = set(fh.keys()), fh.metadata() or {}
            missing = [k for k in ("images", "labels") if k not in keys]
            if missing:
                raise AttrboundError(
                    f"{path} has no tensor {' or '.join(map(repr, missing))} (it has "
                    f"{some(sorted(keys)) or 'none'}); attrbound reads 'images' [N, *S] and "
                    "'labels' [N]."
                )
            images, labels = fh.get_tensor("images"), fh.get_tensor("labels")
    except AttrboundError:
        raise
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise AttrboundError(f"{path} is not a readable safetensors file ({exc}).") from None
    if not images.is_floating_point():
        raise AttrboundError(
            f"'images' in {path} must be floating point, got {images.dtype}; scale them into "
            "the domain first (e.g. uint8 / 255)."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise AttrboundError(f"'labels' in {path} must be integers, got {labels.dtype}.")
    if images.dim() < 2 or labels.dim() != 1:
        raise AttrboundError(
            f"{path} must hold images [N, *S] and labels [N], got images "
            f"{list(images.shape)} and labels {list(labels.shape)}."
        )
    if images.shape[0] != labels.shape[0]:
        raise AttrboundError(f"{path} holds {images.shape[0]} images but {labels.shape[0]} labels.")
    if images.shape[0] == 0:
        raise AttrboundError(f"{path} holds no images.")
    images, labels = images.to(torch.float32), labels.to(torch.int64)
    if not torch.isfinite(images).all():
        raise AttrboundError(f"the images in {path} contain NaN or infinite values.")
    if (labels < 0).any():
        raise AttrboundError(f"the labels in {path} must be >= 0.")
    classes = None
    if "classes" in meta:
        try:
            classes = json.loads(meta["classes"])
        except json.JSONDecodeError:
            classes = None
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise AttrboundError(f"the 'classes' metadata of {path} is not a JSON list of names.")
        if int(labels.max()) >= len(classes):
            raise AttrboundError(
                f"{path} has label {int(labels.max())} but names only {len(classes)} classes."
            )
    return images, labels, classes


def _load_folder(root: Path, size: tuple[int, int] | None) -> tuple[Tensor, Tensor, list[str]]:
    try:
        from PIL import Image
    except ImportError:
        raise AttrboundError("reading an image folder needs Pillow: pip install pillow.") from None
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = any(p.suffix.lower() in _IMAGE_SUFFIXES for p in root.iterdir())
        raise AttrboundError(
            f"{root} has no class subfolders"
            + ("; put its images in one subfolder per class." if loose else " and no images.")
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
        )
        if not found:
            raise AttrboundError(f"the class folder {root / name} has no PNG or JPEG images.")
        files += [(p, label) for p in found]
    opened = []
    for p, _ in files:
        try:
            img = Image.open(p)
            img.load()
        except Exception as exc:  # Pillow raises many types for broken files
            raise AttrboundError(f"cannot read the image {p} ({exc}).") from None
        opened.append(img)
    gray = all(img.mode in _GRAY_MODES for img in opened)
    if size is None:
        sizes = {}
        for (p, _), img in zip(files, opened, strict=True):
            sizes.setdefault((img.height, img.width), p)
        if len(sizes) > 1:
            (s1, p1), (s2, p2) = list(sizes.items())[:2]
            raise AttrboundError(
                f"the images in {root} differ in size ({p1.name} is {s1[0]}x{s1[1]}, "
                f"{p2.name} is {s2[0]}x{s2[1]}); pass size=(H, W) (--size H,W) to resize them."
            )
    arrays = [_pixels(img, gray, size) for img in opened]
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return images, labels, classes


def _pixels(img: Any, gray: bool, size: tuple[int, int] | None) -> np.ndarray:
    """One image as float32 [C, H, W] in [0, 1] (C = 1 if ``gray`` else 3)."""
    from PIL import Image

    if img.mode.startswith("I"):  # 16-bit grayscale PNG
        img, scale = img.convert("I"), 65535.0
    else:
        img, scale = img.convert("L" if gray else "RGB"), 255.0
    if size is not None:
        img = img.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
    a = np.clip(np.asarray(img, dtype=np.float32) / scale, 0.0, 1.0)
    if a.ndim == 2:
        a = a[None] if gray else np.repeat(a[None], 3, axis=0)
    else:
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a)


def _check_domain(domain: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError):
        raise AttrboundError(f"domain must be two numbers (lo, hi), got {domain!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise AttrboundError(f"domain must be finite (lo, hi) with lo < hi, got {domain!r}.")
    return lo, hi


def parse_floats(text: str | None, name: str = "value") -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` -> (0.5, 0.5, 0.5): finite numbers separated by commas; None -> None."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise AttrboundError(
            f"{name} must be numbers separated by commas (e.g. 0.5,0.5,0.5), got {text!r}."
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise AttrboundError(f"{name} must be finite numbers, got {text!r}.")
    return values


def parse_domain(text: str | None, name: str = "--domain") -> tuple[float, float] | None:
    """``"0,1"`` -> (0.0, 1.0): the input box LO,HI with LO < HI; None -> None."""
    values = parse_floats(text, name)
    if values is None:
        return None
    if len(values) != 2 or not values[0] < values[1]:
        raise AttrboundError(f"{name} must be LO,HI with LO < HI (e.g. 0,1), got {text!r}.")
    return values[0], values[1]


def parse_size(text: str | None, name: str = "--size") -> tuple[int, int] | None:
    """``"32,32"`` -> (32, 32): the image size H,W (one number: a square); None -> None."""
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise AttrboundError(f"{name} must be H,W in pixels (e.g. 32,32), got {text!r}.") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise AttrboundError(f"{name} must be H,W with H, W >= 1 (e.g. 32,32), got {text!r}.")
    return values[0], values[1]
