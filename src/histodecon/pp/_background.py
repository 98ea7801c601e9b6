"""Background (glass) filtering of spots by an RGB threshold on their patches."""

from __future__ import annotations

import numpy as np
import pandas as pd
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._glass import GLASS_THRESHOLD, MAX_GLASS_FRACTION, check_rule, glass_mask
from histodecon._settings import logger
from histodecon._utils import check_overwrite, get_table
from histodecon.pp._patches import spot_patches


@inject_docs
def filter_background(
    sdata: SpatialData,
    *,
    glass_threshold: int = GLASS_THRESHOLD,
    max_glass_fraction: float = MAX_GLASS_FRACTION,
    size: int = 224,
    mpp: float | None = None,
    table_key: str = Key.tables.table,
    inplace: bool = True,
    overwrite: bool = False,
) -> pd.DataFrame | None:
    """Flag spots whose patch is mostly glass, by an RGB threshold.

    The RGB-threshold rule that spatial-transcriptomics image pipelines (such as Hist2Cell's
    preprocessing) use to drop background patches: a pixel whose R, G and B values all
    exceed ``glass_threshold`` is unstained glass; a spot whose patch has a glass fraction
    above ``max_glass_fraction`` is background. The defaults (220, 0.5) separate the
    near-white slide background of H&E scans (about 230-255 in every channel) from pale
    eosin-stained stroma, which stays below 220 in green. Parts of a patch beyond the image
    border count as glass.

    Parameters
    ----------
    sdata
        Slide(s) read with :mod:`histodecon.io`.
    glass_threshold
        Intensity above which a pixel, in all three channels, is glass.
    max_glass_fraction
        Largest glass fraction of a patch whose spot is still tissue.
    size
        Patch side in pixels, as in :func:`histodecon.pp.spot_patches`.
    mpp
        Micrometres per pixel of the patches, as in :func:`histodecon.pp.spot_patches`;
        ``None`` reads them at native resolution.
    table_key
        Name of the table whose spots are filtered.
    inplace
        Write ``obs['tissue_fraction']`` (1 - glass fraction) and ``obs['in_tissue']``
        (replacing the value the reader set); otherwise
        return them as a DataFrame and leave ``sdata`` untouched.
    {{overwrite}}

    Returns
    -------
    ``None``, or with ``inplace=False`` a DataFrame with columns ``tissue_fraction`` and
    ``in_tissue``, indexed like the table.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.her2st("C2")  # doctest: +SKIP
    >>> hd.pp.filter_background(sdata)  # doctest: +SKIP
    >>> sdata.tables["table"].obs["in_tissue"].mean()  # doctest: +SKIP
    """
    check_rule(glass_threshold, max_glass_fraction)
    adata = get_table(sdata, table_key)
    if inplace:
        check_overwrite(adata.obs, Key.obs.tissue_fraction, "adata.obs", overwrite, can_rename=False)
    patches = spot_patches(sdata, size=size, mpp=mpp, table_key=table_key)
    glass = np.empty(len(patches))
    for index, batch in patches.batches(256):
        glass[index] = glass_mask(batch, glass_threshold).mean(axis=(1, 2))
    result = pd.DataFrame(
        {Key.obs.tissue_fraction: 1 - glass, Key.obs.in_tissue: glass <= max_glass_fraction}, index=adata.obs_names
    )
    if not inplace:
        return result
    for key in result:
        adata.obs[key] = result[key]
        logger.info(f"Adding `adata.obs[{key!r}]`")
    return None
