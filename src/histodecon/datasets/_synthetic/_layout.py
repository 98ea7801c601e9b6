"""Where things are on a synthetic slide: the spot grid, the tissue outline and smooth cell-type domains.

Everything is laid out in micrometres on a coarse grid of :data:`FIELD_UM` cells; the painter
(:mod:`._painting`) and the spot abundances read the same fields, so the image and the truth agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: The cell types of every synthetic slide, in the column order of ``obsm["abund"]``.
CELL_TYPES = ("tumour", "lymphocyte", "fibroblast", "adipocyte", "endothelial")
#: Cells per um² where the tissue is made of one type only.
CELL_DENSITY = np.array([1 / 150, 1 / 50, 1 / 400, 1 / 3200, 1 / 300])
#: Mean logit of each type's domains: how much of a slide it covers on average.
_LOGIT_BIAS = np.array([0.3, 0.0, 0.3, -0.2, -0.5])
#: Scale of the standardised random fields in the softmax: higher gives purer domains.
_DOMAIN_CONTRAST = 2.0
#: Gaussian smoothing (sigma, um) of the white noise behind the domains and the tissue edge.
_DOMAIN_SIGMA_UM = 120.0
_EDGE_SIGMA_UM = 80.0

PITCH_UM = 100.0
FIELD_UM = 5.0
#: Glass around the outermost spot centres, enough for a 112 um patch around every spot.
MARGIN_UM = 100.0


@dataclass(frozen=True)
class Layout:
    """The geometry of one slide, in micrometres unless named ``_px``."""

    mpp: float
    shape_px: tuple[int, int]
    spots_um: np.ndarray  # (n, 2) spot centres (x, y)
    array_row: np.ndarray
    array_col: np.ndarray
    tissue: np.ndarray  # (ny, nx) 1 on tissue, 0 on glass
    fraction: np.ndarray  # (k, ny, nx) share of the tissue area per cell type, sums to 1

    @property
    def intensity(self) -> np.ndarray:
        """Expected cells per um² of each type, ``(k, ny, nx)``."""
        return self.fraction * CELL_DENSITY[:, None, None] * self.tissue


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_um: float) -> np.ndarray:
    """A Gaussian random field with zero mean and unit variance, correlated over ``sigma_um``."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_um / FIELD_UM, mode="reflect")
    return (field - field.mean()) / field.std()


def hex_grid(n_spots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n_spots`` points of a Visium-like hexagonal lattice nearest its centre.

    Returns array rows, array columns (Visium convention: columns step by 2, odd rows shifted
    by one) and centres in um, in row-major order.
    """
    half = int(np.ceil(np.sqrt(n_spots))) + 2
    row, col = np.mgrid[-half : half + 1, -half : half + 1].reshape(2, -1)
    x = (col + 0.5 * (row % 2)) * PITCH_UM
    y = row * PITCH_UM * np.sqrt(3) / 2
    keep = np.argsort(np.hypot(x, y), kind="stable")[:n_spots]
    keep = keep[np.lexsort((col[keep], row[keep]))]
    row, col, xy = row[keep], col[keep], np.column_stack([x[keep], y[keep]])
    array_col = 2 * col + row % 2
    return row - row.min(), array_col - array_col.min(), xy - xy.min(axis=0) + MARGIN_UM


def _tissue_outline(rng: np.random.Generator, spots_um: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A wobbly ellipse of tissue over most of the spot array, leaving glass at its edges."""
    centre = spots_um.mean(axis=0)
    radius = np.hypot(*(spots_um - centre).T).max() + PITCH_UM / 2
    centre = centre + rng.normal(0, 0.06 * radius, 2)
    axes = radius * rng.uniform(0.75, 0.95, 2)
    angle = rng.uniform(0, np.pi)
    y, x = (np.indices(shape) + 0.5) * FIELD_UM
    dx, dy = x - centre[0], y - centre[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / axes[0]
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / axes[1]
    edge = 1 + 0.1 * smooth_field(rng, shape, _EDGE_SIGMA_UM)
    return (np.hypot(u, v) < edge).astype(np.float64)


def make_layout(n_spots: int, mpp: float, rng: np.random.Generator) -> Layout:
    """Spot grid, tissue outline and cell-type domains of one slide."""
    array_row, array_col, spots_um = hex_grid(n_spots)
    extent_um = spots_um.max(axis=0) + MARGIN_UM  # (x, y)
    shape = (int(np.ceil(extent_um[1] / FIELD_UM)), int(np.ceil(extent_um[0] / FIELD_UM)))
    tissue = _tissue_outline(rng, spots_um, shape)
    logits = np.stack([smooth_field(rng, shape, _DOMAIN_SIGMA_UM) for _ in CELL_TYPES])
    logits = _DOMAIN_CONTRAST * logits + _LOGIT_BIAS[:, None, None]
    fraction = np.exp(logits - logits.max(axis=0))
    fraction /= fraction.sum(axis=0)
    shape_px = (int(np.ceil(extent_um[1] / mpp)), int(np.ceil(extent_um[0] / mpp)))
    return Layout(mpp, shape_px, spots_um, array_row, array_col, tissue, fraction)


def _unit_disc(n_points: int = 256) -> np.ndarray:
    """Evenly spread points in the unit disc (Vogel's sunflower spiral)."""
    i = np.arange(n_points) + 0.5
    r, theta = np.sqrt(i / n_points), i * np.pi * (3 - np.sqrt(5))
    return np.column_stack([r * np.cos(theta), r * np.sin(theta)])


def spot_means(layout: Layout, fields: np.ndarray, radius_um: float) -> np.ndarray:
    """Mean of each field ``(m, ny, nx)`` over each spot disc, ``(n_spots, m)``."""
    points = layout.spots_um[:, None, :] + radius_um * _unit_disc()[None]  # (n, p, 2)
    ny, nx = fields.shape[1:]
    ix = np.clip((points[..., 0] // FIELD_UM).astype(int), 0, nx - 1)
    iy = np.clip((points[..., 1] // FIELD_UM).astype(int), 0, ny - 1)
    return fields[:, iy, ix].mean(axis=2).T


def spot_abundance(layout: Layout, radius_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Expected cells of each type in each spot disc ``(n, k)``, and the tissue share of each disc."""
    area = np.pi * radius_um**2
    abund = spot_means(layout, layout.intensity, radius_um) * area
    tissue = spot_means(layout, layout.tissue[None], radius_um)[:, 0]
    return abund, tissue
