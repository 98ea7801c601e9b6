"""An H&E image without spatial transcriptomics, tiled into a grid of pseudo-spots over the tissue."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
import pandas as pd
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._settings import logger
from histodecon._tissue import (
    MAX_GLASS_FRACTION,
    check_max_glass_fraction,
    detect,
    labels_element,
    own_mask,
    square_fractions,
)
from histodecon._utils import check_positive
from histodecon.io._build import build_sdata
from histodecon.io._grid import default_spacing, grid_centres
from histodecon.io._image import as_rgb, read_image
from histodecon.io._wsi import resolve_mpp

#: Fields of the per-sample provenance record written here: where ``mpp`` came from and the grid laid.
MPP_SOURCE, GRID, GRID_SPACING_UM = "mpp_source", "grid", "grid_spacing_um"


def read_slide(
    image: str | Path | np.ndarray | da.Array,
    *,
    mpp: float | None = None,
    grid: Literal["square", "hex"] = "square",
    spot_diameter_um: float = 55.0,
    spacing_um: float | None = None,
    sample: str | None = None,
    max_glass_fraction: float = MAX_GLASS_FRACTION,
    tissue: np.ndarray | None = None,
) -> SpatialData:
    """Read an H&E image without spatial transcriptomics and place pseudo-spots on its tissue.

    Pseudo-spots of ``spot_diameter_um`` lie on a square or hexagonal grid ``spacing_um`` apart;
    only those over tissue are kept: spots whose square is more than ``max_glass_fraction`` off
    the tissue mask are dropped. The mask is detected with squidpy as in
    :func:`histodecon.pp.detect_tissue` (on a copy of the image of at most half a million
    pixels, from a stored pyramid level of a TIFF when there is one), or is one's own
    ``tissue``; it is kept as ``labels[f"{sample}_tissue"]``, which
    :func:`histodecon.pp.filter_background` reuses.
    This is the input of :func:`histodecon.tl.predict` for new patients.

    TIFF / OME-TIFF / SVS files are read lazily through tifffile and the other whole-slide
    formats (NDPI, MRXS, SCN, ...) through OpenSlide, tile by tile, their stored pyramid levels
    becoming the levels of the multiscale image; JPEG and PNG are decoded into memory.
    Fully transparent pixels of an RGBA image are background (white, so no pseudo-spot lies on them);
    grayscale and 16-bit images are refused with the conversion to apply.

    Without ``mpp``, µm per pixel is read from the file: OpenSlide's ``mpp-x``, an Aperio
    description's ``MPP =``, OME-XML ``PhysicalSizeX`` or the TIFF resolution tags (inch or cm);
    the value and its source (``"argument"``, ``"openslide"``, ``"aperio"``, ``"ome-xml"``,
    ``"tiff-resolution"``) are recorded in ``uns['histodecon']['samples'][sample]`` as ``mpp``
    and ``mpp_source``.

    Parameters
    ----------
    image
        Image file, or an array ``(y, x, 3)`` or ``(y, x, 4)`` uint8 (numpy or dask).
    mpp
        Micrometres per pixel of the image (e.g. about 0.25 at 40x, 0.5 at 20x); default read
        from the file's metadata, required for arrays.
    grid
        ``"square"`` (the default, spots in rows and columns) or ``"hex"`` (Visium's layout:
        rows ``sqrt(3) / 2`` pitches apart, every other row shifted by half a pitch).
        ``grid="hex", spacing_um=100`` with the default 55 um spots is the Visium geometry.
    spot_diameter_um
        Pseudo-spot diameter; 55 um as Visium by default.
    spacing_um
        Centre-to-centre distance of neighbouring spots; default ``spot_diameter_um`` on a square
        grid (touching spots) and ``spot_diameter_um * 100 / 55`` on a hexagonal one (Visium's pitch).
    sample
        Sample name; default the file name without its suffixes, or ``"slide"`` for an array.
    max_glass_fraction
        Largest glass fraction of a pseudo-spot kept as tissue.
    tissue
        One's own tissue mask instead of a detection: a 2-D boolean or integer array (0 glass,
        >0 tissue) covering the whole image at any resolution (the image's shape divided by one
        factor).

    Returns
    -------
    :class:`~spatialdata.SpatialData`
        SpatialData in the histodecon layout with the tissue mask ``labels[f"{sample}_tissue"]`` and
        an empty-gene table (0 variables), pseudo-spots
        named ``"{col}x{row}"`` by their grid position (``obs['array_col']``, ``obs['array_row']``;
        on a hexagonal grid ``array_col`` counts half-pitches, as on Visium).

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.io.read_slide("patient_7.svs")  # doctest: +SKIP
    >>> sdata.tables["table"].uns["histodecon"]["samples"]["patient_7"]["mpp_source"]  # doctest: +SKIP
    'aperio'
    >>> visium_like = hd.io.read_slide("patient_7.ndpi", grid="hex", spacing_um=100)  # doctest: +SKIP
    """
    if mpp is not None:
        check_positive(mpp, "mpp")
    check_positive(spot_diameter_um, "spot_diameter_um")
    spacing_um = default_spacing(grid, spot_diameter_um) if spacing_um is None else spacing_um
    check_positive(spacing_um, "spacing_um")
    check_max_glass_fraction(max_glass_fraction)
    if isinstance(image, str | Path):
        levels = read_image(image)
        sample = sample or re.sub(r"[^A-Za-z0-9_-]", "_", Path(image).name.split(".")[0])  # an element name
        mpp, mpp_source = resolve_mpp(mpp, Path(image))
    elif isinstance(image, np.ndarray | da.Array):
        levels = [as_rgb(image, "image", "YXS" if image.ndim == 3 else "YX")]
        sample = sample or "slide"
        mpp, mpp_source = resolve_mpp(mpp, None)
    else:
        raise TypeError(f"`image` must be a file path or a (y, x, 3) uint8 array, got {type(image).__name__}.")
    height, width = levels[0].shape[1:]
    spot_px, spacing_px = spot_diameter_um / mpp, spacing_um / mpp

    centres, grid_col, grid_row = grid_centres(width, height, spacing_px, grid)
    if not len(centres):
        raise ValueError(
            f"The {width} x {height} px image is smaller than one {spacing_um:g} um grid step at {mpp} mpp."
        )
    if tissue is None:
        labels, size_y, size_x = detect(levels, sample)
    else:
        labels, size_y, size_x = own_mask(tissue, (height, width), sample)
    fraction = square_fractions(labels > 0, np.diag([size_x, size_y, 1.0]), centres, spot_px)
    keep = fraction >= 1 - max_glass_fraction
    if not keep.any():
        raise ValueError(
            f"No pseudo-spot of {sample!r} lies on tissue (every one is more than {max_glass_fraction:.0%} off the "
            f"tissue mask, which covers {(labels > 0).mean():.0%} of the image). Check the image, or pass one's own "
            "`tissue` mask."
        )
    logger.info(f"Placed {keep.sum()} of {len(keep)} pseudo-spots of {sample!r} on tissue.")
    ids = pd.Index([f"{c}x{r}" for c, r in zip(grid_col[keep], grid_row[keep], strict=True)])
    obs = pd.DataFrame({"array_col": grid_col[keep], "array_row": grid_row[keep]}, index=ids)
    sdata = build_sdata(levels, centres[keep], sample=sample, mpp=mpp, spot_diameter_px=spot_px, spot_ids=ids, obs=obs)
    image = sdata.images[f"{sample}_image"]
    sdata.labels[Key.labels.tissue(sample)] = labels_element(labels, (size_y, size_x), image)
    record = sdata.tables[Key.tables.table].uns[Key.uns.root][Key.uns.samples][sample]
    record.update({MPP_SOURCE: mpp_source, GRID: grid, GRID_SPACING_UM: float(spacing_um)})
    return sdata
