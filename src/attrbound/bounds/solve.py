"""What taylor and region share: the set-up of a call, the passes, the tight solve, the result.

A call is prepared once (:func:`prepare`: options checked, the smooth surrogate, targets, the
two seeded generators, the inputs per pass), then runs pass by pass over the inputs; each pass
solves for ||J(z)||_{p->2} (:func:`solve`) and yields an :class:`Estimate` per input, and the
estimates of all passes become one :class:`~attrbound.results.BoundResult`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from attrbound._validate import check_in_domain, require_smooth_or_surrogate
from attrbound.attributions import Attribution, IntegratedGradients, resolve_target
from attrbound.bounds.options import _check_options, plain_options
from attrbound.linalg import (
    BoxOperator,
    JacobianOperator,
    inf_to_two,
    random_start,
    round_up,
    top_singular,
)
from attrbound.models import smooth_surrogate
from attrbound.results import BoundResult, cosine_from_euclidean

#: region's own random stream is seeded with seed + this (the solves at x use seed itself)
REGION_STREAM = 0x5EED

#: model evaluations per pass by default; inputs per pass are this divided by the evaluations
#: one map needs. The solvers' iteration counts differ between inputs and a pass lasts as long
#: as its slowest input, so small passes are faster on the CPU; on other devices (a GPU) wide
#: passes pay (benchmarks/RESULTS.md).
POINTS_PER_PASS_CPU = 16
POINTS_PER_PASS = 512


def default_batch_size(attr: Attribution, device: torch.device | str = "cpu") -> int:
    """Inputs per pass: the model evaluations per pass for the device (POINTS_PER_PASS_CPU on
    the CPU, else POINTS_PER_PASS) divided by those one map needs
    (:attr:`Attribution.evaluations`), at least 1. Start vectors and random points are
    drawn pass by pass, so a different batch size (or device) gives slightly different
    numbers for the same seed."""
    points = POINTS_PER_PASS_CPU if torch.device(device).type == "cpu" else POINTS_PER_PASS
    return max(1, points // attr.evaluations)


# ----------------------------------------------------------------------------------------
# The tight solve and its per-input estimate
# ----------------------------------------------------------------------------------------


@dataclass
class Solve:
    """Tight operator-norm solve at a batch of points z [N, *S]."""

    value: Tensor  # A(z) [N, *S]
    upper: Tensor  # upper estimate of ||J(z)||_{p->2} [N]
    lower: Tensor | None  # l-inf: sign-iteration value [N]
    iterations: Tensor
    converged: Tensor
    vector: Tensor  # screening start at nearby points: right singular / sign vector [N, n]
    v0: Tensor | None  # l-inf: sqrt(n) sigma_max [N]
    ritz: Tensor | None = None  # the Ritz estimate of the same value [N]


def coarse_map(attr: Attribution, steps: int | None) -> Attribution:
    """Integrated gradients with more than ``steps`` steps coarsened to that many
    (:meth:`IntegratedGradients.with_steps`: the same path integral on fewer nodes, a
    fraction of the cost per product), otherwise (or with steps None) attr itself: the map
    of the work whose result need not be the exact map's (the l-inf weights of
    :func:`solve`, option ``weights_ig_steps``; region's search, ``coarse_ig_steps``)."""
    if isinstance(attr, IntegratedGradients) and steps is not None and attr.steps > steps:
        return attr.with_steps(steps)
    return attr


