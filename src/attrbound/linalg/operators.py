"""The Jacobian of an attribution map as a batched, matrix-free linear operator.

See docs/design.md section 3.

For an attribution A (:mod:`attrbound.attributions`) with fixed targets t and a batch of
points z [B, *S], J(z) = dA/dz is block-diagonal over the batch (each example's map depends
on that example only), with one n x n block J_b per example, n = prod(S). It is never
formed; :class:`JacobianOperator` applies all blocks at once with torch.func:

- J^T u: one reverse pass through the cached ``torch.func.vjp`` of A at z (A's forward and
  backward graph are recorded once, at construction);
- J v: the transpose of that linear map, by a second, cached ``vjp`` of u -> J^T u (a linear
  function, so its vjp at u = 0 serves every v), rather than a forward-mode
  ``torch.func.jvp``, which would re-run A on every call;
- symmetric J (``saliency``: J = Hessian of the target logit; ``smoothgrad``: a mean of
  Hessians): J v = J^T v, so the one cached Hessian-vector product serves both;
- M v = J^T J v.

Vectors are [B, *S] or flattened [B, n]; every method returns the shape it was given.
Devices and dtypes follow z. :class:`DenseOperator` is the same interface over explicit
matrices [B, n, n] (small problems, references, tests).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attrbound.attributions import Attribution, Saliency, SmoothGrad


def is_symmetric(attr: Attribution) -> bool:
    """True when dA/dz is symmetric: saliency (a Hessian) and smoothgrad (a mean of them)."""
    return isinstance(attr, (Saliency, SmoothGrad))


class JacobianOperator:
    """J(z) = dA/dz for a batch z [B, *S] and targets int64 [B], as a linear operator.

    Attributes: ``value`` = A(z) [B, *S] (computed on the way), ``shape`` = z's shape,
    ``n`` = prod(S), ``symmetric`` (see :func:`is_symmetric`).

    Costs (one call each, batched over B): construction = one A(z) with its graph;
    ``rmatvec`` = one reverse pass; ``matvec`` = one reverse pass of the transposed map (plus
    a one-off reverse pass the first time); ``gram`` = both. Memory: A's graph at z (for
    integrated gradients with m steps: m path points per example, bounded by chunking the
    batch, not inside).
    """

    def __init__(self, attr: Attribution, z: Tensor, target: Tensor) -> None:
        self.attr = attr
        self.shape = tuple(z.shape)
        self.n = math.prod(self.shape[1:])
        self.symmetric = is_symmetric(attr)
        self.target = target
        z = z.detach()
        self.point = z

        def a_of(u: Tensor) -> Tensor:
            return attr.attribute(u, target)

        value, self._vjp = torch.func.vjp(a_of, z)
        self.value = value.detach()
        self._jvp = None

    def _shaped(self, v: Tensor) -> Tensor:
        return v.reshape(self.shape)

    def _back(self, out: Tensor, like: Tensor) -> Tensor:
        return out.reshape(like.shape)

    def rmatvec(self, u: Tensor) -> Tensor:
        """J^T u for u [B, *S] or [B, n] (per example: J_b^T u_b)."""
        return self._back(self._vjp(self._shaped(u))[0], u)

    def matvec(self, v: Tensor) -> Tensor:
        """J v for v [B, *S] or [B, n] (per example: J_b v_b)."""
        if self.symmetric:
            return self.rmatvec(v)
        if self._jvp is None:
            zero = torch.zeros(self.shape, dtype=self.value.dtype, device=self.value.device)
            _, self._jvp = torch.func.vjp(lambda u: self._vjp(u)[0], zero)
        return self._back(self._jvp(self._shaped(v))[0], v)

    def gram(self, v: Tensor) -> Tensor:
        """M v = J^T J v for v [B, *S] or [B, n]."""
        return self.rmatvec(self.matvec(v))

    def restrict(self, rows: Tensor) -> JacobianOperator:
        """The operator of the examples ``rows`` (int64 [k]) only: J(z[rows]) for targets
        target[rows]. Costs one A(z[rows]) with its graph; the solvers use it to stop paying
        for examples that already converged."""
        attr = self.attr.for_rows(rows, self.shape)
        return JacobianOperator(attr, self.point[rows], self.target[rows])


class DenseOperator:
    """The same interface over explicit matrices J [B, n, n] (vectors [B, n])."""

    def __init__(self, mats: Tensor, symmetric: bool | None = None) -> None:
        self.mats = mats
        self.shape = (mats.shape[0], mats.shape[1])
        self.n = mats.shape[-1]
        if symmetric is None:
            symmetric = bool(torch.equal(mats, mats.transpose(1, 2)))
        self.symmetric = symmetric

    def matvec(self, v: Tensor) -> Tensor:
        """J v: [B, n] -> [B, n]."""
        return torch.einsum("bij,bj->bi", self.mats, v)

    def rmatvec(self, u: Tensor) -> Tensor:
        """J^T u: [B, n] -> [B, n]."""
        return torch.einsum("bji,bj->bi", self.mats, u)

    def gram(self, v: Tensor) -> Tensor:
        """J^T J v: [B, n] -> [B, n]."""
        return self.rmatvec(self.matvec(v))

    def restrict(self, rows: Tensor) -> DenseOperator:
        """The operator of the examples ``rows`` (int64 [k]) only."""
        return DenseOperator(self.mats[rows], self.symmetric)


def clipped_box(
    x: Tensor, eps: float, domain: tuple[float, float] | None
) -> tuple[Tensor, Tensor] | None:
    """The l-inf ball of radius eps around x [B, *S] intersected with the domain box, per
    feature delta_i in [a_i, b_i] = [max(-eps, lo - x_i), min(eps, hi - x_i)], written
    delta = c + r * s with |s_i| <= 1: (c, r) flattened [B, n], c = (a + b) / 2,
    r = (b - a) / 2 >= 0. None when no feature of the batch is clipped (then c = 0, r = eps).
    """
    if domain is None:
        return None
    flat = x.flatten(1)
    a = torch.clamp(domain[0] - flat, min=-eps)
    bb = torch.clamp(domain[1] - flat, max=eps)
    if bool((a <= -eps).all() and (bb >= eps).all()):
        return None
    bb = torch.maximum(bb, a)  # x outside the domain: a degenerate box, never an empty one
    return (a + bb) / 2, (bb - a) / 2


class BoxOperator:
    """J~ = J [c, diag(r)] (n x (n + 1)) for the clipped box delta = c + r * s, |s| <= 1.

    ||J~ [s_0; s]|| over s_0, s_i in {-1, 1} equals max over the box's vertices of
    ||J delta||, so ||J~||_{inf->2} is the exact maximum of ||J delta|| over the clipped box
    (a convex function peaks at a vertex; s -> -s maps s_0 = -1 to s_0 = 1). Vectors
    [B, n + 1] (the first coordinate is s_0); ``base`` is J's operator (vectors [B, n]).
    """

    symmetric = False

    def __init__(self, base: JacobianOperator | DenseOperator, c: Tensor, r: Tensor) -> None:
        self.base, self.c, self.r = base, c, r
        self.n = base.n + 1
        self.shape = (c.shape[0], self.n)

    def direction(self, v: Tensor) -> Tensor:
        """delta = v_0 c + r * v_{1:} [B, n] for v [B, n + 1]."""
        return v[:, :1] * self.c + self.r * v[:, 1:]

    def matvec(self, v: Tensor) -> Tensor:
        """J~ v = J (v_0 c + r * v_{1:}): [B, n + 1] -> [B, n]."""
        return self.base.matvec(self.direction(v))

    def rmatvec(self, u: Tensor) -> Tensor:
        """J~^T u = [c . J^T u; r * J^T u]: [B, n] -> [B, n + 1]."""
        g = self.base.rmatvec(u)
        return torch.cat([(self.c * g).sum(dim=1, keepdim=True), self.r * g], dim=1)

    def gram(self, v: Tensor) -> Tensor:
        """J~^T J~ v: [B, n + 1] -> [B, n + 1]."""
        return self.rmatvec(self.matvec(v))

    def restrict(self, rows: Tensor) -> BoxOperator:
        """The operator of the examples ``rows`` only."""
        return BoxOperator(self.base.restrict(rows), self.c[rows], self.r[rows])


def bilinear_gradient(
    attr: Attribution,
    z: Tensor,
    target: Tensor,
    u: Tensor,
    w: Tensor,
    *,
    transpose: bool = False,
) -> tuple[Tensor, Tensor]:
    """Gradient in z of phi(z) = u^T J(z) w per example, with J(z) w or J(z)^T u on the way.

    phi_b(z_b) = <u_b, J_b(z_b) w_b> is the derivative of <u_b, A(z_b)> along w_b; its
    gradient is one more level of automatic differentiation: reverse mode over the
    forward-mode ``torch.func.jvp`` of A (returns J(z) w), or with ``transpose=True`` reverse
    mode over the ``torch.func.vjp`` of A, phi = <w, J(z)^T u> (returns J(z)^T u). With (u, w)
    the top singular pair of J(z), phi = sigma_max(J(z)) and this is its gradient (Danskin);
    with w a sign vector s and u = J s / ||J s||, phi = ||J(z) s||.

    Shapes: z, u, w [B, *S] -> (grad [B, *S], J(z) w or J(z)^T u [B, *S]).
    """

    def a_of(q: Tensor) -> Tensor:
        return attr.attribute(q, target)

    def phi(zz: Tensor) -> tuple[Tensor, Tensor]:
        if transpose:
            _, back = torch.func.vjp(a_of, zz)
            jtu = back(u)[0]
            return (w * jtu).sum(), jtu
        _, jw = torch.func.jvp(a_of, (zz,), (w,))
        return (u * jw).sum(), jw

    grad, aux = torch.func.grad(phi, has_aux=True)(z.detach())
    return grad, aux.detach()


__all__ = ["BoxOperator", "DenseOperator", "JacobianOperator", "bilinear_gradient",
           "clipped_box", "is_symmetric"]
