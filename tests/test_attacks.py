"""Attribution attacks against closed forms, brute force, and their stated guarantees."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.references import inf_to_two_enumerated, top_singular_value
from torch import nn

import attrbound
from attrbound import metrics, models
from attrbound.attacks import METHODS, AttackResult, attack, default_k
from attrbound.attributions import attribution
from attrbound.errors import AttrboundError
from attrbound.geometry import batch_norm


class Quadratic(nn.Module):
    """Logit 0: f(x) = 1/2 x^T Q x + b^T x (saliency Q x + b, J = Q); logit 1: -1e6.

    The label is 0 everywhere, so the worst case of ||A(x + delta) - A(x)|| = ||Q delta|| is
    eps * sigma_max(Q) over the l2 ball and eps * max_{s in {-1,1}^d} ||Q s|| over the l-inf
    ball (a convex function is maximal at a vertex).
    """

    def __init__(self, q: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.q, self.b = q, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 0.5 * ((x @ self.q) * x).sum(dim=1) + x @ self.b
        return torch.stack([f, torch.full_like(f, -1e6)], dim=1)


def _quadratic(d: int, seed: int, batch: int = 4):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    q = (m + m.T) / 2
    b = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(batch, d, generator=g, dtype=torch.float64)
    return Quadratic(q, b).eval(), q, x


def _check_guarantees(model, x, res: AttackResult, eps, norm, domain=(0.0, 1.0), slack=1e-6):
    """The documented guarantees, checked independently of the attack's own bookkeeping."""
    delta = res.x_adv - x
    assert (batch_norm(delta.double(), norm) <= eps + slack).all()
    if domain is not None:
        assert (res.x_adv >= domain[0]).all() and (res.x_adv <= domain[1]).all()
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1), model(x).argmax(1))
    assert res.label_kept.all()
    not_found = ~res.found
    assert torch.equal(res.x_adv[not_found], x[not_found])
    assert (res.euclidean[not_found] == 0).all()
    assert (res.topk_intersection[not_found] == 1).all()
    assert torch.allclose(res.cosine[not_found], torch.ones_like(res.cosine[not_found]))
    assert res.points.shape[0] == x.shape[0] and res.points.shape[2:] == x.shape[1:]
    pts = res.points.transpose(0, 1)  # [P, B, *S]
    for p in pts:
        assert (batch_norm((p - x).double(), norm) <= eps + slack).all()
        if domain is not None:
            assert (p >= domain[0]).all() and (p <= domain[1]).all()


def _recomputed(model, name, x, x_adv, k):
    """Deviations recomputed from scratch on the real model (independent of attack())."""
    a_fn = attribution(name, model)
    a, b = a_fn(x), a_fn(x_adv, target=model(x).argmax(1))
    return metrics.euclidean(b, a), metrics.cosine(b, a), metrics.topk_intersection(b, a, k)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pgd_l2_reaches_top_singular_value(seed):
    model, q, x = _quadratic(10, seed)
    eps = 0.3
    worst = eps * top_singular_value(q[None])[0]
    # step size eps: each normalised step is a projected power-iteration step on the sphere
    res = attack(model, x, eps=eps, norm=2, domain=None, steps=50, step_size=eps, restarts=2)
    assert (res.euclidean >= 0.99 * worst).all(), res.euclidean / worst
    assert (res.euclidean <= worst * (1 + 1e-9)).all()
    # the reported deviation is A(x_adv) - A(x) = Q delta, exactly
    expect = ((res.x_adv - x) @ q).norm(dim=1)
    torch.testing.assert_close(res.euclidean, expect, rtol=1e-10, atol=1e-12)
    _check_guarantees(model, x, res, eps, "2", domain=None)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pgd_linf_reaches_enumerated_optimum(seed):
    d, eps = 10, 0.3
    model, q, x = _quadratic(d, seed)
    worst = eps * inf_to_two_enumerated(q[None])  # [1]: max over the 2^d signs s of ||Q s||
    res = attack(model, x, eps=eps, norm="inf", domain=None, steps=30, restarts=64)
    torch.testing.assert_close(res.euclidean, worst.expand(4), rtol=1e-9, atol=0)
    _check_guarantees(model, x, res, eps, "inf", domain=None)


