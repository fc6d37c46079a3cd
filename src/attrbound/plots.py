"""Deprecated alias of :mod:`attrbound.report.heatmaps` (the attribution heatmap grids)."""

from __future__ import annotations

from attrbound.report.heatmaps import (
    attribution_grid,
    explain_grid,
    image_for_display,
    map_for_display,
)

__all__ = ["attribution_grid", "explain_grid", "image_for_display", "map_for_display"]
