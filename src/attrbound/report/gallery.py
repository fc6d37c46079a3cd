"""The report's gallery: the worst inputs, their maps before and after the best attack.

Per chosen row: the input x, its map A(x), the map A(x_adv) at the best euclidean attack and
the perturbation x_adv - x. x_adv comes from the campaign's sidecar ``<rows>.adv/``; x and
the maps are recomputed from the model and inputs named in the rows (the model file's
SHA-256 must match the rows'), on the map the rows' attacks measured: the model's own, or
its smooth surrogate's (the row's ``map``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attrbound import intake, models
from attrbound.attributions import attribution
from attrbound.campaign import MODEL_MAP, file_sha256, finite_or_none, load_adv_file
from attrbound.campaign.grid import grid_from_config
from attrbound.campaign.runner import grid_inputs
from attrbound.errors import AttrboundError
from attrbound.report.figures import figure, save
from attrbound.report.heatmaps import image_for_display, map_for_display


def _violated(r: dict[str, Any]) -> bool:
    return any(v for flags in r.get("violated", {}).values() for v in flags.values())


def _relative(r: dict[str, Any]) -> float:
    le, an = finite_or_none(r["best"]["euclidean"]["value"]), finite_or_none(r.get("attr_norm"))
    if le is None:
        return -math.inf
    return le / an if an else le


def worst_rows(rows: list[dict[str, Any]], count: int = 8) -> list[dict[str, Any]]:
    """The ``count`` worst rows that have an x_adv: those with a violation (of any bound,
    either metric) first, then by the relative deviation L / ||A(x)||, largest first."""
    have = [r for r in rows if r.get("adv")]
    return sorted(have, key=lambda r: (not _violated(r), -_relative(r)))[:count]


def gallery_tensors(
    rows_path: str | os.PathLike, chosen: Sequence[dict[str, Any]], device: str = "cpu"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, x_adv, A(x), A(x_adv)), each [w, *S] on the CPU, for the w rows ``chosen``.

    The model (attrbound checkpoint, ``.pt2`` archive or factory with weights, with the
    rows' mean / std) and the inputs (dataset split, or the ``data`` file or folder) are
    rebuilt from the rows' config (:func:`attrbound.campaign.grid_from_config`); the model
    file's SHA-256 must match the rows'. x_adv comes from the sidecar, and the maps are
    recomputed on ``device`` (default cpu) on the map the rows' attacks measured (the
    smooth surrogate's when the rows' ``map`` is one) for the class the rows explain
    (``pred``), one batch per attribution method. Raises AttrboundError when the model,
    data or sidecar is missing or the model file changed.
    """
    config = chosen[0]["config"]
    grid = grid_from_config(config, device)
    model_file = Path(grid.weights if grid.weights is not None else grid.model)
    if not model_file.is_file():
        raise AttrboundError(f"the model file {model_file} named in the rows is missing")
    if file_sha256(model_file) != config["model_sha256"]:
        raise AttrboundError(f"the model file {model_file} changed since the rows were written")
    model = intake.load_model(grid.model, weights=grid.weights, device=device,
                              mean=grid.mean, std=grid.std)
    beta = config.get("surrogate_beta")
    if beta is not None and chosen[0].get("map", MODEL_MAP) != MODEL_MAP:
        model = models.smooth_surrogate(model, float(beta))
    images, _, _ = grid_inputs(grid, model)
    x = images[torch.tensor([r["index"] for r in chosen])].to(device)
    files = {name: load_adv_file(rows_path, name)  # each sidecar file once
             for name in dict.fromkeys(r["adv"]["file"] for r in chosen)}
    x_adv = torch.stack([files[r["adv"]["file"]][int(r["adv"]["row"])] for r in chosen])
    x_adv = x_adv.to(device=device, dtype=x.dtype)
    pred = torch.tensor([r["pred"] for r in chosen], device=device)
    before, after = torch.empty_like(x), torch.empty_like(x)
    opts = config.get("attribution_options", {})
    for name in dict.fromkeys(r["attribution"] for r in chosen):  # one batch per method
        sel = torch.tensor([r["attribution"] == name for r in chosen], device=device)
        attr = attribution(name, model, **opts.get(name, {}))
        maps = attr.attribute(torch.cat([x[sel], x_adv[sel]]), pred[sel].repeat(2)).detach()
        before[sel], after[sel] = maps.chunk(2)
    return x.cpu(), x_adv.cpu(), before.cpu(), after.cpu()


def render_gallery(rows_path: Path, chosen: list[dict[str, Any]], path: Path,
                   device: str = "cpu") -> str:
    """Render the gallery PNG (maps computed on ``device``); raises AttrboundError when the
    model or data are unavailable."""
    x, x_adv, before, after = gallery_tensors(rows_path, chosen, device)
    fig, axes = figure(len(chosen), 4, (2.0, 2.0))
    a = "A" if chosen[0].get("map", MODEL_MAP) == MODEL_MAP else "A_beta"
    titles = ("input x", f"{a}(x)", f"{a}(x_adv)", "x_adv - x")
    for i, r in enumerate(chosen):
        lim = float(max(before[i].abs().max(), after[i].abs().max())) or 1.0
        delta = map_for_display(x_adv[i] - x[i])
        dlim = float(delta.abs().max()) or 1.0
        axes[i][0].imshow(image_for_display(x[i]).numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i][1].imshow(map_for_display(before[i]).numpy(), cmap="bwr", vmin=-lim, vmax=lim)
        axes[i][2].imshow(map_for_display(after[i]).numpy(), cmap="bwr", vmin=-lim, vmax=lim)
        axes[i][3].imshow(delta.numpy(), cmap="PuOr", vmin=-dlim, vmax=dlim)
        axes[i][0].set_ylabel(f"#{r['index']} {r['attribution'][:10]}\nl{r['norm']} "
                              f"eps {r['eps']:g}", fontsize=7)
        for j in range(4):
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
            if i == 0:
                axes[i][j].set_title(titles[j], fontsize=8)
    return save(fig, path)
