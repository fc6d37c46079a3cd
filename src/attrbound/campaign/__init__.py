"""The validation campaign (docs/design.md section 6): bounds and attacks over a grid, one row each.

For a model, a dataset split and a grid of settings, the campaign computes for every input x
(``n`` inputs from index ``start``) and every configuration c = (attribution, norm, eps):

- every bound method m (``taylor``, ``region``, ``interval``): U_m(x) >= max ||A(x') - A(x)||_2
  and the cosine lower bound C_m(x) <= min cos(A(x), A(x')) over the perturbation set;
- every attack (``pgd``, ``ifia_topk``, ``ifia_center``, ``random``): a point x' of the set and
  its euclidean deviation, cosine similarity, top-k intersection, Kendall and Spearman;
- the best attack per metric over the attacks that kept the label, and per bound method the
  VIOLATION flags: whether the best attack, on the map that bound bounded, beat it.

Which folder for which change:

- :mod:`~attrbound.campaign.grid`: the settings (:class:`Grid`), TOML files, the identity;
- :mod:`~attrbound.campaign.rows`: the row schema, best attacks, violations, tightness;
- :mod:`~attrbound.campaign.store`: the rows file (crash-safe appends, lock) and the x_adv
  sidecar;
- :mod:`~attrbound.campaign.unit`: one batch x one configuration (:func:`evaluate_unit`);
- :mod:`~attrbound.campaign.executor`: who runs the units (:class:`SerialExecutor`);
- :mod:`~attrbound.campaign.runner`: :func:`run_campaign`, resuming;
- :mod:`~attrbound.campaign.summary`: per-configuration summaries and their table.
"""

from __future__ import annotations

from attrbound.campaign.executor import Executor, SerialExecutor
from attrbound.campaign.grid import (
    ATTACK_METHODS,
    BOUND_METHODS,
    Grid,
    config_id,
    load_toml,
)
from attrbound.campaign.rows import (
    ATTACK_METRICS,
    COSINE_ATOL,
    EUCLIDEAN_ATOL,
    EUCLIDEAN_RTOL,
    INPUT_FIELDS,
    KEY_FIELDS,
    MODEL_MAP,
    Key,
    attack_value,
    best_attacks,
    compared_metrics,
    finite_or_none,
    make_row,
    map_name,
    method_rows,
    row_key,
    tightness,
    violation,
    without_timings,
)
from attrbound.campaign.runner import plan_units, prepare, run_campaign, run_units
from attrbound.campaign.store import (
    ConfigMismatch,
    adv_dir,
    append_rows,
    file_sha256,
    load_adv,
    load_adv_file,
    read_rows,
)
from attrbound.campaign.summary import bounded_maps, format_summary, group_rows, summarize
from attrbound.campaign.unit import Unit, UnitContext, UnitResult, evaluate_unit

__all__ = [
    "ATTACK_METHODS", "ATTACK_METRICS", "BOUND_METHODS", "COSINE_ATOL", "EUCLIDEAN_ATOL",
    "EUCLIDEAN_RTOL", "INPUT_FIELDS", "KEY_FIELDS", "MODEL_MAP", "ConfigMismatch", "Executor",
    "Grid", "Key", "SerialExecutor", "Unit", "UnitContext", "UnitResult", "adv_dir",
    "append_rows", "attack_value", "best_attacks", "bounded_maps", "compared_metrics",
    "config_id", "evaluate_unit", "file_sha256", "finite_or_none", "format_summary",
    "group_rows", "load_adv", "load_adv_file", "load_toml", "make_row", "map_name",
    "method_rows", "plan_units", "prepare", "read_rows", "row_key", "run_campaign",
    "run_units", "summarize", "tightness", "violation", "without_timings",
]
