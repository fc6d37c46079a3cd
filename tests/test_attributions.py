"""Attribution maps against Captum, finite differences and their own definitions."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers.references import central_difference, smoothgrad_by_loop

from attrbound import models
from attrbound.attributions import attribution, integration_nodes
from attrbound.errors import AttrboundError

captum_attr = pytest.importorskip("captum.attr")


def small_models():
    torch.manual_seed(0)
    cnn = models.cnn((2, 12, 12), 5, channels=(4, 6), hidden=16, activation_name="softplus")
    mlp = models.mlp((2, 12, 12), 5, hidden=(32, 16), activation_name="tanh")
    elu = models.cnn((2, 12, 12), 5, channels=(3,), hidden=8, activation_name="elu")
    return {"cnn": cnn, "mlp": mlp, "elu": elu}


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 2, 12, 12, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 1, 4])
    return x, t


CAPTUM_CASES = [
    ("saliency", {}, "Saliency", {"abs": False}),
    ("input_x_gradient", {}, "InputXGradient", {}),
    ("integrated_gradients", {"steps": 20}, "IntegratedGradients",
     {"n_steps": 20, "method": "riemann_middle"}),
    ("integrated_gradients", {"steps": 20, "nodes": "gausslegendre"}, "IntegratedGradients",
     {"n_steps": 20, "method": "gausslegendre"}),
]


@pytest.mark.parametrize("arch", ["cnn", "mlp", "elu"])
@pytest.mark.parametrize(("name", "opts", "cls", "copts"), CAPTUM_CASES)
def test_matches_captum(arch, name, opts, cls, copts, batch):
    model = models.freeze(small_models()[arch].double())
    x, t = batch
    ours = attribution(name, model, **opts)(x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(captum_attr, cls)(model).attribute(x.clone(), target=t, **copts)
    rel = (ours - ref).abs().max() / ref.abs().max()
    assert rel < 1e-5, f"{name} differs from Captum {cls}: relative error {rel:.2e}"


def test_integrated_gradients_with_baseline_matches_captum(batch):
    model = models.freeze(small_models()["cnn"].double())
    x, t = batch
    b = torch.full_like(x[0], 0.3)
    ours = attribution("integrated_gradients", model, steps=8, baseline=b)(x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = captum_attr.IntegratedGradients(model).attribute(
            x, baselines=b.expand_as(x), target=t, n_steps=8, method="riemann_middle")
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-5


@pytest.mark.parametrize("nodes", ["riemann_middle", "gausslegendre"])
def test_with_steps_is_the_same_map_built_with_those_steps(batch, nodes):
    model = models.freeze(small_models()["cnn"].double())
    x, t = batch
    b = torch.full_like(x[0], 0.3)
    fine = attribution("integrated_gradients", model, steps=16, baseline=b, nodes=nodes)
    coarse = fine.with_steps(2)
    ref = attribution("integrated_gradients", model, steps=2, baseline=b, nodes=nodes)
    assert coarse.steps == 2 and coarse.evaluations == 2 and fine.steps == 16
    assert torch.allclose(coarse(x, t), ref(x, t), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(coarse(x, t), fine(x, t), rtol=1e-6)
    with pytest.raises(AttrboundError, match="steps >= 1"):
        fine.with_steps(0)


def test_gauss_legendre_integrates_polynomials_exactly():
    t, w = integration_nodes(5, "gausslegendre")
    for p in range(10):  # a 5-point rule is exact up to degree 9
        assert abs((w * t**p).sum() - 1 / (p + 1)) < 1e-13


def test_smoothgrad_is_the_mean_saliency_over_its_fixed_noise(batch):
    model = models.freeze(small_models()["cnn"].double())
    x, t = batch
    sg = attribution("smoothgrad", model, n=5, sigma=0.2, seed=3)
    a1, a2 = sg(x, t), sg(x, t)
    assert torch.equal(a1, a2)
    sal = attribution("saliency", model)
    xi = sg.noise(tuple(x.shape[1:]))
    ref = smoothgrad_by_loop(lambda z: sal(z, t), x, xi, 0.2)
    assert torch.allclose(a1, ref, rtol=1e-10, atol=1e-14)
    other = attribution("smoothgrad", model, n=5, sigma=0.2, seed=4)(x, t)
    assert not torch.allclose(a1, other)


METHODS = [
    ("saliency", {}),
    ("input_x_gradient", {}),
    ("integrated_gradients", {"steps": 6}),
    ("integrated_gradients", {"steps": 5, "nodes": "gausslegendre"}),
    ("smoothgrad", {"n": 3, "sigma": 0.1}),
]


@pytest.mark.parametrize(("name", "opts"), METHODS)
def test_jvp_matches_central_finite_difference(name, opts, batch):
    model = models.freeze(small_models()["cnn"].double())
    x, t = batch
    a = attribution(name, model, **opts)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    _, jv = torch.func.jvp(lambda z: a.attribute(z, t), (x,), (v,))
    fd = central_difference(lambda z: a.attribute(z, t), x, v, h=1e-5)
    rel = (jv - fd).abs().max() / fd.abs().max()
    assert rel < 1e-6, f"{name}: JVP vs finite difference relative error {rel:.2e}"


@pytest.mark.parametrize(("name", "opts"), METHODS)
def test_vjp_is_the_adjoint_and_autograd_agrees(name, opts, batch):
    model = models.freeze(small_models()["mlp"].double())
    x, t = batch
    a = attribution(name, model, **opts)
    g = torch.Generator().manual_seed(5)
    u = torch.randn(x.shape, generator=g, dtype=x.dtype)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    _, jv = torch.func.jvp(lambda z: a.attribute(z, t), (x,), (v,))
    _, pullback = torch.func.vjp(lambda z: a.attribute(z, t), x)
    (jtu,) = pullback(u)
    assert torch.allclose((u * jv).sum(), (jtu * v).sum(), rtol=1e-10)
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad((a.attribute(xr, t) * u).sum(), xr, create_graph=True)
    assert auto.requires_grad
    assert torch.allclose(auto, jtu, rtol=1e-10, atol=1e-14)


def test_examples_are_independent_and_target_defaults_to_prediction(batch):
    model = models.freeze(small_models()["cnn"].double())
    x, _ = batch
    a = attribution("integrated_gradients", model, steps=4)
    pred = model(x).argmax(1)
    full = a(x)
    assert torch.allclose(full, a(x, pred))
    for i in range(len(x)):
        assert torch.allclose(full[i : i + 1], a(x[i : i + 1]), rtol=1e-12, atol=1e-15)
    assert torch.allclose(a(x, 2), a(x, torch.full((4,), 2)))


def test_internal_batch_size_gives_the_same_map(batch):
    model = models.freeze(small_models()["cnn"].double())
    x, t = batch
    full = attribution("integrated_gradients", model, steps=10)(x, t)
    chunked = attribution("integrated_gradients", model, steps=10, internal_batch_size=9)(x, t)
    assert torch.allclose(full, chunked, rtol=1e-12, atol=1e-15)


def test_user_errors_are_one_clear_sentence(batch):
    model = models.freeze(small_models()["cnn"].double())
    model.config = {"input_shape": [2, 12, 12]}
    x, _ = batch
    with pytest.raises(AttrboundError, match="unknown attribution method"):
        attribution("gradcam", model)
    with pytest.raises(AttrboundError, match="NaN"):
        attribution("saliency", model)(x.clone().fill_(float("nan")))
    with pytest.raises(AttrboundError, match="expects inputs shaped"):
        attribution("saliency", model)(x[:, :1])
    with pytest.raises(AttrboundError, match="target classes"):
        attribution("saliency", model)(x, 7)
    with pytest.raises(AttrboundError, match="steps"):
        attribution("integrated_gradients", model, steps=0)
    with pytest.raises(AttrboundError, match="bad option"):
        attribution("saliency", model, steps=3)
