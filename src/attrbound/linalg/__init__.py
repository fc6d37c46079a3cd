"""Matrix-free linear algebra on the Jacobian of an attribution map (docs/design.md section 3).

- :mod:`attrbound.linalg.operators`: J(z) = dA/dz as a batched linear operator (J v, J^T u,
  J^T J v) and the gradient of u^T J(z) w;
- :mod:`attrbound.linalg.spectral`: the batched solvers for its operator norms (Lanczos,
  sigma_max for l2, the inf -> 2 norm for l-inf);
- :mod:`attrbound.linalg.certificate`: the probabilistic upper bound on lambda_max from one
  fresh random-start Lanczos run (docs/design.md section 3.3).
"""

from __future__ import annotations

from attrbound.linalg import certificate
from attrbound.linalg.operators import (
    DenseOperator,
    JacobianOperator,
    bilinear_gradient,
    is_symmetric,
)
from attrbound.linalg.spectral import (
    Eigen,
    InfToTwo,
    LinearOperator,
    Singular,
    certified_gap,
    default_tol,
    inf_to_two,
    lanczos,
    random_start,
    sign_iteration,
    top_singular,
)

__all__ = [
    "DenseOperator",
    "Eigen",
    "InfToTwo",
    "JacobianOperator",
    "LinearOperator",
    "Singular",
    "bilinear_gradient",
    "certificate",
    "certified_gap",
    "default_tol",
    "inf_to_two",
    "is_symmetric",
    "lanczos",
    "random_start",
    "sign_iteration",
    "top_singular",
]
