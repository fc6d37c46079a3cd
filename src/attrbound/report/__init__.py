"""The campaign report: an offline HTML page with tables and PNG figures, from evaluate rows.

``write_report(rows_path, out_dir)`` reads the rows of :func:`attrbound.campaign.run_campaign`
(a truncated last line is ignored) and writes into ``out_dir``:

- ``report.html``: the page (:mod:`~attrbound.report.html`); it references only the PNG
  files beside it (no scripts, no network), so the folder can be copied and opened anywhere;
- ``deviation_vs_eps.png``: per (attribution, norm), the euclidean deviation against eps:
  each bound method's mean (solid) and max (dashed) over inputs, and the best attack's;
- ``bound_vs_attack.png``: per (attribution, norm), one point per input and bound method,
  x = the bound U, y = the best attack L on the bound's map, with the line y = x (points
  above it are violations);
- ``tightness.png``: per (attribution, norm), histograms of L / U per bound method
  (these three: :mod:`~attrbound.report.figures`);
- ``gallery.png``: the worst inputs (violations first, then the largest relative deviation
  L / ||A(x)||) (:mod:`~attrbound.report.gallery`); when the checkpoint or the x_adv sidecar
  is unavailable the page says so and shows no gallery.

:mod:`~attrbound.report.heatmaps` draws the attribution heatmap grids of ``attrbound
explain``.
"""

from __future__ import annotations

from attrbound.report.figures import (
    COLOURS,
    plot_bound_vs_attack,
    plot_deviation_vs_eps,
    plot_tightness,
)
from attrbound.report.gallery import gallery_tensors, render_gallery, worst_rows
from attrbound.report.heatmaps import (
    attribution_grid,
    explain_grid,
    image_for_display,
    map_for_display,
)
from attrbound.report.html import gallery_table, summary_table_html, write_report

__all__ = [
    "COLOURS", "attribution_grid", "explain_grid", "gallery_table", "gallery_tensors",
    "image_for_display", "map_for_display", "plot_bound_vs_attack", "plot_deviation_vs_eps",
    "plot_tightness", "render_gallery", "summary_table_html", "worst_rows", "write_report",
]
