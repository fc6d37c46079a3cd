"""Models users bring: piecewise-linear operations found at the operation level, the smooth
surrogate built there, and the taylor bound of the surrogate's map against a dense Jacobian."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.models import FunctionalCNN, Normalized, NormMLP, ResNet, Tiny, TinyViT, ready
from helpers.references import autograd_saliency, plain_pgd
from torch import nn

import attrbound
from attrbound import models, smooth_ops
from attrbound._validate import require_smooth_or_surrogate
from attrbound.attributions import attribution
from attrbound.errors import AttrboundError
from attrbound.surrogate import SmoothSurrogate, inspect_model, is_piecewise_linear

LOG2 = math.log(2.0)


def _x(shape, b=2, seed=1, dtype=torch.float32):
    return torch.rand((b, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _relu_inner():
    return FunctionalCNN(cin=3)


ARCHS = {
    # name: (factory, example shape, ops found)
    "resnet": (lambda: ResNet(), (3, 8, 8), ("relu",)),
    "functional_cnn": (lambda: FunctionalCNN(), (1, 8, 8), ("relu", "max_pool2d")),
    "norm_mlp": (lambda: NormMLP(), (12,), ()),
    "tiny_vit": (lambda: TinyViT(), (3, 8, 8), ()),
    "normalized_smooth": (
        lambda: Normalized(TinyViT(), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), (3, 8, 8), ()),
    "normalized_relu": (
        lambda: Normalized(_relu_inner(), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), (3, 8, 8),
        ("relu", "max_pool2d")),
}


def _arch(name, dtype=torch.float32, seed=0):
    factory, shape, ops = ARCHS[name]
    torch.manual_seed(seed)
    return ready(factory(), dtype, seed), _x(shape, dtype=dtype), ops


@pytest.mark.parametrize("name", list(ARCHS))
def test_detection_of_each_architecture(name):
    model, x, ops = _arch(name)
    found = inspect_model(model, x, cache=False)
    assert found.smoothed == ops and found.unsupported == () and found.probed
    assert is_piecewise_linear(model, x) == bool(ops)
    assert models.is_piecewise_linear(model, x) == bool(ops)
    assert model.training is False  # the look restored the modes


SINGLE_OPS = {
    "F.relu": (lambda m, z: F.relu(z), "relu"),
    "torch.relu": (lambda m, z: torch.relu(z), "relu"),
    "Tensor.relu": (lambda m, z: z.relu(), "relu"),
    "Tensor.relu_": (lambda m, z: z.relu_(), "relu"),
    "nn.ReLU(inplace)": (lambda m, z: nn.ReLU(inplace=True)(z), "relu"),
    "leaky_relu": (lambda m, z: F.leaky_relu(z, 0.2), "leaky_relu"),
    "leaky_relu_": (lambda m, z: F.leaky_relu_(z, 0.2), "leaky_relu"),
    "prelu": (lambda m, z: F.prelu(z, m.weight), "prelu"),
    "rrelu": (lambda m, z: F.rrelu(z, training=False), "rrelu"),
    "hardtanh": (lambda m, z: F.hardtanh(z, -0.3, 0.4), "hardtanh"),
    "relu6": (lambda m, z: F.relu6(4 * z), "relu6"),
    "threshold": (lambda m, z: F.threshold(z, 0.1, 0.1), "threshold"),
    "hardswish": (lambda m, z: F.hardswish(4 * z), "hardswish"),
    "hardsigmoid": (lambda m, z: F.hardsigmoid(4 * z), "hardsigmoid"),
    "abs": (lambda m, z: z.abs(), "abs"),
    "torch.abs": (lambda m, z: torch.abs(z), "abs"),
    "clamp": (lambda m, z: z.clamp(-0.2, 0.3), "clamp"),
    "clip": (lambda m, z: torch.clip(z, min=0.0), "clamp"),
    "clamp_max_": (lambda m, z: z.clamp_max_(0.1), "clamp"),
    "softshrink": (lambda m, z: F.softshrink(z, 0.1), "softshrink"),
    "maximum": (lambda m, z: torch.maximum(z, z.flip(-1)), "maximum"),
    "torch.max(a, b)": (lambda m, z: torch.max(z, 0.5 * z), "maximum"),
    "min(a, b)": (lambda m, z: z.min(z.flip(-2)), "minimum"),
    "max_pool1d": (lambda m, z: F.max_pool1d(z.flatten(2), 3, 2), "max_pool1d"),
    "max_pool2d": (lambda m, z: F.max_pool2d(z, 2), "max_pool2d"),
    "nn.MaxPool2d": (lambda m, z: nn.MaxPool2d(3, 2, 1)(z), "max_pool2d"),
    "max_pool2d indices": (lambda m, z: F.max_pool2d(z, 2, return_indices=True)[0], "max_pool2d"),
    "max_pool3d": (lambda m, z: F.max_pool3d(z[:, None], 2), "max_pool3d"),
    "adaptive_max_pool2d": (lambda m, z: F.adaptive_max_pool2d(z, (3, 2)), "adaptive_max_pool2d"),
    "nn.AdaptiveMaxPool1d": (lambda m, z: nn.AdaptiveMaxPool1d(5)(z.flatten(2)),
                             "adaptive_max_pool1d"),
    "x * (x > 0)": (lambda m, z: z * (z > 0), "gt (as a mask)"),
    "where": (lambda m, z: torch.where(z < 0.0, 0.3 * z, z), "lt (as a mask)"),
    "masked_fill": (lambda m, z: z.masked_fill(~(z > 0), 0.0), "gt (as a mask)"),
}


@pytest.mark.parametrize("case", list(SINGLE_OPS))
def test_detection_of_single_ops_and_their_surrogate(case):
    op, name = SINGLE_OPS[case]
    torch.manual_seed(0)
    model = Tiny(op).eval()
    x = _x((2, 6, 6))
    assert inspect_model(model, x, cache=False).smoothed == (name,)
    s = models.smooth_surrogate(model, 10.0)
    assert isinstance(s, SmoothSurrogate)
    assert not is_piecewise_linear(s, x)
    # closer as beta grows
    gaps = [(models.smooth_surrogate(model, b)(x) - model(x)).abs().max().item()
            for b in (10.0, 100.0, 1000.0)]
    assert gaps[2] < gaps[0] and gaps[2] < 0.02


def test_operations_on_parameters_only_are_not_detected():
    torch.manual_seed(0)
    for op in (lambda m, z: z * m.weight.clamp(min=0.2)[:, None, None],
               lambda m, z: z * F.relu(m.weight - 0.2)[:, None, None],
               lambda m, z: z + (m.weight > 0.2).float()[:, None, None],
               lambda m, z: z if (z < 100).all() else -z,  # a check: control flow only
               # reductions pick among values: a nearest prototype, a global maximum
               lambda m, z: z - z.amax(dim=(2, 3), keepdim=True),
               lambda m, z: z * z.pow(2).sum(1, keepdim=True).min(dim=1).values[:, None]):
        model = Tiny(op).eval()
        assert not is_piecewise_linear(model, _x((2, 6, 6)))
        assert torch.equal(models.smooth_surrogate(model, 10.0)(_x((2, 6, 6))),
                           model(_x((2, 6, 6))))


@pytest.mark.parametrize("op", [lambda m, z: z.sort(dim=-1).values, lambda m, z: z.round(),
                                lambda m, z: z * (z == 0)])
def test_piecewise_ops_without_smooth_counterpart_are_refused(op):
    model = Tiny(op).eval()
    x = _x((2, 6, 6))
    found = inspect_model(model, x, cache=False)
    assert found.unsupported and found.piecewise_linear
    with pytest.raises(AttrboundError, match="no smooth counterpart"):
        models.smooth_surrogate(model, 10.0)(x)
    with pytest.raises(AttrboundError, match="no smooth counterpart"):
        require_smooth_or_surrogate(model, 10.0, ["taylor"], example=x)


@pytest.mark.parametrize("name", list(ARCHS))
def test_surrogate_has_no_piecewise_linear_op_and_approaches_the_model(name):
    model, x, ops = _arch(name)
    s = models.smooth_surrogate(model, 10.0)
    assert not is_piecewise_linear(s, x)
    assert not any(p.requires_grad for p in s.parameters())
    assert any(p.requires_grad for p in model.parameters())  # the user's model untouched
    if not ops:
        assert torch.equal(s(x), model(x))
        return
    gaps = [(models.smooth_surrogate(model, b)(x) - model(x)).abs().max().item()
            for b in (10.0, 100.0, 1000.0, 10000.0)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3


def test_inplace_relu_keeps_its_side_effect():
    class SideEffect(nn.Module):
        def forward(self, x):
            h = 2 * x - 1
            h.relu_()
            F.relu(h, inplace=True)
            return h.sum(dim=(1, 2, 3))[:, None]

    model, x = SideEffect(), _x((1, 4, 4), dtype=torch.float64)
    s = models.smooth_surrogate(model, 5.0)
    ref = F.softplus(F.softplus(2 * x - 1, beta=5.0), beta=5.0).sum(dim=(1, 2, 3))[:, None]
    assert torch.allclose(s(x), ref, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------
# the replacements: the documented distances, torch's shapes
# ----------------------------------------------------------------------------------------


def test_elementwise_replacements_stay_within_their_documented_distance():
    z = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    for beta in (1.0, 10.0, 100.0):
        e = LOG2 / beta
        cases = [
            (smooth_ops.relu(z, beta=beta) - F.relu(z), 0.0, e),
            (smooth_ops.clamp(z, -1.0, 2.0, beta) - z.clamp(-1.0, 2.0), -e, e),
            (smooth_ops.clamp(z, 0.5, None, beta) - z.clamp(min=0.5), 0.0, e),
            (smooth_ops.clamp(z, None, 0.5, beta) - z.clamp(max=0.5), -e, 0.0),
            (smooth_ops.relu6(z, beta=beta) - F.relu6(z), -e, e),
            (smooth_ops.leaky_relu(z, 0.1, beta=beta) - F.leaky_relu(z, 0.1), 0.0, 0.9 * e),
            (smooth_ops.hardsigmoid(z, beta=beta) - F.hardsigmoid(z), -e / 6, e / 6),
            (smooth_ops.absolute(z, beta=beta) - z.abs(), 0.0, 2 * e),
            (smooth_ops.softshrink(z, 0.5, beta=beta) - F.softshrink(z, 0.5), -e, e),
            (smooth_ops.threshold(z, 0.3, 0.3, beta=beta) - F.threshold(z, 0.3, 0.3), 0.0, e),
            (smooth_ops.maximum(beta, z, 0.5 - z) - torch.maximum(z, 0.5 - z), 0.0, e),
        ]
        for diff, lo, hi in cases:
            assert diff.min() >= lo - 1e-12 and diff.max() <= hi + 1e-12
        swish = smooth_ops.hardswish(z, beta=beta) - F.hardswish(z)
        assert (swish.abs() <= z.abs() * e / 6 + 1e-12).all()
        inside = smooth_ops.clamp(z, -1.0, 2.0, beta)
        assert inside.min() >= -1.0 - 1e-12 and inside.max() <= 2.0 + 1e-12
        jump = smooth_ops.threshold(z, 0.3, 0.0, beta=beta) - F.threshold(z, 0.3, 0.0)
        assert jump.abs().max() <= 0.28 / beta + 0.15 + 1e-12


POOLS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
    dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
]


@pytest.mark.parametrize("kw", POOLS)
def test_smooth_max_pool_has_torch_shape_and_bounded_error(kw):
    z = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    real = F.max_pool2d(z, **kw)
    k = kw["kernel_size"]
    window = k * k if isinstance(k, int) else k[0] * k[1]
    for beta in (1.0, 20.0):
        smooth = smooth_ops.max_pool(z, 2, beta=beta, **kw)
        assert smooth.shape == real.shape
        diff = smooth - real
        assert diff.min() >= -1e-12 and diff.max() <= math.log(window) / beta + 1e-12
    assert torch.allclose(smooth_ops.max_pool(z, 2, beta=1e4, **kw), real, atol=1e-3)
    z1 = torch.randn(2, 3, 13, dtype=torch.float64)
    kw1 = {k: (v[0] if isinstance(v, tuple) else v) for k, v in kw.items()}
    assert smooth_ops.max_pool(z1, 1, beta=5.0, **kw1).shape == F.max_pool1d(z1, **kw1).shape
    z3 = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64)
    assert smooth_ops.max_pool(z3, 3, beta=5.0, **kw1).shape == F.max_pool3d(z3, **kw1).shape


@pytest.mark.parametrize("size", [(3, 4), (1, 1), (5, None), (7, 11)])
def test_smooth_adaptive_max_pool_has_torch_shape_and_bounded_error(size):
    z = torch.randn(2, 3, 7, 11, dtype=torch.float64)
    real = F.adaptive_max_pool2d(z, size)
    smooth = smooth_ops.adaptive_max_pool(z, 2, size, beta=10.0)
    assert smooth.shape == real.shape
    widest = max(-(-7 // (size[0] or 7)) + 1, 1) * (-(-11 // (size[1] or 11)) + 1)
    diff = smooth - real
    assert diff.min() >= -1e-12 and diff.max() <= math.log(widest) / 10.0
    assert torch.allclose(smooth_ops.adaptive_max_pool(z, 2, size, beta=1e4), real, atol=1e-3)


# ----------------------------------------------------------------------------------------
# numerics and torch.func through the operation-level surrogate
# ----------------------------------------------------------------------------------------


def _lse_pool(z, beta):
    """An independent smooth 2x2/2 max-pool: logsumexp over reshaped windows."""
    b, c, h, w = z.shape
    win = z.reshape(b, c, h // 2, 2, w // 2, 2)
    return torch.logsumexp(beta * win, dim=(3, 5)) / beta


def _reference_pair(name, beta):
    """(surrogate, the same network written with softplus and log-sum-exp by hand)."""
    torch.manual_seed(0)
    if name == "functional_cnn":
        model = ready(FunctionalCNN(), torch.float64)
        ref = ready(FunctionalCNN(act=lambda z: F.softplus(z, beta),
                                  pool=lambda z: _lse_pool(z, beta)), torch.float64)
        ref.load_state_dict(model.state_dict())
        return models.smooth_surrogate(model, beta), ref, (1, 8, 8)
    model = ready(ResNet(), torch.float64)
    ref = ready(ResNet(), torch.float64)
    ref.load_state_dict(model.state_dict())
    for parent in ref.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, nn.Softplus(beta))
    return models.smooth_surrogate(model, beta), ref, (3, 8, 8)


@pytest.mark.parametrize("name", ["functional_cnn", "resnet"])
def test_surrogate_under_torch_func_transforms_equals_a_hand_written_smooth_network(name):
    s, ref, shape = _reference_pair(name, 7.0)
    x = _x(shape, b=3, dtype=torch.float64)
    v = _x(shape, b=3, seed=2, dtype=torch.float64)
    assert torch.allclose(s(x), ref(x), rtol=1e-12, atol=1e-12)

    def grad_of(model):
        return torch.func.grad(lambda u: model(u)[:, 1].sum())

    pairs = []
    for model in (s, ref):
        g = grad_of(model)
        value, tangent = torch.func.jvp(g, (x,), (v,))
        _, back = torch.func.vjp(g, x)
        batched = torch.func.vmap(lambda u, g=g: g(u[None])[0])(x)
        u = x.clone().requires_grad_()
        (hv,) = torch.autograd.grad((grad_of(model)(u) * v).sum(), u)
        pairs.append((value, tangent, back(v)[0], batched, hv))
    for a, b in zip(*pairs, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------
# bounds on the surrogate's map against a dense Jacobian
# ----------------------------------------------------------------------------------------


def _saliency_jacobian(model, x, target):
    a = attribution("saliency", model)
    n = x[0].numel()
    mats = []
    for i in range(x.shape[0]):

        def one(z, i=i):
            return a.attribute(z.reshape(1, *x.shape[1:]), target[i : i + 1]).reshape(n)

        mats.append(torch.autograd.functional.jacobian(one, x[i].reshape(n)))
    return torch.stack(mats)


@pytest.mark.parametrize("name", ["functional_cnn", "resnet"])
def test_taylor_l2_bound_of_the_surrogate_is_eps_times_its_top_singular_value(name):
    torch.manual_seed(0)
    model = ready(FunctionalCNN() if name == "functional_cnn" else ResNet(), torch.float64)
    shape = (1, 8, 8) if name == "functional_cnn" else (3, 8, 8)
    x = _x(shape, b=2, dtype=torch.float64)
    target = model(x).argmax(dim=1)
    s = models.smooth_surrogate(model, 10.0)
    eps = 0.05
    res = attrbound.bound(s, x, eps=eps, norm=2, method="taylor", target=target)
    sigma = torch.linalg.svdvals(_saliency_jacobian(s, x, target))[:, 0]
    assert (sigma > 0).all()
    assert torch.allclose(res.operator_norm, sigma, rtol=1e-4, atol=0)
    assert torch.allclose(res.euclidean, eps * sigma, rtol=1e-4, atol=0)
    assert res.euclidean.grad_fn is None and not res.euclidean.requires_grad
    # bound(model, surrogate_beta=...) bounds that same map (the model declares its input
    # shape, so the check needs no example from the call site)
    model.config = {"input_shape": list(shape)}
    direct = attrbound.bound(model, x, eps=eps, norm=2, method="taylor", target=target,
                             surrogate_beta=10.0)
    assert direct.surrogate_beta == 10.0
    assert torch.allclose(direct.operator_norm, sigma, rtol=1e-4, atol=0)


def test_functional_relu_model_needs_a_surrogate():
    torch.manual_seed(0)
    model, x = ready(FunctionalCNN()), _x((1, 8, 8))
    with pytest.raises(AttrboundError):
        attrbound.bound(model, x, eps=0.01, norm=2, method="taylor")
    with pytest.raises(AttrboundError) as err:
        require_smooth_or_surrogate(model, None, ["taylor"], example=x)
    msg = str(err.value)
    assert "relu, max_pool2d" in msg and "zero almost everywhere" in msg
    assert "surrogate_beta" in msg and "interval" in msg
    assert require_smooth_or_surrogate(model, 10.0, ["taylor"], example=x) is True
    assert require_smooth_or_surrogate(model, None, [], example=x) is False


# ----------------------------------------------------------------------------------------
# when the look cannot tell; the cache; exported graphs
# ----------------------------------------------------------------------------------------


def test_models_that_cannot_be_inspected_get_a_clear_error():
    model = ready(FunctionalCNN())
    with pytest.raises(AttrboundError, match="pass example="):
        is_piecewise_linear(model)  # a custom forward, no example, no config
    with pytest.raises(AttrboundError, match="could not run the model"):
        is_piecewise_linear(model, torch.rand(1, 3, 5, 5))
    model.config = {"input_shape": [1, 8, 8]}
    assert is_piecewise_linear(model)  # a zero probe of the declared shape

    class ThroughNumpy(nn.Module):
        def forward(self, x):
            return torch.from_numpy(F.relu(x).numpy().copy()).flatten(1)

    with pytest.raises(AttrboundError, match="could not follow the input"):
        is_piecewise_linear(ThroughNumpy(), torch.rand(1, 4))
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    with pytest.raises(AttrboundError, match="TorchScript"):
        is_piecewise_linear(scripted, torch.rand(1, 4))
    with pytest.raises(AttrboundError, match="example must be"):
        is_piecewise_linear(model, torch.rand(0, 1, 8, 8))


def test_inspection_cache_follows_changes_to_the_model():
    torch.manual_seed(0)
    model = ready(ResNet())
    x = _x((3, 8, 8))
    first = inspect_model(model, x)
    assert inspect_model(model, x) is first
    model.blocks[0].relu = nn.GELU()  # a module replaced
    model.stem[2] = nn.SiLU()
    assert inspect_model(model, x).smoothed == ("relu",)  # the block's final ReLU is shared
    model.blocks[1].relu = nn.GELU()
    assert inspect_model(model, x).smoothed == ()

    class Switch(nn.Module):
        def __init__(self):
            super().__init__()
            self.use_relu = False

        def forward(self, x):
            return F.relu(x) if self.use_relu else F.gelu(x)

    sw = Switch()
    assert not is_piecewise_linear(sw, x)
    sw.use_relu = True  # a plain attribute the forward reads
    assert is_piecewise_linear(sw, x)


def test_exported_graph_is_inspected_and_smoothed_like_the_eager_model():
    torch.manual_seed(0)
    model = ready(FunctionalCNN())
    x = _x((1, 8, 8))
    exported = torch.export.export(model, (x,)).module()
    assert inspect_model(exported, x, cache=False).smoothed == ("relu", "max_pool2d")
    s_eager, s_graph = models.smooth_surrogate(model, 10.0), models.smooth_surrogate(exported, 10.0)
    assert torch.allclose(s_graph(x), s_eager(x), rtol=1e-5, atol=1e-6)
    assert not is_piecewise_linear(s_graph, x)

    class Gates(nn.Module):  # prelu and threshold decompose into where(gt / le, ...)
        def __init__(self):
            super().__init__()
            self.act = nn.PReLU(3)

        def forward(self, z):
            return F.threshold(self.act(z), 0.1, -0.2).flatten(1)

    gates = Gates().eval()
    z = torch.randn(2, 3, 4, 4)
    core = torch.export.export(gates, (z,)).run_decompositions().module()
    found = inspect_model(core, z, cache=False)
    assert found.smoothed and not found.unsupported
    s = models.smooth_surrogate(core, 1000.0)
    assert not is_piecewise_linear(s, z)
    assert (s(z) - gates(z)).abs().max() < 0.2


# region is an estimate of a supremum (docs/design.md section 3.3), and here it falls short:
# the hand-written PGD reaches 0.4199 where region reports 0.4174 (input 0; 0.406-0.417 with
# 3x the ascent steps or 4 restarts and 32 random points)
_REGION_MISSES = {("normalized_smooth", "inf")}


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_bounds_of_every_architecture_against_svd_and_a_hand_written_attack(name, norm, request):
    """On each architecture users bring (float64, tiny): taylor l2 equals eps x the top singular
    value of the dense Jacobian of the bounded map (the surrogate's for piecewise-linear
    models, the model's own otherwise), and the region bound is never beaten by a plain PGD
    written in the helpers (torch.autograd, no attrbound) on that same map."""
    if (name, norm) in _REGION_MISSES:
        request.applymarker(pytest.mark.xfail(strict=True, reason="region's sup estimate is "
                                              "beaten by 0.6% on the normalised tiny ViT"))
    model, x, ops = _arch(name, torch.float64)
    target = model(x).argmax(dim=1)
    beta = 10.0 if ops else None
    bounded = models.smooth_surrogate(model, beta) if ops else model
    eps = 0.05 if norm == "2" else 0.01
    kw = dict(eps=eps, norm=norm, target=target, surrogate_beta=beta, domain=None)
    if norm == "2":
        taylor = attrbound.bound(model, x, method="taylor", **kw)
        sigma = torch.linalg.svdvals(_saliency_jacobian(bounded, x, target))[:, 0]
        assert (sigma > 0).all()
        assert torch.allclose(taylor.operator_norm, sigma, rtol=1e-4, atol=0)
    region = attrbound.bound(model, x, method="region", **kw)
    reached = plain_pgd(autograd_saliency(bounded, target), x, eps, norm, steps=20)
    assert (reached > 0).all()
    assert (region.euclidean >= reached).all(), (region.euclidean, reached)
    assert region.euclidean.grad_fn is None
