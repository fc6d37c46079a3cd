"""The rows file and its x_adv sidecar: crash-safe appends, an exclusive lock, resuming.

Rows are JSON lines. A unit's rows are appended in ONE write, flushed and fsync'ed, so a
crash (even kill -9 or a power cut) leaves at most a truncated last line, which
:func:`read_rows` ignores and, with ``repair=True``, cuts off. An unreadable line before the
last one is corruption and is refused. :func:`check_config` refuses a file written by another
configuration (:class:`ConfigMismatch`). :func:`locked_append` holds an exclusive POSIX
``flock`` on the file, so that two processes never write the same rows file.

The sidecar ``<out>.adv/`` holds, per unit, the point x_adv of the best euclidean attack of
each row: ``<unit>.safetensors`` with tensors ``x_adv`` [b, *S] (float32) and ``index`` [b],
written atomically (temporary file, fsync, rename) before the unit's rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from safetensors.torch import load_file, save_file
from torch import Tensor

from attrbound.errors import AttrboundError

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None  # type: ignore[assignment]


class ConfigMismatch(AttrboundError):
    """The rows file holds rows of another configuration (see :func:`check_config`)."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex; of a folder, of every file's relative path and bytes
    in sorted order (an image folder)."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_rows(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file, tolerating a truncated or unreadable LAST line.

    Such a line is what a crash mid-write leaves; it is ignored, and with ``repair=True`` cut
    off the file (so that appending continues on a clean line). An unreadable line before the
    last one raises AttrboundError (the file is corrupt, not merely cut short).
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        try:
            if nl < 0:
                raise ValueError("no newline")
            row = json.loads(line) if line.strip() else None
            if row is not None and not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if end < len(data):
                lineno = data.count(b"\n", 0, pos) + 1
                raise AttrboundError(
                    f"{path} is corrupt: line {lineno} is not a JSON object, and it is not "
                    "the last line; remove or repair it, or write to a new file."
                ) from None
            break
        if row is not None:
            rows.append(row)
        good_end = end
        pos = end
    if repair and good_end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return rows


def append_rows(fh: BinaryIO, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows to an open binary file in ONE write, then flush and fsync."""
    text = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows)
    fh.write(text.encode())
    fh.flush()
    os.fsync(fh.fileno())


@contextlib.contextmanager
def locked_append(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for appending under an exclusive, non-blocking lock (POSIX flock)."""
    fh = open(path, "ab")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise AttrboundError(
                    f"another process is writing {path}; wait for it or choose another --out."
                ) from None
        yield fh
    finally:
        fh.close()


def check_config(rows: list[dict[str, Any]], config: dict[str, Any], path: Path) -> None:
    """Raise :class:`ConfigMismatch` naming the changed settings when a row of ``rows`` was
    written by a configuration other than ``config`` (its ``config_id``; the paths of the
    model, weights and data and the torch version may differ)."""
    ignored = ("config_id", "model", "weights", "data", "torch")
    for row in rows:
        old = row.get("config") or {}
        if old.get("config_id") == config["config_id"]:
            continue
        changed = sorted(k for k in set(config) | set(old)
                         if k not in ignored and old.get(k) != config.get(k))
        raise ConfigMismatch(
            f"{path} holds rows of a different configuration (changed: "
            f"{', '.join(changed) or 'unknown'}); use a new --out file, or --overwrite to "
            "discard them."
        )


def adv_dir(out: str | os.PathLike) -> Path:
    """The sidecar folder of x_adv files next to a rows file: ``<out>.adv``."""
    out = Path(out)
    return out.with_name(out.name + ".adv")


def clear_adv(out: str | os.PathLike) -> None:
    """Delete the sidecar files of a rows file (when it is overwritten)."""
    folder = adv_dir(out)
    if folder.is_dir():
        for f in folder.glob("*.safetensors*"):
            f.unlink()


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_adv(folder: Path, name: str, x_adv: Tensor, index: Tensor) -> None:
    """Write ``folder/name`` atomically: x_adv [b, *S] as float32 and index [b] as int64."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (name + ".tmp")
    save_file({"x_adv": x_adv.detach().float().cpu().contiguous(),
               "index": index.detach().long().cpu().contiguous()}, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / name)
    _sync_dir(folder)


def load_adv_file(out: str | os.PathLike, name: str) -> Tensor:
    """The x_adv tensor [b, *S] of one sidecar file of the rows file ``out``."""
    path = adv_dir(out) / name
    if not path.is_file():
        raise AttrboundError(f"the x_adv sidecar {path} is missing.")
    return load_file(str(path))["x_adv"]


def load_adv(out: str | os.PathLike, adv: dict[str, Any]) -> Tensor:
    """x_adv [*S] of one row, from its ``adv`` field {"file", "row"} and the rows file path."""
    return load_adv_file(out, adv["file"])[int(adv["row"])]
