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
from histodecon._glass import GLASS_THRESHOLD, MAX_GLASS_FRACTION, check_rule, glass_mask
from histodecon._settings import logger
from histodecon._utils import check_positive
from histodecon.io._build import build_sdata
from histodecon.io._grid import default_spacing, grid_centres
from histodecon.io._image import as_rgb, read_image
from histodecon.io._wsi import resolve_mpp

#: Fields of the per-sample provenance record written here: where ``mpp`` came from and the grid laid.
MPP_SOURCE, GRID, GRID_SPACING_UM = "mpp_source", "grid", "grid_spacing_um"
#: The tissue mask is block-averaged down to a resolution where a pseudo-spot spans about this many pixels ...
MASK_PX_PER_SPOT = 8
#: ... unless a stored pyramid level is already coarser, down to this many pixels per spot.
MIN_MASK_PX_PER_SPOT = 4


def _glass_lowres(levels: list, spot_px: float, threshold: int) -> tuple[np.ndarray, float, float]:
    """Glass mask of the slide at a resolution where a spot spans 4-8 pixels, and its (y, x) factors.

    Uses the coarsest stored pyramid level on which a spot still spans
    :data:`MIN_MASK_PX_PER_SPOT` pixels and block-averages it down to
    :data:`MASK_PX_PER_SPOT`, so a pyramidal TIFF is read only at low resolution; the mask is
    computed chunk by chunk, so only the boolean result is held in memory.
    """
    full_h, full_w = levels[0].shape[1:]
    factors = [(full_h / level.shape[1], full_w / level.shape[2]) for level in levels]
    chosen = max(i for i, f in enumerate(factors) if i == 0 or max(f) <= spot_px / MIN_MASK_PX_PER_SPOT)
    level = da.asarray(levels[chosen])
    extra = max(1, int(spot_px / MASK_PX_PER_SPOT // max(factors[chosen])))
    if extra > 1:
        height, width = (level.shape[1] // extra) * extra, (level.shape[2] // extra) * extra
        block = extra * max(1, 1024 // extra)
        level = da.coarsen(np.mean, level[:, :height, :width].rechunk((-1, block, block)), {1: extra, 2: extra})
    glass = glass_mask(da.moveaxis(level, 0, -1), threshold).compute()
    return glass, factors[chosen][0] * extra, factors[chosen][1] * extra


def _glass_fraction(glass: np.ndarray, centres: np.ndarray, half_px: float, scale_yx: tuple[float, float]):
    """Glass fraction of the square of half-side ``half_px`` around each centre; outside the image is glass."""
    integral = np.zeros((glass.shape[0] + 1, glass.shape[1] + 1), dtype=np.int32)
    integral[1:, 1:] = glass.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
    sy, sx = scale_yx
    x0 = np.round((centres[:, 0] - half_px) / sx).astype(int)
    x1 = np.round((centres[:, 0] + half_px) / sx).astype(int)
    y0 = np.round((centres[:, 1] - half_px) / sy).astype(int)
    y1 = np.round((centres[:, 1] + half_px) / sy).astype(int)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    cx0, cx1 = np.clip(x0, 0, glass.shape[1]), np.clip(x1, 0, glass.shape[1])
    cy0, cy1 = np.clip(y0, 0, glass.shape[0]), np.clip(y1, 0, glass.shape[0])
    inside = integral[cy1, cx1] - integral[cy0, cx1] - integral[cy1, cx0] + integral[cy0, cx0]
    inside_area = (cx1 - cx0) * (cy1 - cy0)
    return (inside + area - inside_area) / area


def read_slide(
    image: str | Path | np.ndarray | da.Array,
    *,
    mpp: float | None = None,
    grid: Literal["square", "hex"] = "square",
    spot_diameter_um: float = 55.0,
    spacing_um: float | None = None,
    sample: str | None = None,
    glass_threshold: int = GLASS_THRESHOLD,
    max_glass_fraction: float = MAX_GLASS_FRACTION,
) -> SpatialData:
    """Read an H&E image without spatial transcriptomics and place pseudo-spots on its tissue.

    Pseudo-spots of ``spot_diameter_um`` lie on a square or hexagonal grid ``spacing_um`` apart;
    only those over tissue are kept, judged by the glass rule of :func:`histodecon.pp.filter_background`
    (pixels above ``glass_threshold`` in R, G and B are glass; spots whose square is more than
    ``max_glass_fraction`` glass are dropped), evaluated on a downsampled copy of the image
    (a stored pyramid level of a TIFF when there is one) on which a spot spans 4 to 8 pixels.
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
    glass_threshold
        Intensity above which a pixel, in all three channels, is glass.
    max_glass_fraction
        Largest glass fraction of a pseudo-spot kept as tissue.

    Returns
    -------
    SpatialData in the histodecon layout with an empty-gene table (0 variables), pseudo-spots
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
    check_rule(glass_threshold, max_glass_fraction)
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
    mask, scale_y, scale_x = _glass_lowres(levels, spot_px, glass_threshold)
    glass = _glass_fraction(mask, centres, spot_px / 2, (scale_y, scale_x))
    tissue = glass <= max_glass_fraction
    if not tissue.any():
        raise ValueError(
            f"No pseudo-spot of {sample!r} lies on tissue (every one is more than {max_glass_fraction:.0%} "
            f"pixels brighter than {glass_threshold} in R, G and B). Check the image, or raise `glass_threshold`."
        )
    logger.info(f"Placed {tissue.sum()} of {len(tissue)} pseudo-spots of {sample!r} on tissue.")
    ids = pd.Index([f"{c}x{r}" for c, r in zip(grid_col[tissue], grid_row[tissue], strict=True)])
    obs = pd.DataFrame({"array_col": grid_col[tissue], "array_row": grid_row[tissue]}, index=ids)
    sdata = build_sdata(
        levels, centres[tissue], sample=sample, mpp=mpp, spot_diameter_px=spot_px, spot_ids=ids, obs=obs
    )
    record = sdata.tables[Key.tables.table].uns[Key.uns.root][Key.uns.samples][sample]
    record.update({MPP_SOURCE: mpp_source, GRID: grid, GRID_SPACING_UM: float(spacing_um)})
    return sdata
