"""Tissue masks of slides: detected with squidpy once per slide, kept as a labels element, read by ``io`` and ``pp``.

A bottom-layer module, so that the slide reader and background filtering share one mask
without importing each other. A mask is ``sdata.labels[Key.labels.tissue(sample)]``: integer
labels (0 glass, >0 tissue) at a coarse resolution, registered in the image's coordinate systems
through a ``Scale``, so that it survives ``SpatialData.write`` / ``read_zarr`` and lies under the
image in any viewer.
"""

from __future__ import annotations

import logging
import warnings

import dask.array as da
import numpy as np
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, Labels2DModel
from spatialdata.transformations import Scale, Sequence, get_transformation
from xarray import DataArray, DataTree

from histodecon._constants import Key
from histodecon._geometry import affine_between
from histodecon._settings import logger

#: Tissue is detected on a copy of the image of at most this many pixels (her2st JPEGs: 1/14, about 10 um/px).
MAX_MASK_PIXELS = 2**19
#: squidpy's method: superpixels (Felzenszwalb) split by Otsu. On the her2st sections B4, C2 and C3 it keeps
#: 74 %, 98 % and 97 % of the spots the authors selected as tissue (squidpy's default, Otsu on grey
#: pixels, misses B4's pale stroma: 31 %, 97 %, 91 %) and calls at most 0.6 % of the unselected array
#: positions tissue (``benchmarks/tissue.py``).
METHOD = "felzenszwalb"
#: squidpy takes the image corners as glass. Corners darker than this luminance (0-255) are tissue, not glass
#: (glass of the her2st scans: 215-240; H&E-stained tissue: about 100-190), and the whole image is tissue.
MIN_GLASS_LUMINANCE = 200
#: Side of each corner box, as a fraction of the image side, whose median luminance is compared above.
CORNER_FRACTION = 0.05
#: Spots whose square is more than this fraction outside the tissue mask are background.
MAX_GLASS_FRACTION = 0.5
#: Share of a sample's spots with counts on glass above which its image and spots do not match (:func:`warn_mismatch`).
MISMATCH_SHARE = 0.5


def check_max_glass_fraction(max_glass_fraction: float) -> None:
    """Refuse a glass fraction outside [0, 1]."""
    if not 0 <= max_glass_fraction <= 1:
        raise ValueError(f"`max_glass_fraction` must be a fraction in [0, 1], got {max_glass_fraction!r}.")


def image_levels_of(element: DataArray | DataTree) -> list[DataArray]:
    """Resolution levels of an image or labels element, finest first."""
    if isinstance(element, DataTree):
        levels = [next(iter(element[name].ds.data_vars.values())) for name in element.children]
        return sorted(levels, key=lambda level: -level.sizes["x"] * level.sizes["y"])
    return [element]


