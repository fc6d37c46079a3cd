"""Captum and Quantus bridges: equal values to Captum's, Quantus' calling convention."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from attrbound import models
from attrbound.errors import AttrboundError
from attrbound.interop import WorstCaseSensitivity, from_captum

captum_attr = pytest.importorskip("captum.attr")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.freeze(models.cnn((1, 8, 8), 3, channels=(2, 3), hidden=6,
                                    activation_name="softplus").double())


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((3, 1, 8, 8), generator=gen, dtype=torch.float64)
    return x, torch.tensor([0, 2, 1])


def _captum(explainer, x, t, /, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return explainer.attribute(x.clone(), target=t, **kw)


@pytest.mark.parametrize(("cls", "kwargs"), [
    ("Saliency", {"abs": False}),
    ("InputXGradient", {}),
    ("IntegratedGradients", {"n_steps": 7}),
    ("IntegratedGradients", {"n_steps": 6, "method": "riemann_middle"}),
    ("IntegratedGradients", {"n_steps": 5, "baselines": 0.25}),
])
def test_from_captum_equals_captum(cls, kwargs):
    model, (x, t) = _model(), _batch()
    method = getattr(captum_attr, cls)(model)
    ours = from_captum(method, **kwargs)(x, t)
    ref = _captum(method, x, t, **kwargs)
    # Captum builds its path points in float32 (nodes rounded at ~1e-8 relative), so
    # integrated gradients agree to that; the gradient-only maps agree exactly
    rel = (ours - ref).abs().max() / ref.abs().max()
    assert rel < (1e-7 if cls == "IntegratedGradients" else 1e-12)


def test_from_captum_noise_tunnel_is_smoothgrad_with_the_same_noise(monkeypatch):
    model, (x, t) = _model(), _batch()
    tunnel = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
    ours = from_captum(tunnel, nt_type="smoothgrad", nt_samples=4, stdevs=0.3, seed=5, abs=False)
    assert (ours.name, ours.n, ours.sigma, ours.seed) == ("smoothgrad", 4, 0.3, 5)
    xi = ours.noise(tuple(x.shape[1:]))  # [4, *S], the same for every example

    def same_noise(inp, stdev, n):  # Captum's layout: example b, sample k at row b * n + k
        return inp.repeat_interleave(n, dim=0) + stdev * xi.repeat(inp.shape[0], 1, 1, 1)

    monkeypatch.setattr(captum_attr.NoiseTunnel, "_add_noise_to_input", staticmethod(same_noise))
    ref = _captum(tunnel, x, t, nt_type="smoothgrad", nt_samples=4, stdevs=0.3, abs=False)
    assert torch.allclose(ours(x, t), ref, rtol=1e-9, atol=1e-12)


def test_from_captum_refuses_what_it_cannot_map():
    model = _model()
    for abs_kw in ({}, {"abs": True}):  # Captum's default is abs=True
        with pytest.raises(AttrboundError, match="abs=False"):
            from_captum(captum_attr.Saliency(model), **abs_kw)
    with pytest.raises(AttrboundError, match="supported"):
        from_captum(captum_attr.DeepLift(model))
    with pytest.raises(AttrboundError, match="cannot map"):
        from_captum(captum_attr.IntegratedGradients(model), return_convergence_delta=True)
    with pytest.raises(AttrboundError, match="smoothgrad"):
        from_captum(captum_attr.NoiseTunnel(captum_attr.Saliency(model)), nt_type="vargrad",
                    abs=False)


def test_worst_case_sensitivity_follows_quantus_convention():
    model, (x, t) = _model(), _batch()
    xs, ys = x.numpy(), t.numpy()
    kw = dict(eps=0.05, norm="inf", attribution="saliency", seed=0)
    bound_rel = WorstCaseSensitivity(**kw)(model, xs, ys, a_batch=None, device="cpu")
    attack_rel = WorstCaseSensitivity(score="attack", **kw)(model, xs, ys)
    bound_abs = WorstCaseSensitivity(relative=False, **kw)(model, xs, ys)
    assert isinstance(bound_rel, list) and len(bound_rel) == 3
    assert all(isinstance(v, float) for v in bound_rel)
    # the bound (an estimate of the sup) stays above the best attack on the same map
    assert all(b >= a for b, a in zip(bound_rel, attack_rel, strict=True))
    norms = torch.from_numpy(xs).new_tensor(
        [float(v) for v in
         from_captum(captum_attr.Saliency(model), abs=False)(x, t).flatten(1).norm(dim=1)]
    )
    assert np.allclose(np.array(bound_rel) * norms.numpy(), bound_abs, rtol=1e-9)
