"""Expression of the synthetic cell types: fixed signatures, spot counts and single-cell counts.

The signatures are the *biology* of the synthetic world: they come from a fixed internal seed,
so every slide and every reference agree whatever their own seeds.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from ._layout import CELL_TYPES

_BIOLOGY_SEED = 20250611
#: Named markers first (in CELL_TYPES order), then anonymous genes.
MARKERS = {
    "tumour": ("EPCAM", "KRT8", "KRT18", "ERBB2", "MKI67"),
    "lymphocyte": ("PTPRC", "CD3E", "CD2", "MS4A1", "CD79A"),
    "fibroblast": ("COL1A1", "COL1A2", "DCN", "LUM", "PDGFRA"),
    "adipocyte": ("ADIPOQ", "PLIN1", "LEP", "FABP4", "CIDEA"),
    "endothelial": ("PECAM1", "VWF", "CDH5", "PLVAP", "CLDN5"),
}
N_GENES = 300
GENE_NAMES = tuple(g for t in CELL_TYPES for g in MARKERS[t]) + tuple(
    f"GENE{i:03d}" for i in range(N_GENES - sum(map(len, MARKERS.values())))
)
#: Mean UMIs per cell (reference chemistry): small lymphocytes carry less RNA than tumour cells.
_UMIS_PER_CELL = np.array([3000.0, 800.0, 1500.0, 1200.0, 1000.0])
_MARKER_FOLD = 30.0
#: Spots capture about half a cell's worth of free-floating (ambient) RNA.
_AMBIENT_CELLS = 0.5


@cache
def _biology() -> tuple[np.ndarray, np.ndarray]:
    """Signatures ``(k, g)`` in mean UMIs per cell, and gene-wise NB inverse dispersion ``(g,)``."""
    rng = np.random.default_rng(_BIOLOGY_SEED)
    k, g = len(CELL_TYPES), N_GENES
    level = rng.lognormal(0, 1.0, g)  # how highly a gene is expressed in general
    signatures = level * rng.lognormal(0, 0.7, (k, g))  # and how that differs between types
    start = 0
    for i, cell_type in enumerate(CELL_TYPES):
        markers = slice(start, start + len(MARKERS[cell_type]))
        signatures[:, markers] /= _MARKER_FOLD  # nearly silent in the other types,
        signatures[i, markers] *= _MARKER_FOLD**2  # high in their own
        start = markers.stop
    signatures *= (_UMIS_PER_CELL / signatures.sum(axis=1))[:, None]
    signatures.setflags(write=False)
    inverse_dispersion = rng.uniform(3.0, 20.0, g)
    inverse_dispersion.setflags(write=False)
    return signatures, inverse_dispersion


def _negative_binomial(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """NB counts as a Poisson-gamma mixture with the genes' inverse dispersion."""
    shape = _biology()[1]
    return rng.poisson(mean * rng.gamma(shape, 1 / shape, mean.shape)).astype(np.float32)


def spot_counts(abund: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spot x gene counts from expected cells per type, cell2location's generative model.

    ``mu = y_s * m_g * (abund @ signatures + ambient)`` with a per-spot capture ``y_s`` and a
    per-slide gene detection efficiency ``m_g``, then negative-binomial noise.
    """
    signatures = _biology()[0]
    detection = rng.lognormal(0, 0.3, N_GENES)
    capture = rng.gamma(20.0, 1 / 20.0, len(abund))
    ambient = _AMBIENT_CELLS * signatures.mean(axis=0)
    return _negative_binomial(capture[:, None] * detection * (abund @ signatures + ambient), rng)


def cell_counts(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cell x gene counts of cells with integer type ``labels``, with a per-cell library size."""
    signatures = _biology()[0]
    size = rng.lognormal(0, 0.25, len(labels))
    return _negative_binomial(size[:, None] * signatures[labels], rng)
