"""Whole-slide images: µm per pixel from the file's metadata (the pixels are read by :mod:`histodecon.io._image`)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile

from histodecon._settings import logger
from histodecon._utils import check_positive
from histodecon.io._image import OPENSLIDE_SUFFIXES, TIFF_SUFFIXES, open_slide

#: Resolution tags above this many µm per pixel are screen defaults (72 or 96 dpi), not a scanner's.
MAX_TAGGED_MPP = 100.0
#: Micrometres per unit of TIFF ``ResolutionUnit`` (2 inch, 3 centimetre; 4 and 5 are tifffile's extensions).
_TIFF_UNIT_UM = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}
#: Micrometres per unit of OME-XML ``PhysicalSizeXUnit``.
_OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "pm": 1e-6}
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


def _checked(mpp_x: float, mpp_y: float, source: str, name: str) -> tuple[float, str] | None:
    """``(mpp_x, source)`` when finite and positive, warning when pixels are not square."""
    if not (np.isfinite(mpp_x) and mpp_x > 0):
        return None
    if np.isfinite(mpp_y) and mpp_y > 0 and abs(mpp_x / mpp_y - 1) > 0.01:
        logger.warning(f"{name}: pixels are not square ({mpp_x:g} x {mpp_y:g} µm, {source}); using the x size.")
    return float(mpp_x), source


def _aperio_mpp(description: str, name: str) -> tuple[float, str] | None:
    match = _APERIO_MPP.search(description) if description.startswith("Aperio") else None
    return _checked(float(match.group(1)), float("nan"), "aperio", name) if match else None


def _ome_mpp(ome_xml: str | None, name: str) -> tuple[float, str] | None:
    if not ome_xml:
        return None
    pixels = next((e for e in ET.fromstring(ome_xml).iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    sizes = []
    for axis in "XY":
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        if unit not in _OME_UNIT_UM:
            logger.warning(f"{name}: OME-XML PhysicalSize{axis}Unit {unit!r} is not a length unit; ignored.")
            return None
        sizes.append(float(pixels.get(f"PhysicalSize{axis}", "nan")) * _OME_UNIT_UM[unit])
    return _checked(*sizes, "ome-xml", name)


def _tiff_resolution_mpp(page: tifffile.TiffPage, name: str) -> tuple[float, str] | None:
    unit = page.tags.valueof(296, default=2)  # ResolutionUnit; the TIFF default is inch
    if unit not in _TIFF_UNIT_UM or 282 not in page.tags:
        return None
    sizes = []
    for tag in (282, 283):  # XResolution, YResolution: pixels per unit, as a rational
        numerator, denominator = page.tags.valueof(tag, default=(0, 1))
        sizes.append(_TIFF_UNIT_UM[unit] * denominator / numerator if numerator else float("nan"))
    found = _checked(*sizes, "tiff-resolution", name)
    if found and found[0] > MAX_TAGGED_MPP:
        logger.info(f"{name}: resolution tags give {found[0]:g} µm/px, a screen default; ignored.")
        return None
    return found


def tiff_mpp(path: Path) -> tuple[float, str] | None:
    """µm per pixel of a TIFF from, in order, its Aperio description, OME-XML or resolution tags."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        return (
            _aperio_mpp(page.description or "", path.name)
            or _ome_mpp(tif.ome_metadata, path.name)
            or _tiff_resolution_mpp(page, path.name)
        )


def openslide_mpp(path: Path) -> tuple[float, str] | None:
    """µm per pixel from OpenSlide's ``openslide.mpp-x`` / ``openslide.mpp-y`` properties."""
    import openslide

    with open_slide(path) as slide:
        props = dict(slide.properties)
    x, y = (float(props.get(key, "nan")) for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y))
    return _checked(x, y, "openslide", path.name)


def file_mpp(path: Path) -> tuple[float, str] | None:
    """µm per pixel and where it was found, from a TIFF's or an OpenSlide slide's metadata; ``None`` if absent."""
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return tiff_mpp(path)
    if name.endswith(OPENSLIDE_SUFFIXES):
        return openslide_mpp(path)
    return None


def resolve_mpp(mpp: float | None, path: Path | None) -> tuple[float, str]:
    """``(mpp, source)``: the argument when given, else the file's metadata, else a clear error."""
    if mpp is not None:
        check_positive(mpp, "mpp")
        return float(mpp), "argument"
    if path is None:
        raise ValueError("An image array carries no µm per pixel: pass `mpp=` (e.g. about 0.25 at 40x, 0.5 at 20x).")
    found = file_mpp(path)
    if found is None:
        raise ValueError(
            f"{path.name!r} records no µm per pixel (looked for OpenSlide `mpp-x`, an Aperio `MPP =` description, "
            "OME-XML `PhysicalSizeX` and TIFF resolution tags in inch or cm). Pass `mpp=` "
            "(micrometres per pixel, e.g. about 0.25 at 40x, 0.5 at 20x)."
        )
    logger.info(f"{path.name}: {found[0]:g} µm/px from its {found[1]} metadata.")
    return found
