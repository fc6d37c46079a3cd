"""Differentiable attribution maps A(x) (docs/design.md section 2).

With g(z) = grad_z f_t(z), the gradient of the target logit t:

- ``saliency``:             A(x) = g(x)                       (Captum Saliency, abs=False)
- ``input_x_gradient``:     A(x) = x * g(x)
- ``integrated_gradients``: A(x) = (x - b) * sum_k w_k g(b + t_k (x - b)), baseline b
  (zeros by default), m = ``steps`` nodes t_k with weights w_k: ``riemann_middle``
  (t_k = (k + 1/2)/m, w_k = 1/m) or ``gausslegendre`` (Gauss-Legendre on [0, 1]); the same
  nodes as Captum's IntegratedGradients with ``method=`` of the same name.
- ``smoothgrad``:           A(x) = (1/n) sum_k g(x + sigma xi_k), xi_k ~ N(0, I) drawn once
  from ``seed`` (the same noise for every example), so A is a fixed smooth function of x.
- ``smoothed``:             A(x) = (1/n) sum_k u(x + eta_k), u = a / ||a||_2 the normalised map
  of a base attribution a, eta_k fixed noise (Gaussian or uniform in an l2 ball): the
  Monte-Carlo estimate of the smoothed map h that ``attrbound.bound(method="smoothed")``
  certifies (docs/design.md section 10); differentiated by the smoothing identities, so
  its derivative needs no second derivative of the model (ReLU models included).

Every map is computed with ``torch.func.grad``, so it can be differentiated again: inside
``torch.func.jvp`` / ``vjp`` / ``vmap`` and by ``torch.autograd.grad(create_graph=True)``.
Inputs are batched over the first dimension, x: [B, *S] -> A(x): [B, *S]; each example's map
depends on that example only (models must be in eval mode). Tensors follow x's device/dtype.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attrbound import smoothing as smoothing_math
from attrbound._validate import check_batch
from attrbound.errors import AttrboundError, check_choice

__all__ = [
    "NAMES", "NODES", "Attribution", "IntegratedGradients", "InputXGradient", "Saliency",
    "SMOOTHED_BASES", "SmoothGrad", "Smoothed", "attribution", "check_batch",
    "integration_nodes", "predict", "resolve_target", "unit_map",
]

NAMES = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "smoothed")
#: the base attributions a smoothed map can normalise and average
SMOOTHED_BASES = ("saliency", "input_x_gradient", "integrated_gradients")
NODES = ("riemann_middle", "gausslegendre")


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Predicted class argmax_k f_k(x) for a batch x: [B, *S] -> int64 [B] (no graph)."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


def resolve_target(model: nn.Module, x: Tensor, target: int | Tensor | None) -> Tensor:
    """The class to explain per example: int64 [B] on x's device.

    ``None`` means the predicted class; an int applies to every example; a tensor must
    have B entries. Classes out of range raise AttrboundError.
    """
    b = x.shape[0]
    if target is None:
        return predict(model, x)
    t = torch.as_tensor(target, device=x.device)
    if t.is_floating_point():
        raise AttrboundError("target must be an integer class index (or a tensor of them).")
    t = t.to(torch.long)
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise AttrboundError(f"target must be an int or have {b} entries, got {tuple(t.shape)}.")
    with torch.no_grad():
        k = model(x[:1]).shape[1]
    if (t < 0).any() or (t >= k).any():
        raise AttrboundError(f"target classes must lie in [0, {k - 1}].")
    return t


class Attribution:
    """Base class: an attribution method bound to a model.

    ``A(x, target=None)`` validates its inputs and returns the map [B, *S];
    ``A.attribute(x, target)`` is the raw differentiable computation (target: int64 [B],
    no checks), the form to call inside torch.func transforms.
    """

    name: str = ""
    #: whether differentiating the map differentiates the model's gradient (so that a
    #: piecewise-linear model needs its smooth surrogate); False for :class:`Smoothed`
    needs_model_derivative: bool = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def options(self) -> dict[str, Any]:
        """The method's options, as plain values (for reports and rows)."""
        return {}

    @property
    def evaluations(self) -> int:
        """Model evaluations (gradient points) one map of one example needs: 1 here;
        integrated gradients: its steps; smoothgrad: its samples."""
        return 1

    def with_model(self, model: nn.Module) -> Attribution:
        """The same method and options applied to another model (e.g. a smooth surrogate)."""
        other = copy.copy(self)
        other.model = model
        return other

    def for_rows(self, rows: Tensor, shape: tuple[int, ...]) -> Attribution:
        """The same map for the examples x[rows] (int64 [k]) of a batch x shaped ``shape``
        [B, *S]: itself, unless it holds per-example state (integrated gradients' baseline
        shaped [B, *S])."""
        return self

    def gradient(self, z: Tensor, target: Tensor) -> Tensor:
        """g(z) = d f_t(z) / dz for a batch z: [N, *S] and targets int64 [N]."""

        def target_logit_sum(u: Tensor) -> Tensor:
            return self.model(u).gather(1, target[:, None]).sum()

        return torch.func.grad(target_logit_sum)(z)

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """A(x) for x: [B, *S], target: int64 [B] -> [B, *S] (differentiable in x)."""
        raise NotImplementedError

    def __call__(self, x: Tensor, target: int | Tensor | None = None) -> Tensor:
        check_batch(x, self.model)
        return self.attribute(x, resolve_target(self.model, x, target))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class Saliency(Attribution):
    """A(x) = grad_x f_t(x), signed (Captum's Saliency with abs=False)."""

    name = "saliency"

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return self.gradient(x, target)