def solve(
    attr: Attribution, z: Tensor, target: Tensor, norm: str, opts: dict[str, Any],
    gen: torch.Generator, box: tuple[Tensor, Tensor] | None = None, eps: float = 1.0,
) -> Solve:
    """Tight solve at z [N, *S] (sigma_max for l2, the inf -> 2 dual for l-inf), always from
    random start vectors drawn from ``gen``.

    ``box`` (l-inf only, :func:`attrbound.linalg.clipped_box` of the set's centre x, flattened
    [N, n] each): the perturbation set is the clipped box c + r * s instead of the cube
    eps * s, and every value returned is max_{delta in box} ||J(z) delta|| / eps (so that
    eps * value stays the deviation bound), computed as ||J [c, diag r]||_{inf->2}
    (:class:`attrbound.linalg.BoxOperator`); ``vector`` is then the vertex delta / eps [N, n].

    Never warm-started from the vector of a nearby point or of a coarser map: a start close
    to the second singular vector has a small part along the top one, and a float32 solve can
    then stop, "converged", short of sigma_max; a random start has no such bias (and the
    certificate needs a start independent of the operator).

    l-inf with a :func:`coarse_map` other than attr (integrated gradients with more than
    ``weights_ig_steps`` steps): the dual's weights and the sign iteration's start are chosen
    on the coarse map's operator (the ``proxy`` of :func:`attrbound.linalg.inf_to_two`), the
    certificate and the lower value are attr's; the weights only need to be good, any
    weights give a valid bound, and the coarse products cost steps / weights_ig_steps times
    less (the l-inf solve of integrated gradients at 32 steps then takes half the time,
    its bound 0.7% looser on the MNIST CNN; benchmarks/RESULTS.md).
    """
    op = JacobianOperator(attr, z, target)
    if norm == "2":
        start = random_start((z.shape[0], op.n), z, gen)
        r = top_singular(op, start, tol=opts["tol"], max_iter=opts["max_iter"],
                         delta=opts["delta"])
        return Solve(op.value, r.upper, None, r.iterations, r.converged, r.vector, None,
                     r.sigma)
    solved: JacobianOperator | BoxOperator = op if box is None else BoxOperator(op, *box)
    proxy: JacobianOperator | BoxOperator | None = None
    coarse = coarse_map(attr, opts["weights_ig_steps"])
    if coarse is not attr:
        cop = JacobianOperator(coarse, z, target)
        proxy = cop if box is None else BoxOperator(cop, *box)
    start = random_start((z.shape[0], solved.n), z, gen)
    fresh = random_start((z.shape[0], solved.n), z, gen)  # the certifying run's own start
    again = random_start((z.shape[0], solved.n), z, gen)  # a refined example's second run's
    d = inf_to_two(
        solved, start, certify_start=fresh, refine_start=again, tol=opts["tol"],
        max_iter=opts["max_iter"],
        dual_steps=opts["dual_steps"], inner_iter=opts["inner_iter"],
        sign_steps=opts["sign_steps"], delta=opts["delta"],
        refine_steps=opts["refine_steps"], refine_above=opts["refine_above"], proxy=proxy,
    )
    if box is None:
        return Solve(op.value, d.upper, d.lower, d.iterations, d.converged, d.sign,
                     d.upper_v0, d.ritz)
    k = 1.0 / eps
    return Solve(op.value, round_up(d.upper.double() * k * (1 + 1e-15), d.upper.dtype),
                 d.lower * k, d.iterations, d.converged, solved.direction(d.sign) * k,
                 d.upper_v0 * k, d.ritz * k)


@dataclass
class Estimate:
    """Per-input estimate of ||J||_{p->2} with the diagnostics of the solve that gave it [B].

    ``lower`` and ``operator_norm_v0`` (sqrt(n) sigma_max, the dual at v = 0) are l-inf only.
    """

    operator_norm: Tensor
    attr_norm: Tensor
    iterations: Tensor
    converged: Tensor
    lower: Tensor | None = None
    operator_norm_v0: Tensor | None = None
    operator_norm_ritz: Tensor | None = None

    @classmethod
    def of(cls, s: Solve) -> Estimate:
        """The estimate a solve gives at its own points."""
        return cls(s.upper, s.value.flatten(1).norm(dim=1), s.iterations, s.converged, s.lower,
                   s.v0, s.ritz)

    @classmethod
    def cat(cls, parts: list[Estimate]) -> Estimate:
        """The estimates of consecutive passes, concatenated along the batch."""

        def join(name: str) -> Tensor | None:
            vals = [getattr(p, name) for p in parts]
            return None if vals[0] is None else torch.cat(vals)

        return cls(**{f.name: join(f.name) for f in fields(cls)})


def in_rows(fn: Callable[[slice], tuple[Tensor, ...]], n: int, limit: int) -> tuple[Tensor, ...]:
    """Apply fn to row slices of at most ``limit`` rows and concatenate its outputs."""
    outs = [fn(slice(lo, lo + limit)) for lo in range(0, n, limit)]
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


