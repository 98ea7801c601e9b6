"""Background (glass) filtering of spots by the share of their patch on the slide's tissue mask."""

from __future__ import annotations

import numpy as np
import pandas as pd
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._geometry import image_pixels, sample_geometries
from histodecon._settings import logger
from histodecon._tissue import (
    MAX_GLASS_FRACTION,
    check_max_glass_fraction,
    square_fractions,
    tissue_labels,
    warn_mismatch,
)
from histodecon._utils import check_overwrite, check_positive, check_positive_int, get_table


@inject_docs
def filter_background(
    sdata: SpatialData,
    *,
    max_glass_fraction: float = MAX_GLASS_FRACTION,
    size: int = 224,
    mpp: float | None = None,
    tissue_key: str | None = None,
    table_key: str = Key.tables.table,
    image_key: str | None = None,
    inplace: bool = True,
    overwrite: bool = False,
) -> pd.DataFrame | None:
    """Flag spots whose patch lies mostly on glass, by the slide's tissue mask.

    The mask is ``sdata.labels[f"{sample}_tissue"]``, detected with squidpy by
    :func:`histodecon.pp.detect_tissue` the first time it is needed and reused afterwards
    (:func:`histodecon.io.read_slide` writes it too). A spot whose patch square is more than
    ``max_glass_fraction`` off the mask is background. Parts of a patch beyond the image
    border count as glass.

    A slide with counts whose reader flagged its spots as in tissue, but most of them lie on
    glass by the mask, warns: the image does not match the spot coordinates (e.g. a downscaled
    copy of the image the spot file refers to).

    Parameters
    ----------
    sdata
        Slide(s) read with :mod:`histodecon.io`.
    max_glass_fraction
        Largest glass fraction of a patch whose spot is still tissue.
    size
        Patch side in pixels, as in :func:`histodecon.pp.spot_patches`.
    mpp
        Micrometres per pixel of the patches, as in :func:`histodecon.pp.spot_patches`;
        ``None`` reads them at native resolution.
    tissue_key
        Labels element of one's own tissue mask (0 glass, >0 tissue; e.g. written by squidpy's
        ``detect_tissue`` with other settings), for a table of one sample. Default: each
        sample's ``labels[f"{sample}_tissue"]``; set one's own array with
        ``hd.pp.detect_tissue(sdata, mask=..., overwrite=True)``.
    table_key
        Name of the table whose spots are filtered.
    {{image_key}}
    inplace
        Write ``obs['tissue_fraction']`` (1 - glass fraction) and ``obs['in_tissue']``
        (replacing the value the reader set); otherwise
        return them as a DataFrame and leave the table untouched (a missing mask is still stored).
    {{overwrite}}

    Returns
    -------
    :class:`~pandas.DataFrame` or ``None``
        ``None``, or with ``inplace=False`` a DataFrame with columns ``tissue_fraction`` and
        ``in_tissue``, indexed like the table.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=100)
    >>> hd.pp.filter_background(sdata, overwrite=True)
    >>> round(float(sdata.tables["table"].obs["tissue_fraction"].max()), 2)
    1.0
    """
    check_max_glass_fraction(max_glass_fraction)
    check_positive_int(size, "size")
    if mpp is not None:
        check_positive(mpp, "mpp")
    adata = get_table(sdata, table_key)
    if inplace:
        check_overwrite(adata.obs, Key.obs.tissue_fraction, "adata.obs", overwrite, can_rename=False)
    geometries = sample_geometries(sdata, table_key=table_key, image_key=image_key)
    if tissue_key is not None and len(geometries) > 1:
        raise ValueError(
            f"`tissue_key` names one image's mask but table {table_key!r} has samples {list(geometries)}. "
            "Leave it out to use each sample's `labels[f'{sample}_tissue']`, or subset the SpatialData."
        )
    fraction = np.full(adata.n_obs, np.nan)
    samples = adata.obs[Key.obs.sample].to_numpy()
    for sample, geometry in geometries.items():
        rows = np.flatnonzero(samples == sample)
        centres = image_pixels(sdata, geometry, np.asarray(adata.obsm[Key.obsm.spatial], float)[rows])
        mask, affine = tissue_labels(sdata, sample, geometry.image_key, tissue_key=tissue_key)
        side = size * (1.0 if mpp is None else mpp / geometry.mpp)
        fraction[rows] = square_fractions(mask, affine, centres, side)
        if adata.n_vars:
            flagged = adata.obs[Key.obs.in_tissue].to_numpy(bool)[rows] if Key.obs.in_tissue in adata.obs else True
            spot_fraction = square_fractions(mask, affine, centres, geometry.spot_diameter_px)
            on_glass = (spot_fraction < 1 - MAX_GLASS_FRACTION)[flagged]
            warn_mismatch(sample, geometry.image_key, on_glass, "spots flagged in tissue")
    result = pd.DataFrame(
        {Key.obs.tissue_fraction: fraction, Key.obs.in_tissue: fraction >= 1 - max_glass_fraction},
        index=adata.obs_names,
    )
    if not inplace:
        return result
    for key in result:
        adata.obs[key] = result[key]
        logger.info(f"Adding `adata.obs[{key!r}]`")
    return None
