"""What each attack maximises: one short class per method, in the words of its paper.

Every objective maps the attribution a = A(z) of a batch of iterates [N, *S] to

- ``gain(a, state)`` [N]: the smooth function whose gradient the attack ascends, and
- ``score(a, state)`` [N]: how successful the iterate is (higher is better),

given per-example ``state`` computed once from the clean maps A(x) by ``prepare``. The engine
(:mod:`attrbound.attacks.engine`, :mod:`attrbound.attacks.apgd`) runs the ascent or the
sampling; an objective only says what "far from A(x)" means.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from attrbound import metrics
from attrbound.errors import check_choice

#: distances of :class:`PGD` and :class:`RandomSampling`.
OBJECTIVES = ("euclidean", "cosine")
#: default number of gradient steps of the fixed-step schedule: PGD-20, the evaluation attack
#: of Madry et al. 2018 (the APGD schedule's defaults are in :mod:`attrbound.attacks.apgd`).
DEFAULT_STEPS = 20
#: default random samples: Quantus' MaxSensitivity ``nr_samples`` (Captum's sensitivity_max: 10).
DEFAULT_SAMPLES = 200
#: default k for top-k: 100 of the 784 pixels of 28x28 inputs (Chen et al. 2019, MNIST and
#: Fashion-MNIST); other sizes use the same fraction of their pixels.
DEFAULT_K_FRACTION = 100 / 784


def spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The pixel grid of one example's shape S: S without its channel dimension when S has 2
    or more dimensions ([C, H, W] -> (H, W)), else S."""
    return tuple(shape[1:]) if len(shape) >= 2 else tuple(shape)


def default_k(shape: tuple[int, ...]) -> int:
    """k = round(100/784 * pixels), at least 1; 100 for 28x28 inputs (Chen et al. 2019).

    ``shape`` is one example's shape S; pixels are the entries of :func:`spatial` (S).
    """
    pixels = math.prod(spatial(shape))
    return max(1, min(pixels, round(DEFAULT_K_FRACTION * pixels)))


State = dict[str, Tensor]


class Objective:
    """Base of the attack objectives: ``prepare``, ``gain``, ``score`` (see the module).

    ``name`` is the ``method=`` of :func:`attrbound.attack`, ``objective`` the name reported
    in :class:`~attrbound.results.AttackResult`, ``uses_gradient`` whether the engine ascends
    ``gain`` (False: it samples the ball and only scores).
    """

    name: ClassVar[str]
    objective: str
    uses_gradient: ClassVar[bool] = True

    @classmethod
    def from_options(cls, *, objective: str, k: int) -> Objective:
        """The objective for :func:`attrbound.attack`'s ``objective`` and ``k`` (each class
        takes the ones it uses)."""
        raise NotImplementedError

    def prepare(self, clean: Tensor) -> State:
        """Per-example state from the clean maps A(x) [B, *S]."""
        raise NotImplementedError

    def gain(self, a: Tensor, state: State) -> Tensor:
        raise NotImplementedError

    def score(self, a: Tensor, state: State) -> Tensor:
        raise NotImplementedError


class PGD(Objective):
    r"""PGD on the attribution, after 'Towards Deep Learning Models Resistant to Adversarial
    Attacks' (Madry et al. 2018) [https://arxiv.org/abs/1706.06083].

    Distance: ``objective="euclidean"`` ascends 1/2 ||A(z) - A(x)||_2^2 (score
    ||A(z) - A(x)||_2); ``"cosine"`` descends cos(A(z), A(x)) (score -cos).

    Defaults: the APGD schedule of Croce & Hein 2020 (2 runs of 25 steps from random starts,
    initial step 2 eps, halved on stagnation; :mod:`attrbound.attacks.apgd`); with
    ``schedule="fixed"``, Madry et al.'s PGD-20: 20 steps of alpha = 2.5 eps / steps, 1
    restart. l-inf sign steps z += alpha sign(g), l2 normalised steps z += alpha g / ||g||_2.

    Shape: maps a [N, *S]; gain and score [N].

    Example::

        >>> res = attrbound.attack(model, x, eps=0.1, norm="inf", method="pgd")
        >>> res.euclidean  # [B] lower bounds on max ||A(x + delta) - A(x)||_2
    """

    name = "pgd"

    def __init__(self, objective: str = "euclidean") -> None:
        self.objective = check_choice("objective", objective, OBJECTIVES)

    @classmethod
    def from_options(cls, *, objective: str, k: int) -> PGD:
        return cls(objective)

    def prepare(self, clean: Tensor) -> State:
        return {"clean": clean}

    def gain(self, a: Tensor, state: State) -> Tensor:
        if self.objective == "euclidean":
            return 0.5 * (a - state["clean"]).flatten(1).pow(2).sum(dim=1)
        return -metrics.cosine(a, state["clean"])

    def score(self, a: Tensor, state: State) -> Tensor:
        if self.objective == "euclidean":
            return metrics.euclidean(a, state["clean"])
        return -metrics.cosine(a, state["clean"])


