"""The independent references of tests/helpers/references.py against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.references import (
    autograd_saliency,
    box_vertices,
    central_difference,
    coordinate_gradient,
    cosine_at_least,
    dual_value,
    full_jacobian,
    inf_to_two_enumerated,
    integrated_gradients_by_loop,
    jacobian_by_rows,
    map_jacobian,
    maps_at,
    plain_deviations,
    plain_pgd,
    project_ball,
    set_points,
    sign_vectors,
    smoothgrad_by_loop,
    top_singular_value,
    uniform_ball,
    vertex_max_deviation,
)
from torch import nn

from attrbound.geometry import project, sample_ball


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Quadratic(nn.Module):
    """Logit 0: f(x) = 1/2 x^T Q x + b^T x, so saliency = Q x + b and its Jacobian is Q;
    logit 1: -1e6 (the label never changes)."""

    def __init__(self, q: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.q, self.b = q, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 0.5 * ((x @ self.q) * x).sum(dim=1) + x @ self.b
        return torch.stack([f, torch.full_like(f, -1e6)], dim=1)


def _quadratic(d: int = 6, seed: int = 0, batch: int = 3):
    g = _gen(seed)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    q = (m + m.T) / 2
    b = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.rand(batch, d, generator=g, dtype=torch.float64)
    return _Quadratic(q, b).eval(), q, b, x


def test_jacobian_of_a_linear_map_is_its_matrix_both_ways():
    g = _gen(1)
    w = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    fn = lambda z: z @ w.T + torch.sin(torch.zeros_like(z))  # noqa: E731 (J = W everywhere)
    for j in (map_jacobian(fn, x), jacobian_by_rows(fn, x)):
        assert j.shape == (3, 5, 5)
        assert torch.allclose(j, w.expand(3, 5, 5), atol=1e-14)
    # a nonlinear map: J = diag(cos x), both ways
    j1, j2 = map_jacobian(torch.sin, x), jacobian_by_rows(torch.sin, x)
    assert torch.allclose(j1, torch.diag_embed(torch.cos(x)), atol=1e-14)
    assert torch.allclose(j2, j1, atol=1e-14)


def test_full_jacobian_of_quadratic_saliency_and_input_x_gradient():
    model, q, b, x = _quadratic()
    j = full_jacobian(model, "saliency", x)  # A = Q x + b
    assert torch.allclose(j, q.expand_as(j), atol=1e-12)
    # A = x * (Q x + b): J = diag(Q x + b) + diag(x) Q
    j = full_jacobian(model, "input_x_gradient", x, target=0)
    ref = torch.diag_embed(x @ q + b) + x[:, :, None] * q[None]
    assert torch.allclose(j, ref, atol=1e-12)
    # the plain autograd saliency is the same map
    a = autograd_saliency(model, 0, create_graph=False)(x)
    assert torch.allclose(a, x @ q + b, atol=1e-12)


def test_integrated_gradients_and_smoothgrad_loops_on_a_quadratic():
    model, q, b, x = _quadratic(d=4, seed=2)
    grad = autograd_saliency(model, 0, create_graph=False)
    m = 5
    t = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    w = torch.full((m,), 1.0 / m, dtype=torch.float64)
    ig = integrated_gradients_by_loop(grad, x, torch.zeros_like(x), t, w)
    # g(t x) = t Q x + b is linear in t, so the midpoint rule is exact: x * (Q x / 2 + b)
    assert torch.allclose(ig, x * (x @ q / 2 + b), atol=1e-12)
    noise = torch.randn(7, 4, generator=_gen(3), dtype=torch.float64)
    sg = smoothgrad_by_loop(grad, x, noise, 0.5)  # mean of Q (x + s xi) + b
    assert torch.allclose(sg, (x + 0.5 * noise.mean(0)) @ q + b, atol=1e-12)


def test_inf_to_two_of_rank_one_and_diagonal_matrices():
    g = _gen(4)
    u = torch.randn(2, 7, generator=g, dtype=torch.float64)
    v = torch.randn(2, 7, generator=g, dtype=torch.float64)
    j = u[:, :, None] * v[:, None, :]  # J = u v^T: ||J s|| = ||u|| |v . s|, max at s = sign v
    value, s = inf_to_two_enumerated(j, return_sign=True)
    assert torch.allclose(value, u.norm(dim=1) * v.abs().sum(dim=1), rtol=1e-12)
    assert torch.equal(s.abs(), torch.ones_like(s))
    assert torch.equal(s * v.sign(), s[:, :1] * v[:, :1].sign() * torch.ones_like(s))
    d = torch.randn(2, 6, generator=g, dtype=torch.float64)
    assert torch.allclose(inf_to_two_enumerated(torch.diag_embed(d)), d.norm(dim=1))
    assert torch.allclose(top_singular_value(torch.diag_embed(d)), d.abs().amax(dim=1))


def test_dual_value_bounds_the_enumerated_maximum_and_is_n_sigma_squared_at_zero():
    j = torch.randn(3, 8, 8, generator=_gen(5), dtype=torch.float64)
    m = j.transpose(1, 2) @ j
    exact_sq = inf_to_two_enumerated(j) ** 2
    zero = torch.zeros(3, 8, dtype=torch.float64)
    assert torch.allclose(dual_value(m, zero), 8 * top_singular_value(j) ** 2, rtol=1e-12)
    for seed in range(3):
        v = 3 * torch.randn(3, 8, generator=_gen(10 + seed), dtype=torch.float64)
        assert (dual_value(m, v) >= exact_sq * (1 - 1e-12)).all()
    # the pi/2 gap of the relaxation: sqrt(n) sigma_max is within sqrt(n) of the maximum
    assert (exact_sq * 8 >= dual_value(m, zero) * (1 - 1e-12)).all()
    assert sign_vectors(3).shape == (8, 3)
    with pytest.raises(ValueError, match="too many"):
        sign_vectors(40)


def test_vertices_and_plain_pgd_reach_the_closed_form_worst_case():
    # A(x + delta) - A(x) = Q delta: worst case eps sigma_max(Q) (l2) and eps ||Q||_{inf->2}
    model, q, _, x = _quadratic(d=6, seed=6)
    eps = 0.2
    fn = autograd_saliency(model, 0)
    verts = box_vertices(x, eps)
    assert verts.shape == (64, 3, 6)
    assert torch.allclose((verts - x).abs(), torch.full_like(verts, eps))
    worst_inf = eps * inf_to_two_enumerated(q[None])[0]
    assert torch.allclose(vertex_max_deviation(fn, x, eps), worst_inf.expand(3), rtol=1e-12)
    pgd_inf = plain_pgd(fn, x, eps, "inf", steps=30)
    assert (pgd_inf <= worst_inf * (1 + 1e-12)).all() and (pgd_inf >= 0.8 * worst_inf).all()
    worst_2 = eps * top_singular_value(q[None])[0]
    pgd_2 = plain_pgd(fn, x, eps, "2", steps=50, step_size=eps)
    assert (pgd_2 <= worst_2 * (1 + 1e-12)).all() and (pgd_2 >= 0.99 * worst_2).all()


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_ball_samples_and_projection(norm):
    x = torch.rand(3, 1, 4, 4, generator=_gen(7), dtype=torch.float64)
    eps = 0.3
    pts = uniform_ball(x, eps, norm, 50, generator=_gen(8))
    # the same draws as attrbound.geometry.sample_ball from the same generator state
    assert torch.equal(pts, sample_ball(x, eps, norm, 50, _gen(8)))
    dist = (pts - x).flatten(2)
    dist = dist.norm(dim=2) if norm == "2" else dist.abs().amax(dim=2)
    assert (dist <= eps * (1 + 1e-12)).all() and (pts >= 0).all() and (pts <= 1).all()
    big = 10 * torch.randn(x.shape, generator=_gen(9), dtype=torch.float64)
    moved = x + project_ball(big, x, eps, norm)
    assert torch.equal(moved, x + project(big, x, eps, norm))  # the same arithmetic
    r = (moved - x).flatten(1)
    r = r.norm(dim=1) if norm == "2" else r.abs().amax(dim=1)
    assert (r <= eps * (1 + 1e-12)).all() and (moved >= 0).all() and (moved <= 1).all()
    sp = set_points(x, eps, norm, 5, seed=0)
    assert sp.shape == (11, 3, 1, 4, 4) and torch.equal(sp[-1], x)


def test_finite_differences_plain_metrics_and_maps_at():
    model, q, b, x = _quadratic(d=5, seed=11)
    v = torch.randn(x.shape, generator=_gen(12), dtype=torch.float64)
    fn = autograd_saliency(model, 0, create_graph=False)
    assert torch.allclose(central_difference(fn, x, v), v @ q, atol=1e-8)
    phi = lambda z: 0.5 * (z * z).sum(dim=1)  # noqa: E731 (gradient z)
    assert torch.allclose(coordinate_gradient(phi, x), x, atol=1e-8)
    a = torch.tensor([[3.0, -2.0, 1.0, 0.5]], dtype=torch.float64)
    bb = torch.tensor([[0.1, -2.0, 3.0, 0.5]], dtype=torch.float64)
    euclid, cos, inter = plain_deviations(a, bb, k=2)
    assert torch.allclose(euclid, (a - bb).norm(dim=1))
    assert math.isclose(cos.item(), (a * bb).sum().item() / (a.norm() * bb.norm()).item())
    assert inter.item() == 0.5  # top-2 of |a|: {0, 1}; of |b|: {2, 1}

    class _Doubler:
        def attribute(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return 2 * z + target[:, None]

    pts = torch.randn(4, 3, 5, generator=_gen(13), dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    assert torch.allclose(maps_at(_Doubler(), pts, t), 2 * pts + t[None, :, None].double())


def test_cosine_at_least_is_exact_where_float_rounding_is_not():
    g = torch.Generator().manual_seed(3)
    a = torch.rand((2, 32), generator=g, dtype=torch.float64)
    maps = torch.stack([a, a * 3.0, -a])  # cos = 1, 1, -1 exactly
    just_below_one = torch.tensor([1.0 - 2**-53, 1.0 - 2**-53], dtype=torch.float64)
    ok = cosine_at_least(maps, a, just_below_one)
    assert ok[:2].all() and not ok[2].any()
    assert cosine_at_least(maps, a, torch.full((2,), -1.0, dtype=torch.float64)).all()
    assert not cosine_at_least(maps[2:], a, torch.full((2,), -0.5, dtype=torch.float64)).any()
