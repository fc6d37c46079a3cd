"""Summaries of campaign rows: one per (attribution, norm, eps), and a plain-text table."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from attrbound.campaign.rows import MODEL_MAP, finite_or_none


def _values(rows: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> list[float]:
    out = []
    for r in rows:
        try:
            v = finite_or_none(get(r))
        except (KeyError, TypeError):
            v = None
        if v is not None:
            out.append(v)
    return out


def _mean(v: list[float]) -> float | None:
    return sum(v) / len(v) if v else None


def group_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    """Rows grouped by (attribution, norm, eps), groups in order of first appearance."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["attribution"], r["norm"], float(r["eps"])), []).append(r)
    return groups


def _bound_map(rows: list[dict[str, Any]], method: str) -> str:
    """The map bound ``method`` bounded in these rows (its first record that names one)."""
    for r in rows:
        entry = r.get("bounds", {}).get(method, {})
        if "map" in entry:
            return str(entry["map"])
    return str(rows[0].get("map", MODEL_MAP)) if rows else MODEL_MAP


def _bound_summary(have: list[dict[str, Any]], m: str) -> dict[str, Any]:
    ue = _values(have, lambda r: r["bounds"][m]["euclidean"])
    uc = _values(have, lambda r: r["bounds"][m]["cosine"])
    tt = _values(have, lambda r: r["tightness"][m])
    ve = [bool(r["violated"][m]["euclidean"]) for r in have]
    vc = [bool(r["violated"][m]["cosine"]) for r in have]
    return {
        "map": _bound_map(have, m),
        "euclidean_mean": _mean(ue),
        "euclidean_median": statistics.median(ue) if ue else None,
        "euclidean_max": max(ue) if ue else None,
        "cosine_mean": _mean(uc),
        "cosine_min": min(uc) if uc else None,
        "tightness_median": statistics.median(tt) if tt else None,
        "violations": sum(a or c for a, c in zip(ve, vc, strict=True)),
        "violations_euclidean": sum(ve),
        "violations_cosine": sum(vc),
        "errors": sum("error" in r["bounds"][m]
                      or finite_or_none(r["bounds"][m].get("euclidean")) is None for r in have),
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (attribution, norm, eps), sorted by attribution (first appearance),
    norm and eps:

    - ``n`` rows, ``attack_runs`` (sum), ``seconds`` (sum of row totals), ``map`` (the map
      the attacks' plain figures measure);
    - ``attack``: mean / median / max of the best attack's euclidean deviation
      (``euclidean_mean``, ``euclidean_median``, ``euclidean_max``), mean / min of its cosine
      (``cosine_mean``, ``cosine_min``);
    - ``bounds``: method -> ``map`` (the map it bounded), ``euclidean_mean``,
      ``euclidean_median``, ``euclidean_max``, ``cosine_mean``, ``cosine_min``,
      ``tightness_median`` (median over rows of attack / bound, the attack figure on the
      bound's map), ``violations`` (rows with a violation of either metric),
      ``violations_euclidean``, ``violations_cosine``, ``errors`` (rows where the method
      failed, or returned a non-finite euclidean bound: such a row can flag no violation).
    Means, medians and extremes skip missing values; a figure with none is None.
    """
    groups = group_rows(rows)
    order = {a: i for i, a in enumerate(dict.fromkeys(r["attribution"] for r in rows))}
    out = []
    for (attribution, norm, eps), grp in sorted(
        groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] != "2", kv[0][1], kv[0][2])
    ):
        best_e = _values(grp, lambda r: r["best"]["euclidean"]["value"])
        best_c = _values(grp, lambda r: r["best"]["cosine"]["value"])
        methods = list(dict.fromkeys(m for r in grp for m in r.get("bounds", {})))
        out.append({
            "attribution": attribution,
            "norm": norm,
            "eps": eps,
            "n": len(grp),
            "map": str(grp[0].get("map", MODEL_MAP)),
            "attack_runs": sum(int(r.get("attack_runs", 0)) for r in grp),
            "seconds": sum(_values(grp, lambda r: r["seconds"]["total"])),
            "attack": {
                "euclidean_mean": _mean(best_e),
                "euclidean_median": statistics.median(best_e) if best_e else None,
                "euclidean_max": max(best_e) if best_e else None,
                "cosine_mean": _mean(best_c),
                "cosine_min": min(best_c) if best_c else None,
            },
            "bounds": {m: _bound_summary([r for r in grp if m in r.get("bounds", {})], m)
                       for m in methods},
        })
    return out


def bounded_maps(summary: list[dict[str, Any]]) -> dict[str, str]:
    """Bound method -> the map it bounded, over a summary (e.g. {"taylor":
    "surrogate(beta=10)", "interval": "model"})."""
    return {m: b["map"] for s in summary for m, b in s["bounds"].items()}


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def format_summary(summary: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarize`'s output: one line per (attribution, norm,
    eps) and bound method, with the best attack's mean / max euclidean deviation, the
    bound's mean / max, the median tightness (attack / bound), attack runs and violations
    (euclidean / cosine); the last line totals runs and violations and names each bound's
    map."""
    head = (f"{'attribution':<22}{'norm':>5}{'eps':>8}{'n':>6}{'attack mean':>13}{'max':>11}"
            f"  {'bound':<9}{'mean':>11}{'max':>11}{'tight.med':>10}{'runs':>8}"
            f"{'viol(e/c)':>11}")
    lines = [head, "-" * len(head)]
    total_runs = 0
    total_viol: dict[str, int] = {}
    for s in summary:
        total_runs += s["attack_runs"]
        bounds = s["bounds"] or {"-": None}
        for j, (m, b) in enumerate(bounds.items()):
            lead = (f"{s['attribution']:<22}{s['norm']:>5}{s['eps']:>8.4g}{s['n']:>6}"
                    f"{_fmt(s['attack']['euclidean_mean']):>13}"
                    f"{_fmt(s['attack']['euclidean_max']):>11}") if j == 0 else " " * 65
            if b is None:
                lines.append(f"{lead}  {'-':<9}{'':>40}{s['attack_runs']:>8}")
                continue
            total_viol[m] = total_viol.get(m, 0) + b["violations"]
            viol = f"{b['violations_euclidean']}/{b['violations_cosine']}"
            if b["errors"]:
                viol += f" ({b['errors']} err)"
            lines.append(
                f"{lead}  {m:<9}{_fmt(b['euclidean_mean']):>11}{_fmt(b['euclidean_max']):>11}"
                f"{_fmt(b['tightness_median'], '.3f'):>10}"
                f"{s['attack_runs'] if j == 0 else '':>8}{viol:>11}"
            )
    viol_text = ", ".join(f"{m}: {v}" for m, v in total_viol.items()) or "no bounds"
    maps = bounded_maps(summary)
    map_text = f"; maps bounded: {', '.join(f'{m} {v}' for m, v in maps.items())}" if maps else ""
    lines.append("-" * len(head))
    lines.append(f"attack runs: {total_runs}; inputs with a violation, per bound: {viol_text}"
                 f"{map_text}")
    return "\n".join(lines)
