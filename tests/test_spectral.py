"""Batched spectral solvers against dense references: eigh, svd and brute-force enumeration."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.references import (
    box_vertices,
    dual_value,
    inf_to_two_enumerated,
    top_eigenvalue,
    top_singular_value,
    weighted_dual_value,
)

from attrbound import models
from attrbound.attributions import attribution
from attrbound.linalg import (
    BoxOperator,
    DenseOperator,
    JacobianOperator,
    clipped_box,
    inf_to_two,
    lanczos,
    random_start,
    sign_iteration,
    top_singular,
    weighted_bound,
    with_weights,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _symmetric(b: int, n: int, seed: int) -> torch.Tensor:
    a = torch.randn(b, n, n, generator=_gen(seed), dtype=torch.float64)
    return (a + a.transpose(1, 2)) / 2


def _start(b: int, n: int, seed: int = 1) -> torch.Tensor:
    return random_start((b, n), torch.zeros((), dtype=torch.float64), _gen(seed))


def _matvec(mats: torch.Tensor):
    return lambda v: torch.einsum("bij,bj->bi", mats, v)


def test_lanczos_largest_matches_eigh():
    mats = _symmetric(5, 40, 0)
    e = lanczos(_matvec(mats), _start(5, 40), tol=1e-10, max_iter=40)
    exact = top_eigenvalue(mats)
    assert torch.allclose(e.value, exact, rtol=1e-9, atol=1e-9)
    assert e.converged.all()
    # the returned residual is the true one, and the vector is a unit eigenvector
    r = torch.einsum("bij,bj->bi", mats, e.vector) - e.value[:, None] * e.vector
    assert torch.allclose(r.norm(dim=1), e.residual, atol=1e-12)
    assert torch.allclose(e.vector.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert (e.upper >= exact - 1e-12).all()


def test_lanczos_largest_is_algebraic_not_magnitude():
    # M - diag(v) in the dual is indefinite: its most negative eigenvalue can dominate in
    # magnitude; "largest" must still return the algebraic maximum, "magnitude" the other.
    eig = torch.tensor([[-10.0, -3.0, 0.5, 1.0, 2.0]] * 3, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 5, 5, generator=_gen(3), dtype=torch.float64))
    mats = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    largest = lanczos(_matvec(mats), _start(3, 5), tol=1e-12)
    assert torch.allclose(largest.value, torch.full((3,), 2.0, dtype=torch.float64), atol=1e-10)
    mag = lanczos(_matvec(mats), _start(3, 5), which="magnitude", tol=1e-12)
    assert torch.allclose(mag.value, torch.full((3,), -10.0, dtype=torch.float64), atol=1e-10)


def test_lanczos_converges_per_example():
    # example 0 is rank one (exact after one step), example 1 has a spread spectrum
    n = 60
    u = torch.randn(n, generator=_gen(4), dtype=torch.float64)
    rank_one = torch.outer(u, u)
    spread = _symmetric(1, n, 5)[0]
    mats = torch.stack([rank_one, spread])
    e = lanczos(_matvec(mats), _start(2, n), tol=1e-10, max_iter=n)
    assert e.converged.all()
    assert e.iterations[0] <= 2 < e.iterations[1]
    exact = top_eigenvalue(mats)
    assert torch.allclose(e.value, exact, rtol=1e-9)


def test_lanczos_cuts_the_batch_to_running_examples():
    # six examples: four rank-one (exact after a step or two), two with a spread spectrum;
    # with restrict, the batch is cut to the two slow ones, and every result still matches eigh
    n = 50
    u = torch.randn(4, n, generator=_gen(8), dtype=torch.float64)
    mats = torch.cat([torch.einsum("bi,bj->bij", u, u), _symmetric(2, n, 9)])
    calls: list[list[int]] = []

    def restrict(rows: torch.Tensor):
        calls.append(rows.tolist())
        return _matvec(mats[rows])

    cut = lanczos(_matvec(mats), _start(6, n), tol=1e-10, max_iter=n, restrict=restrict)
    full = lanczos(_matvec(mats), _start(6, n), tol=1e-10, max_iter=n)
    assert calls and calls[0] == [4, 5]
    exact = top_eigenvalue(mats)
    assert torch.allclose(cut.value, exact, rtol=1e-9, atol=1e-9)
    assert torch.equal(cut.iterations, full.iterations)
    assert torch.equal(cut.converged, full.converged)
    assert cut.converged.all()
    r = torch.einsum("bij,bj->bi", mats, cut.vector) - cut.value[:, None] * cut.vector
    assert torch.allclose(r.norm(dim=1), cut.residual, atol=1e-12)


@pytest.mark.parametrize("cut", [False, True])
def test_lanczos_survives_invariant_krylov_spaces(cut):
    # K_b = diag(5, 1, ..., 1) from the all-ones start: the Krylov space is invariant after
    # two steps (up to rounding); example 0 (a spread diagonal) keeps running for many more.
    # The stopped examples must not turn rounding noise into a breakdown of the batch.
    n = 1000
    d = torch.ones(4, n, dtype=torch.float64)
    d[:, 0] = 5.0
    d[0] = torch.linspace(0, 1, n, dtype=torch.float64)
    restrict = (lambda rows: (lambda v, dd=d[rows]: dd * v)) if cut else None
    e = lanczos(lambda v: d * v, torch.ones(4, n, dtype=torch.float64), tol=1e-3,
                max_iter=100, restrict=restrict)
    assert torch.allclose(e.value[1:], torch.full((3,), 5.0, dtype=torch.float64))
    assert (e.iterations[1:] <= 3).all() and e.converged.all()
    assert abs(e.value[0].item() - 1.0) < 1e-3


def test_jacobian_operator_restrict_is_the_rows_operator():
    torch.manual_seed(0)
    model = models.freeze(models.mlp((1, 4, 4), hidden=(8,), activation_name="softplus").double())
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 4])
    attr = attribution("integrated_gradients", model, steps=3)
    op = JacobianOperator(attr, x, t)
    rows = torch.tensor([3, 1])
    v = torch.randn(2, 16, dtype=torch.float64)
    sub = op.restrict(rows)
    full_v = torch.zeros(5, 16, dtype=torch.float64)
    full_v[rows] = v
    assert torch.allclose(sub.matvec(v), op.matvec(full_v)[rows], atol=1e-12)
    assert torch.allclose(sub.rmatvec(v), op.rmatvec(full_v)[rows], atol=1e-12)


def test_lanczos_reports_non_convergence():
    mats = _symmetric(2, 200, 6)
    e = lanczos(_matvec(mats), _start(2, 200), tol=1e-12, max_iter=3)
    assert not e.converged.any()
    assert (e.iterations == 3).all()
    # a Ritz value never exceeds lambda_max
    assert (e.value <= top_eigenvalue(mats) + 1e-12).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_top_singular_matches_svd(symmetric):
    j = torch.randn(4, 30, 30, generator=_gen(7), dtype=torch.float64)
    if symmetric:
        j = (j + j.transpose(1, 2)) / 2
    op = DenseOperator(j)
    assert op.symmetric is symmetric
    r = top_singular(op, _start(4, 30), tol=1e-10)
    exact = top_singular_value(j)
    assert torch.allclose(r.sigma, exact, rtol=1e-8)
    assert (r.upper >= exact * (1 - 1e-12)).all()
    assert torch.allclose(r.upper, exact, rtol=1e-6)
    # the vector is a right singular vector: ||J v|| = sigma
    assert torch.allclose(op.matvec(r.vector).norm(dim=1), exact, rtol=1e-6)


def test_sign_iteration_is_feasible_and_below_the_maximum():
    j = torch.randn(6, 12, 12, generator=_gen(8), dtype=torch.float64)
    op = DenseOperator(j)
    s, value, _ = sign_iteration(op.gram, _start(6, 12), max_steps=50)
    assert set(s.unique().tolist()) <= {-1.0, 1.0}
    assert torch.allclose(value, op.matvec(s).norm(dim=1))
    assert (value <= inf_to_two_enumerated(j) * (1 + 1e-12)).all()


@pytest.mark.parametrize("rank", [1, 3, 14])
def test_inf_to_two_brackets_the_exact_maximum(rank):
    # d = 14 <= 16: the exact max over 2^14 sign vectors is enumerated
    b, d = 4, 14
    g = _gen(10 + rank)
    j = torch.randn(b, rank, d, generator=g, dtype=torch.float64)
    j = torch.cat([j, torch.zeros(b, d - rank, d, dtype=torch.float64)], dim=1)
    j = j + 0.05 * torch.randn(b, d, d, generator=g, dtype=torch.float64)  # not exactly low rank
    exact = inf_to_two_enumerated(j)
    sigma = top_singular_value(j)
    r = inf_to_two(DenseOperator(j), _start(b, d), tol=1e-10)
    assert (r.upper >= exact * (1 - 1e-10)).all(), (r.upper, exact)
    assert (r.upper <= math.sqrt(d) * sigma * (1 + 1e-8)).all()
    assert (r.lower <= exact * (1 + 1e-10)).all()
    # the v = 0 bound sqrt(d) sigma_max is certified from the 12-step sketch (d = 14: not yet
    # the whole space), so it is never below the exact value and close above it
    v0 = math.sqrt(d) * sigma
    assert (r.upper_v0 >= v0 * (1 - 1e-12)).all() and (r.upper_v0 <= v0 * 1.01).all()
    s = r.sign
    assert set(s.unique().tolist()) <= {-1.0, 1.0}
    assert torch.allclose(r.lower, torch.einsum("bij,bj->bi", j, s).norm(dim=1))
    # the optimised dual closes most of the gap that v = 0 (sqrt(d) sigma_max) leaves
    assert (r.upper - exact <= 0.5 * (r.upper_v0 - exact)).all()
    assert (r.upper <= 1.05 * exact).all()


@pytest.mark.parametrize("proxy_kind", ["close", "unrelated"])
def test_inf_to_two_with_a_proxy_brackets_the_exact_maximum(proxy_kind):
    # the weights and the sign start come from the proxy, the certificate and the lower
    # value from J itself: any proxy (even one unrelated to J) must leave the enumerated
    # maximum bracketed; a close proxy must keep the bound near the direct solve's
    b, d = 4, 14
    g = _gen(31)
    j = torch.randn(b, 3, d, generator=g, dtype=torch.float64)
    j = torch.cat([j, torch.zeros(b, d - 3, d, dtype=torch.float64)], dim=1)
    j = j + 0.05 * torch.randn(b, d, d, generator=g, dtype=torch.float64)
    other = torch.randn(b, d, d, generator=g, dtype=torch.float64)
    p = j + 0.02 * other if proxy_kind == "close" else other
    exact = inf_to_two_enumerated(j)
    r = inf_to_two(DenseOperator(j), _start(b, d), tol=1e-10, proxy=DenseOperator(p))
    assert (r.upper >= exact * (1 - 1e-10)).all(), (r.upper, exact)
    assert (r.lower <= exact * (1 + 1e-10)).all()
    assert torch.allclose(r.lower, torch.einsum("bij,bj->bi", j, r.sign).norm(dim=1))
    assert set(r.sign.unique().tolist()) <= {-1.0, 1.0} and (r.sign[:, 0] == 1).all()
    assert r.upper_v0.isnan().all()  # the sketch ran on the proxy: no v = 0 value of J
    assert (r.proxy_products > 12).all() and r.refined.all()
    # the certifying run's weighted value at the returned weights, in closed form
    m = j.transpose(1, 2) @ j
    sc = r.weights.rsqrt()
    lam = torch.linalg.eigvalsh(sc[:, :, None] * m * sc[:, None, :])[:, -1]
    weighted = (r.weights.sum(dim=1) * lam).sqrt()
    assert (r.upper >= weighted * (1 - 1e-8)).all()
    assert (r.upper <= weighted * (1 + 1e-3)).all()
    if proxy_kind == "close":  # entries 2% off: the bound within 2% of the direct solve's
        direct = inf_to_two(DenseOperator(j), _start(b, d), tol=1e-10)
        assert (r.upper <= 1.02 * direct.upper).all(), r.upper / direct.upper
        assert (r.lower >= 0.99 * exact).all(), r.lower / exact


def test_with_weights_is_valid_for_arbitrary_weights_and_signs():
    # weights and a sign vector from anywhere: above the enumerated maximum, at the closed
    # form sqrt(sum w lambda_max(W^-1/2 M W^-1/2)) within the stopping gap; lower feasible
    b, d = 3, 12
    j = torch.randn(b, d, d, generator=_gen(41), dtype=torch.float64)
    w = torch.rand(b, d, generator=_gen(42), dtype=torch.float64) * 10 + 0.01
    sign = torch.sign(torch.randn(b, d, generator=_gen(43), dtype=torch.float64))
    r = with_weights(DenseOperator(j), w, sign, _start(b, d), tol=1e-10)
    exact = inf_to_two_enumerated(j)
    sc = w.rsqrt()
    lam = torch.linalg.eigvalsh(sc[:, :, None] * (j.transpose(1, 2) @ j) * sc[:, None, :])
    weighted = (w.sum(dim=1) * lam[:, -1]).sqrt()
    assert (r.upper >= weighted * (1 - 1e-8)).all() and (r.upper <= weighted * (1 + 1e-6)).all()
    assert (weighted >= exact).all()
    assert (r.lower <= exact * (1 + 1e-10)).all()
    assert torch.allclose(r.lower, torch.einsum("bij,bj->bi", j, r.sign).norm(dim=1))
    start_value = torch.einsum("bij,bj->bi", j, sign).norm(dim=1)
    assert (r.lower >= start_value * (1 - 1e-12)).all()  # the sign iteration never descends


def test_inf_to_two_without_dual_steps_is_sqrt_d_sigma():
    j = torch.randn(3, 10, 10, generator=_gen(20), dtype=torch.float64)
    r = inf_to_two(DenseOperator(j), _start(3, 10), tol=1e-10, dual_steps=0)
    assert torch.allclose(r.upper, math.sqrt(10) * top_singular_value(j), rtol=1e-8)


def test_inf_to_two_every_shift_is_an_upper_bound():
    # the dual is valid for ANY v: check the returned shift and random shifts in closed form
    b, d = 3, 12
    j = torch.randn(b, d, d, generator=_gen(21), dtype=torch.float64)
    m = j.transpose(1, 2) @ j
    exact_sq = inf_to_two_enumerated(j) ** 2
    r = inf_to_two(DenseOperator(j), _start(b, d), tol=1e-10)
    for v in [r.shift, torch.randn(b, d, generator=_gen(22), dtype=torch.float64) * 5]:
        f = dual_value(m, v)
        assert (f >= exact_sq * (1 - 1e-10)).all()
    f_shift = dual_value(m, r.shift)
    assert (r.upper**2 >= f_shift * (1 - 1e-8)).all()


# ----------------------------------------------------------------------------------------
# The probabilistic certificate (Christoffel bound) against eigvalsh
# ----------------------------------------------------------------------------------------


def _clustered(groups: int, n: int, seed: int, sign: float = 1.0) -> torch.Tensor:
    """Dense symmetric [groups, n, n]: 7 equal top eigenvalues (1.0), then 0.98, then a linear
    spread down to 0 (times ``sign``: the cluster at the bottom for sign = -1)."""
    q, _ = torch.linalg.qr(torch.randn(groups, n, n, generator=_gen(seed), dtype=torch.float64))
    lam = torch.cat([torch.ones(7), torch.tensor([0.98]), torch.linspace(0.95, 0, n - 8)])
    lam = sign * lam.double()
    return q @ torch.diag_embed(lam.expand(groups, n)) @ q.transpose(1, 2)


def _certificate_failures(trials: int, seed: int, which: str = "largest") -> tuple[int, float]:
    """Runs (of ``trials``, fresh random starts on 2 matrices) whose certified value lies below
    the exact value, and the largest certified / exact ratio."""
    n, groups = 784, 2
    per = trials // groups
    mats = _clustered(groups, n, seed, sign=-1.0 if which == "magnitude" else 1.0)
    exact = top_eigenvalue(mats)
    if which == "magnitude":
        exact = torch.linalg.eigvalsh(mats).abs().amax(dim=1)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("gij,gtj->gti", mats, v.reshape(groups, per, n)).reshape(-1, n)

    start = random_start((groups * per, n), torch.zeros((), dtype=torch.float64),
                         _gen(seed + 1))
    # a loose stop (2%) keeps the certified value close to the edge it must stay above
    e = lanczos(matvec, start, which=which, tol=2e-2, max_iter=80, delta=1e-3)
    ref = exact.repeat_interleave(per)
    assert (e.value.abs() <= ref * (1 + 1e-12)).all()  # Ritz values never exceed it
    return int((e.certified < ref).sum()), float((e.certified / ref).max())


@pytest.mark.parametrize("which", ["largest", "magnitude"])
def test_certificate_holds_on_clustered_spectra(which):
    # delta = 1e-3: at 200 trials the expected number of failures is at most 0.2
    failures, worst = _certificate_failures(200, 30, which)
    assert failures <= 3, failures
    assert worst <= 1.03  # and the certificate is not vacuous


def test_certificate_holds_over_1000_trials():
    # d = 784, 1,000 fresh starts in one batch (a few seconds): fail above 5
    failures, _ = _certificate_failures(1000, 31)
    assert failures <= 5, failures


def test_certified_top_singular_is_one_sided():
    j = torch.randn(4, 60, 60, generator=_gen(32), dtype=torch.float64)
    exact = top_singular_value(j)
    for mats in (j, (j + j.transpose(1, 2)) / 2):
        exact = top_singular_value(mats)
        r = top_singular(DenseOperator(mats), _start(4, 60), delta=1e-3, tol=1e-3)
        assert (r.upper >= exact).all() and (r.upper <= exact * 1.0011).all()
        assert (r.sigma <= exact * (1 + 1e-12)).all()
        assert r.eigen.product is None and r.eigen.certified is not None


def test_certificate_of_an_invariant_krylov_space_is_the_ritz_value():
    # a diagonal matrix with 8 distinct entries: 8 steps span an invariant space, and
    # lambda_max = theta then holds on the event, up to the floating-point allowance only
    d = torch.linspace(-1.2, 0.6, 8, dtype=torch.float64).expand(2, 8)
    e = lanczos(lambda v: d * v, _start(2, 8), tol=1e-12, delta=1e-3)
    # (within the root search's resolution)
    assert torch.allclose(e.certified, torch.full((2,), 0.6, dtype=torch.float64), rtol=1e-7)
    m = lanczos(lambda v: d * v, _start(2, 8), which="magnitude", tol=1e-12, delta=1e-3)
    assert torch.allclose(m.certified, torch.full((2,), 1.2, dtype=torch.float64), rtol=1e-7)
    assert (e.certified >= 0.6).all() and (m.certified >= 1.2).all()


# ----------------------------------------------------------------------------------------
# The weighted (PSD) dual: valid for every w > 0
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [9, 16])
def test_weighted_dual_is_above_the_enumerated_maximum_for_any_weights(d):
    b = 6
    g = _gen(40 + d)
    j = torch.randn(b, d, d, generator=g, dtype=torch.float64)
    j[:3] = j[:3] * torch.linspace(0.01, 3.0, d, dtype=torch.float64)  # uneven columns
    m = j.transpose(1, 2) @ j
    exact = inf_to_two_enumerated(j)  # max over the 2^d sign vectors of ||J s||
    for trial in range(4):
        w = torch.exp(4 * torch.randn(b, d, generator=g, dtype=torch.float64))  # arbitrary w
        dense = weighted_dual_value(m, w)
        assert (dense >= exact**2 * (1 - 1e-12)).all()  # the inequality itself
        upper, ritz, e = weighted_bound(DenseOperator(j), w, _start(b, d, seed=50 + trial),
                                        delta=1e-3)
        assert (upper >= exact).all(), (upper, exact)  # the certified value
        assert (upper >= dense.sqrt()).all()
        assert (ritz <= dense.sqrt() * (1 + 1e-10)).all()
    r = inf_to_two(DenseOperator(j), _start(b, d))
    assert (r.upper >= exact).all() and (r.lower <= exact * (1 + 1e-12)).all()
    assert (r.weights > 0).all()


def test_box_operator_is_the_maximum_over_the_clipped_box():
    # ||J [c, diag r]||_{inf->2} = max over the clipped box's vertices of ||J delta||
    b, d, eps = 3, 12, 0.1
    j = torch.randn(b, d, d, generator=_gen(60), dtype=torch.float64)
    x = torch.rand(b, d, generator=_gen(61), dtype=torch.float64)
    x[:, :4], x[:, 4:6], x[0, 6] = 0.0, 1.0, 0.03  # at and near the edges of [0, 1]
    c, r = clipped_box(x, eps, (0.0, 1.0))
    assert (r >= 0).all() and ((c - r) >= -eps).all() and ((c + r) <= eps).all()
    deltas = box_vertices(x, eps, (0.0, 1.0)) - x  # [2^d, B, d]
    exact = torch.einsum("bij,pbj->pbi", j, deltas).norm(dim=2).amax(dim=0)
    op = BoxOperator(DenseOperator(j), c, r)
    via = inf_to_two_enumerated(torch.cat([(j @ c[:, :, None]), j * r[:, None, :]], dim=2))
    assert torch.allclose(via, exact, rtol=1e-12)
    res = inf_to_two(op, _start(b, d + 1))
    assert (res.upper >= exact).all() and (res.lower <= exact * (1 + 1e-12)).all()
    assert (op.direction(res.sign) - c).abs().le(r + 1e-15).all()  # a vertex of the box
    assert clipped_box(torch.full((1, 3), 0.5), 0.1, (0.0, 1.0)) is None  # nothing clipped


def test_inf_to_two_refinement_brackets_and_its_gate_is_exact_when_off():
    # d = 14 <= 16: against the maximum enumerated over the 2^14 sign vectors
    b, d = 6, 14
    g = _gen(70)
    j = torch.randn(b, d, d, generator=g, dtype=torch.float64)
    j[:3] = j[:3] * torch.linspace(0.05, 2.0, d, dtype=torch.float64)  # uneven columns
    j[3:] = j[3:, :1] + 0.02 * j[3:]  # nearly rank one: the sign rounding is already tight
    op, exact = DenseOperator(j), inf_to_two_enumerated(j)
    kw = dict(inner_iter=4)  # a 4-step sketch: its surrogate's weights are poor
    off = inf_to_two(op, _start(b, d), refine_steps=0, **kw)
    forced = inf_to_two(op, _start(b, d), refine_above=0.0, **kw)  # (a) every example refined
    assert forced.refined.all() and not off.refined.any()
    assert (forced.upper >= exact).all() and (forced.lower <= exact * (1 + 1e-12)).all()
    assert (forced.lower >= off.lower).all()  # the better of the two sign iterations
    s = forced.sign
    assert set(s.unique().tolist()) <= {-1.0, 1.0} and (s[:, 0] == 1).all()
    assert torch.allclose(forced.lower, torch.einsum("bij,bj->bi", j, s).norm(dim=1))
    assert (forced.products > off.products + 4 * 8).all()  # dropped run, refinement, signs
    # (b) the gate shut is the refinement switched off, bit for bit
    never = inf_to_two(op, _start(b, d), refine_above=math.inf, **kw)
    for name in ("upper", "ritz", "lower", "upper_v0", "sign", "weights", "shift",
                 "iterations", "converged", "products", "refined"):
        assert torch.equal(getattr(never, name), getattr(off, name)), name
    gated = inf_to_two(op, _start(b, d), **kw)  # the default gate: unrefined rows as with it off
    keep = ~gated.refined
    assert keep.any() and gated.refined.any(), gated.refined
    for name in ("upper", "lower", "sign", "weights", "iterations"):
        assert torch.equal(getattr(gated, name)[keep], getattr(off, name)[keep]), name
    assert (gated.upper >= exact).all() and (gated.lower <= exact * (1 + 1e-12)).all()
    assert (gated.upper[~keep] < off.upper[~keep]).all()  # the refined weights are better
