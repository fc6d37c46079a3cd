"""Practical bounds (taylor, region) against full Jacobians, enumeration and closed forms."""

from __future__ import annotations

import argparse
import json
import math
import resource

import pytest
import torch
from helpers.references import (
    autograd_saliency,
    box_vertices,
    coordinate_gradient,
    full_jacobian,
    inf_to_two_enumerated,
    plain_pgd,
    top_singular_value,
    vertex_max_deviation,
)
from torch import nn

import attrbound
from attrbound import models
from attrbound.attributions import attribution, integration_nodes
from attrbound.bounds import (
    REGION_OPTIONS,
    SOLVER_OPTIONS,
    BoundResult,
    bound,
    cosine_from_euclidean,
    taylor_from_region,
)
from attrbound.bounds.region import _ascend
from attrbound.cli import bound as bound_cli
from attrbound.cli import main
from attrbound.errors import AttrboundError
from attrbound.geometry import batch_norm
from attrbound.linalg import bilinear_gradient

# ----------------------------------------------------------------------------------------
# small smooth float64 models (full Jacobians and the other references: helpers.references)
# ----------------------------------------------------------------------------------------


def _mlp(d: int = 10, seed: int = 0, act: str = "tanh") -> nn.Module:
    torch.manual_seed(seed)
    return models.freeze(models.mlp((d,), 3, hidden=(16,), activation_name=act).double())


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = models.cnn((1, 8, 8), 3, channels=(3,), hidden=8, activation_name="softplus", beta=2.0)
    return models.freeze(m.double())


def _inputs(shape: tuple[int, ...], b: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b,) + shape, generator=g, dtype=torch.float64)


ATTRS = [
    ("saliency", {}),
    ("input_x_gradient", {}),
    ("integrated_gradients", {"steps": 8}),
    ("smoothgrad", {"n": 4, "sigma": 0.05}),
]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize(("name", "opts"), ATTRS, ids=[a for a, _ in ATTRS])
def test_taylor_l2_is_eps_times_top_singular_value(kind, name, opts):
    model = _mlp() if kind == "mlp" else _cnn()
    x = _inputs((10,) if kind == "mlp" else (1, 8, 8))
    eps = 0.05
    res = bound(model, x, eps=eps, norm="l2", attribution=name, attribution_options=opts,
                method="taylor")
    j = full_jacobian(model, name, x, **opts)
    sigma = top_singular_value(j)
    # certified (probability >= 1 - delta over the start): never below the exact value, at
    # most 1% above it; the Ritz estimate reported next to it is the old two-sided check
    assert (res.operator_norm >= sigma).all(), (res.operator_norm, sigma)
    assert (res.operator_norm <= 1.01 * sigma).all(), (res.operator_norm, sigma)
    assert torch.allclose(res.operator_norm_ritz, sigma, rtol=1e-4, atol=0)
    assert (res.euclidean >= eps * sigma).all() and (res.euclidean <= 1.01 * eps * sigma).all()
    assert torch.allclose(res.euclidean, eps * res.operator_norm)
    assert res.converged.all()
    assert res.delta == 1e-3 and "probability >= 1 - 0.001" in res.guarantee
    a = attribution(name, model, **opts)(x)
    assert torch.allclose(res.attr_norm, a.flatten(1).norm(dim=1))
    assert torch.equal(res.cosine, cosine_from_euclidean(res.euclidean, res.attr_norm))
    assert res.method == "taylor" and res.norm == "2" and res.attribution == name


# integrated gradients at 16 steps (> weights_ig_steps = 8) choose the weights on 8 steps
LINF_MAPS = [("saliency", {}), ("input_x_gradient", {}), ("integrated_gradients", {"steps": 8}),
             ("integrated_gradients", {"steps": 16})]


@pytest.mark.parametrize(("name", "opts"), LINF_MAPS)
def test_taylor_linf_brackets_the_enumerated_maximum(name, opts):
    d = 12
    model, x = _mlp(d, seed=3), _inputs((d,), b=3, seed=4)
    eps = 0.02
    # domain=None: the whole cube (the clipped box has its own test below)
    res = bound(model, x, eps=eps, norm=float("inf"), attribution=name,
                attribution_options=opts, method="taylor", domain=None)
    j = full_jacobian(model, name, x, **opts)
    exact = inf_to_two_enumerated(j)  # max over the 2^12 vertices of the cube of ||J s||_2
    sigma = top_singular_value(j)
    assert (res.operator_norm >= exact * (1 - 1e-9)).all()
    assert (res.operator_norm <= math.sqrt(d) * sigma * (1 + 1e-5)).all()
    assert (res.lower <= exact * (1 + 1e-9)).all()
    assert torch.allclose(res.euclidean, eps * res.operator_norm)
    if opts.get("steps", 0) > 8:  # the sketch ran on the coarse map: no v = 0 value
        assert res.extra["operator_norm_v0"].isnan().all()
    else:
        assert torch.allclose(res.extra["operator_norm_v0"], math.sqrt(d) * sigma, rtol=1e-5)
    assert res.norm == "inf"


