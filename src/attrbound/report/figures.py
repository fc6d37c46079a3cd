"""The report's figures (PNG, matplotlib's Agg renderer through :class:`Figure`: no pyplot,
no display): deviation against eps, bound against best attack, tightness histograms.

Every figure has one panel per (attribution, norm). A bound is plotted against the best
attack's figure on the map it bounded (:func:`attrbound.campaign.attack_value`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from attrbound.campaign import attack_value, finite_or_none, summarize

#: colours of the bound methods and of the best attack in the figures
COLOURS = {"taylor": "tab:blue", "region": "tab:green", "interval": "tab:purple",
           "smoothed": "tab:orange", "attack": "black"}


def figure(rows: int, cols: int, size: tuple[float, float] = (4.2, 3.2)) -> tuple[Figure, Any]:
    """A figure of rows x cols panels, each ``size`` inches; (figure, axes [rows][cols])."""
    fig = Figure(figsize=(size[0] * cols, size[1] * rows))
    return fig, fig.subplots(rows, cols, squeeze=False)


def save(fig: Figure, path: Path) -> str:
    """Write the figure as a PNG; returns its file name."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path.name


def panels(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(attributions in order of appearance, norms with l2 first)."""
    attributions = list(dict.fromkeys(r["attribution"] for r in rows))
    norms = sorted(dict.fromkeys(r["norm"] for r in rows), key=lambda p: (p != "2", p))
    return attributions, norms


def methods(rows: list[dict[str, Any]]) -> list[str]:
    """The bound methods of the rows, in order of appearance."""
    return list(dict.fromkeys(m for r in rows for m in r.get("bounds", {})))


def _label(ax: Axes, attribution: str, norm: str, xlabel: str, ylabel: str,
           legend: bool = True) -> None:
    """A panel's title (attribution, norm), axis labels and, when ``legend`` and the panel
    has labelled artists, its legend."""
    ax.set_title(f"{attribution.replace('_', ' ')}, {'l2' if norm == '2' else 'l-inf'}",
                 fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def plot_deviation_vs_eps(rows: list[dict[str, Any]], path: Path) -> str:
    """Mean (solid) and max (dashed) over inputs of each bound and of the best attack,
    against eps; one panel per (attribution, norm). Returns the file name."""
    summary = summarize(rows)
    attributions, norms = panels(rows)
    fig, axes = figure(len(attributions), len(norms))
    for i, a in enumerate(attributions):
        for j, p in enumerate(norms):
            ax = axes[i][j]
            grp = [s for s in summary if s["attribution"] == a and s["norm"] == p]
            eps = [s["eps"] for s in grp]
            series: list[tuple[str, list[Any], list[Any]]] = [
                ("attack", [s["attack"]["euclidean_mean"] for s in grp],
                 [s["attack"]["euclidean_max"] for s in grp])]
            for m in methods(rows):
                series.append((m, [s["bounds"].get(m, {}).get("euclidean_mean") for s in grp],
                               [s["bounds"].get(m, {}).get("euclidean_max") for s in grp]))
            positive = True
            for name, mean, top in series:
                label = "best attack" if name == "attack" else f"{name} bound"
                for vals, style, suffix in ((mean, "-", "mean"), (top, "--", "max")):
                    pts = [(e, v) for e, v in zip(eps, vals, strict=True) if v is not None]
                    if not pts:
                        continue
                    positive &= all(v > 0 for _, v in pts)
                    ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3,
                            color=COLOURS.get(name), label=f"{label} ({suffix})")
            if positive and ax.has_data():
                ax.set_yscale("log")
            _label(ax, a, p, "eps", "||A(x') - A(x)||_2", legend=i == 0 and j == 0)
    return save(fig, path)


def plot_bound_vs_attack(rows: list[dict[str, Any]], path: Path) -> str:
    """Per input and bound method: x = bound U, y = best attack L on the bound's map, with
    the line y = x; one panel per (attribution, norm), log-log axes (non-positive values are
    left out)."""
    attributions, norms = panels(rows)
    fig, axes = figure(len(attributions), len(norms), (4.0, 3.6))
    for i, a in enumerate(attributions):
        for j, p in enumerate(norms):
            ax = axes[i][j]
            grp = [r for r in rows if r["attribution"] == a and r["norm"] == p]
            lo, hi = math.inf, -math.inf
            for m in methods(rows):
                pts = [(finite_or_none(r["bounds"][m].get("euclidean")), attack_value(r, m))
                       for r in grp if m in r.get("bounds", {})]
                pts = [(u, v) for u, v in pts if u is not None and v is not None
                       and u > 0 and v > 0]
                if not pts:
                    continue
                us, ls = zip(*pts, strict=True)
                lo, hi = min(lo, *us, *ls), max(hi, *us, *ls)
                ax.scatter(us, ls, s=8, alpha=0.6, color=COLOURS.get(m), label=m)
            if hi > 0 and math.isfinite(lo):
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
                ax.set_xscale("log")
                ax.set_yscale("log")
            _label(ax, a, p, "bound U", "best attack L")
    return save(fig, path)


def plot_tightness(rows: list[dict[str, Any]], path: Path) -> str:
    """Histograms of the tightness L / U per bound method (all eps together), one panel per
    (attribution, norm); a vertical line marks 1 (beyond it: a violation)."""
    attributions, norms = panels(rows)
    fig, axes = figure(len(attributions), len(norms))
    for i, a in enumerate(attributions):
        for j, p in enumerate(norms):
            ax = axes[i][j]
            grp = [r for r in rows if r["attribution"] == a and r["norm"] == p]
            data = {m: [v for r in grp
                        if (v := finite_or_none(r.get("tightness", {}).get(m))) is not None]
                    for m in methods(rows)}
            top = max([1.0] + [max(v) for v in data.values() if v])
            for m, vals in data.items():
                if vals:
                    ax.hist(vals, bins=30, range=(0, top), alpha=0.5, color=COLOURS.get(m),
                            label=m)
            ax.axvline(1.0, color="k", lw=0.8, ls="--")
            _label(ax, a, p, "tightness L / U", "inputs")
    return save(fig, path)


def plot_smoothed_cosine(rows: list[dict[str, Any]], path: Path) -> str | None:
    """Median over inputs of the certified cosine of method ``smoothed`` (probability
    >= 1 - alpha) against eps, one line per sigma; one panel per (attribution, norm).
    None (no file) when no row has a smoothed bound."""
    found = [r for r in rows if finite_or_none(r.get("bounds", {}).get("smoothed", {})
                                               .get("cosine")) is not None]
    if not found:
        return None
    attributions, norms = panels(found)
    fig, axes = figure(len(attributions), len(norms))
    for i, a in enumerate(attributions):
        for j, p in enumerate(norms):
            ax = axes[i][j]
            curves: dict[float, dict[float, list[float]]] = {}
            for r in found:
                if r["attribution"] == a and r["norm"] == p:
                    b = r["bounds"]["smoothed"]
                    curves.setdefault(float(b.get("sigma") or math.nan), {}).setdefault(
                        float(r["eps"]), []).append(float(b["cosine"]))
            for sigma, by_eps in sorted(curves.items()):
                eps = sorted(by_eps)
                med = [sorted(by_eps[e])[len(by_eps[e]) // 2] for e in eps]
                ax.plot(eps, med, "-", marker="o", ms=3, label=f"sigma {sigma:g}")
            ax.set_xscale("log")
            ax.set_ylim(-1.05, 1.05)
            _label(ax, a, p, "eps", "certified cos(h(x), h(x'))")
    return save(fig, path)
