"""Training objectives against closed forms and independent references; each mode, trained a
few steps on a tiny model, lowers the quantity it targets relative to natural training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrbound import models
from attrbound.attributions import attribution
from attrbound.errors import AttrboundError
from attrbound.geometry import batch_norm
from attrbound.training import DEFAULT_EPOCHS, accuracy, objectives, train
from attrbound.training.objectives import (
    MODES,
    kl_divergence,
    loss_gradient,
    loss_integrated_gradients,
    perturb,
)

D = 36  # tiny 1x6x6 inputs
SHAPE = (1, 6, 6)
K = 3


def _data(n: int = 96, seed: int = 0, dtype=torch.float64):
    """3 classes: a class-specific pattern (the same for every seed) on grey + noise (drawn
    from ``seed``), inside [0, 1]."""
    patterns = torch.randn(K, *SHAPE, generator=torch.Generator().manual_seed(99), dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = 0.5 + 0.15 * patterns[y] + 0.1 * torch.randn(n, *SHAPE, generator=g, dtype=dtype)
    return x.clamp(0, 1), y


def _mlp(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return models.mlp(SHAPE, K, hidden=(16,), beta=5.0).to(dtype)


def _linear(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Softmax regression f(x) = W vec(x) + b, whose loss gradient is W^T (softmax - e_y)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, K)).double()
    return model, model[1].weight, model[1].bias


def _closed_form_grad(w, b, x, y):
    """grad_x CE(Wx + b, y) = W^T (softmax(Wx + b) - onehot(y)), reshaped like x."""
    p = torch.softmax(x.reshape(len(x), -1) @ w.T + b, dim=1)
    return ((p - F.one_hot(y, K).to(p)) @ w).reshape(x.shape)


class LossAsLogit(nn.Module):
    """Output column 0 = l_y(z) = CE(f(z), y): the loss as a 'logit', so that attrbound's
    integrated_gradients (target 0) integrates the loss gradient. Path points arrive as
    [m*B] stacked node by node, hence the labels repeat."""

    def __init__(self, model: nn.Module, y: torch.Tensor) -> None:
        super().__init__()
        self.model, self.y = model, y

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.y.repeat(len(z) // len(self.y))
        return F.cross_entropy(self.model(z), y, reduction="none")[:, None]


# ------------------------------------------------------------------ shared pieces


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_perturb_reaches_the_closed_form_maximiser_of_a_linear_objective(norm):
    # max w.z over the eps-ball around x = 0.5 (domain inactive): x + eps sign(w) for l-inf,
    # x + eps w / ||w|| for l2; PGD from a random start must end there (l2: each step shrinks
    # the component orthogonal to w by eps / ||eps u + alpha w_hat|| <= 1/2 with alpha = eps).
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, *SHAPE, generator=g, dtype=torch.float64)
    x = torch.full((4, *SHAPE), 0.5, dtype=torch.float64)
    eps = 0.1 if norm == "inf" else 0.3
    z = perturb(lambda u: (w * u).flatten(1).sum(1), x, eps=eps, norm=norm, steps=60,
                step_size=eps, generator=g)
    if norm == "inf":
        want = x + eps * w.sign()
    else:
        want = x + eps * w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(z, want, atol=1e-6)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_perturb_stays_in_the_ball_and_the_domain(norm):
    model = _mlp()
    x, y = _data(32)
    eps = 0.2 if norm == "inf" else 1.0
    z = perturb(lambda u: objectives.per_example_ce(model, u, y), x, eps=eps, norm=norm,
                steps=5, generator=torch.Generator().manual_seed(0))
    assert (batch_norm(z - x, norm) <= eps * (1 + 1e-9)).all()
    assert z.min() >= 0 and z.max() <= 1


def test_loss_gradient_matches_the_closed_form_of_softmax_regression():
    model, w, b = _linear()
    x, y = _data(16)
    g, ce = loss_gradient(model, x, y)
    assert torch.allclose(g, _closed_form_grad(w, b, x, y), atol=1e-12)
    assert torch.allclose(ce, F.cross_entropy(model(x), y, reduction="none"))


def test_kl_divergence_matches_the_definition_and_vanishes_at_equal_logits():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    p, q = torch.softmax(a, 1), torch.softmax(b, 1)
    want = (p * (p.log() - q.log())).sum(1)
    assert torch.allclose(kl_divergence(a, b), want, atol=1e-12)
    assert torch.allclose(kl_divergence(a, a), torch.zeros(5, dtype=torch.float64), atol=1e-15)


# ------------------------------------------------------------------ one test per mode


def test_natural_is_the_mean_cross_entropy():
    model = _mlp()
    x, y = _data(16)
    loss = objectives.natural(model, x, y)
    assert torch.allclose(loss.value, F.cross_entropy(model(x), y))
    assert loss.points is None


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_pgd_at_trains_on_points_inside_the_ball_and_at_them_only(norm):
    model = _mlp()
    x, y = _data(24)
    eps = 0.15 if norm == "inf" else 0.8
    loss = objectives.pgd_at(model, x, y, eps=eps, norm=norm, steps=8,
                             generator=torch.Generator().manual_seed(0))
    pts = loss.points
    assert (batch_norm(pts - x, norm) <= eps * (1 + 1e-9)).all()
    assert pts.min() >= 0 and pts.max() <= 1
    assert not pts.requires_grad
    assert torch.allclose(loss.value, F.cross_entropy(model(pts), y))
    # the ascent found points where the loss is higher than at x
    assert F.cross_entropy(model(pts), y) > F.cross_entropy(model(x), y)
    # the weight gradient is the one of CE at the (fixed) points: nothing flows through them
    gw = torch.autograd.grad(loss.value, list(model.parameters()))
    ref = torch.autograd.grad(F.cross_entropy(model(pts), y), list(model.parameters()))
    for a, b in zip(gw, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_trades_is_ce_plus_beta_kl_and_the_kl_vanishes_with_the_perturbation():
    model = _mlp()
    x, y = _data(24)
    gen = torch.Generator().manual_seed(0)
    loss = objectives.trades(model, x, y, beta=3.0, eps=0.2, steps=6, generator=gen)
    ce = F.cross_entropy(model(x), y)
    kl = kl_divergence(model(x), model(loss.points)).mean()
    assert torch.allclose(loss.value, ce + 3.0 * kl, atol=1e-12)
    assert kl > 0
    assert (batch_norm(loss.points - x, "inf") <= 0.2 * (1 + 1e-9)).all()
    # the ascent raised the KL above its value at the 0.001 N(0, I) start
    start = (x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0),
                                     dtype=x.dtype)).clamp(0, 1)
    assert kl > kl_divergence(model(x), model(start)).mean()
    # zero perturbation (a vanishing ball): the KL term is 0 and TRADES is natural training
    tiny = objectives.trades(model, x, y, beta=3.0, eps=1e-12, steps=2, generator=gen)
    # (KL = O(eps^2) = 1e-24 in exact arithmetic; log-softmax differences round at ~1e-16)
    assert tiny.terms["kl"].abs() < 1e-14
    assert torch.allclose(tiny.value, ce, atol=1e-12)


def test_ig_norm_penalty_is_the_l1_norm_of_attrbounds_integrated_gradients_of_the_loss():
    model = _mlp()
    x, y = _data(12)
    loss = objectives.ig_norm(model, x, y, lam=0.5, eps=0.2, steps=3, ig_steps=8,
                              generator=torch.Generator().manual_seed(0))
    x_adv = loss.points
    assert (batch_norm(x_adv - x, "inf") <= 0.2 * (1 + 1e-9)).all()
    # reference: attrbound's integrated_gradients of the loss, baseline x, same 8 nodes
    ig_ref = attribution("integrated_gradients", LossAsLogit(model, y), steps=8,
                         baseline=x).attribute(x_adv, torch.zeros(len(x), dtype=torch.long))
    ig = loss_integrated_gradients(model, x, x_adv, y, steps=8)
    assert torch.allclose(ig, ig_ref, atol=1e-12)
    penalty = ig_ref.flatten(1).abs().sum(1).mean()
    assert torch.allclose(loss.terms["ig_l1"], penalty, atol=1e-12)
    assert torch.allclose(loss.value, F.cross_entropy(model(x), y) + 0.5 * penalty, atol=1e-12)
    # completeness, with many nodes: sum_i IG_i = l_y(x') - l_y(x)
    fine = loss_integrated_gradients(model, x, x_adv, y, steps=256).flatten(1).sum(1)
    ce = F.cross_entropy(model(x_adv), y, reduction="none") - F.cross_entropy(
        model(x), y, reduction="none")
    assert torch.allclose(fine, ce, atol=1e-5)
    # the inner max raised the penalty above that of a random point of the ball
    rand = (x + 0.2 * (2 * torch.rand(x.shape, dtype=x.dtype) - 1)).clamp(0, 1)
    rand_l1 = loss_integrated_gradients(model, x, rand, y, steps=8).flatten(1).abs().sum(1)
    assert penalty > rand_l1.mean()


def test_ig_norm_weight_gradient_flows_through_the_penalty():
    # d/dtheta of the value = d/dtheta CE + lam d/dtheta ||IG||_1 (double backprop), checked
    # against a central finite difference of the penalty at the fixed point x_adv
    model = _mlp()
    x, y = _data(6)
    loss = objectives.ig_norm(model, x, y, lam=1.0, eps=0.2, steps=2, ig_steps=4,
                              generator=torch.Generator().manual_seed(0))
    w = model[1].weight
    (gw,) = torch.autograd.grad(loss.value, [w])
    direction = torch.randn(w.shape, dtype=w.dtype, generator=torch.Generator().manual_seed(2))

    def value(t: float) -> float:
        with torch.no_grad():
            w.add_(t * direction)
        ig = loss_integrated_gradients(model, x, loss.points, y, steps=4)
        v = F.cross_entropy(model(x), y) + ig.flatten(1).abs().sum(1).mean()
        with torch.no_grad():
            w.sub_(t * direction)
        return float(v.detach())

    h = 1e-6
    fd = (value(h) - value(-h)) / (2 * h)
    assert math.isclose(float((gw * direction).sum()), fd, rel_tol=1e-5, abs_tol=1e-9)


def test_grad_norm_penalty_and_its_weight_gradient_match_the_closed_form():
    model, w, b = _linear()
    x, y = _data(16)
    loss = objectives.grad_norm(model, x, y, lam=2.0)
    g_ref = _closed_form_grad(w, b, x, y)
    penalty = g_ref.flatten(1).pow(2).sum(1).mean()
    assert torch.allclose(loss.terms["grad_sq"], penalty, atol=1e-12)
    # double backprop = the first-order gradient of the closed-form objective in (W, b)
    ref = F.cross_entropy(model(x), y) + 2.0 * penalty
    got = torch.autograd.grad(loss.value, [w, b])
    want = torch.autograd.grad(ref, [w, b])
    for a, c in zip(got, want, strict=True):
        assert torch.allclose(a, c, atol=1e-12)


def test_curvature_penalty_matches_the_closed_form_and_the_hessian_limit():
    model, w, b = _linear()
    x, y = _data(8)
    h = 0.5
    loss = objectives.curvature(model, x, y, lam=4.0, h=h)
    g0 = _closed_form_grad(w, b, x, y)
    z = g0.sign() / math.sqrt(D)  # CURE's direction, unit l2 (no zero entries here)
    assert torch.count_nonzero(g0) == g0.numel()
    g1 = _closed_form_grad(w, b, x + h * z, y)
    penalty = (g1 - g0).flatten(1).pow(2).sum(1).mean()
    assert torch.allclose(loss.terms["curv"], penalty, atol=1e-12)
    assert torch.allclose(loss.value, F.cross_entropy(model(x), y) + 4.0 * penalty, atol=1e-12)
    # small h on a nonlinear model: penalty / h^2 -> mean ||H z||^2, H the loss Hessian in x
    mlp = _mlp()
    xs, ys = _data(3)
    small = 1e-5
    got = objectives.curvature(mlp, xs, ys, lam=1.0, h=small).terms["curv"] / small**2
    ref = []
    for i in range(len(xs)):  # reference: the full 36x36 Hessian per example
        def f(v, i=i):
            return F.cross_entropy(mlp(v.reshape(1, *SHAPE)), ys[i : i + 1])

        hess = torch.autograd.functional.hessian(f, xs[i].reshape(-1))
        gx, _ = loss_gradient(mlp, xs[i : i + 1], ys[i : i + 1])
        zi = gx.reshape(-1).sign() / math.sqrt(D)
        ref.append((hess @ zi).pow(2).sum())
    assert math.isclose(float(got), float(torch.stack(ref).mean()), rel_tol=1e-3)


def test_curvature_random_direction_is_unit_and_seeded():
    model = _mlp()
    x, y = _data(8)
    a = objectives.curvature(model, x, y, h=0.3, direction="random",
                             generator=torch.Generator().manual_seed(5))
    b = objectives.curvature(model, x, y, h=0.3, direction="random",
                             generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.points, b.points)
    assert torch.allclose(batch_norm(a.points - x, "2"), torch.full((8,), 0.3,
                                                                     dtype=x.dtype))


# ------------------------------------------------------------------ training with each mode

#: mode -> (options, the quantity the mode should lower, measured on held-out data)
EPS = 0.15
TARGETS = {
    "pgd_at": ({"eps": EPS, "steps": 5}, "adversarial CE"),
    "trades": ({"eps": EPS, "steps": 5, "beta": 6.0}, "TRADES KL"),
    "ig_norm": ({"eps": EPS, "steps": 2, "ig_steps": 4, "lam": 1.0}, "IG l1"),
    # grad_norm: measured on the logit gradient (the saliency map): ||grad_x CE|| itself also
    # vanishes under natural training as CE -> 0 on this easy task, so it tells nothing apart
    "grad_norm": ({"lam": 1.0}, "saliency norm"),
    "curvature": ({"lam": 10.0, "h": 1.0}, "curvature"),
}


def _measure(kind: str, model: nn.Module, x, y) -> float:
    """The quantity ``kind``, with stronger settings than training used (10 PGD steps)."""
    gen = torch.Generator().manual_seed(123)
    if kind == "adversarial CE":
        pts = objectives.pgd_at(model, x, y, eps=EPS, steps=10, generator=gen).points
        return float(F.cross_entropy(model(pts), y))
    if kind == "TRADES KL":
        return float(objectives.trades(model, x, y, eps=EPS, steps=10, generator=gen).terms["kl"])
    if kind == "IG l1":
        return float(objectives.ig_norm(model, x, y, eps=EPS, steps=5, ig_steps=8,
                                        generator=gen).terms["ig_l1"])
    if kind == "saliency norm":
        return float(attribution("saliency", model)(x, y).flatten(1).norm(dim=1).mean())
    return float(objectives.curvature(model, x, y, h=1.0).terms["curv"])


def _train(mode: str = "natural", options=None) -> nn.Module:
    x, y = _data(192, seed=0, dtype=torch.float32)
    return train(_mlp(seed=3, dtype=torch.float32), x, y, epochs=20, batch_size=32, lr=1e-2,
                 progress=False, mode=mode, options=options)


@pytest.fixture(scope="module")
def natural_model():
    return _train()


@pytest.mark.parametrize("mode", list(TARGETS))
def test_each_mode_lowers_what_it_targets_relative_to_natural_training(mode, natural_model):
    # same init, data order and steps (120 Adam steps); held-out data; a margin of 20%
    xt, yt = _data(96, seed=7, dtype=torch.float32)
    options, kind = TARGETS[mode]
    robust = _train(mode, options)
    for p in robust.parameters():
        assert torch.isfinite(p).all()
    assert accuracy(robust, xt, yt) >= 0.9  # lowered by learning, not by collapsing
    ours, theirs = _measure(kind, robust, xt, yt), _measure(kind, natural_model, xt, yt)
    assert ours < 0.8 * theirs, f"{mode}: {kind} {ours:.4g} not below natural's {theirs:.4g}"


def test_natural_mode_is_the_default_and_deterministic():
    x, y = _data(64, dtype=torch.float32)
    a = train(_mlp(seed=1, dtype=torch.float32), x, y, epochs=1, batch_size=16, progress=False)
    b = train(_mlp(seed=1, dtype=torch.float32), x, y, epochs=1, batch_size=16, progress=False,
              mode="natural", options={})
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


# ------------------------------------------------------------------ options and errors


def test_defaults_and_resolve():
    assert set(MODES) == set(objectives.OBJECTIVES) == set(DEFAULT_EPOCHS)
    assert objectives.defaults("natural") == {}
    assert objectives.defaults("pgd_at") == {"eps": 0.1, "norm": "inf", "steps": 10,
                                             "step_size": None}
    opts = objectives.resolve("trades", {"eps": 0.3, "norm": "l2", "steps": None})
    assert opts["eps"] == 0.3 and opts["norm"] == "2" and opts["steps"] == 10


@pytest.mark.parametrize(
    "mode, options",
    [
        ("sgd", None),
        ("natural", {"lam": 1.0}),
        ("grad_norm", {"eps": 0.1}),
        ("pgd_at", {"eps": 0.0}),
        ("pgd_at", {"eps": float("nan")}),
        ("trades", {"norm": "l3"}),
        ("ig_norm", {"ig_steps": 0}),
        ("curvature", {"direction": "up"}),
    ],
)
def test_bad_modes_and_options_raise_one_clear_error(mode, options):
    x, y = _data(8, dtype=torch.float32)
    with pytest.raises(AttrboundError):
        train(_mlp(dtype=torch.float32), x, y, epochs=0.1, progress=False, mode=mode,
              options=options)


def test_cli_train_records_the_mode_and_its_options(tmp_path):
    from attrbound.cli import main

    out = tmp_path / "m.safetensors"
    rc = main(["train", "--mode", "pgd_at", "--eps", "0.2", "--norm", "2", "--steps", "2",
               "--epochs", "0.02", "--out", str(out)])
    assert rc == 0
    config = models.read_config(out)
    assert config["mode"] == "pgd_at"
    assert config["mode_options"] == {"eps": 0.2, "norm": "2", "steps": 2, "step_size": None}
    assert main(["train", "--mode", "natural", "--lam", "1", "--epochs", "0.01",
                 "--out", str(tmp_path / "n.safetensors")]) == 2
