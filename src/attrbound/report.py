"""The campaign report: an offline HTML page with tables and PNG figures, from evaluate rows.

``write_report(rows_path, out_dir)`` reads the rows of :func:`attrbound.campaign.run_campaign`
(a truncated last line is ignored) and writes into ``out_dir``:

- ``report.html``: the page; it references only the PNG files beside it (no scripts, no
  network), so the folder can be copied and opened anywhere;
- ``deviation_vs_eps.png``: per (attribution, norm), the euclidean deviation against eps:
  each bound method's mean (solid) and max (dashed) over inputs, and the best attack's;
- ``bound_vs_attack.png``: per (attribution, norm), one point per input and bound method,
  x = the bound U, y = the best attack L, with the line y = x (points above it are
  violations);
- ``tightness.png``: per (attribution, norm), histograms of L / U per bound method;
- ``gallery.png``: the worst inputs (violations first, then the largest relative deviation
  L / ||A(x)||): the input x, its map A(x), the map A(x_adv) at the best euclidean attack and
  the perturbation x_adv - x. x_adv comes from the campaign's sidecar ``<rows>.adv/``; x and
  the maps are recomputed from the checkpoint and dataset named in the rows (the checkpoint's
  SHA-256 must match the rows'); when either is unavailable the page says so and shows no
  gallery.

Figures use matplotlib's Agg renderer through :class:`matplotlib.figure.Figure` (no pyplot,
no display needed).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from attrbound.campaign import file_sha256, read_rows, summarize
from attrbound.errors import AttrboundError

#: colours of the bound methods and of the best attack in the figures
COLOURS = {"taylor": "tab:blue", "region": "tab:green", "interval": "tab:purple",
           "attack": "black"}


def _figure(rows: int, cols: int, size: tuple[float, float] = (4.2, 3.2)) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * cols, size[1] * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path.name


def _panels(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    attributions = list(dict.fromkeys(r["attribution"] for r in rows))
    norms = sorted(dict.fromkeys(r["norm"] for r in rows), key=lambda p: (p != "2", p))
    return attributions, norms


def _methods(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(m for r in rows for m in r.get("bounds", {})))


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _norm_label(norm: str) -> str:
    return "l2" if norm == "2" else "l-inf"


def plot_deviation_vs_eps(rows: list[dict[str, Any]], path: Path) -> str:
    """Mean (solid) and max (dashed) over inputs of each bound and of the best attack,
    against eps; one panel per (attribution, norm). Returns the file name."""
    summary = summarize(rows)
    attributions, norms = _panels(rows)
    fig, axes = _figure(len(attributions), len(norms))
    for i, a in enumerate(attributions):
        for j, p in enumerate(norms):
            ax = axes[i][j]
            grp = [s for s in summary if s["attribution"] == a and s["norm"] == p]
            eps = [s["eps"] for s in grp]
            series: list[tuple[str, list[Any], list[Any]]] = [
                ("attack", [s["attack"]["euclidean_mean"] for s in grp],
                 [s["attack"]["euclidean_max"] for s in grp])]
            for m in _methods(rows):
                series.append((m, [s["bounds"].get(m, {}).get("euclidean_mean") for s in grp],
                               [s["bounds"].get(m, {}).get("euclidean_max") for s in grp]))
            positive = True
            for name, mean, top in series:
                c = COLOURS.get(name, None)
                label = "best attack" if name == "attack" else f"{name} bound"
                for vals, style, suffix in ((mean, "-", "mean"), (top, "--", "max")):
                    pts = [(e, v) for e, v in zip(eps, vals, strict=True) if v is not None]
                    if not pts:
                        continue
                    positive &= all(v > 0 for _, v in pts)
                    ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, color=c,
                            label=f"{label} ({suffix})")
            if positive and ax.has_data():
                ax.set_yscale("log")
            ax.set_title(f"{a.replace('_', ' ')}, {_norm_label(p)}", fontsize=9)
            ax.set_xlabel("eps")
            ax.set_ylabel("||A(x') - A(x)||_2")
            if i == 0 and j == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    return _save(fig, path)


def plot_bound_vs_attack(rows: list[dict[str, Any]], path: Path) -> str:
    """Per input and bound method: x = bound U, y = best attack L, with the line y = x; one
    panel per (attribution, norm), log-log axes (non-positive values are left out)."""
    attributions, norms = _panels(rows)
    fig, axes = _figure(len(attributions), len(norms), (4.0, 3.6))
    for i, a in enumerate(attributions):
        for j, p in enumerate(norms):
            ax = axes[i][j]
            grp = [r for r in rows if r["attribution"] == a and r["norm"] == p]
            lo, hi = math.inf, -math.inf
            for m in _methods(rows):
                pts = [(_num(r["bounds"][m].get("euclidean")),
                        _num(r["best"]["euclidean"]["value"]))
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
            ax.set_title(f"{a.replace('_', ' ')}, {_norm_label(p)}", fontsize=9)
            ax.set_xlabel("bound U")
            ax.set_ylabel("best attack L")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    return _save(fig, path)


def plot_tightness(rows: list[dict[str, Any]], path: Path) -> str:
    """Histograms of the tightness L / U per bound method (all eps together), one panel per
    (attribution, norm); a vertical line marks 1 (beyond it: a violation)."""
    attributions, norms = _panels(rows)
    fig, axes = _figure(len(attributions), len(norms))
    for i, a in enumerate(attributions):
        for j, p in enumerate(norms):
            ax = axes[i][j]
            grp = [r for r in rows if r["attribution"] == a and r["norm"] == p]
            data = {m: [v for r in grp if (v := _num(r.get("tightness", {}).get(m)))
                        is not None] for m in _methods(rows)}
            top = max([1.0] + [max(v) for v in data.values() if v])
            for m, vals in data.items():
                if vals:
                    ax.hist(vals, bins=30, range=(0, top), alpha=0.5, color=COLOURS.get(m),
                            label=m)
            ax.axvline(1.0, color="k", lw=0.8, ls="--")
            ax.set_title(f"{a.replace('_', ' ')}, {_norm_label(p)}", fontsize=9)
            ax.set_xlabel("tightness L / U")
            ax.set_ylabel("inputs")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    return _save(fig, path)


def worst_rows(rows: list[dict[str, Any]], count: int = 8) -> list[dict[str, Any]]:
    """The ``count`` worst rows that have an x_adv: those with a violation (of any bound,
    either metric) first, then by the relative deviation L / ||A(x)||, largest first."""

    def violated(r: dict[str, Any]) -> bool:
        return any(v for flags in r.get("violated", {}).values() for v in flags.values())

    def rel(r: dict[str, Any]) -> float:
        le, an = _num(r["best"]["euclidean"]["value"]), _num(r.get("attr_norm"))
        if le is None:
            return -math.inf
        return le / an if an else le

    have = [r for r in rows if r.get("adv")]
    return sorted(have, key=lambda r: (not violated(r), -rel(r)))[:count]


def gallery_tensors(
    rows_path: str | os.PathLike, chosen: Sequence[dict[str, Any]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, x_adv, A(x), A(x_adv)), each [w, *S], for the w rows ``chosen``.

    x is re-read from the dataset named in the rows' config, x_adv from the sidecar, and the
    maps are recomputed on the checkpoint (whose SHA-256 must match the rows') for the class
    the rows explain (``pred``), one batch per attribution method. Raises AttrboundError when
    the checkpoint or the sidecar is missing or the checkpoint changed.
    """
    from safetensors.torch import load_file

    from attrbound import data, models
    from attrbound.attributions import attribution
    from attrbound.campaign import adv_dir

    config = chosen[0]["config"]
    model_path = Path(config["model"])
    if not model_path.is_file():
        raise AttrboundError(f"the model checkpoint {model_path} named in the rows is missing")
    if file_sha256(model_path) != config["model_sha256"]:
        raise AttrboundError(f"the checkpoint {model_path} changed since the rows were written")
    model = models.load(model_path)
    images, _ = data.load(config["dataset"], split=config["split"], root=config["root"])
    x = images[torch.tensor([r["index"] for r in chosen])]
    files: dict[str, torch.Tensor] = {}
    for r in chosen:  # read each sidecar file once
        name = r["adv"]["file"]
        path = adv_dir(rows_path) / name
        if name not in files:
            if not path.is_file():
                raise AttrboundError(f"the x_adv sidecar {path} is missing")
            files[name] = load_file(str(path))["x_adv"]
    x_adv = torch.stack([files[r["adv"]["file"]][int(r["adv"]["row"])] for r in chosen])
    x_adv = x_adv.to(x.dtype)
    pred = torch.tensor([r["pred"] for r in chosen])
    before, after = torch.empty_like(x), torch.empty_like(x)
    opts = config.get("attribution_options", {})
    for name in dict.fromkeys(r["attribution"] for r in chosen):  # one batch per method
        sel = torch.tensor([r["attribution"] == name for r in chosen])
        attr = attribution(name, model, **opts.get(name, {}))
        maps = attr.attribute(torch.cat([x[sel], x_adv[sel]]), pred[sel].repeat(2)).detach()
        before[sel], after[sel] = maps.chunk(2)
    return x, x_adv, before, after