def test_pgd_cosine_reaches_brute_force_minimum():
    # d = 2: the image {a + Q delta} of the disc is an ellipse; the smallest cosine with a is
    # attained on its boundary, enumerated finely here
    model, q, x = _quadratic(2, 5, batch=3)
    eps = 0.8
    a = x @ q + model.b
    theta = torch.linspace(0, 2 * math.pi, 200_001, dtype=torch.float64)
    circle = torch.stack([theta.cos(), theta.sin()], dim=1) * eps  # [T, 2]
    moved = a[:, None, :] + (circle @ q)[None]  # [B, T, 2]
    cos = (moved * a[:, None, :]).sum(-1) / (moved.norm(dim=-1) * a.norm(dim=-1, keepdim=True))
    best = cos.min(dim=1).values
    res = attack(model, x, eps=eps, norm=2, domain=None, objective="cosine", steps=60,
                 step_size=eps / 4, restarts=4)
    assert (res.cosine <= best + 1e-4).all(), (res.cosine, best)
    assert (res.cosine >= best - 1e-9).all()
    assert res.objective == "cosine"


def _quadratic_ratios(norm: str, seeds=range(8), batch: int = 16, **kw) -> torch.Tensor:
    """attack() / closed-form worst case on the quadratic model, d = 10, eps 0.3, inputs away
    from any domain edge (domain None), for ``batch`` inputs of each seed: [len(seeds) * batch]."""
    ratios = []
    for seed in seeds:
        model, q, x = _quadratic(10, seed, batch=batch)
        eps = 0.3
        if norm == "2":
            worst = eps * top_singular_value(q[None])[0]
        else:
            worst = eps * inf_to_two_enumerated(q[None])[0]
        res = attack(model, x, eps=eps, norm=norm, domain=None, **kw)
        assert (res.euclidean <= worst * (1 + 1e-9)).all()
        ratios.append(res.euclidean / worst)
    return torch.cat(ratios)


def test_default_attack_reaches_l2_closed_form():
    # the default settings (APGD, 3 runs of 15 steps): at least 0.99 of eps sigma_max(Q) on
    # average over 128 inputs (fixed-step PGD-20, the old default, reaches 0.924)
    ratios = _quadratic_ratios("2")
    assert ratios.mean() >= 0.99, ratios.mean()
    assert _quadratic_ratios("2", schedule="fixed").mean() < 0.93  # the old default, for scale
    # with the budget of PGD-50 spent on restarts, every input reaches it
    assert (_quadratic_ratios("2", steps=10, restarts=5) >= 0.99).all()


def test_default_attack_reaches_linf_enumerated_optimum():
    # the default settings (APGD, 3 runs of 15 steps, the first from the spectral start): at
    # least 0.99 of eps max_s ||Q s|| (enumerated over the 1,024 sign vectors) on average over
    # 128 inputs (measured 0.9985); all three runs from random starts reach 0.962 (a
    # max-cut-type problem)
    ratios = _quadratic_ratios("inf")
    assert ratios.mean() >= 0.99, ratios.mean()
    assert _quadratic_ratios("inf", start="random").mean() < ratios.mean() - 0.02


def test_spectral_start_is_the_top_singular_direction_and_a_box_vertex():
    """l2: the start is x +- eps v_top(Q) (dense eigendecomposition); l-inf with a domain:
    every coordinate of the start sits at an end of [max(x - eps, 0), min(x + eps, 1)], and
    ||Q delta|| is at least that of sign(v_top) clipped the same way."""
    from attrbound.attacks.starts import spectral_start
    from attrbound.attributions import attribution as make

    model, q, _ = _quadratic(10, 4, batch=3)
    x = torch.rand(3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, :3] = torch.tensor([0.0, 1.0, 0.02], dtype=torch.float64)  # edges of the domain
    target = torch.zeros(3, dtype=torch.long)
    attr = make("saliency", model)
    v = torch.linalg.eigh(q @ q).eigenvectors[:, -1]
    z = spectral_start(attr, x, target, 0.3, "2", None, torch.Generator().manual_seed(1),
                       steps=10)
    d = (z - x) / 0.3
    assert torch.allclose((d @ v).abs(), torch.ones(3, dtype=torch.float64), atol=1e-6)
    lo, hi = (x - 0.3).clamp(0, 1), (x + 0.3).clamp(0, 1)
    z = spectral_start(attr, x, target, 0.3, "inf", (0.0, 1.0), torch.Generator().manual_seed(1))
    at_end = torch.isclose(z, lo, atol=1e-12) | torch.isclose(z, hi, atol=1e-12)
    assert at_end.all()
    naive = torch.where(v > 0, hi, lo) - x
    flipped = torch.where(v < 0, hi, lo) - x
    rounded = torch.maximum((naive @ q).norm(dim=1), (flipped @ q).norm(dim=1))
    assert ((z - x) @ q).norm(dim=1).min() >= rounded.min() * (1 - 1e-12)


