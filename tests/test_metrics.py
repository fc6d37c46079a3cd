"""Metrics against independent references: numpy, scipy.stats, brute-force set intersection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from attrbound import metrics
from attrbound.errors import AttrboundError


def _maps(seed: int, shape=(6, 2, 5, 7), ties: bool = False):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many tied pairs
        a = rng.integers(-3, 4, size=shape).astype(np.float64)
        b = rng.integers(-3, 4, size=shape).astype(np.float64)
    else:
        a = rng.normal(size=shape)
        b = a + 0.7 * rng.normal(size=shape)
    return a, b


def test_euclidean_and_cosine_match_numpy():
    a, b = _maps(0)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
    want_e = np.linalg.norm(fa - fb, axis=1)
    want_c = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
    np.testing.assert_allclose(metrics.euclidean(ta, tb).numpy(), want_e, rtol=1e-12)
    np.testing.assert_allclose(metrics.cosine(ta, tb).numpy(), want_c, rtol=1e-12)


def test_cosine_zero_map_convention():
    z = torch.zeros(2, 4)
    one = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    assert metrics.cosine(z, z).tolist() == [1.0, 1.0]
    assert metrics.cosine(one, z).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_kendall_matches_scipy_tau_b(seed, ties):
    a, b = _maps(seed, ties=ties)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    got = metrics.kendall(ta, tb).numpy()
    want = [stats.kendalltau(u.ravel(), v.ravel()).statistic for u, v in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # and against the definition: all pairs, sign(a_i - a_j) sign(b_i - b_j)
    fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
    sa = np.sign(fa[:, :, None] - fa[:, None, :])
    sb = np.sign(fb[:, :, None] - fb[:, None, :])
    iu = np.triu_indices(fa.shape[1], 1)
    num = (sa * sb)[:, iu[0], iu[1]].sum(1)
    n1 = (sa[:, iu[0], iu[1]] != 0).sum(1)
    n2 = (sb[:, iu[0], iu[1]] != 0).sum(1)
    np.testing.assert_allclose(got, num / np.sqrt(n1 * n2), rtol=1e-12, atol=1e-14)


def test_kendall_float32_784_features():
    a, b = _maps(7, shape=(3, 1, 28, 28))
    want = [stats.kendalltau(u.ravel(), v.ravel()).statistic for u, v in zip(a, b, strict=True)]
    got = metrics.kendall(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(seed, ties):
    a, b = _maps(seed, ties=ties)
    got = metrics.spearman(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = [stats.spearmanr(u.ravel(), v.ravel()).statistic for u, v in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_rank_metrics_of_constant_map_are_nan():
    a = torch.ones(1, 5)
    b = torch.arange(5.0)[None]
    assert torch.isnan(metrics.kendall(a, b)).all()
    assert torch.isnan(metrics.spearman(a, b)).all()


def _brute_topk(u: np.ndarray, v: np.ndarray, k: int) -> float:
    su = set(np.argsort(-np.abs(u))[:k].tolist())
    sv = set(np.argsort(-np.abs(v))[:k].tolist())
    return len(su & sv) / k


@pytest.mark.parametrize("k", [1, 5, 17, 70])
def test_topk_intersection_matches_brute_force(k):
    a, b = _maps(3)
    got = metrics.topk_intersection(torch.from_numpy(a), torch.from_numpy(b), k).numpy()
    want = [_brute_topk(u.ravel(), v.ravel(), k) for u, v in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want)
    # channel convention: |A| summed over dim 1 gives one feature per pixel
    got_px = metrics.topk_intersection(
        torch.from_numpy(a), torch.from_numpy(b), min(k, 35), reduce_channels=True
    ).numpy()
    pa, pb = np.abs(a).sum(1), np.abs(b).sum(1)
    want_px = [_brute_topk(u.ravel(), v.ravel(), min(k, 35)) for u, v in zip(pa, pb, strict=True)]
    np.testing.assert_allclose(got_px, want_px)


def test_identical_maps_score_perfectly():
    a, _ = _maps(4)
    t = torch.from_numpy(a)
    assert torch.equal(metrics.euclidean(t, t), torch.zeros(len(a), dtype=t.dtype))
    assert torch.allclose(metrics.cosine(t, t), torch.ones(len(a), dtype=t.dtype))
    assert torch.equal(metrics.topk_intersection(t, t, 10), torch.ones(len(a), dtype=t.dtype))
    assert torch.allclose(metrics.kendall(t, t), torch.ones(len(a), dtype=t.dtype))
    assert torch.allclose(metrics.spearman(t, t), torch.ones(len(a), dtype=t.dtype))


def test_bad_inputs_raise():
    with pytest.raises(AttrboundError, match="same shape"):
        metrics.euclidean(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(AttrboundError, match="k must lie"):
        metrics.topk_intersection(torch.zeros(2, 3), torch.zeros(2, 3), 4)
