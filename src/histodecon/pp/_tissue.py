"""Tissue masks of slides as labels elements: detected once per slide with squidpy, or one's own."""

from __future__ import annotations

import numpy as np
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._geometry import sample_geometries
from histodecon._settings import logger
from histodecon._tissue import add_detected, image_levels_of, labels_element, own_mask


@inject_docs
def detect_tissue(
    sdata: SpatialData,
    *,
    mask: np.ndarray | None = None,
    table_key: str = Key.tables.table,
    image_key: str | None = None,
    overwrite: bool = False,
) -> None:
    """Detect the tissue of each slide and keep it as ``sdata.labels[f"{sample}_tissue"]``.

    squidpy's :func:`squidpy.experimental.im.detect_tissue` (Felzenszwalb superpixels split by
    Otsu, the image corners taken as glass) runs on a copy of the image of at most half a million
    pixels, read from the coarsest pyramid level that allows it (2-3 s for a her2st section
    on two CPU cores). An image whose corners are darker than glass (a crop inside the tissue) is all tissue.
    :func:`histodecon.io.read_slide` and :func:`histodecon.pp.filter_background` read the labels
    written here and detect them only where they are missing.

    Parameters
    ----------
    sdata
        Slide(s) read with :mod:`histodecon.io`.
    mask
        One's own tissue mask of the table's only sample instead of a detection: a 2-D boolean or
        integer array (0 glass, >0 tissue) covering the whole image at any resolution (the
        image's shape divided by one factor).
    table_key
        Name of the table whose samples are processed.
    {{image_key}}
    {{overwrite}}

    Returns
    -------
    ``None``
        Writes ``sdata.labels[f"{sample}_tissue"]`` for each sample: integer labels
        (0 glass, 1.. tissue regions) registered in the image's coordinate systems.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=100)
    >>> hd.pp.detect_tissue(sdata)
    >>> sorted(sdata.labels)
    ['synthetic_tissue']
    """
    geometries = sample_geometries(sdata, table_key=table_key, image_key=image_key)
    if mask is not None and len(geometries) > 1:
        raise ValueError(
            f"`mask` is one image's mask but table {table_key!r} has samples {list(geometries)}. Subset the "
            "SpatialData to one sample, or set `sdata.labels[f'{sample}_tissue']` for each."
        )
    for sample in geometries:
        key = Key.labels.tissue(sample)
        if key in sdata.labels and not overwrite:
            raise KeyError(
                f"`sdata.labels[{key!r}]` already exists. Pass `overwrite=True` to replace it, or use it as it is."
            )
    for sample, geometry in geometries.items():
        if mask is None:
            add_detected(sdata, sample, geometry.image_key)
        else:
            key, image = Key.labels.tissue(sample), sdata.images[geometry.image_key]
            labels, size_y, size_x = own_mask(mask, image_levels_of(image)[0].shape[-2:], geometry.image_key)
            sdata.labels[key] = labels_element(labels, (size_y, size_x), image)
            logger.info(f"Adding `sdata.labels[{key!r}]`")
