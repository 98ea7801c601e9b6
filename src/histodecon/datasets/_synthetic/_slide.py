"""A procedurally generated slide: layout, painted image, truth and counts assembled into a SpatialData."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._utils import check_count
from histodecon.io._build import build_sdata

from ._expression import GENE_NAMES, spot_counts
from ._layout import CELL_TYPES, PITCH_UM, make_layout, spot_abundance
from ._painting import paint


def synthetic(
    *,
    n_spots: int = 300,
    seed: int = 0,
    sample: str = "synthetic",
    counts: bool = True,
    mpp: float = 0.5,
    spot_diameter_um: float = 55.0,
) -> SpatialData:
    """A procedurally generated H&E-like slide with known cell-type abundances per spot.

    The generative model, per ``seed``:

    1. **Spots**: the ``n_spots`` points of a Visium-like hexagonal grid (100 um apart) nearest
       its centre; ``obs["array_row"]`` and ``obs["array_col"]`` follow Visium's convention.
    2. **Tissue**: a wobbly ellipse over most of the grid. Spots whose disc is less than half on
       tissue are flagged ``obs["in_tissue"] = False`` (glass).
    3. **Domains**: five cell types, ``tumour``, ``lymphocyte``, ``fibroblast``, ``adipocyte`` and
       ``endothelial`` (the same for every seed), share the tissue area through a softmax of
       smooth Gaussian random fields (correlated over a few hundred um). Each type has a fixed
       cell density, so the fields give the expected number of cells of each type per um²;
       integrated over a spot's disc, these are the truth ``obsm["abund"]``, like cell2location's
       abundances.
    4. **Image**: cells are drawn from the same fields (Poisson points; fat cells on a jittered
       lattice; endothelial cells around vessel lumens) and painted as haematoxylin and eosin
       optical densities, composed into RGB with scikit-image's HED stain vectors
       (:func:`skimage.color.hed2rgb`): large pale vesicular tumour nuclei in purple cytoplasm,
       small dark round lymphocytes, spindle fibroblast nuclei along wavy pink collagen, white
       polygonal fat cells with thin membranes, and flat endothelial nuclei lining lumens with
       red blood cells. Staining strength varies slightly between seeds; mild noise and blur.
    5. **Counts** (``counts=True``): negative-binomial counts with mean
       ``y_s * m_g * (abund @ signatures + ambient)``, with a per-spot capture ``y_s``, a
       per-slide gene detection efficiency ``m_g`` and fixed per-type signatures over 300 genes
       (five named markers per type, e.g. ``EPCAM``, ``PTPRC``, ``COL1A1``, ``ADIPOQ``,
       ``PECAM1``). The signatures are the same for every seed and match
       :func:`synthetic_reference`.

    Parameters
    ----------
    n_spots
        Number of spots, on and off tissue.
    seed
        Seed of the layout, the image and the counts; the same seed gives the same slide.
    sample
        Sample name: prefixes the element names and fills ``obs["sample"]``.
    counts
        Simulate spot counts into ``X``; otherwise ``X`` has no genes (an H&E-only slide). The
        image and abundances do not depend on this choice.
    mpp
        Micrometres per pixel of the image.
    spot_diameter_um
        Spot diameter; abundances are counted over this disc.

    Returns
    -------
    SpatialData
        ``images[f"{sample}_image"]`` (``(3, y, x)`` uint8), ``shapes[f"{sample}_spots"]`` and
        ``tables["table"]`` holding ``obsm["spatial"]``, ``obsm["abund"]`` (expected cells per
        spot and type, a DataFrame), ``obs["in_tissue"]``, counts in ``X`` and
        ``uns["histodecon"]["samples"][sample]``.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=100, seed=1)
    >>> sdata.tables["table"].obsm["abund"].columns.tolist()
    ['tumour', 'lymphocyte', 'fibroblast', 'adipocyte', 'endothelial']
    """
    check_count(n_spots, "n_spots", 1)
    check_count(seed, "seed", 0)
    if not isinstance(sample, str) or not sample:
        raise ValueError(f"`sample` must be a non-empty string, got {sample!r}.")
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"`mpp` (micrometres per pixel) must be a positive number, got {mpp!r}.")
    if not 0 < spot_diameter_um <= PITCH_UM:
        raise ValueError(
            f"`spot_diameter_um` must lie in (0, {PITCH_UM:g}] so that spots on the {PITCH_UM:g} um grid "
            f"do not overlap, got {spot_diameter_um!r}."
        )
    layout_rng, paint_rng, count_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    layout = make_layout(n_spots, float(mpp), layout_rng)
    abund, tissue_share = spot_abundance(layout, spot_diameter_um / 2)
    spot_ids = pd.Index([f"spot{i:05d}" for i in range(n_spots)])
    obs = pd.DataFrame(
        {
            Key.obs.array_row: layout.array_row,
            Key.obs.array_col: layout.array_col,
            Key.obs.in_tissue: tissue_share >= 0.5,
        },
        index=spot_ids,
    )
    sdata = build_sdata(
        paint(layout, paint_rng),
        layout.spots_um / mpp,
        sample=sample,
        mpp=mpp,
        spot_diameter_px=spot_diameter_um / mpp,
        spot_ids=spot_ids,
        X=sparse.csr_matrix(spot_counts(abund, count_rng)) if counts else None,
        var_names=list(GENE_NAMES) if counts else None,
        obs=obs,
    )
    table = sdata.tables[Key.tables.table]
    table.obsm[Key.obsm.abund] = pd.DataFrame(abund, index=table.obs_names, columns=list(CELL_TYPES))
    table.uns[Key.uns.root][Key.uns.synthetic] = {"seed": int(seed), "pitch_um": PITCH_UM}
    return sdata
