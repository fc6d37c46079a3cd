"""Smoothed attributions: the math (incomplete beta, total variations, Lipschitz constants,
the Monte-Carlo radius) against independent references, the bound's soundness on tiny
models under a plain PGD with fresh samples, the attribution's derivative, and the errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.models import BasicBlock, ready
from torch import nn

import attrbound
from attrbound import smoothing as sm
from attrbound.attributions import Smoothed, unit_map
from attrbound.errors import AttrboundError

special = pytest.importorskip("scipy.special")
stats = pytest.importorskip("scipy.stats")

# ---------------------------------------------------------------------------- the math


@pytest.mark.parametrize("a,b", [(0.5, 1.0), (0.5, 1.5), (0.5, 392.5), (0.5, 1536.5),
                                 (0.5, 75264.5), (2.0, 3.0), (7.5, 0.5), (30.0, 40.0)])
def test_betainc_matches_scipy(a, b):
    for x in [0.0, 1e-9, 1e-6, 1e-4, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999, 1.0]:
        value, err = sm.betainc_with_error(a, b, x)
        want = float(special.betainc(a, b, x))
        assert abs(value - want) <= max(err, 1e-15) + 4e-16 * abs(want), (a, b, x, value, want)
        assert 0.0 <= value <= 1.0


def _lens_tv_mc(d: int, t: float, n: int, seed: int) -> float:
    """vol(B(0, 1) \\ B(2t e_1, 1)) / vol(B(1)) by Monte Carlo (n uniform ball points)."""
    g = torch.Generator().manual_seed(seed)
    outside, done = 0, 0
    while done < n:
        m = min(500_000, n - done)
        xi = torch.randn(m, d, generator=g, dtype=torch.float64)
        r = torch.rand(m, generator=g, dtype=torch.float64) ** (1.0 / d)
        z = xi / xi.norm(dim=1, keepdim=True) * r[:, None]
        z[:, 0] -= 2 * t
        outside += int((z.norm(dim=1) > 1).sum())
        done += m
    return outside / n


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_uniform_volume_formula_matches_monte_carlo(d):
    # 4e6 points: standard error <= 0.5 / 2000 = 2.5e-4, so 1e-3 is 4 standard errors
    for i, t in enumerate([0.1, 0.35, 0.8]):
        mc = _lens_tv_mc(d, t, 4_000_000, seed=10 * d + i)
        tv, _ = sm.total_variation("uniform", 2 * t, 1.0, d)
        assert abs(tv - mc) < 1e-3, (d, t, tv, mc)
    assert sm.total_variation("uniform", 0.6, 1.0, 1)[0] == pytest.approx(0.3, abs=1e-15)
    assert sm.total_variation("uniform", 2.0, 1.0, 7) == (1.0, 0.0)


def _halfspace_h(smoothing: str, s: torch.Tensor, sigma: float, d: int) -> torch.Tensor:
    """The scalar c(s) of h = c ŵ for u(z) = sign(<ŵ, z>) ŵ at signed distance s, closed
    forms independent of the library: Gaussian 2 Phi(s / sigma) - 1; uniform ball in R^2
    (disk) and R^3 from the projected densities 2 sqrt(1 - t^2) / pi and 3 (1 - t^2) / 4."""
    if smoothing == "gaussian":
        return torch.erf(s / (sigma * math.sqrt(2)))
    tau = (s / sigma).clamp(-1, 1)
    a = tau.abs()
    if d == 2:
        below = (torch.arccos(a) - a * torch.sqrt(1 - a**2)) / math.pi  # P(T < -|tau|)
    else:
        below = (2 - 3 * a + a**3) / 4
    return torch.sign(tau) * (1 - 2 * below)


@pytest.mark.parametrize("smoothing,d", [("gaussian", 2), ("gaussian", 3), ("uniform", 2),
                                         ("uniform", 3)])
def test_lipschitz_constants_against_brute_force(smoothing, d):
    """Brute force: the largest ||h(x) - h(x')|| / ||x - x'|| over many pairs for the map
    sign(<w, z>) w (the extremal one of the Gaussian bound) never exceeds the constant and
    reaches it within 1%; the deviation bound holds on every pair."""
    sigma = 0.7
    lip = sm.lipschitz(smoothing, sigma, d)
    g = torch.Generator().manual_seed(d)
    x = (torch.rand(20000, d, generator=g, dtype=torch.float64) * 2 - 1) * 2 * sigma
    step = torch.randn(20000, d, generator=g, dtype=torch.float64)
    step = step / step.norm(dim=1, keepdim=True) * torch.rand(20000, 1, generator=g,
                                                              dtype=torch.float64) * 2 * sigma
    step[:2000] *= 1e-4
    x2 = x + step
    w = torch.zeros(d, dtype=torch.float64)
    w[0] = 1.0
    dev = (_halfspace_h(smoothing, x2 @ w, sigma, d) - _halfspace_h(smoothing, x @ w, sigma, d)
           ).abs()
    rho = step.norm(dim=1)
    ratio = dev / rho
    assert ratio.max().item() <= lip * (1 + 1e-9)
    assert ratio.max().item() >= 0.99 * lip
    bounds = torch.tensor([sm.deviation_bound(smoothing, r, sigma, d) for r in rho.tolist()],
                          dtype=torch.float64)
    assert (dev <= bounds).all()
    if smoothing == "gaussian":  # the symmetric pair attains 2 TV: the bound is tight
        r = 0.4
        tight = 2 * _halfspace_h("gaussian", torch.tensor(r / 2, dtype=torch.float64), sigma,
                                 d).item()
        assert sm.deviation_bound("gaussian", r, sigma, d) == pytest.approx(tight, rel=1e-12)
        assert tight <= sm.deviation_bound("gaussian", r, sigma, d)


def test_lipschitz_closed_forms_and_dimension():
    assert sm.gaussian_lipschitz(0.5) == pytest.approx(math.sqrt(2 / math.pi) / 0.5)
    assert sm.uniform_lipschitz(1.0, 1) == pytest.approx(1.0)  # 2 t = rho / r
    for d in [2, 10, 784, 3072]:
        gamma_ratio = special.poch((d + 1) / 2, 0.5)  # Gamma(d/2 + 1) / Gamma((d + 1)/2)
        # the library forms the ratio from lgamma values of size ~ d log d: 1e-10 relative
        assert sm.uniform_lipschitz(2.0, d) == pytest.approx(
            2 * gamma_ratio / (math.sqrt(math.pi) * 2.0), rel=1e-10)
        # at equal noise energy the uniform slope is the smaller one, the gap closing with d
        matched = sm.uniform_lipschitz(sm.matched_uniform_radius(1.0, d), d)
        assert matched < sm.gaussian_lipschitz(1.0)
    assert sm.uniform_lipschitz(1.0, 3072) / sm.gaussian_lipschitz(1.0) > 50
    # the Gaussian bound's erf form is never above the linear Lipschitz form
    for r in [1e-6, 0.1, 1.0, 5.0]:
        assert sm.deviation_bound("gaussian", r, 0.3, 5) <= sm.gaussian_lipschitz(0.3) * r
        assert sm.deviation_bound("uniform", r, 0.3, 5) <= max(
            2.0, sm.uniform_lipschitz(0.3, 5) * r) + 1e-15


def test_estimate_radius_covers_the_monte_carlo_error():
    """On the halfspace map with h known exactly, the fraction of estimates farther than
    t(n, alpha) from h stays below alpha (McDiarmid; it is far below in practice)."""
    alpha, n, trials, sigma, d = 0.05, 50, 4000, 0.5, 3
    t = sm.estimate_radius(n, alpha, d)
    g = torch.Generator().manual_seed(3)
    s = torch.tensor(0.1, dtype=torch.float64)
    exact = _halfspace_h("gaussian", s, sigma, d)
    eta = torch.randn(trials, n, generator=g, dtype=torch.float64) * sigma
    est = torch.sign(s + eta).mean(dim=1)  # h_n along w; the other coordinates are 0
    failures = int(((est - exact).abs() >= t).sum())
    assert failures <= alpha * trials
    assert t == pytest.approx((1 + math.sqrt(2 * math.log(1 / alpha))) / math.sqrt(n), rel=1e-9)


def test_l2_radius():
    x = torch.tensor([[0.0, 0.5, 0.98, 1.0]], dtype=torch.float64)
    assert sm.l2_radius(x, 0.1, "2", (0, 1)).item() == 0.1
    assert sm.l2_radius(x, 0.1, "inf", None).item() == pytest.approx(0.2, rel=1e-12)
    # inside [0, 1] every coordinate can still move 0.1 (away from the near wall)
    assert sm.l2_radius(x, 0.1, "inf", (0, 1)).item() >= 0.2
    assert sm.l2_radius(x, 0.7, "inf", (0, 1)).item() == pytest.approx(
        math.sqrt(0.7**2 + 0.5**2 + 0.7**2 + 0.7**2), rel=1e-12)


# ---------------------------------------------------------------------------- models


def abs_model(d: int) -> nn.Module:
    """f_0(z) = relu(<w, z>) + relu(-<w, z>) = |<w, z>|, f_1 = 0: saliency sign(<w,z>) w,
    the map for which the Gaussian bound is attained."""
    first = nn.Linear(d, 2, bias=False)
    w = torch.zeros(d, dtype=torch.float64)
    w[0] = 1.0
    first.weight.data = torch.stack([w, -w]).float()
    head = nn.Linear(2, 2, bias=False)
    head.weight.data = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    return nn.Sequential(first, nn.ReLU(), head).double().eval()


def relu_mlp(d: int) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                         nn.Linear(12, 3)).double().eval()


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = BasicBlock(1, 2)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).flatten(1))


def residual_net() -> nn.Module:
    torch.manual_seed(2)
    return ready(ResidualNet(), torch.float64)


def _fresh_pgd(model, base, x, target, eps, norm, smoothing, sigma, steps, samples, seed):
    """A plain PGD on ||h(z) - h(x)||: each step differentiates the smoothed map with
    ``samples`` fresh draws (a new seed per step) through attrbound's smoothing identities.
    Returns the last iterate [B, *S]."""
    ref = Smoothed(model, base, smoothing, sigma, samples * 4, seed=seed + 99991)
    a0 = ref.attribute(x, target).detach()
    g = torch.Generator().manual_seed(seed)
    delta = (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * eps * 0.5
    alpha = 2.5 * eps / steps
    for k in range(steps):
        attr = Smoothed(model, base, smoothing, sigma, samples, seed=seed * 1000 + k)
        delta = delta.detach().requires_grad_(True)
        dev = (attr.attribute(x + delta, target) - a0).flatten(1).norm(dim=1)
        (grad,) = torch.autograd.grad(dev.sum(), delta)
        if norm == "inf":
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
        else:
            gn = grad.flatten(1).norm(dim=1).clamp_min(1e-30).reshape((-1,) + (1,) * (x.dim() - 1))
            delta = delta + alpha * grad / gn
            dn = delta.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (x.dim() - 1))
            delta = delta * (eps / dn).clamp(max=1.0)
    return (x + delta).detach()


def _evaluate(model, base, points, target, smoothing, sigma, samples, seed):
    """h_n at ``points`` with ``samples`` fresh draws, float64, no graph."""
    with torch.no_grad():
        est = attrbound.bounds.smoothed.estimate(
            attrbound.attribution(base, model), points, target, smoothing=smoothing,
            sigma=sigma, samples=samples, seed=seed, batch_size=20000)
    return est


CASES = [
    ("abs", "gaussian", "2", 0.3), ("abs", "uniform", "2", 0.3),
    ("mlp", "gaussian", "2", 0.15), ("mlp", "uniform", "inf", 0.05),
    ("residual", "gaussian", "inf", 0.03),
    pytest.param("residual", "uniform", "2", 0.15, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,smoothing,norm,eps", CASES)
def test_fresh_sample_pgd_never_beats_the_certificate(name, smoothing, norm, eps):
    """Over seeds and inputs, the deviation PGD reaches (re-measured with 40,000 fresh
    samples, so within 2 tau of the exact one with probability >= 1 - 2 alpha_eval) never
    exceeds the certified euclidean bound by more than that measurement error, nor goes below
    the certified cosine by more than its effect; failures are counted against alpha."""
    d = {"abs": 3, "mlp": 4}.get(name, 9)
    model = {"abs": lambda: abs_model(3), "mlp": lambda: relu_mlp(4),
             "residual": residual_net}[name]()
    sigma, alpha, alpha_eval, n_eval = 0.5, 1e-3, 1e-3, 40_000
    shape = (3,) if name == "abs" else (4,) if name == "mlp" else (1, 3, 3)
    tau = sm.estimate_radius(n_eval, alpha_eval, d)
    failures, cos_failures, trials, best_ratio = 0, 0, 0, 0.0
    for seed in range(3):
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.rand((4,) + shape, generator=g, dtype=torch.float64)
        if name == "abs":  # straddle the hyperplane, where the deviation is largest
            x[:, 0] = (torch.rand(4, generator=g, dtype=torch.float64) - 0.5) * 0.2
        target = torch.zeros(4, dtype=torch.long) if name == "abs" else None
        res = attrbound.bound(model, x, eps=eps, norm=norm, method="smoothed",
                              smoothing=smoothing, sigma=sigma, samples=20_000, alpha=alpha,
                              seed=seed, domain=None, target=target)
        tgt = res.extra["target"]
        z = _fresh_pgd(model, "saliency", x, tgt, eps, norm, smoothing, sigma, steps=15,
                       samples=400, seed=seed)
        hx = _evaluate(model, "saliency", x, tgt, smoothing, sigma, n_eval, 7 + seed)
        hz = _evaluate(model, "saliency", z, tgt, smoothing, sigma, n_eval, 70 + seed)
        dev = (hz - hx).flatten(1).norm(dim=1)
        cos = torch.nn.functional.cosine_similarity(hz.flatten(1), hx.flatten(1), dim=1)
        nx, nz = hx.flatten(1).norm(dim=1), hz.flatten(1).norm(dim=1)
        slack = 2 * tau / (nx - tau).clamp_min(1e-12) + 2 * tau / (nz - tau).clamp_min(1e-12)
        failures += int((dev > res.euclidean + 2 * tau).sum())
        cos_failures += int((cos < res.cosine - slack).sum())
        trials += 4
        best_ratio = max(best_ratio, float((dev / res.euclidean).max()))
        assert (res.euclidean <= 2).all() and (res.cosine <= 1).all()
    # each trial fails with probability <= alpha + 2 alpha_eval; none is expected
    assert failures == 0 and cos_failures == 0, (failures, cos_failures, trials)
    if name == "abs" and smoothing == "gaussian":
        assert best_ratio > 0.8  # PGD gets close to the (attained) bound


# ---------------------------------------------------------------------------- the attribution


def test_smoothed_attribution_gradient_matches_the_smoothing_identity():
    """For the halfspace map the smoothed map is c(<w, x>) w with c known in closed form;
    the attribution's derivative (the smoothing identity with 50,000 fixed draws) matches
    c' within Monte-Carlo error, on a ReLU model whose own second derivative is zero."""
    model = abs_model(3)
    x = torch.tensor([[0.1, 0.3, -0.2], [-0.3, 0.0, 0.5]], dtype=torch.float64)
    target = torch.zeros(2, dtype=torch.long)
    for smoothing, sigma in [("gaussian", 0.5), ("uniform", 0.8)]:
        attr = Smoothed(model, "saliency", smoothing, sigma, 50_000, seed=4)
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(attr.attribute(xr, target)[:, 0].sum(), xr)
        func = torch.func.grad(lambda z, a=attr: a.attribute(z, target)[:, 0].sum())(x)
        torch.testing.assert_close(grad, func.detach())
        s = x[:, 0].clone().requires_grad_(True)
        (want,) = torch.autograd.grad(_halfspace_h(smoothing, s, sigma, 3).sum(), s)
        assert torch.allclose(grad[:, 0], want, atol=0.05), (smoothing, grad, want)
        assert grad[:, 1:].abs().max() < 0.05
        value = attr(x, target)
        exact = _halfspace_h(smoothing, x[:, 0], sigma, 3)
        assert torch.allclose(value[:, 0], exact, atol=0.02)


def test_smoothed_attribution_options_and_units():
    model = relu_mlp(4)
    x = torch.rand(3, 4, dtype=torch.float64)
    attr = attrbound.attribution("smoothed", model, base="integrated_gradients",
                                 base_options={"steps": 4}, samples=8, sigma=0.1,
                                 internal_batch_size=5)
    assert attr.evaluations == 32
    assert attr.options()["base_options"]["steps"] == 4
    one = attr(x)
    again = attrbound.attribution("smoothed", model, base="integrated_gradients",
                                  base_options={"steps": 4}, samples=8, sigma=0.1)(x)
    torch.testing.assert_close(one, again)
    assert (one.flatten(1).norm(dim=1) <= 1 + 1e-12).all()
    u = unit_map(attrbound.attribution("saliency", model), x, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(u.flatten(1).norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_bound_takes_its_settings_from_a_smoothed_attribution():
    model = relu_mlp(4)
    x = torch.rand(2, 4, dtype=torch.float64)
    attr = attrbound.attribution("smoothed", model, smoothing="uniform", sigma=0.4)
    res = attrbound.bound(model, x, eps=0.1, norm=2, method="smoothed", attribution=attr,
                          samples=300)
    assert res.extra["smoothing"] == "uniform" and res.extra["sigma"][0].item() == 0.4
    assert res.euclidean[0].item() == sm.deviation_bound("uniform", 0.1, 0.4, 4)
    rows = res.to_rows()
    assert rows[0]["alpha"] == 1e-3 and rows[0]["method"] == "smoothed"
    assert "probability >= 1 - 0.001" in res.guarantee and res.delta == 1e-3
    assert rows[0]["delta"] == 1e-3 and rows[0]["guarantee"] == res.guarantee
    with pytest.raises(AttrboundError, match="disagrees"):
        attrbound.bound(model, x, eps=0.1, norm=2, method="smoothed", attribution=attr,
                        sigma=0.3)
    # the same seed gives the same estimate; the bound carries no autograd graph
    again = attrbound.bound(model, x, eps=0.1, norm=2, method="smoothed", attribution=attr,
                            samples=300)
    torch.testing.assert_close(res.extra["estimate"], again.extra["estimate"])
    assert not res.extra["estimate"].requires_grad and not res.cosine.requires_grad


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("options,message", [
    ({"sigma": 0.0}, "sigma must be a finite number > 0"),
    ({"sigma": -1.0}, "sigma must be a finite number > 0"),
    ({"samples": 0}, "samples must be an integer >= 1"),
    ({"alpha": 0.0}, r"alpha must lie in \(0, 1\)"),
    ({"alpha": 1.0}, r"alpha must lie in \(0, 1\)"),
    ({"smoothing": "laplace"}, "unknown smoothing"),
    ({"tol": 1e-3}, "unknown option"),
])
def test_bad_options_one_clear_error(options, message):
    model = relu_mlp(4)
    x = torch.rand(2, 4, dtype=torch.float64)
    with pytest.raises(AttrboundError, match=message):
        attrbound.bound(model, x, eps=0.1, norm=2, method="smoothed", **options)


def test_bad_attribution_options():
    model = relu_mlp(4)
    with pytest.raises(AttrboundError, match="sigma must be a finite number > 0"):
        attrbound.attribution("smoothed", model, sigma=0)
    with pytest.raises(AttrboundError, match="samples must be an integer >= 1"):
        attrbound.attribution("smoothed", model, samples=0)
    with pytest.raises(AttrboundError, match="base attribution"):
        attrbound.attribution("smoothed", model, base="smoothgrad")
    with pytest.raises(AttrboundError, match="smooths one of"):
        attrbound.bound(model, torch.rand(1, 4, dtype=torch.float64), eps=0.1, norm=2,
                        method="smoothed", attribution="smoothgrad")


# ---------------------------------------------------------------------------- campaign, report


def test_grid_pairs_the_smoothed_bound_with_the_smoothed_map():
    from attrbound.campaign import Grid

    Grid(model="m", attributions=("saliency",), bounds=("smoothed",), attacks=())
    Grid(model="m", attributions=("smoothed",), bounds=("smoothed",), attacks=("pgd",))
    with pytest.raises(AttrboundError, match="use attribution smoothed"):
        Grid(model="m", attributions=("saliency",), bounds=("smoothed",), attacks=("pgd",))


def test_report_plots_the_certified_cosine_per_sigma(tmp_path):
    from attrbound.report.figures import plot_smoothed_cosine

    rows = [{"attribution": "smoothed", "norm": "2", "eps": eps,
             "bounds": {"smoothed": {"cosine": c, "sigma": sigma}}}
            for sigma in (0.12, 0.25) for eps, c in ((0.01, 0.99), (0.1, 0.5), (1.0, -1.0))]
    assert plot_smoothed_cosine(rows, tmp_path / "s.png") == "s.png"
    assert (tmp_path / "s.png").stat().st_size > 0
    assert plot_smoothed_cosine([{**rows[0], "bounds": {}}], tmp_path / "t.png") is None


def test_attack_ascends_the_smoothed_map():
    """attrbound.attack differentiates the smoothed attribution (torch.func.grad through its
    smoothing-identity backward) and finds a deviation on a smooth model."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x = torch.rand(3, 4, dtype=torch.float64)
    attr = attrbound.attribution("smoothed", model, sigma=0.3, samples=16)
    res = attrbound.attack(model, x, eps=0.2, norm=2, attribution=attr, method="pgd",
                           steps=5, domain=None)
    assert res.attribution == "smoothed" and bool(res.found.any())
    assert (res.euclidean > 0).any() and (res.euclidean <= 2).all()


def test_attack_on_the_smoothed_map_of_a_relu_model_needs_no_surrogate():
    """The smoothed map's derivative is an expectation over the noise, not a derivative of the
    model's gradient, so a ReLU model is attacked as it is (map "model"), and the attack's
    figures are the smoothed map's own deviation at x_adv."""
    model = relu_mlp(4)
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    attr = attrbound.attribution("smoothed", model, sigma=0.3, samples=16)
    res = attrbound.attack(model, x, eps=0.3, norm=2, attribution=attr, method="pgd",
                           steps=5, domain=None)
    assert res.map == "model" and res.surrogate_beta is None
    t = model(x).argmax(dim=1)
    dev = (attr.attribute(res.x_adv, t) - attr.attribute(x, t)).flatten(1).norm(dim=1)
    assert torch.allclose(res.euclidean, dev, rtol=1e-9, atol=1e-12)
    assert (res.euclidean > 0).any()


def test_evaluate_flags_set_the_smoothed_bound(tmp_path):
    """attrbound evaluate --bound smoothed --sigma --smoothed-samples --alpha: the flags reach
    the bound (rows carry sigma and alpha) and the attack runs on the same smoothed map."""
    from attrbound import models
    from attrbound.campaign import read_rows
    from attrbound.cli import main

    torch.manual_seed(0)
    net = models.mlp((1, 28, 28), 10, hidden=(8,), activation_name="relu")
    path = models.save(net, tmp_path / "relu.safetensors",
                       {"arch": "mlp", "input_shape": [1, 28, 28], "hidden": [8],
                        "activation": "relu", "dataset": "mnist", "num_classes": 10})
    out = tmp_path / "rows.jsonl"
    argv = ["evaluate", "--model", str(path), "--n", "2", "--attribution", "smoothed",
            "--attribution-options", '{"smoothed": {"samples": 8, "sigma": 0.3}}', "--norm", "2",
            "--eps", "0.1", "--bound", "smoothed", "--attack", "pgd", "--steps", "2",
            "--sigma", "0.3", "--smoothed-samples", "64", "--alpha", "0.01", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    rows = read_rows(out)
    assert len(rows) == 2
    for r in rows:
        b = r["bounds"]["smoothed"]
        assert b["sigma"] == 0.3 and b["alpha"] == 0.01 and b["euclidean"] > 0
        assert "pgd" in r["attacks"] and r["config"]["bound_options"]["smoothed"]["samples"] == 64