def _edge_inputs(d: int, b: int, seed: int) -> torch.Tensor:
    """Inputs in [0, 1] with features AT the domain edges (0 and 1) and near them."""
    x = _inputs((d,), b=b, seed=seed)
    x[:, : d // 3] = 0.0  # on the lower edge (MNIST background)
    x[:, d // 3 : d // 2] = 1.0  # on the upper edge
    x[:, d // 2 : d // 2 + 2] = 0.01  # inside, closer than eps to the edge
    return x


@pytest.mark.parametrize(("name", "opts"), LINF_MAPS)
def test_taylor_linf_domain_aware_is_above_the_clipped_box_vertices(name, opts):
    d, eps = 12, 0.05
    model, x = _mlp(d, seed=11), _edge_inputs(d, 3, 12)
    res = bound(model, x, eps=eps, norm="inf", attribution=name, attribution_options=opts,
                method="taylor")
    j = full_jacobian(model, name, x, **opts)
    vertices = box_vertices(x, eps, (0.0, 1.0))  # [2^d, B, d]: the clipped box's vertices
    linear = torch.einsum("bij,pbj->pbi", j, vertices - x).norm(dim=2).amax(dim=0)
    assert (res.euclidean >= linear).all(), (res.euclidean, linear)
    assert (eps * res.lower <= linear * (1 + 1e-9)).all()  # a concrete vertex of the box
    cube = eps * inf_to_two_enumerated(j)  # the unclipped cube's maximum
    assert (res.euclidean < cube).all(), (res.euclidean, cube)  # the domain helps here
    assert res.delta == 1e-3 and "probability" in res.guarantee


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients"])
def test_region_linf_domain_aware_is_above_the_clipped_box_vertices(name):
    d, eps = 10, 0.1
    model, x = _mlp(d, seed=13), _edge_inputs(d, 2, 14)
    opts = {"steps": 8} if name == "integrated_gradients" else {}
    res = bound(model, x, eps=eps, norm="inf", attribution=name, attribution_options=opts)
    a = attribution(name, model, **opts)
    t = res.extra["target"]
    # the map's true deviation at every vertex of the clipped box (a lower value of the sup)
    worst = torch.cat([
        vertex_max_deviation(lambda z, i=i: a(z, t[i].expand(z.shape[0])), x[i : i + 1], eps,
                             (0.0, 1.0))
        for i in range(x.shape[0])
    ])
    assert (worst <= res.euclidean).all(), (worst, res.euclidean)
    assert (res.argmax >= 0).all() and (res.argmax <= 1).all()


def test_cosine_bound_against_brute_force_on_the_sphere():
    g = torch.Generator().manual_seed(5)
    a = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    an = a.norm()
    dirs = torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    for frac in (0.1, 0.5, 0.9):
        u = frac * an
        pts = a + u * dirs
        cos = (pts @ a[0]) / (pts.norm(dim=1) * an)
        lb = cosine_from_euclidean(u.reshape(1), an.reshape(1))[0]
        assert cos.min() >= lb - 1e-12
        assert cos.min() <= lb + 1e-4  # the bound is attained on the sphere
        inner = a + u * torch.rand(1000, 1, generator=g, dtype=torch.float64) * dirs[:1000]
        assert ((inner @ a[0]) / (inner.norm(dim=1) * an) >= lb - 1e-12).all()
    # U >= ||a||: the ball reaches past the origin, no guarantee
    assert cosine_from_euclidean(an.reshape(1) * 1.01, an.reshape(1))[0] == -1


@pytest.mark.parametrize("name,opts", ATTRS[:3])
def test_bilinear_gradient_against_finite_differences(name, opts):
    # phi(z) = u^T J(z) w with J from the full autograd Jacobian; its gradient by central
    # differences of that reference, and J w / J^T u on the way
    model, x = _mlp(d=6, seed=4), _inputs((6,), b=2, seed=5)
    a = attribution(name, model, **opts)
    target = model(x).argmax(dim=1)
    g = torch.Generator().manual_seed(6)
    u, w = (torch.randn(2, 6, generator=g, dtype=torch.float64) for _ in range(2))

    def phi(z: torch.Tensor) -> torch.Tensor:  # [B] by the full Jacobian
        j = full_jacobian(model, name, z, **opts)
        return torch.einsum("bi,bij,bj->b", u, j, w)

    h = 1e-5
    fd = coordinate_gradient(phi, x, h)
    j = full_jacobian(model, name, x, **opts)
    for transpose in (False, True):
        grad, aux = bilinear_gradient(a, x, target, u, w, transpose=transpose)
        assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-8), transpose
        ref = torch.einsum("bji,bj->bi", j, u) if transpose else torch.einsum("bij,bj->bi", j, w)
        assert torch.allclose(aux, ref, rtol=1e-10, atol=1e-12)
    if name == "saliency":  # symmetric J: the roles of u and w swap (the ascent uses this)
        grad, aux = bilinear_gradient(a, x, target, w, u, transpose=True)
        assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-8)
        assert torch.allclose(aux, torch.einsum("bij,bj->bi", j, w), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_per_example_baseline_survives_passes_and_cuts(norm):
    # integrated gradients with a baseline [B, *S]: the bound in passes of 2 inputs, with the
    # solver cutting its batch as examples converge, equals each input bounded alone with
    # its own baseline; region runs on the same footing and stays above taylor
    model = _cnn(seed=7)
    base = _inputs((1, 8, 8), b=5, seed=8) * 0.5
    x = _inputs((1, 8, 8), b=5, seed=9)
    x[:3] = base[:3] + 1e-3 * x[:3]  # near their baseline: quick to converge
    kw = dict(eps=0.05, norm=norm, attribution="integrated_gradients", tol=1e-10)
    if norm == "inf":
        # the l-inf weights come from a sketch with a random start drawn per pass, so the
        # weighted bound differs between passes by the weights' quality (each value is
        # valid); with w = 1 (dual_steps=0) it is sqrt(n) sigma_max, the same in every pass
        kw["dual_steps"] = 0
    opts = {"steps": 4, "baseline": base}
    taylor = bound(model, x, method="taylor", attribution_options=opts, batch_size=2, **kw)
    alone = torch.cat([
        bound(model, x[i : i + 1], method="taylor",
              attribution_options={"steps": 4, "baseline": base[i]}, **kw).operator_norm
        for i in range(5)
    ])
    assert torch.allclose(taylor.operator_norm, alone, rtol=1e-8)
    region = bound(model, x, method="region", attribution_options=opts, batch_size=2,
                   random=2, ascent_steps=2, **kw)
    assert (region.operator_norm >= taylor.operator_norm * (1 - 1e-9)).all()


@pytest.mark.parametrize("norm", ["2", "inf"])
@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "ig16"])
def test_region_is_at_least_taylor(norm, name):
    # ig16: 16 steps > coarse_ig_steps, so region searches on the 8-step map
    model, x = _cnn(seed=2), _inputs((1, 8, 8), b=3, seed=6)
    eps = 0.1 if norm == "2" else 0.02
    opts = {"steps": 4} if name == "integrated_gradients" else {}
    if name == "ig16":
        name, opts = "integrated_gradients", {"steps": 16}
    kw = dict(eps=eps, norm=norm, attribution=name, attribution_options=opts, seed=3)
    taylor = bound(model, x, method="taylor", **kw)
    region = bound(model, x, method="region", random=4, ascent_steps=4, **kw)
    assert torch.equal(region.at_x.operator_norm, taylor.operator_norm)
    # region's own solve at x is taylor's: same value, diagnostics and cosine
    derived = taylor_from_region(region)
    # ... in every pass: one input per pass, region drawing its own random points in between
    passes = dict(kw, batch_size=1)
    chunked = taylor_from_region(bound(model, x, method="region", random=4, ascent_steps=4,
                                       **passes))
    assert torch.equal(chunked.operator_norm, bound(model, x, method="taylor",
                                                    **passes).operator_norm)
    assert derived.method == "taylor"
    for name in ("euclidean", "cosine", "operator_norm", "iterations", "converged", "attr_norm"):
        assert torch.equal(getattr(derived, name), getattr(taylor, name)), name
    if norm == "inf":
        assert torch.equal(derived.lower, taylor.lower)
        v0, v0_taylor = derived.extra["operator_norm_v0"], taylor.extra["operator_norm_v0"]
        # NaN where the weights came from the coarse map (ig16): not computed on either side
        assert torch.equal(v0.isnan(), v0_taylor.isnan())
        assert torch.equal(v0.nan_to_num(), v0_taylor.nan_to_num())
    with pytest.raises(AttrboundError, match="method='region'"):
        taylor_from_region(taylor)
    assert (region.operator_norm >= taylor.operator_norm).all()
    assert (region.euclidean >= taylor.euclidean).all()
    assert (region.cosine <= taylor.cosine).all()
    assert len(region.source) == 3 and set(region.source) <= {"x", "random", "points", "ascent"}
    # the argmax lies in the ball and the domain
    assert (batch_norm(region.argmax - x, norm) <= eps * (1 + 1e-9)).all()
    assert (region.argmax >= 0).all() and (region.argmax <= 1).all()
    if norm == "inf":
        assert (region.lower <= region.operator_norm).all()


