"""The campaign's row: one JSON object per (input, attribution, norm, eps).

A row holds every bound method's and every attack's figures for that input, the best attack
per metric, and per bound method whether the best attack beat it (a VIOLATION):

    euclidean:  L(x) > U_m(x) (1 + 1e-6) + 1e-9      (L = best attack's euclidean deviation)
    cosine:     l(x) < C_m(x) - 1e-6                 (l = best attack's cosine similarity)

Like is compared with like (docs/design.md section 6). With a smooth surrogate (the
campaign's ``surrogate_beta`` on a ReLU / max-pool model) the practical bounds (taylor,
region) bound the surrogate's map, and the attacks' ``euclidean`` / ``cosine`` are measured
on that same map, so those bounds are compared with them. ``interval`` bounds the real
model's map, so it is compared with the attacks' ``raw_euclidean`` / ``raw_cosine`` (the
real model's deviation at the same x_adv; the plain figures where an attack reports none).
The row's ``map`` names the map of the practical bounds and the attacks' plain figures,
each bound's own entry the map it bounded, and ``against`` which best-attack figures each
bound was compared with.

A violation means the bound was not an upper bound for that input: a practical bound missed
the worst case, or a certified one is wrong. The CLI's ``bound`` and ``attack`` commands
write the same rows split per method (:func:`method_rows`).
"""

from __future__ import annotations

import math
from typing import Any

#: metric -> "max" (larger is a stronger attack) or "min" (smaller is stronger); the raw_*
#: metrics are the real model's, next to a surrogate's plain ones
ATTACK_METRICS = {
    "euclidean": "max",
    "cosine": "min",
    "topk_intersection": "min",
    "kendall": "min",
    "spearman": "min",
    "raw_euclidean": "max",
    "raw_cosine": "min",
}
#: violation tolerances: euclidean L > U (1 + RTOL) + ATOL; cosine l < C - COSINE_ATOL
EUCLIDEAN_RTOL = 1e-6
EUCLIDEAN_ATOL = 1e-9
COSINE_ATOL = 1e-6
#: the key identifying a row
KEY_FIELDS = ("index", "attribution", "norm", "eps")
#: the per-input fields a row shares with each of its per-method rows (:func:`method_rows`)
INPUT_FIELDS = ("index", "label", "pred", "attribution", "norm", "eps", "attr_norm", "map",
                "seed", "config")
#: the map of the real model (see :func:`map_name`)
MODEL_MAP = "model"

Key = tuple[int, str, str, float]


def finite_or_none(v: Any) -> float | None:
    """float(v) if it is a finite number (not a bool), else None."""
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def map_name(surrogate_beta: float | None) -> str:
    """The name of the map a figure is measured on: ``"model"`` (the real model's), or
    ``"surrogate(beta=10)"`` (the map of :func:`attrbound.models.smooth_surrogate`)."""
    return MODEL_MAP if surrogate_beta is None else f"surrogate(beta={float(surrogate_beta):g})"