def test_default_steps_reach_linf_enumerated_optimum_with_restarts():
    # max ||Q s|| over sign vectors is a max-cut-type problem: each of these Q has 31-106
    # local maxima (fixed points s = sign(Q^2 s)), and one run of any local ascent ends in the
    # global one's basin for only some starts; with enough restarts the default schedule and
    # steps reach >= 0.99 of the enumerated optimum on every input
    ratios = _quadratic_ratios("inf", seeds=range(4), batch=4, restarts=64)
    assert (ratios >= 0.99).all(), ratios
    # at equal cost APGD ends in better local maxima than the fixed step, on average
    apgd = _quadratic_ratios("inf", steps=10, restarts=5)
    fixed = _quadratic_ratios("inf", steps=10, restarts=5, schedule="fixed")
    assert apgd.mean() > fixed.mean(), (apgd.mean(), fixed.mean())


def _hand_checkpoints(n: int) -> list[int]:
    """Croce & Hein 2020's w_j = ceil(p_j n), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j < 1."""
    ps = [0.0, 0.22]
    while ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06) < 1:
        ps.append(ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06))
    return sorted({math.ceil(p * n - 1e-9) for p in ps[1:]} - {0, n})


def test_checkpoints_are_the_papers():
    from attrbound.attacks.apgd import checkpoints

    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for n in (1, 2, 5, 10, 20, 50, 137):
        assert checkpoints(n) == _hand_checkpoints(n)


def test_halving_conditions():
    from attrbound.attacks.apgd import halve

    t, f = torch.tensor([True]), torch.tensor([False])
    one, two = torch.tensor([1.0]), torch.tensor([2.0])
    # Condition 1: rises < 0.75 of the steps (3 of 4 is not fewer; 2 of 4 is)
    assert not halve(torch.tensor([3.0]), 4, t, two, one).item()
    assert halve(torch.tensor([2.0]), 4, t, two, one).item()
    # Condition 2: no halving last time and no growth of the best score
    assert halve(torch.tensor([4.0]), 4, f, one, one).item()
    assert not halve(torch.tensor([4.0]), 4, t, one, one).item()
    assert not halve(torch.tensor([4.0]), 4, f, two, one).item()


def _hand_apgd_best(fn, model, x, eps, norm, steps, seed):
    """APGD (Croce & Hein 2020, Alg. 1) written out per input with torch.autograd, one
    restart: the attack's random start (its generator order), eta_0 = 2 eps, momentum 0.75,
    rho 0.75; at a checkpoint, halve eta and go back to the best point (by the score, whatever
    the label) if the score rose on fewer than rho of the steps since the last checkpoint or
    if eta was not halved there and the best score did not grow. Projection: clamp (l-inf) or
    radial scaling (l2), then [0, 1]. Returns (largest ||fn(z) - fn(x)|| over the iterates
    whose label under ``model`` is that of x (0 if none) [B], number of halvings); fn(z, i)
    is the map of input i at z [1, *S]."""
    gen = torch.Generator().manual_seed(seed)
    b, d = x.shape[0], x[0].numel()
    if norm == "inf":
        z0 = x + (torch.rand((1,) + x.shape, generator=gen, dtype=torch.float64)[0] * 2 - 1) * eps
    else:
        g = torch.randn((1,) + x.shape, generator=gen, dtype=torch.float64)[0]
        g = g / g.reshape(b, -1).norm(dim=1).reshape(b, 1, 1, 1)
        r = torch.rand((1, b), generator=gen, dtype=torch.float64)[0] ** (1.0 / d)
        z0 = x + g * r.reshape(b, 1, 1, 1) * eps
    z0 = z0.clamp(0, 1)
    marks = _hand_checkpoints(steps)
    best, halvings = torch.zeros(b, dtype=x.dtype), 0
    for i in range(b):
        xi, a0 = x[i : i + 1], fn(x[i : i + 1], i).detach()
        label = model(xi).argmax(1)

        def proj(v, xi=xi):
            delta = v - xi
            if norm == "inf":
                delta = delta.clamp(-eps, eps)
            else:
                delta = delta * min(1.0, eps / max(delta.norm().item(), 1e-30))
            return (xi + ((xi + delta).clamp(0, 1) - xi)).clamp(0, 1)

        def evaluate(z, i=i, xi=xi, a0=a0, label=label):
            z = z.detach().requires_grad_(True)
            dev = (fn(z, i) - a0).flatten(1).norm(dim=1)
            if model(z).argmax(1) == label and dev.item() > best[i]:
                best[i] = dev.item()
            (g,) = torch.autograd.grad(0.5 * dev.pow(2).sum(), z)
            return (g.sign() if norm == "inf" else g / g.norm()), dev.item()

        eta = 2 * eps
        z_prev = z = z0[i : i + 1]
        g, f = evaluate(z)
        z_max, g_max, f_max = z, g, f
        fs, f_max_mark, halved, last = [f], f_max, False, 0
        for k in range(steps):
            u = proj(z + eta * g)
            if k > 0:
                u = proj(z + 0.75 * (u - z) + 0.25 * (z - z_prev))
            z_prev, z = z, u
            g, f = evaluate(z)
            fs.append(f)
            if f > f_max:
                z_max, g_max, f_max = z, g, f
            if k + 1 in marks:
                rises = sum(fs[j + 1] > fs[j] for j in range(len(fs) - 1))
                halved = rises < 0.75 * (k + 1 - last) or (not halved and f_max <= f_max_mark)
                if halved:
                    eta, z, g, halvings = eta / 2, z_max, g_max, halvings + 1
                    fs = [f_max]
                else:
                    fs = [f]
                f_max_mark, last = f_max, k + 1
    return best, halvings


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_apgd_matches_a_hand_written_apgd(norm):
    torch.manual_seed(2)
    model = models.freeze(models.mlp((1, 4, 4), 3, hidden=(16,), activation_name="softplus"))
    model = model.double()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = 0.3 if norm == "inf" else 1.0

    target = model(x).argmax(1)

    def saliency(z, i):
        z = z if z.requires_grad else z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(z)[:, target[i]].sum(), z, create_graph=True)
        return g

    want, halvings = _hand_apgd_best(saliency, model, x, eps, norm, 20, 7)
    res = attack(model, x, eps=eps, norm=norm, steps=20, restarts=1, seed=7, start="random")
    assert res.schedule == "apgd" and res.step_size == pytest.approx(2 * eps)
    assert halvings > 0  # the restart-from-best branch was exercised
    torch.testing.assert_close(res.euclidean, want, rtol=1e-9, atol=1e-12)
    _check_guarantees(model, x, res, eps, norm)


