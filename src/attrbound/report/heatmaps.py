"""Heatmap grids of attribution maps (PNG, matplotlib's Agg renderer through
:class:`Figure`), for ``attrbound explain``, the demo and the report's gallery."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor, nn

from attrbound.attributions import attribution, predict


def image_for_display(x: Tensor) -> Tensor:
    """One input [C, H, W] in [0, 1] -> [H, W] (grey) or [H, W, 3] (colour), on the CPU."""
    x = x.detach().float().cpu().clamp(0, 1)
    return x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)


def map_for_display(a: Tensor) -> Tensor:
    """One attribution map [C, H, W] -> [H, W], summed over channels (signed)."""
    return a.detach().float().cpu().sum(dim=0)


def attribution_grid(
    images: Tensor,
    maps: Mapping[str, Tensor],
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
) -> Path:
    """Save a grid: one row per input, the image then one signed heatmap per method.

    images: [B, C, H, W] in [0, 1]; maps: method name -> [B, C, H, W]. Each heatmap uses a
    diverging colour map symmetric about 0 (red positive, blue negative), scaled per map.
    ``titles``: optional row labels (e.g. "label 7, pred 7").
    """
    b, cols = images.shape[0], 1 + len(maps)
    fig = Figure(figsize=(1.9 * cols, 1.9 * b))
    axes = fig.subplots(b, cols, squeeze=False)
    for i in range(b):
        ax = axes[i][0]
        ax.imshow(image_for_display(images[i]).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_ylabel(titles[i] if titles else f"input {i}", fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            h = map_for_display(m[i])
            lim = float(h.abs().max()) or 1.0
            axes[i][j].imshow(h.numpy(), cmap="bwr", vmin=-lim, vmax=lim)
            if i == 0:
                axes[i][j].set_title(name.replace("_", " "), fontsize=8)
        if i == 0:
            axes[i][0].set_title("input", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def explain_grid(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    path: str | os.PathLike,
    methods: Sequence[str] = ("saliency", "input_x_gradient", "integrated_gradients",
                              "smoothgrad"),
) -> Path:
    """Compute each method's map for the predicted class and save :func:`attribution_grid`."""
    pred = predict(model, images)
    maps = {m: attribution(m, model)(images, pred).detach() for m in methods}
    titles = [f"label {int(y)}, pred {int(p)}" for y, p in zip(labels, pred, strict=True)]
    return attribution_grid(images, maps, path, titles=titles)
