"""Shared fixtures: small models trained once per test session."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def mnist_cnn():
    """(model, images [64,1,28,28], labels [64]): a small softplus CNN, float32, frozen,
    trained 1 epoch on 5,000 bundled MNIST training images (about 10 s on 2 cores),
    with 64 bundled test images it classifies."""
    from attrbound import data, models
    from attrbound.training import train

    torch.manual_seed(0)
    x, y = data.load("mnist", "train")
    model = models.cnn((1, 28, 28), 10, channels=(8, 16), hidden=64)
    train(model, x[:5000], y[:5000], epochs=1, batch_size=64, progress=False)
    xt, yt = data.load("mnist", "test")
    model.config = {"arch": "cnn", "input_shape": [1, 28, 28]}
    return model, xt[:64].clone(), yt[:64].clone()
