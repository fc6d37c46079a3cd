"""Loading a user's model and data without ever unpickling untrusted bytes.

Models, :func:`load_model` (``attrbound.intake.model``), chosen by the spec:

- ``FILE.safetensors``: an attrbound checkpoint, loaded by :func:`attrbound.models.load`;
- ``FILE.pt2``: a ``torch.export.save`` archive, inspected by :func:`check_pt2` before
  ``torch.export.load`` reads the same bytes (``attrbound.intake.pt2``);
- ``package.module:factory`` with ``weights=FILE.safetensors``: ``factory()`` builds the
  module, the weights are loaded strictly;
- anything else (``.pt``, ``.pth``, ``.pkl``, ``.ckpt``, ...) is refused, since unpickling
  can run code.

Every model comes back in eval mode (BatchNorm uses its running statistics, Dropout is off)
with all parameters frozen, on ``device``; ``mean``/``std`` wrap it in :class:`Normalized`,
so that the input domain stays the pixel box.

Data, :func:`load_data` (``attrbound.intake.data``): ``FILE.safetensors`` with tensors
``images`` [N, *S] and ``labels`` [N], or an image folder with one subfolder per class.
:func:`parse_domain`, :func:`parse_size` and :func:`parse_floats` turn the command line's
comma-separated values into those arguments.

Every problem a user can cause raises :class:`~attrbound.errors.AttrboundError` with one
sentence.
"""

from attrbound.intake.data import load_data, parse_domain, parse_floats, parse_size
from attrbound.intake.model import Normalized, load_factory, load_model
from attrbound.intake.pt2 import check_pt2, load_exported

__all__ = [
    "Normalized",
    "check_pt2",
    "load_data",
    "load_exported",
    "load_factory",
    "load_model",
    "parse_domain",
    "parse_floats",
    "parse_size",
]
