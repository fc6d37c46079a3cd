"""File checks shared by model and data intake: real safetensors files only."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from attrbound.errors import AttrboundError

HOW_TO_SAVE = (
    "export the model with torch.export.save(torch.export.export(model.eval(), (x,), "
    'dynamic_shapes={"x": {0: torch.export.Dim("batch")}}), "model.pt2"), or save its '
    'weights with safetensors.torch.save_file(model.state_dict(), "weights.safetensors") and '
    "pass package.module:factory with those weights"
)


def check_safetensors_file(path: Path, what: str) -> None:
    """Refuse anything that is not a safetensors file (a pickle renamed, a torch.save zip)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    if not (head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8):
        pickled = head[:1] == b"\x80" or head[:2] == b"PK"
        kind = "a pickle / torch.save file" if pickled else "not a safetensors file"
        raise AttrboundError(
            f"the {what} {path} is {kind}; attrbound reads only real safetensors files "
            "(unpickling can run code)."
        )


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors header (empty if none), without the tensors."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise AttrboundError(f"{path} is not a readable safetensors file ({exc}).") from None


def some(items: list[str], k: int = 3) -> str:
    """The first ``k`` items joined by commas, then "and N more" if there are more."""
    shown = ", ".join(items[:k])
    return shown if len(items) <= k else f"{shown} and {len(items) - k} more"
