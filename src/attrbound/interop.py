"""Bridges to the attribution libraries people already use: Captum and Quantus.

Neither library is imported here unless its objects are passed in, so both stay optional
(they are in the ``test`` extra).

- :func:`from_captum` builds attrbound's differentiable :class:`~attrbound.attributions.Attribution`
  from a Captum attribution object or class and its arguments (Saliency, InputXGradient,
  IntegratedGradients, NoiseTunnel with ``nt_type="smoothgrad"``). Captum's own attributions
  cannot be differentiated a second time, which bounds and attacks need.
- :class:`WorstCaseSensitivity` is a metric with Quantus' calling convention
  ``metric(model, x_batch, y_batch, a_batch=None, ...) -> per-input scores``, giving either
  attrbound's region bound or its best attack, so a worst-case figure can stand beside Quantus'
  ``MaxSensitivity`` (a random-sampling estimate, the weakest of the three).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attrbound.attacks import attack
from attrbound.attributions import (
    Attribution,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)
from attrbound.bounds import bound
from attrbound.errors import AttrboundError, check_choice

#: Captum's IntegratedGradients ``method`` names -> attrbound's quadrature nodes
_CAPTUM_NODES = {"riemann_middle": "riemann_middle", "gausslegendre": "gausslegendre"}


def _captum_model(obj: Any, model: nn.Module | None) -> nn.Module:
    forward = getattr(obj, "forward_func", None)
    found = model if model is not None else forward
    if not isinstance(found, nn.Module):
        raise AttrboundError(
            "from_captum needs the model: pass a Captum attribution built on an nn.Module, "
            "or model=..."
        )
    return found


def from_captum(
    captum_method: Any, /, model: nn.Module | None = None, **kwargs: Any
) -> Attribution:
    """attrbound's differentiable attribution equal to a Captum attribution.

    ``captum_method`` is a Captum attribution object (``Saliency(model)``) or class (``Saliency``,
    then ``model=`` is needed); ``kwargs`` are the arguments one would give Captum's
    ``attribute`` (``n_steps``, ``method``, ``baselines`` for IntegratedGradients;
    ``nt_type``, ``nt_samples``, ``stdevs`` for NoiseTunnel). Mapping:

    - ``Saliency`` with ``abs=False`` (required: Captum's default abs=True takes |gradient|,
      which is not differentiable at 0)
      -> ``saliency``, A(x) = grad_x f_t(x);
    - ``InputXGradient`` -> ``input_x_gradient``, A(x) = x * grad_x f_t(x);
    - ``IntegratedGradients(n_steps=50, method="gausslegendre", baselines=None)``
      -> ``integrated_gradients`` with the same steps, nodes and baseline (Captum's defaults);
    - ``NoiseTunnel(Saliency)`` with ``abs=False``, ``nt_type="smoothgrad"``, ``nt_samples=5``,
      ``stdevs=1.0`` -> ``smoothgrad`` with n = nt_samples, sigma = stdevs and noise drawn
      once from ``seed`` (default 0): the same estimator, whose noise is fixed so that the map
      is a deterministic, differentiable function of x (Captum redraws it at every call).

    Values equal Captum's for the deterministic methods (tested); for NoiseTunnel they agree
    for equal noise. Anything else raises AttrboundError naming what is supported.
    """
    cls = captum_method if isinstance(captum_method, type) else type(captum_method)
    name = cls.__name__
    obj = None if isinstance(captum_method, type) else captum_method
    net = _captum_model(obj, model) if obj is not None else model
    if net is None:
        raise AttrboundError(f"from_captum({name}) needs model=... when given a class.")
    if name == "Saliency":
        _signed_saliency(kwargs)
        _no_more(name, kwargs)
        return Saliency(net)
    if name == "InputXGradient":
        _no_more(name, kwargs)
        return InputXGradient(net)
    if name == "IntegratedGradients":
        nodes = check_choice("Captum IntegratedGradients method",
                             kwargs.pop("method", "gausslegendre"), tuple(_CAPTUM_NODES))
        attr = IntegratedGradients(
            net, steps=int(kwargs.pop("n_steps", 50)), baseline=kwargs.pop("baselines", None),
            nodes=_CAPTUM_NODES[nodes],
            internal_batch_size=kwargs.pop("internal_batch_size", None),
        )
        _no_more(name, kwargs)
        return attr
    if name == "NoiseTunnel":
        inner = getattr(obj, "attribution_method", None)
        nt_type = kwargs.pop("nt_type", "smoothgrad")
        if type(inner).__name__ != "Saliency" or nt_type != "smoothgrad":
            raise AttrboundError(
                "from_captum supports NoiseTunnel(Saliency(model)) with nt_type='smoothgrad' only."
            )
        _signed_saliency(kwargs)
        stdevs = kwargs.pop("stdevs", 1.0)
        if isinstance(stdevs, Sequence):
            raise AttrboundError("NoiseTunnel stdevs must be one number (one input tensor).")
        attr = SmoothGrad(_captum_model(inner, model), n=int(kwargs.pop("nt_samples", 5)),
                          sigma=float(stdevs), seed=int(kwargs.pop("seed", 0)))
        _no_more(name, kwargs)
        return attr
    raise AttrboundError(
        f"from_captum does not know Captum's {name}; supported: Saliency, InputXGradient, "
        "IntegratedGradients, NoiseTunnel(Saliency, nt_type='smoothgrad')."
    )


def _signed_saliency(kwargs: dict[str, Any]) -> None:
    if kwargs.pop("abs", True):  # Captum's default is abs=True
        raise AttrboundError(
            "Captum's Saliency takes |gradient| unless abs=False, and the absolute value is not "
            "differentiable at 0; pass abs=False (attrbound's saliency is the signed gradient)."
        )


def _no_more(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise AttrboundError(f"from_captum({name}) got arguments it cannot map: {sorted(kwargs)}.")


class WorstCaseSensitivity:
    """A Quantus-style robustness metric: attrbound's worst-case deviation per input.

    ``metric(model, x_batch, y_batch, a_batch=None, explain_func=None, device=None, **_)``
    returns a list of floats, one per input, like Quantus' metrics (numpy or torch inputs
    [B, *S]; labels [B] are the classes explained, as Quantus' ``y_batch``):

    - ``score="bound"`` (default): the region bound on max ||A(x+delta) - A(x)||_2 over the
      ball of radius ``eps`` in ``norm`` (intersected with ``domain``); an ESTIMATE of a
      supremum (docs/design.md section 3.3), not a certificate;
    - ``score="attack"``: the largest deviation reached by attrbound's attacks (``attacks``,
      default pgd and ifia_topk), a lower bound on the same maximum.

    ``relative=True`` (default) divides by ||A(x)||_2, the normalisation of Quantus'
    ``MaxSensitivity`` (whose random sampling gives a third, weaker lower bound).
    ``attribution`` is an attrbound method name with ``attribution_options``, or leave it None
    and pass Captum's class via :func:`from_captum` first; ``explain_func`` and ``a_batch``
    are accepted for compatibility and not used (attrbound recomputes the differentiable map).
    ReLU models need ``surrogate_beta`` (then the map bounded and attacked is the surrogate's).
    """

    def __init__(
        self,
        *,
        eps: float,
        norm: str | float = "inf",
        attribution: str | Attribution = "saliency",
        attribution_options: dict[str, Any] | None = None,
        score: str = "bound",
        relative: bool = True,
        attacks: Sequence[str] = ("pgd", "ifia_topk"),
        surrogate_beta: float | None = None,
        domain: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self.eps, self.norm, self.attribution = eps, norm, attribution
        self.attribution_options = dict(attribution_options or {})
        self.score = check_choice("score", score, ("bound", "attack"))
        self.relative, self.attacks = bool(relative), tuple(attacks)
        self.surrogate_beta, self.domain, self.seed = surrogate_beta, domain, int(seed)

    def __call__(
        self,
        model: nn.Module,
        x_batch: np.ndarray | Tensor,
        y_batch: np.ndarray | Tensor,
        a_batch: Any = None,
        explain_func: Any = None,
        device: str | torch.device | None = None,
        **_: Any,
    ) -> list[float]:
        dtype = next(iter(model.parameters()), torch.empty(0)).dtype
        dev = device or next(iter(model.parameters()), torch.empty(0)).device
        x = torch.as_tensor(np.asarray(x_batch) if not isinstance(x_batch, Tensor) else x_batch)
        x = x.to(device=dev, dtype=dtype if dtype.is_floating_point else torch.float32)
        y = torch.as_tensor(np.asarray(y_batch) if not isinstance(y_batch, Tensor) else y_batch)
        y = y.to(device=x.device, dtype=torch.long).reshape(-1)
        common = dict(eps=self.eps, norm=self.norm, attribution=self.attribution,
                      attribution_options=self.attribution_options, target=y,
                      domain=self.domain, surrogate_beta=self.surrogate_beta)
        if self.score == "bound":
            res = bound(model, x, method="region", seed=self.seed, **common)
            value, scale = res.euclidean, res.attr_norm
        else:
            runs = [attack(model, x, method=m, seed=self.seed, **common) for m in self.attacks]
            value = torch.stack([r.euclidean for r in runs]).amax(dim=0)
            scale = runs[0].attr_norm
        if self.relative:
            value = value / scale.clamp_min(torch.finfo(scale.dtype).tiny)
        return [float(v) for v in value.detach().cpu()]