class Cubic(nn.Module):
    """Logit 0: f(x) = sum_i c_i x_i^3 / 3, so saliency A(x) = c x^2 and J(x) = diag(2 c x);
    logit 1: -1e6 (the label never changes). Strongly curved: the first-order term at x
    misses the c_i delta_i^2 part of A(x + delta) - A(x) = c (2 x delta + delta^2)."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (self.c * x**3).sum(dim=1) / 3
        return torch.stack([f, torch.full_like(f, -1e6)], dim=1)


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_region_catches_what_taylor_misses(norm):
    d = 8
    c = torch.linspace(1.0, 3.0, d, dtype=torch.float64) * torch.tensor([1, -1] * 4)
    model = Cubic(c).eval()
    x = torch.full((2, d), 0.1, dtype=torch.float64)
    x[1] = torch.linspace(0.05, 0.2, d)
    eps = 0.3
    kw = dict(eps=eps, norm=norm, domain=None, seed=1)
    taylor = bound(model, x, method="taylor", **kw)
    region = bound(model, x, method="region", **kw)
    attack = plain_pgd(autograd_saliency(model, 0), x, eps, norm, steps=40)
    if norm == "inf":  # PGD stalls at local maxima here; add the 2^8 vertices of the cube
        saliency = autograd_saliency(model, 0, create_graph=False)
        attack = torch.maximum(attack, vertex_max_deviation(saliency, x, eps))
    assert (attack > 1.2 * taylor.euclidean).all(), (attack, taylor.euclidean)  # taylor fails
    assert (attack <= region.euclidean * (1 + 1e-9)).all(), (attack, region.euclidean)
    # closed form of the sup of ||J(z)||_{p->2} = ||2 c z|| over the ball
    if norm == "2":  # 2 max_i |c_i| (x_i + eps), all of delta on one coordinate
        sup = (2 * c.abs() * (x + eps)).amax(dim=1)
    else:  # ||2 c (x + eps)||_2, every coordinate moved by eps
        sup = (2 * c * (x + eps)).norm(dim=1)
    assert (region.operator_norm <= sup * (1 + 1e-5)).all()  # an estimate of the sup ...
    if norm == "2":
        assert (region.operator_norm >= 0.95 * sup).all()  # ... that gets close to it
    else:
        # ... less close in l-inf: ||2 c z|| has a local maximum at every vertex of the cube
        # (z_i goes to x_i - eps once it is negative), and the one ascent climbs the basin of
        # its start, the best screened random point. Measured over seeds 0-5: 0.80-1.0 of
        # the sup (the 0.95 once asserted here held for this seed's draws only)
        assert (region.operator_norm >= 0.75 * sup).all()
    if norm == "2":  # with long ascent steps it reaches the corner x + eps e_i
        long = bound(model, x, method="region", step_size=eps, **kw)
        assert torch.allclose(long.operator_norm, sup, rtol=1e-3)


class LogCosh(nn.Module):
    """Logit 0: f(x) = sum_i c_i log cosh(a x_i) / a, gradient c tanh(a x), concave along the
    integrated-gradients path, so a one-node (midpoint) quadrature overestimates the map:
    its Jacobian diag(c (tanh(v) + v sech^2(v))), v = a x / 2, peaks at about 1.2 c, while
    the exact map's diag(c tanh(a x)) never exceeds c. Logit 1: -1e6."""

    def __init__(self, c: torch.Tensor, a: float = 10.0) -> None:
        super().__init__()
        self.c, self.a = c, a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (self.c * torch.log(torch.cosh(self.a * x))).sum(dim=1) / self.a
        return torch.stack([f, torch.full_like(f, -1e6)], dim=1)


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_coarse_ascent_scores_with_the_full_map(norm):
    # integrated gradients with more steps than coarse_ig_steps climb a coarser quadrature;
    # the score the ascent returns must still be a feasible value of the FULL map's norm at
    # the point it returns: <= sigma_max (l2) or the enumerated inf -> 2 norm (l-inf) of the
    # full Jacobian there. Here the one-node map's norm exceeds the full map's everywhere
    # the ascent goes, so a score taken from the coarse map would break the inequality.
    d = 6
    model = LogCosh(torch.linspace(1.0, 2.0, d, dtype=torch.float64)).eval()
    x = 0.2 + 0.1 * _inputs((d,), b=3, seed=11)
    a = attribution("integrated_gradients", model, steps=16)
    target = torch.zeros(3, dtype=torch.long)
    eps = 0.3 if norm == "2" else 0.1
    w = torch.randn(3, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = w / w.norm(dim=1, keepdim=True) if norm == "2" else torch.sign(w)
    opts = {**SOLVER_OPTIONS, **REGION_OPTIONS, "coarse_ig_steps": 1}
    score, z = _ascend(a, x, target, x.clone(), w, eps, norm, (0.0, 1.0), opts)
    full = full_jacobian(model, "integrated_gradients", z, steps=16)
    coarse = full_jacobian(model, "integrated_gradients", z, steps=1)
    if norm == "2":
        exact, rough = top_singular_value(full), top_singular_value(coarse)
    else:
        exact, rough = inf_to_two_enumerated(full), inf_to_two_enumerated(coarse)
    assert (rough > 1.05 * exact).all()  # the coarse map's norm is the larger one
    assert (score <= exact * (1 + 1e-9)).all(), (score, exact)
    assert (score >= 0.5 * exact).all()  # and it is a real score, not a placeholder
    assert (batch_norm(z - x, norm) <= eps * (1 + 1e-9)).all()


@pytest.mark.parametrize("norm", ["2", "inf"])
@pytest.mark.parametrize("ascent_steps", [0, 4])
def test_coarse_search_never_lifts_region_above_the_sup(norm, ascent_steps):
    # region screens (and ascends) on the coarse map but keeps only full-map values: on
    # LogCosh, where the one-node map's norm exceeds the full map's sup, region must stay
    # below that sup, computed independently: J(z) is diagonal, J_ii = d/dz_i of
    # z_i sum_k w_k c_i tanh(a t_k z_i), maximised coordinate by coordinate on a grid
    d, a = 6, 10.0
    c = torch.linspace(1.0, 2.0, d, dtype=torch.float64)
    model = LogCosh(c, a).eval()
    x = 0.2 + 0.1 * _inputs((d,), b=3, seed=12)
    eps = 0.3 if norm == "2" else 0.1
    res = bound(model, x, eps=eps, norm=norm, method="region", attribution="integrated_gradients",
                attribution_options={"steps": 16}, target=0, random=4,
                ascent_steps=ascent_steps, coarse_ig_steps=1, weights_ig_steps=None)
    # (weights_ig_steps=None: the tight solves choose their weights on the full map, where
    # the dual of a diagonal J is exact; weights from the one-node map are valid but looser)

    def diag(z: torch.Tensor, steps: int) -> torch.Tensor:  # [..., d] -> J_ii [..., d]
        t, w = (torch.as_tensor(v, dtype=torch.float64) for v in integration_nodes(steps,
                                                                                 "riemann_middle"))
        u = a * t * z[..., None]
        return c * (w * (torch.tanh(u) + u / torch.cosh(u) ** 2)).sum(dim=-1)

    grid = torch.linspace(-eps, eps, 4001, dtype=torch.float64)
    z = (x[:, None, :] + grid[None, :, None]).clamp(0, 1)  # [B, G, d], every reachable z_i
    best_full, best_coarse = diag(z, 16).abs().amax(dim=1), diag(z, 1).abs().amax(dim=1)
    if norm == "2":  # a diagonal J's norm is its largest entry; one coordinate moves alone
        sup, coarse_sup = best_full.amax(dim=1), best_coarse.amax(dim=1)
    else:  # inf -> 2 norm of a diagonal J: ||diag||_2, each coordinate at its own best
        sup, coarse_sup = best_full.norm(dim=1), best_coarse.norm(dim=1)
    assert (coarse_sup > 1.05 * sup).all()  # the coarse map would overshoot
    assert (res.operator_norm <= sup * (1 + 1e-5)).all(), (res.operator_norm, sup)
    assert (res.operator_norm >= 0.9 * sup).all()


def test_coarse_ig_steps_none_searches_on_the_full_map():
    # None means "never coarsen": the same search as a threshold at the map's own steps (16
    # steps are not more than 16), and a different one from the default 8-step coarse search
    d = 6
    model, x = _mlp(d=d, seed=8), _inputs((d,), b=2)
    kw = dict(eps=0.3, norm=2, method="region", attribution="integrated_gradients",
              attribution_options={"steps": 16}, random=2, ascent_steps=3)
    never = bound(model, x, coarse_ig_steps=None, **kw)
    same = bound(model, x, coarse_ig_steps=16, **kw)
    coarse = bound(model, x, coarse_ig_steps=8, **kw)
    assert torch.equal(never.operator_norm, same.operator_norm)
    assert torch.equal(never.argmax, same.argmax)
    assert not torch.equal(never.argmax, coarse.argmax)


def test_region_uses_the_callers_points():
    d = 8
    c = torch.linspace(1.0, 3.0, d, dtype=torch.float64)
    model = Cubic(c).eval()
    x = torch.full((2, d), 0.1, dtype=torch.float64)
    eps = 0.3
    best = x.clone()
    best[:, -1] += eps  # the maximiser of ||J(z)||_2 = 2 max_i c_i z_i over the l2 ball
    points = torch.stack([x + 0.01, best, x + 5.0], dim=1)  # [B, P=3, d]; the last is outside
    res = bound(model, x, eps=eps, norm=2, method="region", domain=None, points=points,
                random=0, ascent_steps=0)
    assert res.source == ["points", "points"]
    assert torch.allclose(res.argmax, best)
    assert torch.allclose(res.operator_norm, 2 * c[-1] * (0.1 + eps) * torch.ones(2,
                          dtype=torch.float64), rtol=1e-5)


class TurningHessian(nn.Module):
    """Logit 0: f(z) = z1 + z2 + (a(t) z1^2 + b(t) z2^2) / 2 + k(t) z1 z2 with t = z3, so
    at points with z1 = z2 = 0 saliency's Jacobian (the Hessian) is [[a, k, 0], [k, b, 0],
    [0, 0, 0]]: diag(1, 0.5) at t = 0, [[0.2, 0.3], [0.3, 3]] at t = 1 (top vector near e2),
    diag(1.5, 0.5) at t = -1 (top vector e1, x's). Logit 1: -1e6."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2, t = z.unbind(dim=1)
        a = 1 - 0.65 * t - 0.15 * t**2
        b = 0.5 + 1.25 * t + 1.25 * t**2
        k = 0.15 * (t + t**2)
        f = z1 + z2 + (a * z1**2 + b * z2**2) / 2 + k * z1 * z2
        return torch.stack([f, torch.full_like(f, -1e6)], dim=1)


def test_region_refines_the_callers_points_before_ranking_them():
    # Two caller points: at `turned` the top singular vector is nearly orthogonal to x's, so
    # one product ||J(z) w_x|| scores it 0.36 against 1.5 at `aligned`, although its operator
    # norm is 3.03 (dense SVD). The refined screen (points_iter) must rank `turned` first.
    model = TurningHessian().eval()
    x = torch.zeros(1, 3, dtype=torch.float64)
    turned = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    aligned = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    points = torch.stack([aligned, turned], dim=1)  # [B=1, P=2, 3]
    exact = top_singular_value(full_jacobian(model, "saliency", turned, target=0))
    kw = dict(eps=1.0, norm=2, method="region", domain=None, points=points, target=0,
              random=0, ascent_steps=0)
    res = bound(model, x, **kw)
    assert res.source == ["points"]
    assert torch.equal(res.argmax, turned)
    assert float(res.operator_norm[0]) >= float(exact[0])  # certified value at `turned`
    assert float(res.operator_norm[0]) <= float(exact[0]) * 1.01
    one_product = bound(model, x, points_iter=1, **kw)  # the construction really needs it
    assert torch.equal(one_product.argmax, aligned)
    assert float(one_product.operator_norm[0]) < 0.6 * float(exact[0])


class BulgingHessian(nn.Module):
    """Logit 0: f(z) = z1 + z2 + h(z3) (z1^2 + z2^2) / 2 with h(t) = 1 + 8 t (1 - t): on the
    line z1 = z2 = 0 the Hessian (saliency's Jacobian) is diag(h, h, 0), 1 at t = 0 and t = 1
    and 3 at t = 1/2. Logit 1: -1e6."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2, t = z.unbind(dim=1)
        f = z1 + z2 + (1 + 8 * t * (1 - t)) * (z1**2 + z2**2) / 2
        return torch.stack([f, torch.full_like(f, -1e6)], dim=1)


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_region_searches_the_segment_to_a_callers_point(norm):
    # the caller's point p = x + e3 sits where ||J|| is back to its value at x; the sup is in
    # the middle of the segment (dense SVD there: 3), where region must find it
    model = BulgingHessian().eval()
    x = torch.zeros(1, 3, dtype=torch.float64)
    p = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    mid = torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64)
    j = full_jacobian(model, "saliency", mid, target=0)
    exact = top_singular_value(j) if norm == "2" else inf_to_two_enumerated(j)
    at_p = top_singular_value(full_jacobian(model, "saliency", p, target=0))
    assert float(exact[0]) > 2 * float(at_p[0])
    res = bound(model, x, eps=1.0, norm=norm, method="region", domain=None, points=p[:, None],
                target=0, random=0, ascent_steps=0)
    assert res.source == ["points"]
    assert torch.equal(res.argmax, mid)
    assert float(res.operator_norm[0]) >= float(exact[0])
    if norm == "2":  # the certified Lanczos value, within its stopping gap
        assert float(res.operator_norm[0]) <= float(exact[0]) * 1.01
    else:  # the sign iteration's feasible value at the midpoint is the enumerated maximum
        assert float(res.lower[0]) >= float(exact[0]) * (1 - 1e-12)


def test_batched_equals_one_by_one_and_chunks():
    model, x = _cnn(seed=4), _inputs((1, 8, 8), b=4, seed=7)
    kw = dict(eps=0.1, norm=2, attribution="integrated_gradients",
              attribution_options={"steps": 4}, method="taylor")
    full = bound(model, x, **kw)
    single = torch.cat([bound(model, x[i : i + 1], **kw).operator_norm for i in range(4)])
    chunked = bound(model, x, batch_size=3, **kw)
    assert torch.allclose(full.operator_norm, single, rtol=1e-5)
    assert torch.allclose(full.operator_norm, chunked.operator_norm, rtol=1e-5)


def test_attribution_object_and_target():
    model, x = _mlp(seed=5), _inputs((10,), b=2, seed=8)
    a = attribution("integrated_gradients", model, steps=4)
    res_obj = bound(model, x, eps=0.1, norm=2, attribution=a, method="taylor", target=1)
    res_name = bound(model, x, eps=0.1, norm=2, attribution="integrated_gradients",
                     attribution_options={"steps": 4}, method="taylor", target=1)
    assert torch.allclose(res_obj.operator_norm, res_name.operator_norm, rtol=1e-6)
    j = full_jacobian(model, "integrated_gradients", x, target=1, steps=4)
    sigma = top_singular_value(j)
    assert (res_obj.operator_norm >= sigma).all() and (res_obj.operator_norm <= 1.01 * sigma).all()
    assert torch.allclose(res_obj.operator_norm_ritz, sigma, rtol=1e-4)


def test_rows_are_plain_json():
    model, x = _mlp(seed=6), _inputs((10,), b=2, seed=9)
    res = bound(model, x, eps=0.05, norm="inf", method="region", random=2, ascent_steps=2)
    assert isinstance(res, BoundResult)
    rows = res.to_rows()
    assert len(rows) == 2
    for row in rows:
        json.dumps(row, allow_nan=False)  # strict JSON, as the campaign's store writes it
        assert row["operator_norm_lower"] <= row["operator_norm"]
        assert row["source"] in ("x", "random", "points", "ascent")
        assert row["method"] == "region" and row["norm"] == "inf"
        assert row["operator_norm_v0"] >= row["operator_norm"] * (1 - 1e-6)
    # integrated gradients with weights from the coarse map have no v = 0 value: None
    ig = bound(model, x, eps=0.05, norm="inf", method="taylor",
               attribution="integrated_gradients", attribution_options={"steps": 16})
    for row in ig.to_rows():
        json.dumps(row, allow_nan=False)
        assert row["operator_norm_v0"] is None and row["operator_norm"] > 0


def test_package_export():
    assert attrbound.bound is bound


# ----------------------------------------------------------------------------------------
# piecewise-linear models and errors
# ----------------------------------------------------------------------------------------


def _relu_mlp() -> nn.Module:
    torch.manual_seed(7)
    return models.freeze(models.mlp((6,), 3, hidden=(8,), activation_name="relu").double())


@pytest.mark.parametrize("method", ["taylor", "region"])
def test_relu_model_needs_a_surrogate(method):
    model, x = _relu_mlp(), _inputs((6,), b=2)
    with pytest.raises(AttrboundError) as err:
        bound(model, x, eps=0.1, norm=2, method=method)
    msg = str(err.value)
    assert "surrogate_beta" in msg and "interval" in msg and "zero almost everywhere" in msg


def test_relu_model_with_surrogate_bounds_the_surrogate():
    model, x = _relu_mlp(), _inputs((6,), b=2)
    res = bound(model, x, eps=0.1, norm=2, method="taylor", surrogate_beta=10.0)
    assert res.surrogate_beta == 10.0
    smooth = models.smooth_surrogate(model, 10.0)
    ref = bound(smooth, x, eps=0.1, norm=2, method="taylor", target=model(x).argmax(1))
    assert ref.surrogate_beta is None
    assert torch.allclose(res.operator_norm, ref.operator_norm, rtol=1e-6)
    assert (res.operator_norm > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, "eps must be"),
        ({"eps": -1.0}, "eps must be"),
        ({"norm": 1}, "unknown norm"),
        ({"norm": "l3"}, "unknown norm"),
        ({"method": "crown"}, "taylor, region, interval"),
        ({"attribution": "lime"}, "unknown attribution method"),
        ({"max_iter": 0}, "max_iter"),
        ({"ascent_steps": -1}, "ascent_steps"),
        ({"attack_steps": -1}, "attack_steps"),
        ({"method": "taylor", "attack_steps": 2}, "method='region' only"),
        ({"coarse_ig_steps": 0}, "coarse_ig_steps"),
        ({"method": "taylor", "weights_ig_steps": 0}, "weights_ig_steps"),
        ({"tol": 0.0}, "tol"),
        ({"norm": "inf", "refine_above": -1.0}, "refine_above must be a number >= 0"),
        ({"norm": "inf", "refine_above": "high"}, "refine_above"),
        ({"bogus": 1}, "unknown option 'bogus'"),
        ({"method": "taylor", "points": None}, "method='region' only"),
        ({"points": torch.zeros(2, 3, 5, dtype=torch.float64)}, "points must be shaped"),
    ],
)
def test_user_errors(kwargs, match):
    model, x = _mlp(d=6, seed=8), _inputs((6,), b=2)
    args = {"eps": 0.1, "norm": 2, **kwargs}
    with pytest.raises(AttrboundError, match=match):
        bound(model, x, **args)


