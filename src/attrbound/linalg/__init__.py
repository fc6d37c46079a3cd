"""Matrix-free linear algebra on the Jacobian of an attribution map (docs/design.md section 3).

- :mod:`attrbound.linalg.operators`: J(z) = dA/dz as a batched linear operator (J v, J^T u,
  J^T J v) and the gradient of u^T J(z) w;
- :mod:`attrbound.linalg.spectral`: the batched solvers for its operator norms (Lanczos,
  sigma_max for l2, the sign iteration);
- :mod:`attrbound.linalg.weighted`: ||J||_{inf->2} by the certified weighted (PSD) dual with
  weights from a Krylov surrogate's SDP, and the sign iteration from its roundings;
- :mod:`attrbound.linalg.certificate`: the probabilistic upper bound on lambda_max from one
  fresh random-start Lanczos run (docs/design.md section 3.3).
"""

from __future__ import annotations

from attrbound.linalg import certificate
from attrbound.linalg.operators import (
    BoxOperator,
    DenseOperator,
    JacobianOperator,
    bilinear_gradient,
    clipped_box,
    is_symmetric,
)
from attrbound.linalg.spectral import (
    Eigen,
    LinearOperator,
    Singular,
    certified_gap,
    default_tol,
    lanczos,
    random_start,
    round_up,
    sign_iteration,
    top_singular,
)
from attrbound.linalg.weighted import InfToTwo, inf_to_two, weighted_bound, with_weights

__all__ = [
    "BoxOperator",
    "DenseOperator",
    "Eigen",
    "InfToTwo",
    "JacobianOperator",
    "LinearOperator",
    "Singular",
    "bilinear_gradient",
    "certificate",
    "certified_gap",
    "clipped_box",
    "default_tol",
    "inf_to_two",
    "is_symmetric",
    "lanczos",
    "random_start",
    "round_up",
    "sign_iteration",
    "top_singular",
    "weighted_bound",
    "with_weights",
]