def best_attacks(attacks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric, the strongest attack among those that kept the label.

    ``attacks``: attack name -> its figures (``euclidean``, ``cosine``, ``topk_intersection``,
    ``kendall``, ``spearman``, optionally ``raw_euclidean`` / ``raw_cosine``, and
    ``label_kept``; an entry with ``error`` is ignored). Returns metric -> {"value": float |
    None, "attack": name | None}: the max over attacks of the euclidean metrics, the min of
    the others (:data:`ATTACK_METRICS`); ties go to the first attack.
    """
    out: dict[str, dict[str, Any]] = {}
    for metric, sense in ATTACK_METRICS.items():
        best: tuple[float, str] | None = None
        for name, res in attacks.items():
            if "error" in res or not res.get("label_kept", False):
                continue
            v = finite_or_none(res.get(metric))
            if v is None:
                continue
            if best is None or (v > best[0] if sense == "max" else v < best[0]):
                best = (v, name)
        out[metric] = {"value": None if best is None else best[0],
                       "attack": None if best is None else best[1]}
    return out


def violation(
    attack_euclidean: float | None,
    bound_euclidean: float | None,
    attack_cosine: float | None = None,
    bound_cosine: float | None = None,
) -> dict[str, bool | None]:
    """Whether the best attack beat a bound (None where either figure is missing):

        euclidean: L > U (1 + 1e-6) + 1e-9;     cosine: l < C - 1e-6

    with L, l the best attack's euclidean deviation and cosine similarity, U, C the bound's
    euclidean upper bound and cosine lower bound.
    """
    le, ue = finite_or_none(attack_euclidean), finite_or_none(bound_euclidean)
    lc, uc = finite_or_none(attack_cosine), finite_or_none(bound_cosine)
    return {
        "euclidean": None if le is None or ue is None
        else le > ue * (1 + EUCLIDEAN_RTOL) + EUCLIDEAN_ATOL,
        "cosine": None if lc is None or uc is None else lc < uc - COSINE_ATOL,
    }


def tightness(attack_euclidean: float | None, bound_euclidean: float | None) -> float | None:
    """L / U (the best attack over the bound, 1 = tight); None if U is missing or 0."""
    le, ue = finite_or_none(attack_euclidean), finite_or_none(bound_euclidean)
    if le is None or ue is None or ue <= 0:
        return None
    return le / ue


def compared_metrics(
    bound_map: str, row_map: str, best: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Which best-attack metrics a bound on ``bound_map`` is compared with, in a row whose
    attacks' plain figures are on ``row_map``: {"euclidean": ..., "cosine": ...}.

    The plain ``euclidean`` / ``cosine`` when the maps agree; ``raw_euclidean`` /
    ``raw_cosine`` (the real model's) for a bound on the real model's map in a row measured
    on a surrogate, each falling back to the plain metric when no attack reported it.
    """
    if bound_map == row_map or bound_map != MODEL_MAP:
        return {"euclidean": "euclidean", "cosine": "cosine"}
    return {metric: f"raw_{metric}" if best[f"raw_{metric}"]["value"] is not None else metric
            for metric in ("euclidean", "cosine")}


def make_row(
    *,
    index: int,
    label: int,
    pred: int,
    attribution: str,
    norm: str,
    eps: float,
    bounds: dict[str, dict[str, Any]],
    attacks: dict[str, dict[str, Any]],
    attr_norm: float | None,
    seconds: dict[str, float],
    config: dict[str, Any],
    seed: int,
    map: str = MODEL_MAP,
    adv: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble one row from per-method figures. Fields:

    - ``index`` (in the dataset split), ``label`` (true class), ``pred`` (predicted class,
      the one explained), ``attribution``, ``norm``, ``eps``, ``attr_norm`` ||A(x)||_2;
    - ``map``: the map the practical bounds bounded and the attacks' plain figures measure
      (:func:`map_name`);
    - ``bounds``: method -> {``euclidean``, ``cosine``, ``operator_norm``, ``map``, ...} or
      {``error``};
    - ``attacks``: method -> {``euclidean``, ``cosine``, ``topk_intersection``, ``kendall``,
      ``spearman``, ``raw_euclidean``, ``raw_cosine``, ``label_kept``, ``found``, ``runs``,
      ``map``, ...} or {``error``};
    - ``best``: metric -> {``value``, ``attack``} (:func:`best_attacks`);
    - ``against``: bound method -> the best-attack metrics it is compared with
      (:func:`compared_metrics`);
    - ``violated``: bound method -> {``euclidean``, ``cosine``} (:func:`violation`);
    - ``tightness``: bound method -> best euclidean attack (as in ``against``) / bound;
    - ``attack_runs``: attack runs (inputs x restarts) spent on this row;
    - ``seconds``: per-method and total wall time attributed to this row (its share of the
      batch call); a taylor taken from the region bound's solve (``taylor_from_region``) shows
      that part of region's time, which ``total`` counts once;
    - ``seed`` (of this row's unit), ``config`` (the campaign identity plus ``config_id``,
      ``model`` path, ``torch`` version), ``adv`` (sidecar file and position of x_adv).
    """
    best = best_attacks(attacks)
    against = {m: compared_metrics(b.get("map", map), map, best) for m, b in bounds.items()}
    violated = {
        m: violation(best[against[m]["euclidean"]]["value"], b.get("euclidean"),
                     best[against[m]["cosine"]]["value"], b.get("cosine"))
        for m, b in bounds.items()
    }
    tight = {m: tightness(best[against[m]["euclidean"]]["value"], b.get("euclidean"))
             for m, b in bounds.items()}
    row = {
        "index": int(index),
        "label": int(label),
        "pred": int(pred),
        "attribution": attribution,
        "norm": norm,
        "eps": float(eps),
        "attr_norm": finite_or_none(attr_norm),
        "map": map,
        "bounds": bounds,
        "attacks": attacks,
        "best": best,
        "against": against,
        "violated": violated,
        "tightness": tight,
        "attack_runs": int(sum(int(a.get("runs", 0)) for a in attacks.values())),
        "seconds": seconds,
        "seed": int(seed),
        "config": config,
        "adv": adv,
    }
    return _sanitize(row)


def attack_value(row: dict[str, Any], method: str, metric: str = "euclidean") -> float | None:
    """The best attack's figure that bound ``method`` of ``row`` is compared with (its
    ``against`` entry; the plain metric in rows written before it existed)."""
    key = row.get("against", {}).get(method, {}).get(metric, metric)
    return finite_or_none(row["best"].get(key, {}).get("value"))


def _sanitize(value: Any) -> Any:
    """Non-finite floats -> None (strict JSON), tuples -> lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    return value


def row_key(row: dict[str, Any]) -> Key:
    """(index, attribution, norm, eps) of a row."""
    return (int(row["index"]), str(row["attribution"]), str(row["norm"]), float(row["eps"]))


def without_timings(row: dict[str, Any]) -> dict[str, Any]:
    """The row without its ``seconds`` fields (for comparing two runs)."""
    if isinstance(row, dict):
        return {k: without_timings(v) for k, v in row.items() if k != "seconds"}
    return row


def method_rows(row: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The row split per method of ``kind`` (``"bounds"`` or ``"attacks"``): one flat dict
    per method, with the row's :data:`INPUT_FIELDS`, ``method``, the method's figures under
    their names in the row (its own ``map`` included), and ``seconds``, the method's share of
    the row's time. The rows of ``attrbound bound`` and ``attrbound attack``."""
    if kind not in ("bounds", "attacks"):
        raise ValueError(f"kind must be 'bounds' or 'attacks', got {kind!r}")
    base = {k: row[k] for k in INPUT_FIELDS if k in row}
    timing = row.get("seconds", {})
    return [{**base, "method": m, **figures, "seconds": timing.get(f"{kind[:-1]}:{m}")}
            for m, figures in row[kind].items()]