@pytest.mark.parametrize(("relu", "norm"), [(False, "inf"), (True, "inf"), (False, "2")])
def test_region_attack_steps_searches_its_attacks_points(relu, norm):
    # attack_steps runs pgd (2 runs) with region's own seed, target, domain and map (the
    # surrogate's for a ReLU model) and searches its points exactly as if the caller had
    # passed them; the non-default seed, target, domain and attribution would expose any of
    # them not passed on
    model = _relu_mlp() if relu else _mlp(d=6, seed=8)
    x = _inputs((6,), b=3)
    beta = 10.0 if relu else None
    target = (model(x).argmax(1) + 1) % 3
    common = {"eps": 0.2, "norm": norm, "surrogate_beta": beta, "target": target,
              "domain": (-0.5, 1.5), "seed": 3, "attribution": "input_x_gradient"}
    # region's batch_size (inputs per pass) reaches the attack as 2 runs x 2 inputs per pass;
    # both draw their random streams pass by pass, so both calls use the same batch sizes
    res = attrbound.attack(model, x, method="pgd", steps=3, restarts=2, batch_size=4, **common)
    points = torch.cat([res.x_adv.unsqueeze(1), res.points], dim=1)
    given = bound(model, x, method="region", points=points, batch_size=2, **common)
    own = bound(model, x, method="region", attack_steps=3, batch_size=2, **common)
    assert points.shape[1] == 3
    assert torch.equal(own.operator_norm, given.operator_norm)
    assert own.source == given.source
    assert own.extra["options"]["attack_steps"] == 3
    # with the caller's points too: the caller's come first, then the attack's
    mine = x.unsqueeze(1) + 0.1
    both = bound(model, x, method="region", points=mine, attack_steps=3, batch_size=2,
                 **common)
    ref = bound(model, x, method="region", points=torch.cat([mine, points], dim=1),
                batch_size=2, **common)
    assert torch.equal(both.operator_norm, ref.operator_norm)
    assert both.extra["options"]["points"] == 1  # the caller's, as given
    assert bound(model, x, method="region", points=x + 0.1, **common).extra["options"][
        "points"] == 1  # [B, *S] is one point per input