# ----------------------------------------------------------------------------------------
# One call: set-up, passes, result
# ----------------------------------------------------------------------------------------


@dataclass
class Call:
    """A prepared taylor / region call on inputs x [B, *S] (see :func:`prepare`).

    ``attr`` is the map as given (its name is reported), ``used`` the map bounded (on the
    smooth surrogate when ``beta`` is set); ``gens`` = (the stream of the solves at x, the
    stream of everything else region draws).
    """

    attr: Attribution
    used: Attribution
    beta: float | None
    target: Tensor
    opts: dict[str, Any]
    gens: tuple[torch.Generator, torch.Generator]
    limit: int

    def passes(self, x: Tensor) -> Iterator[tuple[slice, Attribution]]:
        """(rows, the map restricted to those rows) for every pass of at most ``limit``
        inputs, in order."""
        rows = torch.arange(x.shape[0], device=x.device)
        for lo in range(0, x.shape[0], self.limit):
            sl = slice(lo, lo + self.limit)
            yield sl, self.used.for_rows(rows[sl], x.shape)

    def result(
        self, method: str, est: Estimate, *, eps: float, norm: str, seconds: float,
        from_region: bool = False, **more: Any,
    ) -> BoundResult:
        """The BoundResult of ``method`` from the estimates [B]: euclidean = eps *
        operator_norm, the cosine bound from it; ``more`` are further BoundResult fields
        (argmax, source, at_x)."""
        euclidean = eps * est.operator_norm
        extra: dict[str, Any] = {}
        if est.operator_norm_v0 is not None:
            extra["operator_norm_v0"] = est.operator_norm_v0
        options = plain_options(self.opts, self.attr)
        if from_region:
            options["from_region"] = True
        extra.update(options=options, target=self.target)
        return BoundResult(
            method=method,
            attribution=self.attr.name,
            norm=norm,
            eps=eps,
            euclidean=euclidean,
            cosine=cosine_from_euclidean(euclidean, est.attr_norm),
            attr_norm=est.attr_norm,
            operator_norm=est.operator_norm,
            iterations=est.iterations,
            converged=est.converged,
            lower=est.lower,
            surrogate_beta=self.beta,
            seconds=seconds,
            extra=extra,
            operator_norm_ritz=est.operator_norm_ritz,
            guarantee=guarantee(method, self.opts["delta"], norm),
            delta=self.opts["delta"],
            **more,
        )


def guarantee(method: str, delta: float, norm: str) -> str:
    """The kind of guarantee of a taylor / region result in words (docs/design.md 3.3)."""
    if method == "taylor":
        return (f"probability >= 1 - {delta:g} over attrbound's random start, "
                "linearisation at x")
    return (f"estimate: searched sup of the operator norm over the set (each solve: "
            f"probability >= 1 - {delta:g} over attrbound's random start)")


def prepare(
    method: str, model: nn.Module, x: Tensor, attr: Attribution, *,
    target: int | Tensor | None, surrogate_beta: float | None, options: dict[str, Any],
    inside: tuple[float, float] | None = None,
) -> Call:
    """Check the options of ``method`` (taylor or region), switch to the smooth surrogate
    when the model needs it, check that x lies in the box ``inside`` when one is given
    (region: its search starts at x), resolve the targets [B] and seed the two generators."""
    opts = _check_options(method, options)
    if require_smooth_or_surrogate(model, surrogate_beta, [method], example=x):
        beta: float | None = float(surrogate_beta)  # type: ignore[arg-type]
        used = attr.with_model(smooth_surrogate(model, beta))
    else:
        beta, used = None, attr
    check_in_domain(x, inside)
    return Call(
        attr=attr, used=used, beta=beta, target=resolve_target(model, x, target), opts=opts,
        # two streams: the start vectors of the solves at x (taylor's, also region's first
        # solve, so the two agree in every pass) and everything else region draws
        gens=(torch.Generator().manual_seed(int(opts["seed"])),
              torch.Generator().manual_seed(int(opts["seed"]) + REGION_STREAM)),
        limit=opts["batch_size"] or default_batch_size(used, x.device),
    )
