"""Model zoo: small MLP and CNN classifiers, safe checkpoints and the smooth surrogate.

Architectures (logits f: R^{C x H x W} -> R^K, any input shape):

- ``mlp``: Flatten -> [Linear -> act] * len(hidden) -> Linear.
- ``cnn`` (LeNet-like): [Conv2d(5x5, same padding) -> act -> Pool(2)] * len(channels)
  -> Flatten -> Linear(hidden) -> act -> Linear. ``pool`` is ``"avg"`` (default: keeps the
  network smooth when the activation is) or ``"max"``.

Activations: ``relu``, ``softplus`` (softplus(beta z) / beta, default beta = 10), ``elu``,
``gelu``, ``tanh``.

Piecewise-linear operations are found, and smoothed for the surrogate, by
:mod:`attrbound.surrogate`; :func:`is_piecewise_linear` and :func:`smooth_surrogate` are its
entry points here.

Checkpoints are one safetensors file: the weights, and in its header metadata a JSON config
(architecture, activation, dataset, input shape, classes, test accuracy, training command)
and a SHA-256 digest of the weights. :func:`load` never unpickles and refuses a file whose
weights do not match the digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attrbound import surrogate
from attrbound.errors import AttrboundError, check_choice, first_line
from attrbound.surrogate import PIECEWISE_LINEAR  # noqa: F401  (re-exported)

ARCHS = ("mlp", "cnn")
ACTIVATIONS = ("relu", "softplus", "elu", "gelu", "tanh")
CONFIG_KEY = "attrbound_config"
DIGEST_KEY = "attrbound_sha256"


def activation(name: str, beta: float = 10.0) -> nn.Module:
    """The activation module called ``name`` (softplus uses softplus(beta z) / beta)."""
    check_choice("activation", name, ACTIVATIONS)
    if name == "softplus":
        if not beta > 0:
            raise AttrboundError(f"softplus beta must be > 0, got {beta}.")
        return nn.Softplus(beta=beta)
    return {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh}[name]()


def mlp(
    input_shape: Sequence[int],
    classes: int = 10,
    *,
    hidden: Sequence[int] = (256, 128),
    activation_name: str = "softplus",
    beta: float = 10.0,
) -> nn.Sequential:
    """A fully connected classifier for inputs [B, *input_shape] -> logits [B, classes]."""
    d = 1
    for s in input_shape:
        d *= int(s)
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(d, int(h)), activation(activation_name, beta)]
        d = int(h)
    layers.append(nn.Linear(d, classes))
    return nn.Sequential(*layers)


def cnn(
    input_shape: Sequence[int],
    classes: int = 10,
    *,
    channels: Sequence[int] = (16, 32),
    hidden: int = 128,
    activation_name: str = "softplus",
    beta: float = 10.0,
    pool: str = "avg",
) -> nn.Sequential:
    """A LeNet-like convolutional classifier for inputs [B, C, H, W] -> logits [B, classes].

    Each block is Conv2d(5x5, padding 2) -> activation -> 2x2 pooling (``pool`` = "avg" or
    "max"); H and W are halved per block (floor), then a hidden Linear layer and the output.
    """
    if len(input_shape) != 3:
        raise AttrboundError(f"cnn needs inputs shaped [C, H, W], got {tuple(input_shape)}.")
    check_choice("pool", pool, ("avg", "max"))
    c, h, w = (int(s) for s in input_shape)
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, int(out), 5, padding=2), activation(activation_name, beta)]
        layers.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
        c, h, w = int(out), h // 2, w // 2
    if h < 1 or w < 1:
        raise AttrboundError(f"input {tuple(input_shape)} is too small for {len(channels)} blocks.")
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), activation(activation_name, beta)]
    layers.append(nn.Linear(hidden, classes))
    return nn.Sequential(*layers)


def build(config: dict[str, Any]) -> nn.Sequential:
    """Build the (untrained) architecture a config describes.

    Keys: ``arch`` ("mlp" | "cnn"), ``input_shape`` ([C, H, W]), ``classes`` (default 10),
    ``activation`` (default "softplus"), ``beta`` (default 10), and optionally ``hidden``,
    ``channels``, ``pool``.
    """
    arch = check_choice("architecture", str(config.get("arch")), ARCHS)
    if "input_shape" not in config:
        raise AttrboundError("the model config has no 'input_shape'.")
    shape = [int(s) for s in config["input_shape"]]
    common = {
        "activation_name": config.get("activation", "softplus"),
        "beta": float(config.get("beta", 10.0)),
    }
    classes = int(config.get("classes", 10))
    if arch == "mlp":
        return mlp(shape, classes, hidden=config.get("hidden", (256, 128)), **common)
    return cnn(
        shape,
        classes,
        channels=config.get("channels", (16, 32)),
        hidden=int(config.get("hidden", 128)),
        pool=config.get("pool", "avg"),
        **common,
    )


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with every parameter's requires_grad off; returns it."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(model: nn.Module, path: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``config`` to one safetensors file at ``path``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {CONFIG_KEY: json.dumps(config, sort_keys=True), DIGEST_KEY: _digest(tensors)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config stored in a checkpoint's header, without loading the weights."""
    return _read(path)[1]