def _gallery(rows_path: Path, chosen: list[dict[str, Any]], path: Path) -> str:
    """Render the gallery PNG; raises AttrboundError when the model or data are unavailable."""
    from attrbound.plots import image_for_display, map_for_display

    x, x_adv, before, after = gallery_tensors(rows_path, chosen)
    fig, axes = _figure(len(chosen), 4, (2.0, 2.0))
    titles = ("input x", "A(x)", "A(x_adv)", "x_adv - x")
    for i, r in enumerate(chosen):
        lim = float(max(before[i].abs().max(), after[i].abs().max())) or 1.0
        delta = map_for_display(x_adv[i] - x[i])
        dlim = float(delta.abs().max()) or 1.0
        axes[i][0].imshow(image_for_display(x[i]).numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i][1].imshow(map_for_display(before[i]).numpy(), cmap="bwr", vmin=-lim, vmax=lim)
        axes[i][2].imshow(map_for_display(after[i]).numpy(), cmap="bwr", vmin=-lim, vmax=lim)
        axes[i][3].imshow(delta.numpy(), cmap="PuOr", vmin=-dlim, vmax=dlim)
        axes[i][0].set_ylabel(f"#{r['index']} {r['attribution'][:10]}\nl{r['norm']} "
                              f"eps {r['eps']:g}", fontsize=7)
        for j in range(4):
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
            if i == 0:
                axes[i][j].set_title(titles[j], fontsize=8)
    return _save(fig, path)