class _Tripwire(nn.Module):
    """Quadratic logit 0; logit 1 overtakes it as soon as z moves 1e-6 away from an anchor."""

    def __init__(self, base: Quadratic, anchors: torch.Tensor) -> None:
        super().__init__()
        self.base, self.anchors = base, anchors

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.base(z)
        dist2 = (z[:, None, :] - self.anchors[None]).pow(2).sum(-1).min(dim=1).values
        return torch.stack([out[:, 0], out[:, 0] + 1e6 * (dist2 - 1e-12)], dim=1)


@pytest.mark.parametrize("method", METHODS)
def test_no_valid_point_returns_x_itself(method):
    base, _, x = _quadratic(6, 3, batch=3)
    model = _Tripwire(base, x.clone()).eval()
    res = attack(model, x, eps=0.1, norm="inf", domain=None, method=method, steps=5, n=20,
                 restarts=2, k=3)
    assert not res.found.any()
    assert torch.equal(res.x_adv, x)
    assert torch.equal(res.euclidean, torch.zeros(3, dtype=x.dtype))
    assert torch.equal(res.cosine, torch.ones(3, dtype=x.dtype))
    assert torch.equal(res.topk_intersection, torch.ones(3, dtype=x.dtype))
    torch.testing.assert_close(res.kendall, torch.ones(3, dtype=x.dtype))
    torch.testing.assert_close(res.spearman, torch.ones(3, dtype=x.dtype))
    assert res.label_kept.all()


class _HalfSpace(nn.Module):
    """Quadratic logit 0; class 1 wins on the half-space w . (z - anchor) > 0."""

    def __init__(self, base: Quadratic, anchors: torch.Tensor, w: torch.Tensor) -> None:
        super().__init__()
        self.base, self.anchors, self.w = base, anchors, w

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.base(z)
        # nearest anchor: the inputs are far apart relative to eps
        dist2 = (z[:, None, :] - self.anchors[None]).pow(2).sum(-1)
        near = self.anchors[dist2.argmin(dim=1)]
        return torch.stack([out[:, 0], out[:, 0] + 1e3 * ((z - near) @ self.w)], dim=1)


