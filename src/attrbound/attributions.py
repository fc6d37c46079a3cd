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

from attrbound._validate import check_batch
from attrbound.errors import AttrboundError, check_choice

__all__ = [
    "NAMES", "NODES", "Attribution", "IntegratedGradients", "InputXGradient", "Saliency",
    "SmoothGrad", "attribution", "check_batch", "integration_nodes", "predict", "resolve_target",
]

NAMES = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad")
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


_CLASSES: dict[str, type[Attribution]] = {
    c.name: c for c in (Saliency, InputXGradient, IntegratedGradients, SmoothGrad)
}


def attribution(name: str | Attribution, model: nn.Module, **options: Any) -> Attribution:
    """The attribution method ``name`` bound to ``model``, callable as ``A(x, target=None)``.

    ``name`` is one of ``saliency``, ``input_x_gradient``, ``integrated_gradients``
    (options ``steps=32``, ``baseline=None``, ``nodes="riemann_middle"``,
    ``internal_batch_size=None``) or ``smoothgrad`` (``n=16``, ``sigma=0.1``, ``seed=0``).
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