def _cell(v: Any, spec: str = ".4g") -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return format(v, spec)
    return html.escape(str(v))


def summary_table_html(summary: list[dict[str, Any]]) -> str:
    """The summary (:func:`attrbound.campaign.summarize`) as an HTML table: one line per
    (attribution, norm, eps) and bound method."""
    head = ("<tr><th>attribution</th><th>norm</th><th>eps</th><th>n</th>"
            "<th>attack mean</th><th>attack median</th><th>attack max</th>"
            "<th>attack min cos</th><th>bound</th>"
            "<th>bound mean</th><th>bound median</th><th>bound max</th><th>bound min cos</th>"
            "<th>median tightness</th><th>attack runs</th><th>violations (eucl./cos.)</th>"
            "</tr>")
    body = []
    for s in summary:
        bounds = s["bounds"] or {"&ndash;": None}
        for j, (m, b) in enumerate(bounds.items()):
            lead = "".join(f"<td>{_cell(v)}</td>" for v in (
                s["attribution"], s["norm"], s["eps"], s["n"], s["attack"]["euclidean_mean"],
                s["attack"].get("euclidean_median"), s["attack"]["euclidean_max"],
                s["attack"]["cosine_min"])) if j == 0 else "<td></td>" * 8
            if b is None:
                body.append(f"<tr>{lead}<td>{m}</td>{'<td></td>' * 5}"
                            f"<td>{s['attack_runs']}</td><td></td></tr>")
                continue
            viol = f"{b['violations_euclidean']} / {b['violations_cosine']}"
            cls = ' class="bad"' if b["violations"] else ""
            if b["errors"]:
                viol += f" ({b['errors']} failed)"
            body.append(
                f"<tr>{lead}<td>{html.escape(m)}</td><td>{_cell(b['euclidean_mean'])}</td>"
                f"<td>{_cell(b.get('euclidean_median'))}</td><td>{_cell(b['euclidean_max'])}</td>"
                f"<td>{_cell(b['cosine_min'])}</td>"
                f"<td>{_cell(b['tightness_median'], '.3f')}</td>"
                f"<td>{s['attack_runs'] if j == 0 else ''}</td><td{cls}>{viol}</td></tr>"
            )
    return f"<table>\n{head}\n" + "\n".join(body) + "\n</table>"


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td.bad{background:#fbb;font-weight:bold}
img{max-width:100%;border:1px solid #eee}code{background:#f4f4f4;padding:0 3px}
.note{color:#555;font-size:13px}"""


def write_report(
    rows_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    worst: int = 8,
    gallery: bool = True,
) -> Path:
    """Write ``out_dir/report.html`` and its PNG figures from a rows file; returns the page.

    ``worst``: number of inputs in the gallery (0 or ``gallery=False``: none). See the module
    docstring for the figures. Raises AttrboundError if the file has no rows.
    """
    rows_path, out = Path(rows_path), Path(out_dir)
    if not rows_path.is_file():
        raise AttrboundError(f"no rows file at {rows_path}.")
    rows = read_rows(rows_path)
    if not rows:
        raise AttrboundError(f"{rows_path} holds no rows; run `attrbound evaluate` first.")
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    figs = [
        ("Deviation against eps", plot_deviation_vs_eps(rows, out / "deviation_vs_eps.png"),
         "Mean (solid) and max (dashed) over inputs of each bound and of the best attack."),
        ("Bound against best attack, per input",
         plot_bound_vs_attack(rows, out / "bound_vs_attack.png"),
         "Points above the dashed line y = x would be violations."),
        ("Tightness", plot_tightness(rows, out / "tightness.png"),
         "Best attack / bound per input (1 = tight; above 1 = violation)."),
    ]
    gallery_html = ""
    if gallery and worst > 0:
        chosen = worst_rows(rows, worst)
        stale = out / "gallery.png"
        if stale.exists():
            stale.unlink()
        if not chosen:
            gallery_html = "<p class='note'>No gallery: the rows carry no x_adv.</p>"
        else:
            try:
                name = _gallery(rows_path, chosen, out / "gallery.png")
                gallery_html = (f"<img src='{name}' alt='gallery'>\n"
                                + _gallery_table(chosen))
            except (AttrboundError, OSError) as exc:
                gallery_html = f"<p class='note'>No gallery: {html.escape(str(exc))}.</p>"
    (out / "report.html").write_text(_page(rows, rows_path, summary, figs, gallery_html))
    return out / "report.html"


def _gallery_table(chosen: Sequence[dict[str, Any]]) -> str:
    lines = ["<table><tr><th>row</th><th>index</th><th>label</th><th>attribution</th>"
             "<th>norm</th><th>eps</th><th>best attack</th><th>L</th><th>L / ||A(x)||</th>"
             "<th>cosine</th><th>bounds U</th><th>violated</th></tr>"]
    for i, r in enumerate(chosen):
        le, an = r["best"]["euclidean"]["value"], r.get("attr_norm")
        bounds = ", ".join(f"{m} {_cell(b.get('euclidean'))}" for m, b in r["bounds"].items())
        bad = [m for m, f in r.get("violated", {}).items() if any(f.values())]
        lines.append(
            f"<tr><td>{i + 1}</td><td>{r['index']}</td><td>{r['label']}</td>"
            f"<td>{html.escape(r['attribution'])}</td><td>{r['norm']}</td>"
            f"<td>{r['eps']:g}</td><td>{_cell(r['adv'].get('attack'))}</td><td>{_cell(le)}</td>"
            f"<td>{_cell(le / an if le is not None and an else None)}</td>"
            f"<td>{_cell(r['best']['cosine']['value'])}</td><td>{html.escape(bounds)}</td>"
            f"<td{' class=bad' if bad else ''}>{html.escape(', '.join(bad)) or 'no'}</td></tr>")
    return "\n".join(lines) + "</table>"


def _page(rows: list[dict[str, Any]], rows_path: Path, summary: list[dict[str, Any]],
          figs: list[tuple[str, str, str]], gallery_html: str) -> str:
    config = rows[0].get("config", {})
    total_viol = {m: sum(b["violations"] for s in summary for mm, b in s["bounds"].items()
                         if mm == m) for m in _methods(rows)}
    runs = sum(int(r.get("attack_runs", 0)) for r in rows)
    inputs = len({r["index"] for r in rows})
    verdict = ", ".join(f"{m}: {v} of {sum(m in r.get('bounds', {}) for r in rows)} rows"
                        for m, v in total_viol.items()) or "no bound methods"
    meta = [
        ("rows file", str(rows_path)), ("rows", str(len(rows))), ("inputs", str(inputs)),
        ("attack runs", str(runs)),
        ("model", f"{config.get('model', '?')} (sha256 {str(config.get('model_sha256'))[:16]})"),
        ("dataset", f"{config.get('dataset')} / {config.get('split')}"),
        ("attacks", ", ".join(config.get("attacks", []))),
        ("budgets", f"steps {config.get('steps')}, restarts {config.get('restarts')}, "
                    f"random samples {config.get('samples')}, k {config.get('k')}"),
        ("seed", str(config.get("seed"))), ("attrbound", str(config.get("version"))),
        ("configuration id", str(config.get("config_id"))),
    ]
    meta_html = "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>"
                        f"{html.escape(v)}</td></tr>" for k, v in meta)
    figs_html = "\n".join(f"<h2>{html.escape(t)}</h2>\n<p class='note'>{html.escape(note)}</p>"
                          f"\n<img src='{name}' alt='{html.escape(t)}'>" for t, name, note in figs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>attrbound report</title>
<style>{_CSS}</style></head><body>
<h1>attrbound validation report</h1>
<table>{meta_html}</table>
<p><b>Violations</b> (inputs where the best attack beat the bound: euclidean L &gt;
U(1 + 1e-6) + 1e-9, or cosine l &lt; C &minus; 1e-6): {html.escape(verdict)}.</p>
<h2>Summary</h2>
<p class="note">Per attribution, norm and eps: the best attack's euclidean deviation
||A(x') &minus; A(x)||<sub>2</sub> (mean, max) and smallest cosine similarity; each bound's
mean, max and smallest cosine lower bound; median tightness (best attack / bound); attack runs;
violations.</p>
{summary_table_html(summary)}
{figs_html}
<h2>Gallery: worst inputs</h2>
<p class="note">Violations first, then the largest relative deviation L / ||A(x)||; maps in
red (positive) and blue (negative), A(x) and A(x_adv) on the same scale.</p>
{gallery_html}
</body></html>
"""
