"""The taylor bound (docs/design.md section 3.1): U(x) = eps * ||J(x)||_{p->2}, J = dA/dx.

The first-order term at x only: l2 -> sigma_max(J) (:func:`attrbound.linalg.top_singular`),
certified with probability >= 1 - delta; l-inf -> the inf -> 2 norm from above by the
certified weighted dual (:func:`attrbound.linalg.inf_to_two`), over the l-inf ball clipped to
the domain box (:func:`attrbound.linalg.clipped_box`), the sign-iteration value reported as
``lower``. l2 keeps the ball: the set ball ∩ box lies in the ball, and a clipped feature
only removes one side of a coordinate, which no cheap bound on sigma_max can use (the
maximum of ||J delta|| over a half-ball equals the ball's when the top singular vector's
sign pattern fits, and is near it otherwise). Not an upper bound when A is curved
(docs/design.md section 3.1, "known weakness"); region bounds the whole set.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from attrbound.attributions import Attribution
from attrbound.bounds.solve import Estimate, prepare, solve
from attrbound.linalg import clipped_box
from attrbound.results import BoundResult


def taylor_pass(
    attr: Attribution, x: Tensor, target: Tensor, norm: str, opts: dict[str, Any],
    gen: torch.Generator, eps: float = 1.0, domain: tuple[float, float] | None = None,
) -> Estimate:
    """||J(x)||_{p->2} per input of one pass x [B, *S] (l-inf with a domain: over the clipped
    box, divided by eps), start vectors drawn from ``gen`` (the stream of the solves at x, so
    region's first solve is this one)."""
    box = clipped_box(x, eps, domain) if norm == "inf" else None
    return Estimate.of(solve(attr, x, target, norm, opts, gen, box=box, eps=eps))


@torch.no_grad()  # torch.func transforms inside still differentiate; no graph to the weights
def run(
    model: nn.Module, x: Tensor, attr: Attribution, *, eps: float, norm: str,
    target: int | Tensor | None, domain: tuple[float, float] | None,
    surrogate_beta: float | None, options: dict[str, Any],
) -> BoundResult:
    """method="taylor" of :func:`attrbound.bound`, on checked arguments (x [B, *S]
    detached, norm parsed, eps > 0, attr an :class:`Attribution`); result tensors [B]."""
    started = time.perf_counter()
    call = prepare("taylor", model, x, attr, target=target, surrogate_beta=surrogate_beta,
                   options=options)
    est = Estimate.cat([
        taylor_pass(chunk, x[sl], call.target[sl], norm, call.opts, call.gens[0], eps, domain)
        for sl, chunk in call.passes(x)
    ])
    return call.result("taylor", est, eps=eps, norm=norm, seconds=time.perf_counter() - started)
