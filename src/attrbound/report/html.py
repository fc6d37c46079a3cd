"""The report page: ``report.html`` with its tables, beside the PNG figures it shows.

The page references only the PNG files in its folder (no scripts, no network), so the
folder can be copied and opened anywhere. It names the map each bound bounded: with a
smooth surrogate, taylor and region bound the surrogate's map and are compared with the
attacks' figures on it, interval bounds the real model's map and is compared with the
attacks' raw figures (:mod:`attrbound.campaign.rows`).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrbound.campaign import MODEL_MAP, bounded_maps, read_rows, summarize
from attrbound.errors import AttrboundError
from attrbound.report.figures import (
    methods,
    plot_bound_vs_attack,
    plot_deviation_vs_eps,
    plot_smoothed_cosine,
    plot_tightness,
)
from attrbound.report.gallery import render_gallery, worst_rows


def cell(v: Any, spec: str = ".4g") -> str:
    """An HTML table cell's text: a dash for None, floats formatted with ``spec``."""
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return format(v, spec)
    return html.escape(str(v))


def summary_table_html(summary: list[dict[str, Any]]) -> str:
    """The summary (:func:`attrbound.campaign.summarize`) as an HTML table: one line per
    (attribution, norm, eps) and bound method, with the map that bound bounded."""
    head = ("<tr><th>attribution</th><th>norm</th><th>eps</th><th>n</th>"
            "<th>attack mean</th><th>attack median</th><th>attack max</th>"
            "<th>attack min cos</th><th>bound</th><th>map bounded</th>"
            "<th>bound mean</th><th>bound median</th><th>bound max</th><th>bound min cos</th>"
            "<th>median tightness</th><th>attack runs</th><th>violations (eucl./cos.)</th>"
            "</tr>")
    body = []
    for s in summary:
        bounds = s["bounds"] or {"&ndash;": None}
        for j, (m, b) in enumerate(bounds.items()):
            lead = "".join(f"<td>{cell(v)}</td>" for v in (
                s["attribution"], s["norm"], s["eps"], s["n"], s["attack"]["euclidean_mean"],
                s["attack"].get("euclidean_median"), s["attack"]["euclidean_max"],
                s["attack"]["cosine_min"])) if j == 0 else "<td></td>" * 8
            if b is None:
                body.append(f"<tr>{lead}<td>{m}</td>{'<td></td>' * 6}"
                            f"<td>{s['attack_runs']}</td><td></td></tr>")
                continue
            viol = f"{b['violations_euclidean']} / {b['violations_cosine']}"
            cls = ' class="bad"' if b["violations"] else ""
            if b["errors"]:
                viol += f" ({b['errors']} failed)"
            body.append(
                f"<tr>{lead}<td>{html.escape(m)}</td><td>{cell(b.get('map', MODEL_MAP))}</td>"
                f"<td>{cell(b['euclidean_mean'])}</td>"
                f"<td>{cell(b.get('euclidean_median'))}</td><td>{cell(b['euclidean_max'])}</td>"
                f"<td>{cell(b['cosine_min'])}</td>"
                f"<td>{cell(b['tightness_median'], '.3f')}</td>"
                f"<td>{s['attack_runs'] if j == 0 else ''}</td><td{cls}>{viol}</td></tr>"
            )
    return f"<table>\n{head}\n" + "\n".join(body) + "\n</table>"


