"""Pseudo-spot grids laid over an image: square, or hexagonal as Visium's."""

from __future__ import annotations

from typing import Literal

import numpy as np

#: Visium's spot pitch over its spot diameter (100 µm / 55 µm): the default hexagonal spacing.
VISIUM_PITCH_OVER_DIAMETER = 100.0 / 55.0
GRIDS = ("square", "hex")


def default_spacing(grid: str, spot_diameter_um: float) -> float:
    """Touching spots on a square grid; Visium's pitch-to-diameter ratio on a hexagonal one."""
    return spot_diameter_um * (VISIUM_PITCH_OVER_DIAMETER if grid == "hex" else 1.0)


def grid_centres(
    width: float, height: float, spacing_px: float, grid: Literal["square", "hex"]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres ``(n, 2)`` as ``(x, y)`` of a grid filling a ``width`` x ``height`` px image, and their array columns and rows.

    ``"square"``: centres at ``(col + 0.5, row + 0.5) * spacing_px``. ``"hex"``: rows
    ``spacing_px * sqrt(3) / 2`` apart, each spot ``spacing_px`` from its six neighbours; as on
    Visium, ``array_col`` counts half-pitches (even on even rows, odd on odd rows), so a centre
    lies at ``x = (array_col + 1) * spacing_px / 2``, ``y = (array_row + 0.5) * row_step``.
    Every spot's cell (``spacing_px`` wide, one row step high) lies within the image.
    """
    if grid not in GRIDS:
        raise ValueError(f"`grid` must be one of {GRIDS}, got {grid!r}.")
    if grid == "square":
        cols, rows = np.meshgrid(np.arange(int(width // spacing_px)), np.arange(int(height // spacing_px)))
        cols, rows = cols.ravel(), rows.ravel()
        return np.column_stack([(cols + 0.5) * spacing_px, (rows + 0.5) * spacing_px]), cols, rows
    row_step = spacing_px * np.sqrt(3) / 2
    half_pitches = np.arange(int(2 * width // spacing_px) - 1)  # (k + 2) * spacing / 2 <= width
    rows = np.arange(int(height // row_step))
    cols, rows = (a.ravel() for a in np.meshgrid(half_pitches, rows))
    keep = cols % 2 == rows % 2
    cols, rows = cols[keep], rows[keep]
    return np.column_stack([(cols + 1) * spacing_px / 2, (rows + 0.5) * row_step]), cols, rows