def test_label_constraint_respected_and_worst_case_still_found():
    # the l2 worst case is +-eps v (v the top singular vector): one of the two keeps the label
    base, q, x = _quadratic(8, 4, batch=4)
    x = x * 10  # anchors far apart relative to eps
    w = torch.randn(8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    model = _HalfSpace(base, x.clone(), w).eval()
    eps = 0.3
    res = attack(model, x, eps=eps, norm=2, domain=None, steps=50, step_size=eps, restarts=4)
    assert ((res.x_adv - x) @ w <= 0).all()
    _check_guarantees(model, x, res, eps, "2", domain=None)
    worst = eps * top_singular_value(q[None])[0]
    assert (res.euclidean >= 0.99 * worst).all()


# --------------------------------------------------------------------------- ReLU models


def _relu_mlp():
    torch.manual_seed(0)
    model = models.freeze(models.mlp((1, 4, 4), 3, hidden=(16,), activation_name="relu"))
    return model.double(), torch.rand(5, 1, 4, 4, dtype=torch.float64)


@pytest.mark.parametrize("method", ["pgd", "ifia_topk", "ifia_center"])
def test_relu_model_needs_a_surrogate(method):
    model, x = _relu_mlp()
    with pytest.raises(AttrboundError, match="surrogate_beta"):
        attack(model, x, eps=0.1, norm="inf", method=method)


def test_relu_model_with_surrogate_reports_surrogate_deviations():
    # compare a map only with the same map: the reported figures are those of the surrogate's
    # map A_beta (the map the practical bounds bound), the raw ones those of the real map
    model, x = _relu_mlp()
    res = attack(model, x, eps=0.3, norm="inf", attribution="input_x_gradient",
                 surrogate_beta=10.0, steps=10, restarts=3, k=4)
    assert res.surrogate_beta == 10.0 and res.map == "surrogate(beta=10)"
    assert res.found.any()
    _check_guarantees(model, x, res, 0.3, "inf")
    target = model(x).argmax(1)
    s_fn = attribution("input_x_gradient", models.smooth_surrogate(model, 10.0))
    sa, sb = s_fn(x), s_fn(res.x_adv, target=target)
    torch.testing.assert_close(res.euclidean, metrics.euclidean(sb, sa))
    torch.testing.assert_close(res.cosine, metrics.cosine(sb, sa))
    torch.testing.assert_close(res.topk_intersection, metrics.topk_intersection(sb, sa, 4))
    torch.testing.assert_close(res.kendall, metrics.kendall(sb, sa))
    torch.testing.assert_close(res.spearman, metrics.spearman(sb, sa))
    torch.testing.assert_close(res.attr_norm, sa.flatten(1).norm(dim=1))
    a_fn = attribution("input_x_gradient", model)
    a, b = a_fn(x), a_fn(res.x_adv, target=target)
    torch.testing.assert_close(res.raw_euclidean, metrics.euclidean(b, a))
    torch.testing.assert_close(res.raw_cosine, metrics.cosine(b, a))
    # the two maps differ: the raw figures are not the surrogate's
    assert not torch.allclose(res.euclidean, res.raw_euclidean)
    row = res.to_rows()[0]
    assert row["map"] == "surrogate(beta=10)"
    assert row["raw_euclidean"] == pytest.approx(res.raw_euclidean[0].item())


def _hand_pgd_best(fn, model, x, eps, steps, seed):
    """A plain l-inf PGD written out with torch.autograd: random start uniform in the cube
    (the attack's generator order), sign steps of 2.5 eps / steps on 1/2 ||fn(z) - fn(x)||^2,
    clamps to the ball and [0, 1]; returns the largest ||fn(z) - fn(x)||_2 over the iterates
    whose label under ``model`` is that of x (0 if none), [B]."""
    gen = torch.Generator().manual_seed(seed)
    a0, label = fn(x).detach(), model(x).argmax(1)
    alpha = 2.5 * eps / steps
    z = (x + (torch.rand((1,) + x.shape, generator=gen, dtype=torch.float64)[0] * 2 - 1) * eps)
    z = z.clamp(0, 1)
    best = torch.zeros(x.shape[0], dtype=x.dtype)
    for i in range(steps + 1):
        z = z.detach().requires_grad_(True)
        dev = (fn(z) - a0).flatten(1).norm(dim=1)
        valid = model(z).argmax(1) == label
        best = torch.where(valid & (dev > best), dev.detach(), best)
        if i < steps:
            (g,) = torch.autograd.grad(0.5 * dev.pow(2).sum(), z)
            delta = (z.detach() - x + alpha * g.sign()).clamp(-eps, eps)
            z = (x + ((x + delta).clamp(0, 1) - x)).clamp(0, 1)
    return best


def test_surrogate_search_scores_the_surrogate_map():
    # the best iterate is chosen on A_beta (label from the real model): the reported deviation
    # is the largest A_beta deviation over the valid iterates of a hand-written PGD
    model, x = _relu_mlp()
    surrogate = models.smooth_surrogate(model, 10.0)
    target = model(x).argmax(1)

    def saliency_beta(z):
        z = z if z.requires_grad else z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(surrogate(z).gather(1, target[:, None]).sum(), z,
                                   create_graph=True)
        return g

    res = attack(model, x, eps=0.3, norm="inf", surrogate_beta=10.0, steps=8, seed=5,
                 schedule="fixed")
    torch.testing.assert_close(res.euclidean, _hand_pgd_best(saliency_beta, model, x, 0.3, 8, 5))
    # random sampling with surrogate_beta measures A_beta too; without it, the real map
    s_fn = attribution("saliency", surrogate)
    rnd = attack(model, x, eps=0.3, norm="2", method="random", surrogate_beta=10.0, n=16)
    assert rnd.map == "surrogate(beta=10)"
    _check_guarantees(model, x, rnd, 0.3, "2")
    want = metrics.euclidean(s_fn(rnd.x_adv, target=target), s_fn(x))
    torch.testing.assert_close(rnd.euclidean, want)
    rnd = attack(model, x, eps=0.3, norm="2", method="random", n=16)
    assert rnd.map == "model" and rnd.surrogate_beta is None


def test_smooth_model_raw_equals_reported():
    model, _, x = _quadratic(6, 2, batch=3)
    for method in ("pgd", "random"):
        res = attack(model, torch.sigmoid(x), eps=0.1, norm="inf", method=method, steps=3, n=5,
                     surrogate_beta=10.0)  # beta is ignored on a smooth model
        assert res.map == "model" and res.surrogate_beta is None
        assert torch.equal(res.raw_euclidean, res.euclidean)
        assert torch.equal(res.raw_cosine, res.cosine)
        for row in res.to_rows():
            assert row["raw_euclidean"] == row["euclidean"] and row["map"] == "model"


@pytest.mark.parametrize("method", ["pgd", "random"])
def test_results_detached_with_trainable_parameters(method):
    torch.manual_seed(1)
    model = models.mlp((1, 4, 4), 3, hidden=(8,), activation_name="softplus").double().eval()
    assert all(p.requires_grad for p in model.parameters())
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    res = attack(model, x, eps=0.2, norm="inf", method=method, steps=3, n=5)
    for name in ("x_adv", "euclidean", "cosine", "raw_euclidean", "raw_cosine",
                 "topk_intersection", "kendall", "spearman", "attr_norm", "points"):
        t = getattr(res, name)
        assert t.grad_fn is None and not t.requires_grad, name
    frozen = attack(models.freeze(model), x, eps=0.2, norm="inf", method=method, steps=3, n=5)
    assert torch.equal(res.x_adv, frozen.x_adv) and torch.equal(res.euclidean, frozen.euclidean)
    relu, xr = _relu_mlp()
    for p in relu.parameters():
        p.requires_grad_(True)
    res = attack(relu, xr, eps=0.2, norm="inf", method=method, steps=3, n=5, surrogate_beta=10.0)
    assert res.raw_euclidean.grad_fn is None and res.euclidean.grad_fn is None


def test_random_runs_on_relu_model_without_surrogate():
    model, x = _relu_mlp()
    res = attack(model, x, eps=0.3, norm="2", method="random", n=50)
    _check_guarantees(model, x, res, 0.3, "2")
    assert res.runs == 5 and res.samples == 50 and res.points.shape[1] == 1


# --------------------------------------------------------------------------- API behaviour


def test_seeded_and_reproducible():
    model, q, x = _quadratic(6, 1)
    kw = dict(eps=0.2, norm="inf", domain=None, steps=4, restarts=3)
    r1, r2 = attack(model, x, seed=3, **kw), attack(model, x, seed=3, **kw)
    r3 = attack(model, x, seed=4, **kw)
    assert torch.equal(r1.x_adv, r2.x_adv) and torch.equal(r1.points, r2.points)
    assert not torch.equal(r1.points, r3.points)


def test_chunked_batches_keep_guarantees():
    model, q, x = _quadratic(6, 2, batch=7)
    x = torch.sigmoid(x)  # inside [0, 1]
    res = attack(model, x, eps=0.2, norm="2", steps=5, restarts=3, batch_size=6)
    assert res.x_adv.shape == x.shape and res.runs == 21 and res.points.shape[1] == 3
    _check_guarantees(model, x, res, 0.2, "2")
    rnd = attack(model, x, eps=0.2, norm="2", method="random", n=9, batch_size=10)
    _check_guarantees(model, x, rnd, 0.2, "2")


def test_rows_are_plain_json():
    model, _, x = _quadratic(6, 2, batch=3)
    res = attrbound.attack(model, torch.sigmoid(x), eps=0.1, norm="inf", steps=3, k=2)
    rows = res.to_rows()
    assert len(rows) == 3
    text = json.dumps(rows, allow_nan=False)
    row = json.loads(text)[0]
    for key in ("method", "objective", "attribution", "norm", "eps", "euclidean", "cosine",
                "topk_intersection", "kendall", "spearman", "label_kept", "k", "runs",
                "raw_euclidean", "raw_cosine", "map"):
        assert key in row
    assert row["method"] == "pgd" and row["norm"] == "inf" and row["k"] == 2


def test_rows_record_the_schedule():
    model, _, x = _quadratic(6, 2, batch=3)
    x = torch.sigmoid(x)
    kw = dict(eps=0.1, norm="inf", steps=3)
    assert attack(model, x, **kw).to_rows()[0]["schedule"] == "apgd"
    default = attack(model, x, eps=0.1, norm="inf")  # 3 runs of 15 steps, eta_0 = 2 eps
    assert (default.steps, default.restarts, default.runs) == (15, 3, 9)
    assert default.step_size == pytest.approx(0.2) and default.points.shape[1] == 3
    assert default.start == "spectral" and default.to_rows()[0]["start"] == "spectral"
    fixed = attack(model, x, schedule="fixed", **kw)
    assert fixed.schedule == "fixed" and fixed.to_rows()[0]["schedule"] == "fixed"
    assert fixed.start == "random"
    with pytest.raises(AttrboundError, match="start"):
        attack(model, x, start="centre", **kw)
    assert fixed.step_size == pytest.approx(2.5 * 0.1 / 3)
    assert attack(model, x, method="random", n=4, **kw).to_rows()[0]["schedule"] is None
    with pytest.raises(AttrboundError, match="schedule"):
        attack(model, x, schedule="cosine", **kw)


def test_default_k():
    assert default_k((1, 28, 28)) == 100
    assert default_k((3, 28, 28)) == 100  # pixels, not entries
    assert default_k((1, 2, 2)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(eps=0.0), "eps"),
        (dict(eps=-1.0), "eps"),
        (dict(method="fgsm"), "attack method"),
        (dict(objective="l1"), "objective"),
        (dict(norm="l1"), "norm"),
        (dict(steps=0), "steps"),
        (dict(restarts=0), "restarts"),
        (dict(k=0), "k must"),
        (dict(step_size=-0.1), "step_size"),
        (dict(method="random", n=0), "samples"),
    ],
)
def test_user_errors_raise_one_sentence(kwargs, match):
    model, _, x = _quadratic(6, 0, batch=2)
    args = dict(eps=0.1, norm="inf", domain=None) | kwargs
    with pytest.raises(AttrboundError, match=match):
        attack(model, x, **args)