def _read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AttrboundError(f"no model checkpoint at {path}.")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header ("{"); only a
    # file that is not that is sniffed for the pickle / torch.save (zip) signatures
    is_safetensors = len(head) == 9 and head[8:9] == b"{"
    if not is_safetensors and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise AttrboundError(
            f"{path} is a pickle/torch.save file; attrbound loads only safetensors checkpoints "
            "(pickles can run code), so re-save the weights with attrbound.models.save."
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise AttrboundError(f"{path} is not a readable safetensors checkpoint ({exc}).") from None
    if CONFIG_KEY not in meta:
        raise AttrboundError(f"{path} has no attrbound config in its safetensors metadata.")
    try:
        config = json.loads(meta[CONFIG_KEY])
    except json.JSONDecodeError:
        raise AttrboundError(f"the config in {path} is not valid JSON.") from None
    if meta.get(DIGEST_KEY) != _digest(tensors):
        raise AttrboundError(
            f"the weights in {path} do not match the digest stored with them; the file was "
            "modified or corrupted."
        )
    return tensors, config


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint written by :func:`save`: an ``nn.Module`` in eval mode, frozen.

    The architecture is rebuilt from the stored config (``model.config`` holds it). Never
    unpickles: a pickle file or a file whose weights fail the stored SHA-256 digest raises
    :class:`~attrbound.errors.AttrboundError`.
    """
    tensors, config = _read(path)
    model = build(config)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise AttrboundError(f"{path}: weights do not fit its architecture "
                             f"({first_line(exc)}).") from None
    model.config = config  # type: ignore[assignment]
    return freeze(model.to(device))


def is_piecewise_linear(model: nn.Module, example: torch.Tensor | None = None) -> bool:
    """True if ``model`` applies a piecewise-linear operation (ReLU, max-pool, clamp, abs, ...)
    to its input: :func:`attrbound.surrogate.inspect_model`, which looks at the operations of
    one forward pass on ``example`` (a batch [B, *S]); without one, at the modules (or at a zero
    input shaped ``config["input_shape"]``), and raises AttrboundError when it cannot tell."""
    return surrogate.is_piecewise_linear(model, example)


def smooth_surrogate(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A frozen copy of ``model`` with every piecewise-linear operation smoothed at ``beta``:
    :func:`attrbound.surrogate.smooth_surrogate` (ReLU -> softplus(beta z) / beta, max-pool ->
    log-sum-exp with temperature 1/beta, ...; the formulas in :mod:`attrbound.smooth_ops`).
    Used to steer attacks and derivative-based bounds on ReLU networks (docs/design.md
    section 2), whose own input gradient is piecewise constant. Larger beta is closer."""
    return surrogate.smooth_surrogate(model, beta)