def test_refine_above_ends_of_the_gate():
    # inf: no input passes the gate, the same solve as no refinement at all (bit-equal);
    # 0: every input is refined, and the bracket still holds
    model, x = _mlp(d=6, seed=8), _inputs((6,), b=3)
    kw = {"eps": 0.1, "norm": "inf", "method": "taylor"}
    never = bound(model, x, refine_above=math.inf, **kw)
    off = bound(model, x, refine_steps=0, **kw)
    assert torch.equal(never.operator_norm, off.operator_norm)
    every = bound(model, x, refine_above=0, **kw)
    assert (every.operator_norm >= every.lower).all() and every.operator_norm.isfinite().all()
    assert not torch.equal(every.operator_norm, never.operator_norm)  # the refined weights


def test_nan_and_bad_inputs():
    model, x = _mlp(d=6, seed=8), _inputs((6,), b=2)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(AttrboundError, match="NaN"):
        bound(model, bad, eps=0.1, norm=2)
    with pytest.raises(AttrboundError, match="outside the domain"):
        bound(model, x + 2, eps=0.1, norm=2)
    # the same inputs are fine for an unbounded domain
    assert bound(model, x + 2, eps=0.1, norm=2, domain=None, random=1, ascent_steps=1).euclidean \
        .isfinite().all()