def _subsample(levels: list, max_pixels: int) -> tuple[np.ndarray, float, float]:
    """The image, ``(c, y, x)``, at most ``max_pixels`` large, and its (y, x) size in full-resolution pixels.

    Takes the coarsest level of at least ``max_pixels`` (only that level is read from a pyramidal
    file) and keeps the centre pixel of each block of it: the superpixel segmentation smooths the
    image anyway, and block means of a her2st JPEG cost 5-8 s where this costs nothing.
    """
    full_h, full_w = levels[0].shape[-2:]
    chosen = max(i for i, level in enumerate(levels) if i == 0 or level.shape[-1] * level.shape[-2] >= max_pixels)
    level = levels[chosen]
    height, width = level.shape[-2:]
    step = max(1, int(np.ceil(np.sqrt(height * width / max_pixels))))
    rows = np.minimum(np.arange(-(-height // step)) * step + step // 2, height - 1)
    cols = np.minimum(np.arange(-(-width // step)) * step + step // 2, width - 1)
    data = level.data if isinstance(level, DataArray) else level
    small = np.asarray(
        da.asarray(data)[:, rows][:, :, cols].compute() if isinstance(data, da.Array) else data[:, rows][:, :, cols]
    )
    return small, full_h / height * step, full_w / width * step


def _corners_are_glass(small: np.ndarray) -> bool:
    """Whether the median luminance of the four corner boxes is as bright as glass."""
    height, width = small.shape[1:]
    dy, dx = max(1, int(CORNER_FRACTION * height)), max(1, int(CORNER_FRACTION * width))
    corners = [
        small[:, ys, xs].reshape(3, -1)
        for ys in (slice(0, dy), slice(-dy, None))
        for xs in (slice(0, dx), slice(-dx, None))
    ]
    luminance = np.array([0.299, 0.587, 0.114]) @ np.concatenate(corners, axis=1)
    return float(np.median(luminance)) >= MIN_GLASS_LUMINANCE


def detect(levels: list, name: str) -> tuple[np.ndarray, float, float]:
    """Tissue labels (0 glass, 1.. tissue) of an RGB image given by its levels, and their (y, x) size in pixels.

    squidpy's :func:`squidpy.experimental.im.detect_tissue` on a copy of at most
    :data:`MAX_MASK_PIXELS` pixels; an image whose corners are not glass is all tissue.
    """
    from squidpy.experimental.im import detect_tissue

    small, size_y, size_x = _subsample(levels, MAX_MASK_PIXELS)
    if not _corners_are_glass(small):
        logger.info(f"The corners of {name!r} are darker than glass: taking the whole image as tissue.")
        return np.ones(small.shape[1:], np.int32), size_y, size_x
    spatialdata_logger = logging.getLogger("spatialdata._logging")  # squidpy logs through it
    level = spatialdata_logger.level
    spatialdata_logger.setLevel(logging.WARNING)  # squidpy reports each step at INFO; one line here says it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # scikit-image's renamed argument, inside squidpy
            image = SpatialData(images={"image": Image2DModel.parse(small, dims=("c", "y", "x"))})
            labels = detect_tissue(image, "image", method=METHOD, inplace=False)
    finally:
        spatialdata_logger.setLevel(level)
    return np.asarray(labels, np.int32), size_y, size_x


def labels_element(labels: np.ndarray, size_yx: tuple[float, float], image: DataArray | DataTree) -> DataArray:
    """``labels`` as a labels element whose pixels are ``size_yx`` image pixels, in all of the image's systems."""
    scale = Scale([size_yx[0], size_yx[1]], axes=("y", "x"))
    systems = get_transformation(image, get_all=True)
    return Labels2DModel.parse(
        labels, dims=("y", "x"), transformations={name: Sequence([scale, t]) for name, t in systems.items()}
    )


def add_detected(sdata: SpatialData, sample: str, image_key: str) -> None:
    """Detect the tissue of ``sample`` on image ``image_key`` and write ``sdata.labels[Key.labels.tissue(sample)]``."""
    image = sdata.images[image_key]
    labels, size_y, size_x = detect(image_levels_of(image), sample)
    key = Key.labels.tissue(sample)
    sdata.labels[key] = labels_element(labels, (size_y, size_x), image)
    logger.info(f"Adding `sdata.labels[{key!r}]` ({(labels > 0).mean():.0%} of the image is tissue)")


def own_mask(mask: np.ndarray, full_shape: tuple[int, int], name: str) -> tuple[np.ndarray, float, float]:
    """One's own tissue mask, checked: 2-D boolean or integer (>0 tissue), covering the whole image at any resolution.

    Returns the labels and the (y, x) size of their pixels in image pixels, as :func:`detect`.
    """
    mask = mask.compute() if isinstance(mask, da.Array) else mask
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"A tissue mask must be a 2-D numpy array, got {type(mask).__name__}.")
    if mask.ndim != 2 or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise ValueError(
            f"A tissue mask must be a 2-D boolean or integer array (0 glass, >0 tissue), got shape {mask.shape} "
            f"of dtype {mask.dtype}. Pass e.g. `mask > 0` of a 2-D mask."
        )
    full_h, full_w = full_shape
    height, width = mask.shape
    if abs(height * full_w / width - full_h) > full_w / width + 1:
        raise ValueError(
            f"The {height} x {width} tissue mask does not have the shape of image {name!r} ({full_h} x {full_w}, "
            "or that shape divided by one factor). Pass a mask covering the whole image."
        )
    return mask.astype(np.int32), full_h / height, full_w / width


def tissue_labels(
    sdata: SpatialData, sample: str, image_key: str, *, tissue_key: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The tissue mask of ``sample`` (boolean) and the affine from its ``(x, y)`` pixels to the image's.

    ``tissue_key``: one's own labels element; ``None`` reads ``labels[Key.labels.tissue(sample)]``,
    detecting and storing it the first time.
    """
    image = sdata.images[image_key]
    if tissue_key is not None:
        if tissue_key not in sdata.labels:
            raise KeyError(
                f"No labels element {tissue_key!r} to use as tissue mask; the labels are {list(sdata.labels)}. "
                "Pass one of them as `tissue_key`, or leave it out to detect the tissue."
            )
        element = sdata.labels[tissue_key]
    else:
        key = Key.labels.tissue(sample)
        if key not in sdata.labels:
            add_detected(sdata, sample, image_key)
        element = sdata.labels[key]
    levels = image_levels_of(element)
    to_image = affine_between(element, image)
    if to_image is None:
        raise ValueError(
            f"The tissue mask of {sample!r} shares no coordinate system with image {image_key!r}; register it in "
            f"{list(get_transformation(image, get_all=True))}."
        )
    coarsest = levels[-1]
    level_size = np.diag([levels[0].shape[-1] / coarsest.shape[-1], levels[0].shape[-2] / coarsest.shape[-2], 1.0])
    affine = to_image @ level_size
    if not np.allclose(affine[[0, 1], [1, 0]], 0):
        raise ValueError(f"The tissue mask of {sample!r} is rotated against image {image_key!r}; align it first.")
    return np.asarray(coarsest) > 0, affine


def square_fractions(mask: np.ndarray, affine: np.ndarray, centres_xy: np.ndarray, side_px: float) -> np.ndarray:
    """Tissue fraction of the square of side ``side_px`` image pixels around each centre; beyond the mask is glass."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(0, dtype=np.int64).cumsum(1, dtype=np.int64)
    to_mask = np.linalg.inv(affine)
    corners = [centres_xy - side_px / 2, centres_xy + side_px / 2]
    # pixel edges as spot_patches rounds them: floor(v + 0.5)
    x0, y0 = np.floor(corners[0] @ to_mask[:2, :2].T + to_mask[:2, 2] + 0.5).astype(np.int64).T
    x1, y1 = np.floor(corners[1] @ to_mask[:2, :2].T + to_mask[:2, 2] + 0.5).astype(np.int64).T
    x0, x1 = np.minimum(x0, x1), np.maximum(x0, x1)
    y0, y1 = np.minimum(y0, y1), np.maximum(y0, y1)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    cx0, cx1 = np.clip(x0, 0, mask.shape[1]), np.clip(x1, 0, mask.shape[1])
    cy0, cy1 = np.clip(y0, 0, mask.shape[0]), np.clip(y1, 0, mask.shape[0])
    inside = integral[cy1, cx1] - integral[cy0, cx1] - integral[cy1, cx0] + integral[cy0, cx0]
    return inside / area


def warn_mismatch(sample: str, image_key: str, on_glass: np.ndarray, what: str) -> None:
    """Warn when most spots with counts lie on glass: the image is not the one (or the scale) of the spots.

    The spot files of her2st list only spots under tissue, and at most 27 % of them (B4, whose
    pale stroma the mask partly misses) lie on glass by the mask; the tissue covers 15-20 % of
    the image, so spots placed at a wrong scale land mostly on glass (C3's spots on its image
    downscaled to 0.75: 64 %).
    """
    if len(on_glass) and on_glass.mean() > MISMATCH_SHARE:
        warnings.warn(
            f"{on_glass.sum()} of the {len(on_glass)} {what} of sample {sample!r} lie on glass in image "
            f"{image_key!r}: the image likely does not match the spot coordinates, e.g. it is at another scale "
            "(a downscaled copy; check the `scalefactors` / the image file of the spots) or of another section.",
            UserWarning,
            stacklevel=3,
        )