def test_bad_inputs_raise():
    model, _, x = _quadratic(6, 0, batch=2)
    with pytest.raises(AttrboundError, match="outside the domain"):
        attack(model, x * 10, eps=0.1, norm="inf")
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(AttrboundError, match="NaN"):
        attack(model, bad, eps=0.1, norm="inf", domain=None)


# --------------------------------------------------------------------------- trained MNIST CNN


@pytest.fixture(scope="module")
def mnist(mnist_cnn):
    model, images, _ = mnist_cnn
    return model, images[:24]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.1), ("2", 1.0)])
def test_guarantees_on_mnist(mnist, method, norm, eps):
    model, x = mnist
    res = attack(model, x, eps=eps, norm=norm, method=method, steps=5, restarts=2, n=12)
    assert res.found.any()
    _check_guarantees(model, x, res, eps, norm)
    euclid, cos, topk = _recomputed(model, "saliency", x, res.x_adv, res.k)
    torch.testing.assert_close(res.euclidean, euclid)
    torch.testing.assert_close(res.cosine, cos)
    torch.testing.assert_close(res.topk_intersection, topk)


def test_integrated_gradients_attack_on_mnist(mnist):
    model, x = mnist
    x = x[:8]
    opts = {"steps": 8}
    res = attack(model, x, eps=0.1, norm="inf", attribution="integrated_gradients",
                 attribution_options=opts, steps=4, restarts=2)
    _check_guarantees(model, x, res, 0.1, "inf")
    a_fn = attribution("integrated_gradients", model, **opts)
    a, b = a_fn(x), a_fn(res.x_adv, target=model(x).argmax(1))
    torch.testing.assert_close(res.euclidean, metrics.euclidean(b, a))
    torch.testing.assert_close(res.kendall, metrics.kendall(b, a))
    torch.testing.assert_close(res.spearman, metrics.spearman(b, a))
    assert res.attribution_options["steps"] == 8 and res.to_rows()[0]["attribution_options"]