class InputXGradient(Attribution):
    """A(x) = x * grad_x f_t(x) (elementwise)."""

    name = "input_x_gradient"

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return x * self.gradient(x, target)


def integration_nodes(steps: int, nodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes t_k in (0, 1) and weights w_k (sum 1) of an m-point rule on [0, 1]."""
    check_choice("integration nodes", nodes, NODES)
    if nodes == "riemann_middle":
        t = (np.arange(steps, dtype=np.float64) + 0.5) / steps
        return t, np.full(steps, 1.0 / steps)
    x, w = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (x + 1.0), 0.5 * w


class IntegratedGradients(Attribution):
    """A(x) = (x - b) * sum_k w_k g(b + t_k (x - b)) (Sundararajan et al. 2017).

    Options: ``steps`` m (default 32), ``baseline`` b (None = zeros; a float, or a tensor
    shaped like one example [*S] or like the batch [B, *S]), ``nodes`` "riemann_middle"
    (default) or "gausslegendre", ``internal_batch_size`` (default None = all B*m path points
    in one forward pass; otherwise at most that many points per pass, bounding memory).
    """

    name = "integrated_gradients"

    def __init__(
        self,
        model: nn.Module,
        steps: int = 32,
        baseline: Tensor | float | None = None,
        nodes: str = "riemann_middle",
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(model)
        if int(steps) < 1:
            raise AttrboundError(f"integrated_gradients needs steps >= 1, got {steps}.")
        if internal_batch_size is not None and int(internal_batch_size) < 1:
            raise AttrboundError(f"internal_batch_size must be >= 1, got {internal_batch_size}.")
        self.steps = int(steps)
        self.nodes = nodes
        self.t, self.w = integration_nodes(self.steps, nodes)
        self.baseline = baseline
        self.internal_batch_size = internal_batch_size

    @property
    def evaluations(self) -> int:
        return self.steps

    def options(self) -> dict[str, Any]:
        plain = self.baseline is None or isinstance(self.baseline, float)
        base = self.baseline if plain else "tensor"
        return {
            "steps": self.steps,
            "nodes": self.nodes,
            "baseline": base,
            "internal_batch_size": self.internal_batch_size,
        }

    def with_steps(self, steps: int) -> IntegratedGradients:
        """The same map with ``steps`` nodes of the same rule (baseline and options kept):
        a coarser (or finer) quadrature of the same path integral."""
        if int(steps) < 1:
            raise AttrboundError(f"integrated_gradients needs steps >= 1, got {steps}.")
        other = copy.copy(self)
        other.steps = int(steps)
        other.t, other.w = integration_nodes(other.steps, self.nodes)
        return other

    def for_rows(self, rows: Tensor, shape: tuple[int, ...]) -> Attribution:
        """A baseline shaped like the batch, [B, *S] = ``shape`` with B > 1, is cut to
        baseline[rows]; any other baseline serves every example as it is."""
        b = self.baseline
        if not (isinstance(b, Tensor) and b.dim() == len(shape) and b.shape[0] == shape[0] > 1):
            return self
        other = copy.copy(self)
        other.baseline = b[rows.to(b.device)]
        return other

    def baseline_for(self, x: Tensor) -> Tensor:
        """The baseline b broadcast to x's shape, device and dtype."""
        if self.baseline is None:
            return torch.zeros_like(x)
        b = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        try:
            return b.expand_as(x) if b.dim() != x.dim() - 1 else b.unsqueeze(0).expand_as(x)
        except RuntimeError:
            raise AttrboundError(
                f"baseline shape {tuple(b.shape)} does not fit inputs {tuple(x.shape)}."
            ) from None

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        b = self.baseline_for(x)
        diff = x - b
        batch = x.shape[0]
        t = torch.as_tensor(self.t, dtype=x.dtype, device=x.device)
        w = torch.as_tensor(self.w, dtype=x.dtype, device=x.device)
        chunk = self.steps
        if self.internal_batch_size is not None:
            chunk = max(1, min(self.steps, self.internal_batch_size // batch))
        shape = (-1,) + (1,) * x.dim()  # node weights broadcast over [m, B, *S]
        total = torch.zeros_like(x)
        for start in range(0, self.steps, chunk):
            tk, wk = t[start : start + chunk], w[start : start + chunk]
            m = tk.shape[0]
            # path points [m, B, *S] flattened to [m*B, *S]; targets repeat per node
            z = b.unsqueeze(0) + tk.view(shape) * diff.unsqueeze(0)
            g = self.gradient(z.reshape((m * batch,) + x.shape[1:]), target.repeat(m))
            g = g.reshape((m,) + x.shape)
            total = total + (wk.view(shape) * g).sum(dim=0)
        return diff * total


class SmoothGrad(Attribution):
    """A(x) = (1/n) sum_k g(x + sigma xi_k) with fixed noise xi_k ~ N(0, I) (Smilkov et al. 2017).

    Options: ``n`` samples (default 16), ``sigma`` (default 0.1, in input units), ``seed``
    (default 0), ``input_shape`` [*S] to draw the noise [n, *S] at construction (default:
    taken from ``model.config`` when present, else drawn on the first call, deterministically
    from the seed). The same noise serves every example and every call.
    """

    name = "smoothgrad"

    def __init__(
        self,
        model: nn.Module,
        n: int = 16,
        sigma: float = 0.1,
        seed: int = 0,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(model)
        if int(n) < 1:
            raise AttrboundError(f"smoothgrad needs n >= 1, got {n}.")
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise AttrboundError(f"smoothgrad needs a finite sigma >= 0, got {sigma}.")
        self.n, self.sigma, self.seed = int(n), float(sigma), int(seed)
        self._noise: Tensor | None = None
        config = getattr(model, "config", None)
        if input_shape is None and isinstance(config, dict) and "input_shape" in config:
            input_shape = tuple(config["input_shape"])
        if input_shape is not None:
            self._noise = self._draw(tuple(int(s) for s in input_shape))

    @property
    def evaluations(self) -> int:
        return self.n

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "sigma": self.sigma, "seed": self.seed}

    def _draw(self, shape: tuple[int, ...]) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randn((self.n,) + shape, generator=gen, dtype=torch.float64)

    def noise(self, shape: tuple[int, ...]) -> Tensor:
        """The fixed noise xi: float64 [n, *shape]."""
        if self._noise is None or tuple(self._noise.shape[1:]) != shape:
            self._noise = self._draw(shape)
        return self._noise

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        xi = self.noise(tuple(x.shape[1:])).to(device=x.device, dtype=x.dtype)
        z = x.unsqueeze(0) + self.sigma * xi.unsqueeze(1)  # [n, B, *S]
        g = self.gradient(z.reshape((-1,) + x.shape[1:]), target.repeat(self.n))
        return g.reshape((self.n,) + x.shape).mean(dim=0)


def unit_map(attr: Attribution, z: Tensor, target: Tensor,
             dtype: torch.dtype | None = None) -> Tensor:
    """u(z) = a(z) / ||a(z)||_2 per example (0 where a(z) = 0), for z [N, *S] -> [N, *S];
    a is computed in z's dtype and normalised in ``dtype`` (default: z's)."""
    a = attr.attribute(z, target)
    a = a if dtype is None else a.to(dtype)
    norm = a.reshape(a.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * (a.dim() - 1))
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    return torch.where(norm > 0, a / safe, torch.zeros_like(a))


def _mean_units(attr: Attribution, x: Tensor, target: Tensor, offsets: Tensor,
                weights: Tensor | None, chunk: int, cotangent: Tensor | None) -> Tensor:
    """Without weights: (1/n) sum_k u(x + c_k) [B, *S]. With weights w [n, *S] and the
    cotangent g [B, *S]: (1/n) sum_k <g, u(x + c_k)> w_k [B, *S]. c: offsets [n, *S]."""
    b, n = x.shape[0], offsets.shape[0]
    total = torch.zeros_like(x)
    for lo in range(0, n, chunk):
        c = offsets[lo : lo + chunk]
        k = c.shape[0]
        z = (x.unsqueeze(0) + c.unsqueeze(1)).reshape((k * b,) + x.shape[1:])
        u = unit_map(attr, z, target.repeat(k)).reshape((k,) + x.shape)
        if weights is None:
            total = total + u.sum(dim=0)
        else:
            assert cotangent is not None
            dots = (u * cotangent.unsqueeze(0)).reshape(k, b, -1).sum(dim=2)  # [k, B]
            w = weights[lo : lo + chunk].reshape(k, 1, -1)
            total = total + (dots.unsqueeze(2) * w).sum(dim=0).reshape(x.shape)
    return total / n


class _SmoothedMap(torch.autograd.Function):
    """Forward: the fixed-noise mean of u. Backward (vector-Jacobian product with g): the
    Monte-Carlo form of the smoothing identities, with the same fixed noise,

        gaussian: grad_x <g, h(x)> = E[<g, u(x + sigma xi)> xi] / sigma
        uniform:  grad_x <g, h(x)> = (d / r) E_s[<g, u(x + r s)> s],  s uniform on the sphere

    (Stein's identity; the divergence theorem on B(x, r)), which differentiate the smoothed
    map itself and need only u, never a derivative of u."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, target: Tensor, attr: Smoothed) -> Tensor:  # type: ignore[override]
        offsets, _, _ = attr.fixed_noise(tuple(x.shape[1:]), x)
        return _mean_units(attr.base, x, target, offsets, None, attr.chunk(x.shape[0]), None)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, target, attr = inputs
        ctx.save_for_backward(x, target)
        ctx.attr = attr

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        x, target = ctx.saved_tensors
        attr: Smoothed = ctx.attr
        _, points, weights = attr.fixed_noise(tuple(x.shape[1:]), x)
        g = _mean_units(attr.base, x, target, points, weights, attr.chunk(x.shape[0]), grad)
        return g, None, None


class Smoothed(Attribution):
    """A(x) = (1/n) sum_k u(x + eta_k), u = a / ||a||_2, with FIXED noise eta_k (drawn once).

    The Monte-Carlo estimate, with n = ``samples`` fixed draws, of the smoothed attribution
    h(x) = E[u(x + eta)] that ``attrbound.bound(..., method="smoothed")`` certifies
    (docs/design.md section 10): an attack on this map attacks (an estimate of) that h.
    Its derivative (autograd and ``torch.func.grad``; not ``torch.func.jvp``) is the
    smoothing identities' estimate with the same noise (:class:`_SmoothedMap`), so a ReLU
    model's map, whose own derivative is zero almost everywhere, can still be attacked.

    Options: ``base`` a in :data:`SMOOTHED_BASES` (default "saliency") with its options in
    ``base_options`` (e.g. {"steps": 16} for integrated gradients); ``smoothing``
    "gaussian" (eta ~ N(0, sigma^2 I), the default) or "uniform" (eta uniform in the l2 ball
    of radius sigma); ``sigma`` (default 0.25, input units); ``samples`` n (default 32);
    ``seed`` (default 0): xi ~ N(0, I) [n, *S] (and for uniform the radii) are drawn in
    float64 from ``torch.Generator().manual_seed(seed)`` on the CPU, the same for every
    example and call, then moved to x's device and dtype; ``internal_batch_size`` (default
    None: all points of a batch in one pass; otherwise at most that many points x + eta_k per
    pass, at least one sample of the batch). The backward pass of the uniform map evaluates u
    at the sphere points x + sigma s_k, n more evaluations.
    """

    name = "smoothed"
    needs_model_derivative = False

    def __init__(
        self,
        model: nn.Module,
        base: str = "saliency",
        smoothing: str = "gaussian",
        sigma: float = 0.25,
        samples: int = 32,
        seed: int = 0,
        base_options: dict[str, Any] | None = None,
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(model)
        key = str(base).lower().replace("-", "_")
        check_choice("base attribution of smoothed", key, SMOOTHED_BASES)
        self.smoothing = check_choice("smoothing", str(smoothing).lower(),
                                      smoothing_math.SMOOTHINGS)
        self.sigma = smoothing_math.check_sigma(sigma)
        self.samples = smoothing_math.check_samples(samples)
        if internal_batch_size is not None and int(internal_batch_size) < 1:
            raise AttrboundError(f"internal_batch_size must be >= 1, got {internal_batch_size}.")
        self.seed, self.internal_batch_size = int(seed), internal_batch_size
        self.base = attribution(key, model, **(base_options or {}))
        self._noise: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}

    @property
    def evaluations(self) -> int:
        return self.samples * self.base.evaluations

    def options(self) -> dict[str, Any]:
        return {"base": self.base.name, "smoothing": self.smoothing, "sigma": self.sigma,
                "samples": self.samples, "seed": self.seed,
                "base_options": self.base.options(),
                "internal_batch_size": self.internal_batch_size}

    def with_model(self, model: nn.Module) -> Attribution:
        other = copy.copy(self)
        other.model = model
        other.base = self.base.with_model(model)
        return other

    def for_rows(self, rows: Tensor, shape: tuple[int, ...]) -> Attribution:
        base = self.base.for_rows(rows, shape)
        if base is self.base:
            return self
        other = copy.copy(self)
        other.base = base
        return other

    def chunk(self, batch: int) -> int:
        """Samples per pass for a batch of ``batch`` examples."""
        if self.internal_batch_size is None:
            return self.samples
        return max(1, min(self.samples, self.internal_batch_size // batch))

    def fixed_noise(self, shape: tuple[int, ...], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(offsets eta [n, *S], backward points [n, *S], backward weights [n, *S]) in
        like's device and dtype: gaussian (sigma xi, sigma xi, xi / sigma), uniform
        (eta, sigma s, (d / sigma) s)."""
        if shape not in self._noise:
            gen = torch.Generator().manual_seed(self.seed)
            self._noise[shape] = smoothing_math.draw_noise(
                self.smoothing, self.sigma, self.samples, shape, gen, "cpu", torch.float64)
        eta, s = self._noise[shape]
        if self.smoothing == "gaussian":
            points, weights = eta, eta / self.sigma**2
        else:
            points, weights = self.sigma * s, (math.prod(shape) / self.sigma) * s
        return tuple(t.to(device=like.device, dtype=like.dtype)  # type: ignore[return-value]
                     for t in (eta, points, weights))

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return _SmoothedMap.apply(x, target, self)


_CLASSES: dict[str, type[Attribution]] = {
    c.name: c for c in (Saliency, InputXGradient, IntegratedGradients, SmoothGrad, Smoothed)
}


def attribution(name: str | Attribution, model: nn.Module, **options: Any) -> Attribution:
    """The attribution method ``name`` bound to ``model``, callable as ``A(x, target=None)``.

    ``name`` is one of ``saliency``, ``input_x_gradient``, ``integrated_gradients``
    (options ``steps=32``, ``baseline=None``, ``nodes="riemann_middle"``,
    ``internal_batch_size=None``), ``smoothgrad`` (``n=16``, ``sigma=0.1``, ``seed=0``) or
    ``smoothed`` (``base="saliency"``, ``smoothing="gaussian"``, ``sigma=0.25``,
    ``samples=32``, ``seed=0``, ``base_options=None``; :class:`Smoothed`).
    An existing :class:`Attribution` is rebound to ``model`` (options must then be empty).

    Example::

        A = attrbound.attribution("integrated_gradients", model, steps=64)
        maps = A(images)            # [B, C, H, W], explaining the predicted classes
    """
    if isinstance(name, Attribution):
        if options:
            raise AttrboundError("pass options either to the Attribution object or here, not both.")
        return name if name.model is model else name.with_model(model)
    key = str(name).lower().replace("-", "_")
    check_choice("attribution method", key, NAMES)
    try:
        return _CLASSES[key](model, **options)
    except TypeError as exc:
        raise AttrboundError(f"bad option for {key}: {exc}.") from None
