"""Loading H&E images into ``(c, y, x)`` uint8 RGB arrays, lazily where the file format allows."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr
from PIL import Image

#: Formats read lazily, tile by tile, through tifffile's zarr store.
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf")
#: Vendor formats read lazily through OpenSlide; everything else goes through PIL.
OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: Tile side of the lazy reads from OpenSlide.
OPENSLIDE_TILE_PX = 1024
#: PIL modes that hold colour and are converted to RGB (alpha or palette dropped).
_PIL_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def check_file(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`, or :class:`FileNotFoundError` naming what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The {what} file {str(path)!r} does not exist. Check the path.")
    return path


def over_white(rgba: np.ndarray | da.Array) -> np.ndarray | da.Array:
    """``(4, y, x)`` uint8 RGBA as RGB, fully transparent pixels white (glass); other alpha values are ignored.

    Scanner exports and OpenSlide mark the unscanned area with alpha 0; it is background.
    """
    if isinstance(rgba, np.ndarray) and rgba[3].min() > 0:
        return rgba[:3]
    return (rgba[:3] | np.where(rgba[3:] == 0, np.uint8(255), np.uint8(0))).astype(np.uint8)


def as_rgb(image: np.ndarray | da.Array, name: str, axes: str = "YXS") -> np.ndarray | da.Array:
    """Validate an image and return it as ``(c, y, x)`` uint8 RGB.

    ``axes`` names the dimensions (tifffile letters: ``Y``, ``X`` and ``S`` or ``C`` for colour;
    other axes must have length 1). Fully transparent pixels of an alpha channel become white
    (background, i.e. glass), the alpha channel is then dropped; grayscale and images with
    more than 8 bits per channel are refused, since converting them would hide a wrong file.
    """
    squeeze = tuple(i for i, a in enumerate(axes) if a not in "YXSC" and image.shape[i] == 1)
    if len(squeeze) != sum(a not in "YXSC" for a in axes):
        raise ValueError(f"Image {name!r} has axes {axes!r} with shape {image.shape}; expected one 2-D RGB image.")
    image = image.squeeze(axis=squeeze) if squeeze else image
    axes = "".join(a for a in axes if a in "YXSC")
    colour = next((a for a in axes if a in "SC"), None)
    n_channels = 1 if colour is None else image.shape[axes.index(colour)]
    if n_channels < 3:
        raise ValueError(
            f"Image {name!r} is grayscale ({n_channels} channel{'s' if n_channels > 1 else ''}); an H&E "
            "image must be RGB. Pass the colour image of the slide (foundation models need the stain colours)."
        )
    if n_channels > 4:
        raise ValueError(f"Image {name!r} has {n_channels} channels; expected RGB or RGBA. Pass the H&E image.")
    if image.dtype != np.uint8:
        raise ValueError(
            f"Image {name!r} has dtype {image.dtype}; histodecon reads 8-bit RGB. Convert it first, e.g. "
            "`(image // 257).astype('uint8')` for 16-bit or `(image * 255).round().astype('uint8')` for 0-1 floats."
        )
    order = [axes.index(colour), axes.index("Y"), axes.index("X")]
    image = image.transpose(order)
    return over_white(image) if n_channels == 4 else image


def _read_tiff(path: Path) -> list[da.Array]:
    """All pyramid levels of the first series of a TIFF, as lazy ``(c, y, x)`` arrays, finest first."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, n_levels = series.axes, len(series.levels)
    group = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    arrays = [group] if isinstance(group, zarr.Array) else [group[str(i)] for i in range(n_levels)]
    return [as_rgb(da.from_zarr(array), path.name, axes) for array in arrays]


def open_slide(path: Path):
    """The slide at ``path`` opened by OpenSlide, or an :class:`ImportError` saying what to install."""
    try:
        import openslide
    except ImportError as error:  # openslide-python and openslide-bin are dependencies; a broken install lands here
        raise ImportError(
            f"Reading {path.name!r} needs OpenSlide: `pip install openslide-python openslide-bin`."
        ) from error
    return openslide.OpenSlide(path)


def read_openslide(path: Path) -> list[da.Array]:
    """Pyramid levels of a slide OpenSlide reads, as lazy ``(c, y, x)`` RGB arrays, finest first.

    Each level is read tile by tile through ``read_region`` when its chunks are computed;
    fully transparent pixels (outside the scanned area) become white, i.e. glass.
    """
    slide = open_slide(path)
    levels = []
    for level, (width, height) in enumerate(slide.level_dimensions):
        downsample = slide.level_downsamples[level]

        def read_tile(block_info=None, *, level=level, downsample=downsample):
            (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
            origin = (round(x0 * downsample), round(y0 * downsample))
            tile = np.asarray(slide.read_region(origin, level, (x1 - x0, y1 - y0)))
            return over_white(np.moveaxis(tile, -1, 0))

        chunks = da.core.normalize_chunks((3, OPENSLIDE_TILE_PX, OPENSLIDE_TILE_PX), (4, height, width))
        levels.append(
            da.map_blocks(read_tile, chunks=((3,), *chunks[1:]), dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
        )
    return levels


def _read_pil(path: Path) -> np.ndarray:
    guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # slides exceed PIL's decompression-bomb limit
    try:
        with Image.open(path) as img:
            keep_alpha = img.mode in ("RGBA", "PA") or "transparency" in img.info
            colour = "RGBA" if keep_alpha else "RGB"
            array = np.asarray(img.convert(colour) if img.mode in _PIL_COLOUR_MODES else img)
    finally:
        Image.MAX_IMAGE_PIXELS = guard
    return as_rgb(array, path.name, "YXS" if array.ndim == 3 else "YX")


def read_image(path: str | Path) -> list[np.ndarray | da.Array]:
    """Read an H&E image file as ``(c, y, x)`` uint8 RGB: its pyramid levels, finest first.

    TIFF / OME-TIFF / SVS are read lazily through tifffile and the vendor formats of
    OpenSlide (NDPI, MRXS, ...) through OpenSlide, tile by tile (a list of all stored levels);
    JPEG, PNG and the other formats PIL reads are decoded into memory (a single level).
    Transparent pixels become white.
    """
    path = check_file(path, "image")
    if path.name.lower().endswith(TIFF_SUFFIXES):
        return _read_tiff(path)
    if path.name.lower().endswith(OPENSLIDE_SUFFIXES):
        return read_openslide(path)
    return [_read_pil(path)]
