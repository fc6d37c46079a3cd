"""The training loop of the model zoo: train, evaluate, save, and the demo's default model.

Minimises mean_b loss(f, x_b, y_b) with Adam (lr 1e-3, the default of Kingma & Ba 2015) over
shuffled mini-batches, with a cosine learning-rate decay to zero over the run. ``mode`` picks
the objective (:mod:`attrbound.training.objectives`): ``natural`` (cross-entropy), ``pgd_at``
(Madry et al. 2018), ``trades`` (Zhang et al. 2019), ``ig_norm`` (Chen et al. 2019),
``grad_norm`` (double backprop, Ross & Doshi-Velez 2018) or ``curvature`` (CURE,
Moosavi-Dezfooli et al. 2019); each mode's options and defaults are in
:func:`attrbound.training.objectives.defaults`. Deterministic for a given seed on the CPU.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attrbound import data, models
from attrbound.errors import AttrboundError
from attrbound.training import objectives

#: default passes over the data per mode for :func:`train_and_save` / ``attrbound train``,
#: chosen so that each mode trains the default CNN on the bundled 10,000 MNIST images within
#: minutes on a CPU; ig_norm, whose step costs about 3 (steps + 1) m natural steps' passes
#: (:func:`attrbound.training.objectives.ig_norm`), gets one epoch.
DEFAULT_EPOCHS: dict[str, float] = {
    "natural": 3, "pgd_at": 3, "trades": 3, "ig_norm": 1, "grad_norm": 3, "curvature": 3,
}


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of images [N, ...] whose argmax logit equals labels [N], in batches of
    ``batch_size`` moved to the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            pred = model(images[i : i + batch_size].to(device)).argmax(dim=1)
            correct += int((pred == labels[i : i + batch_size].to(device)).sum())
    model.train(was_training)
    return correct / max(1, len(images))


def train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: float = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    mode: str = "natural",
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Train ``model`` on images [N, C, H, W] in [0, 1] and labels [N]; returns it frozen.

    ``mode``: the objective (default "natural"; see
    :data:`attrbound.training.objectives.MODES`) and ``options`` its settings, e.g.
    ``{"eps": 0.1, "norm": "inf", "steps": 10}`` (None: the mode's defaults,
    :func:`attrbound.training.objectives.defaults`; an option the mode does not take raises
    AttrboundError). ``epochs`` may be fractional (e.g. 0.5 = half a pass); batches of
    ``batch_size`` (default 64); Adam with cosine decay of the learning rate from ``lr``
    (default 1e-3) to 0. Runs on the model's device; a tqdm bar shows the loss and its terms.
    Random starts of the inner maximisations come from a CPU generator seeded with ``seed``.
    """
    loss_fn = objectives.objective(mode, options)
    if epochs <= 0 or batch_size < 1 or lr <= 0:
        raise AttrboundError("epochs, batch_size and lr must all be positive.")
    if len(images) != len(labels):
        raise AttrboundError(f"{len(images)} images but {len(labels)} labels.")
    device = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(images) / batch_size)
    total = max(1, round(epochs * per_epoch))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    bar = tqdm(total=total, desc=f"train {mode}", unit="step", disable=not progress, leave=False)
    step = 0
    while step < total:
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch_size):
            if step >= total:
                break
            idx = order[i : i + batch_size]
            xb, yb = images[idx].to(device), labels[idx].to(device)
            loss = loss_fn(model, xb, yb, gen)
            opt.zero_grad(set_to_none=True)
            loss.value.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step % 20 == 0 or step == total:
                bar.set_postfix({k: f"{float(v):.4g}" for k, v in loss.terms.items()})
    bar.close()
    return models.freeze(model)


def train_and_save(
    out: str | os.PathLike,
    *,
    dataset: str = "mnist",
    arch: str = "cnn",
    activation: str = "softplus",
    beta: float = 10.0,
    epochs: float | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    command: str | None = None,
    mode: str = "natural",
    options: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Build, train on ``dataset`` (bundled subset, or full files under ``root``), evaluate on
    its test split, and save a checkpoint at ``out``. Returns (model, config).

    ``mode`` and ``options`` choose the objective as in :func:`train`; ``epochs`` None means
    the mode's :data:`DEFAULT_EPOCHS` (3; ig_norm 1). The config records the mode, its
    resolved options, the training time and the test accuracy. ``device``: where the model
    trains (default cpu); the data stay on the CPU and move batch by batch, and the
    checkpoint is saved from the CPU (the same file whichever device trained it)."""
    mode_options = objectives.resolve(mode, options)
    if epochs is None:
        epochs = DEFAULT_EPOCHS[mode]
    x_train, y_train = data.load(dataset, "train", root=root)
    x_test, y_test = data.load(dataset, "test", root=root)
    classes = int(max(y_train.max(), y_test.max())) + 1
    torch.manual_seed(seed)
    config: dict[str, Any] = {
        "arch": arch,
        "activation": activation,
        "beta": beta,
        "input_shape": list(x_train.shape[1:]),
        "classes": classes,
        "dataset": dataset,
    }
    model = models.build(config).to(device)
    start = time.perf_counter()
    train(model, x_train, y_train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
          progress=progress, mode=mode, options=mode_options)
    seconds = time.perf_counter() - start
    config.update(
        {
            "mode": mode,
            "mode_options": mode_options,
            "data": "bundled subset" if root is None else "full files",
            "train_size": len(x_train),
            "epochs": epochs,
            "train_seconds": round(seconds, 1),
            "test_accuracy": accuracy(model, x_test, y_test),
            "test_size": len(x_test),
            "training_command": command or " ".join(shlex.quote(a) for a in sys.argv),
        }
    )
    models.save(model, out, config)
    model.config = config  # type: ignore[assignment]
    return model, config


DEFAULT_MODEL = Path("runs") / "models" / "mnist-cnn-softplus.safetensors"


def default_model(
    path: str | os.PathLike = DEFAULT_MODEL, progress: bool = True
) -> tuple[nn.Module, Path]:
    """The demo's default model: a softplus CNN on bundled MNIST, reused from ``path`` if it
    is a valid checkpoint there, else trained (10 epochs on the bundled 10,000 images)."""
    path = Path(path)
    if path.is_file():
        try:
            return models.load(path), path
        except AttrboundError as exc:
            print(f"retraining: {exc}", file=sys.stderr)
    model, _ = train_and_save(path, epochs=10, progress=progress,
                              command=f"attrbound train --dataset mnist --epochs 10 --out {path}")
    return models.freeze(model), path