def gallery_table(chosen: Sequence[dict[str, Any]]) -> str:
    """An HTML table of the gallery's rows: input, setting, best attack and bounds."""
    lines = ["<table><tr><th>row</th><th>index</th><th>label</th><th>attribution</th>"
             "<th>norm</th><th>eps</th><th>best attack</th><th>L</th><th>L / ||A(x)||</th>"
             "<th>cosine</th><th>bounds U</th><th>violated</th></tr>"]
    for i, r in enumerate(chosen):
        le, an = r["best"]["euclidean"]["value"], r.get("attr_norm")
        bounds = ", ".join(f"{m} {cell(b.get('euclidean'))}" for m, b in r["bounds"].items())
        bad = [m for m, f in r.get("violated", {}).items() if any(f.values())]
        lines.append(
            f"<tr><td>{i + 1}</td><td>{r['index']}</td><td>{r['label']}</td>"
            f"<td>{html.escape(r['attribution'])}</td><td>{r['norm']}</td>"
            f"<td>{r['eps']:g}</td><td>{cell(r['adv'].get('attack'))}</td><td>{cell(le)}</td>"
            f"<td>{cell(le / an if le is not None and an else None)}</td>"
            f"<td>{cell(r['best']['cosine']['value'])}</td><td>{html.escape(bounds)}</td>"
            f"<td{' class=bad' if bad else ''}>{html.escape(', '.join(bad)) or 'no'}</td></tr>")
    return "\n".join(lines) + "</table>"


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td.bad{background:#fbb;font-weight:bold}
img{max-width:100%;border:1px solid #eee}code{background:#f4f4f4;padding:0 3px}
.note{color:#555;font-size:13px}"""


def _gallery_html(rows_path: Path, rows: list[dict[str, Any]], out: Path, worst: int,
                  device: str) -> str:
    chosen = worst_rows(rows, worst)
    stale = out / "gallery.png"
    if stale.exists():
        stale.unlink()
    if not chosen:
        return "<p class='note'>No gallery: the rows carry no x_adv.</p>"
    try:
        name = render_gallery(rows_path, chosen, out / "gallery.png", device)
    except (AttrboundError, OSError) as exc:
        return f"<p class='note'>No gallery: {html.escape(str(exc).rstrip('.'))}.</p>"
    return f"<img src='{name}' alt='gallery'>\n" + gallery_table(chosen)


def write_report(
    rows_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    worst: int = 8,
    gallery: bool = True,
    device: str = "cpu",
) -> Path:
    """Write ``out_dir/report.html`` and its PNG figures from a rows file; returns the page.

    ``worst``: number of inputs in the gallery (0 or ``gallery=False``: none); ``device``:
    where the gallery's maps are recomputed (default cpu; the rest is plotting). See
    :mod:`attrbound.report` for the figures. Raises AttrboundError if the file has no rows.
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
         "Each bound against the best attack on the map it bounded; points above the dashed "
         "line y = x would be violations."),
        ("Tightness", plot_tightness(rows, out / "tightness.png"),
         "Best attack / bound per input (1 = tight; above 1 = violation)."),
    ]
    smoothed = plot_smoothed_cosine(rows, out / "smoothed_cosine.png")
    if smoothed is not None:
        figs.append(("Smoothed map: certified cosine against eps", smoothed,
                     "Median over inputs of the certified cosine of method smoothed (probability "
                     ">= 1 - alpha over attrbound's samples), one line per sigma; -1: vacuous."))
    gallery_html = (_gallery_html(rows_path, rows, out, worst, device)
                    if gallery and worst > 0 else "")
    (out / "report.html").write_text(_page(rows, rows_path, summary, figs, gallery_html))
    return out / "report.html"


def _maps_text(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    """Which map each bound bounded and the attacks measured, in words."""
    by_map: dict[str, list[str]] = {}
    for m, name in bounded_maps(summary).items():
        by_map.setdefault(name, []).append(m)
    bounds = "; ".join(f"{', '.join(ms)}: {name}" for name, ms in by_map.items())
    attacks = str(rows[0].get("map", MODEL_MAP))
    text = f"attacks measured on: {attacks}"
    return f"{bounds} (bounds); {text}" if bounds else text


def _page(rows: list[dict[str, Any]], rows_path: Path, summary: list[dict[str, Any]],
          figs: list[tuple[str, str, str]], gallery_html: str) -> str:
    config = rows[0].get("config", {})
    total_viol = {m: sum(b["violations"] for s in summary for mm, b in s["bounds"].items()
                         if mm == m) for m in methods(rows)}
    runs = sum(int(r.get("attack_runs", 0)) for r in rows)
    inputs = len({r["index"] for r in rows})
    verdict = ", ".join(f"{m}: {v} of {sum(m in r.get('bounds', {}) for r in rows)} rows"
                        for m, v in total_viol.items()) or "no bound methods"
    meta = [
        ("rows file", str(rows_path)), ("rows", str(len(rows))), ("inputs", str(inputs)),
        ("attack runs", str(runs)),
        ("model", f"{config.get('model', '?')} (sha256 {str(config.get('model_sha256'))[:16]})"),
        ("dataset", f"{config.get('dataset')} / {config.get('split')}"),
        ("map bounded", _maps_text(rows, summary)),
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
<p><b>Violations</b> (inputs where the best attack, on the map the bound bounded, beat the
bound: euclidean L &gt; U(1 + 1e-6) + 1e-9, or cosine l &lt; C &minus; 1e-6):
{html.escape(verdict)}.</p>
<h2>Summary</h2>
<p class="note">Per attribution, norm and eps: the best attack's euclidean deviation
||A(x') &minus; A(x)||<sub>2</sub> (mean, max) and smallest cosine similarity; each bound's
map, mean, max and smallest cosine lower bound; median tightness (best attack / bound);
attack runs; violations. With a smooth surrogate, taylor and region bound the surrogate's
map and are compared with the attacks' figures on it; interval bounds the real model's map
and is compared with the attacks' deviation of the real map at the same points.</p>
{summary_table_html(summary)}
{figs_html}
<h2>Gallery: worst inputs</h2>
<p class="note">Violations first, then the largest relative deviation L / ||A(x)||; maps in
red (positive) and blue (negative), A(x) and A(x_adv) on the same scale.</p>
{gallery_html}
</body></html>
"""