@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.1), ("2", 1.0)])
def test_pgd_beats_random_with_the_same_budget(mnist, norm, eps):
    model, x = mnist
    pgd = attack(model, x, eps=eps, norm=norm, steps=10, restarts=2)
    rnd = attack(model, x, eps=eps, norm=norm, method="random", n=22)  # 2 x (10 + 1) points
    either = pgd.found | rnd.found
    wins = (pgd.euclidean > rnd.euclidean)[either].float().mean()
    assert wins >= 0.8, wins
    assert pgd.euclidean.mean() > 1.5 * rnd.euclidean.mean()


def test_ifia_topk_lowers_the_topk_intersection(mnist):
    model, x = mnist
    res = attack(model, x, eps=0.3, norm="inf", method="ifia_topk", steps=20)
    rnd = attack(model, x, eps=0.3, norm="inf", method="random", n=21)
    assert res.objective == "topk_mass" and res.k == 100
    assert res.topk_intersection.mean() < 0.9, res.topk_intersection
    assert res.topk_intersection.mean() < rnd.topk_intersection.mean() - 0.05
    assert (res.topk_intersection[res.found] < 1).float().mean() >= 0.8


def test_ifia_center_moves_the_centre_of_mass(mnist):
    from attrbound.attacks import IFIACenter

    model, x = mnist
    res = attack(model, x, eps=0.3, norm="inf", method="ifia_center", steps=20)
    rnd = attack(model, x, eps=0.3, norm="inf", method="random", n=21)
    a_fn = attribution("saliency", model)
    target = model(x).argmax(1)
    c0 = IFIACenter.centre(a_fn(x))

    def shift(r):
        return (IFIACenter.centre(a_fn(r.x_adv, target=target)) - c0).norm(dim=1)

    # brute-force check of the centre on one map: sum_i m_i p_i / sum_i m_i
    m = a_fn(x[:1]).abs()[0, 0]
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    want = torch.stack([(m * rows).sum(), (m * cols).sum()]) / m.sum()
    torch.testing.assert_close(c0[0], want)
    assert shift(res).mean() > 2 * shift(rnd).mean()
    _check_guarantees(model, x, res, 0.3, "inf")