def test_interval_is_dispatched(monkeypatch):
    calls = {}

    def fake_interval_bound(model, x, **kwargs):
        calls.update(kwargs, model=model, x=x)
        return "interval-result"

    monkeypatch.setattr(attrbound.interval, "interval_bound", fake_interval_bound)
    model, x = _mlp(d=6, seed=8), _inputs((6,), b=2)
    out = bound(model, x, eps=0.1, norm="linf", method="interval", attribution="saliency",
                target=2, domain=(0.0, 1.0), extra_option=3)
    assert out == "interval-result"
    assert calls["model"] is model and calls["eps"] == 0.1 and calls["norm"] == "inf"
    assert calls["attribution"].name == "saliency" and calls["target"] == 2
    assert calls["domain"] == (0.0, 1.0) and calls["extra_option"] == 3


def test_large_input_runs_matrix_free():
    """A 3x224x224 input (d = 150,528): a d x d float32 Jacobian would need 90 GB."""
    torch.manual_seed(0)
    model = models.freeze(models.cnn((3, 224, 224), 2, channels=(2,), hidden=4))
    x = torch.rand(1, 3, 224, 224)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    res = bound(model, x, eps=1.0, norm=2, method="taylor", max_iter=5)
    reg = bound(model, x, eps=1.0, norm="inf", method="region", max_iter=5, dual_steps=1,
                inner_iter=2, sign_steps=2, random=1, ascent_steps=1, screen_iter=1)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert torch.isfinite(res.operator_norm).all() and (res.operator_norm > 0).all()
    assert (reg.operator_norm >= reg.at_x.operator_norm).all()
    assert res.iterations.item() <= 5
    assert grown < 2 * 1024**2  # less than 2 GiB of extra peak memory


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_results_carry_no_graph_when_the_weights_require_grad(norm):
    # an unfrozen model: its parameters require gradients, the bounds must still be plain
    # tensors (no graph back to the weights), equal to the frozen model's
    torch.manual_seed(0)
    model = models.mlp((6,), 3, hidden=(8,), activation_name="softplus").double().eval()
    assert all(p.requires_grad for p in model.parameters())
    x = _inputs((6,), b=2)
    kw = dict(eps=0.1, norm=norm)
    taylor = bound(model, x, method="taylor", **kw)
    region = bound(model, x, method="region", random=2, ascent_steps=2, **kw)
    for res in (taylor, region, region.at_x):
        for name in ("euclidean", "cosine", "attr_norm", "operator_norm", "iterations",
                     "converged", "lower", "argmax"):
            value = getattr(res, name)
            if value is not None:
                assert value.grad_fn is None and not value.requires_grad, (res.method, name)
        for name, value in res.extra.items():
            if isinstance(value, torch.Tensor):
                assert value.grad_fn is None and not value.requires_grad, (res.method, name)
    frozen = bound(models.freeze(model), x, method="region", random=2, ascent_steps=2, **kw)
    assert torch.equal(frozen.operator_norm, region.operator_norm)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_follows_the_inputs():
    model, x = _cnn(seed=9), _inputs((1, 8, 8), b=2, seed=10)
    cpu = bound(model, x, eps=0.1, norm=2, method="taylor")
    gpu = bound(model.cuda(), x.cuda(), eps=0.1, norm=2, method="taylor")
    assert gpu.operator_norm.device.type == "cuda"
    assert torch.allclose(gpu.operator_norm.cpu(), cpu.operator_norm, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def test_cli_bound(tmp_path, capsys):
    torch.manual_seed(0)
    config = {"arch": "cnn", "input_shape": [1, 28, 28], "channels": [2], "hidden": 8,
              "dataset": "mnist", "activation": "softplus"}
    model = models.build(config)
    path = models.save(model, tmp_path / "m.safetensors", config)
    out = tmp_path / "rows.jsonl"
    rc = main(["bound", "--model", str(path), "--n", "3", "--norm", "2", "--eps", "0.1,0.2",
               "--method", "taylor,region", "--random", "1", "--ascent-steps", "1",
               "--attack-steps", "1", "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "euclidean" in text and "operator_norm" in text and "region" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3
    assert {r["index"] for r in rows} == {0, 1, 2}
    for r in rows:
        assert r["euclidean"] == pytest.approx(r["eps"] * r["operator_norm"])
    # region >= taylor row by row
    by = {(r["method"], r["eps"], r["index"]): r for r in rows}
    for eps in (0.1, 0.2):
        for i in range(3):
            assert by["region", eps, i]["euclidean"] >= by["taylor", eps, i]["euclidean"]
    assert main(["bound", "--model", str(path), "--n", "2", "--eps", "0.1", "--method",
                 "nope", "--no-progress"]) == 2
    # the region flags reach region only
    parser = argparse.ArgumentParser()
    bound_cli.add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--eps", "0.1", "--attack-steps", "2",
                              "--method", "taylor,region"])
    assert bound_cli._bound_options(args, args.method) == {"region": {"attack_steps": 2}}