class IFIATopK(Objective):
    r"""Top-k attack of 'Interpretation of Neural Networks is Fragile' (Ghorbani, Abid & Zou,
    AAAI 2019) [https://arxiv.org/abs/1710.10547].

    Distance: with m(z) = sum over channels of |A(z)| (one importance per pixel) and K the k
    pixels of largest m(x) (the ORIGINAL top-k), descend the share of mass left on K,

        frac(z) = sum_{i in K} m_i(z) / sum_i m_i(z)

    (normalised to unit mass, so that shrinking the whole map does not count). Score: minus
    the top-k intersection |topk m(x) ∩ topk m(z)| / k, ties broken by the lower frac.

    Defaults: k = 100 on 28x28 inputs (Chen et al. 2019; :func:`default_k`); the steps of
    :class:`PGD` (APGD, or ``schedule="fixed"``: 20 steps of 2.5 eps / steps), sign steps
    (l-inf) or normalised steps (l2).

    Shape: maps a [N, *S]; the mask of K [N, pixels]; gain and score [N].

    Example::

        >>> res = attrbound.attack(model, x, eps=0.1, norm="inf", method="ifia_topk", k=100)
        >>> res.topk_intersection  # [B], lower is a stronger attack
    """

    name = "ifia_topk"
    objective = "topk_mass"

    def __init__(self, k: int) -> None:
        self.k = int(k)

    @classmethod
    def from_options(cls, *, objective: str, k: int) -> IFIATopK:
        return cls(k)

    def prepare(self, clean: Tensor) -> State:
        """The original top-k pixels K as a 0/1 mask [B, pixels]."""
        m = metrics.feature_map(clean, reduce_channels=True)
        return {"mask": metrics.topk_mask(m, self.k).to(clean.dtype)}

    @staticmethod
    def frac(a: Tensor, mask: Tensor) -> Tensor:
        """frac(z): the share of m(z) on the pixels of ``mask`` [N, pixels] -> [N]."""
        m = metrics.feature_map(a, reduce_channels=True)
        total = m.sum(dim=1).clamp_min(torch.finfo(a.dtype).tiny)
        return (m * mask).sum(dim=1) / total

    def gain(self, a: Tensor, state: State) -> Tensor:
        return -self.frac(a, state["mask"])

    def score(self, a: Tensor, state: State) -> Tensor:
        m = metrics.feature_map(a, reduce_channels=True)
        inter = (metrics.topk_mask(m, self.k).to(a.dtype) * state["mask"]).sum(dim=1) / self.k
        return -inter - self.frac(a, state["mask"]) / (2 * self.k)


class IFIACenter(Objective):
    r"""Centre-of-mass attack of 'Interpretation of Neural Networks is Fragile' (Ghorbani,
    Abid & Zou, AAAI 2019) [https://arxiv.org/abs/1710.10547].

    Distance: with m(z) = sum over channels of |A(z)| on the pixel grid and positions p_i
    (row, column indices; the feature index for 1-d inputs), the centre of mass is

        c(z) = sum_i m_i(z) p_i / sum_i m_i(z);

    ascend 1/2 ||c(z) - c(x)||_2^2 (score ||c(z) - c(x)||_2, in pixels).

    Defaults: the steps of :class:`PGD` (APGD, or ``schedule="fixed"``: 20 steps of
    2.5 eps / steps), sign steps (l-inf) or normalised steps (l2).

    Shape: maps a [N, *S]; centres [N, spatial dims]; gain and score [N].

    Example::

        >>> res = attrbound.attack(model, x, eps=0.1, norm="inf", method="ifia_center")
        >>> IFIACenter.centre(attrbound.attribution("saliency", model)(res.x_adv))
    """

    name = "ifia_center"
    objective = "center_of_mass"

    @classmethod
    def from_options(cls, *, objective: str, k: int) -> IFIACenter:
        return cls()

    @staticmethod
    def centre(a: Tensor) -> Tensor:
        """c(z) of |a| summed over channels: [N, *S] -> [N, n_spatial_dims]."""
        axes = [torch.arange(s, dtype=a.dtype, device=a.device) for s in spatial(a.shape[1:])]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))
        m = metrics.feature_map(a, reduce_channels=True)
        total = m.sum(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        return (m @ grid) / total

    def prepare(self, clean: Tensor) -> State:
        """The original centre of mass c(x) [B, n_spatial_dims]."""
        return {"centre": self.centre(clean)}

    def gain(self, a: Tensor, state: State) -> Tensor:
        return 0.5 * (self.centre(a) - state["centre"]).pow(2).sum(dim=1)

    def score(self, a: Tensor, state: State) -> Tensor:
        return (self.centre(a) - state["centre"]).norm(dim=1)


class RandomSampling(PGD):
    r"""Random sampling, the baseline of Captum's ``sensitivity_max`` and Quantus'
    ``MaxSensitivity`` (Yeh et al. 2019, 'On the (In)fidelity and Sensitivity of
    Explanations') [https://arxiv.org/abs/1901.09392].

    Distance: as :class:`PGD` (``euclidean`` or ``cosine``); n points uniform in the ball
    (clipped to the domain), keep the valid one of largest score. Needs no gradient, so it
    runs on piecewise-linear models without a surrogate.

    Defaults: n = 200 samples (Quantus' ``nr_samples``).

    Shape: maps a [N, *S]; score [N].

    Example::

        >>> res = attrbound.attack(model, x, eps=0.1, norm=2, method="random", n=200)
    """

    name = "random"
    uses_gradient = False

    @classmethod
    def from_options(cls, *, objective: str, k: int) -> RandomSampling:
        return cls(objective)