def test_cli_attack_writes_rows(mnist_cnn, tmp_path, capsys):
    import argparse

    from attrbound.cli import attack as cli

    model, _, _ = mnist_cnn
    ckpt = models.save(model, tmp_path / "m.safetensors",
                       {"arch": "cnn", "input_shape": [1, 28, 28], "channels": [8, 16],
                        "hidden": 64, "dataset": "mnist"})
    out = tmp_path / "rows.jsonl"
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--model", str(ckpt), "--n", "5", "--eps", "0.05,0.1",
                         "--method", "pgd,random", "--steps", "3", "--samples", "4",
                         "--batch-size", "3", "--out", str(out), "--no-progress"])
    assert cli.run(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * 2 * 5
    assert {r["index"] for r in rows} == set(range(5))
    assert all(r["label_kept"] for r in rows)
    table = capsys.readouterr().out
    assert "pgd" in table and "random" in table and "wrote 20 rows" in table


@pytest.mark.parametrize("method", ["pgd", "random"])
def test_per_example_baseline_through_restarts_and_passes(method):
    # integrated gradients with a baseline [B, *S], 2 restarts and passes of 2 inputs: every
    # reported deviation is that of the input's own baseline, recomputed here one by one
    torch.manual_seed(3)
    model = models.freeze(models.mlp((1, 4, 4), hidden=(8,), activation_name="softplus").double())
    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64)
    base = 0.5 * torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64)
    res = attack(model, x, eps=0.2, norm="2", method=method, attribution="integrated_gradients",
                 attribution_options={"steps": 4, "baseline": base}, restarts=2, steps=3, n=6,
                 batch_size=8)
    assert res.found.any()
    for i in range(5):
        a = attribution("integrated_gradients", model, steps=4, baseline=base[i])
        t = model(x[i : i + 1]).argmax(dim=1)
        dev = (a.attribute(res.x_adv[i : i + 1], t) - a.attribute(x[i : i + 1], t)).norm()
        assert res.euclidean[i].item() == pytest.approx(dev.item(), rel=1e-9, abs=1e-12)
